"""Automated fine-tuning: task inference, model choice under budgets, hyperparameter search.

``deltatune auto --train data.csv --time-budget 20m`` or :func:`deltatune.auto`:

- :mod:`deltatune.auto.infer`: the task and column mapping from the data;
- :mod:`deltatune.auto.candidates`: model family, size, memory/time fit;
- :mod:`deltatune.auto.search`: the optuna search space, trial objective and pruning callback;
- :mod:`deltatune.auto.timing`: trial time estimates and the plan that keeps the time budget;
- :mod:`deltatune.auto.report`: leaderboard, parameter importances, clean-up;
- :mod:`deltatune.auto.runner`: :func:`auto`, which ties them together.
"""

import importlib
from typing import Any

from deltatune.auto.budget import parse_duration, parse_memory
from deltatune.auto.infer import Inference, infer_task


def __getattr__(name: str) -> Any:
    """``AutoResult`` and ``auto`` load :mod:`deltatune.auto.runner` (and torch) on first use."""
    if name in ("AutoResult", "auto"):
        return getattr(importlib.import_module("deltatune.auto.runner"), name)
    raise AttributeError(f"module 'deltatune.auto' has no attribute {name!r}")

__all__ = ["AutoResult", "Inference", "auto", "infer_task", "parse_duration", "parse_memory"]
