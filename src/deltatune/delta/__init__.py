"""Δθ: what is trained (full, freeze, PEFT adapters) and how it is stored, loaded, merged and compressed.

The method table (:mod:`deltatune.delta.registry`) imports neither torch nor peft, so that config
validation and the CLI can read it; the names below are therefore imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from deltatune.delta.registry import PEFT_METHODS

_LAZY = {
    "apply_delta": "deltatune.delta.methods",
    "parameter_summary": "deltatune.delta.methods",
    "is_delta_folder": "deltatune.delta.storage",
    "load_trained": "deltatune.delta.storage",
    "save_trained": "deltatune.delta.storage",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deltatune.delta' has no attribute {name!r}")

__all__ = ["PEFT_METHODS", "apply_delta", "is_delta_folder", "load_trained", "parameter_summary", "save_trained"]
