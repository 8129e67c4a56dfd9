"""The training loop and its parts: batching, optimizers, schedules, regularization,
early stopping, checkpointing, batched inference and experiment trackers.

``Trainer``, ``TrainResult`` and ``resolve_mixed_precision`` are loaded on first use (PEP 562),
so that the CLI can import torch-free parts such as :mod:`deltatune.training.tracking`'s
``check_report_to`` before torch loads.
"""

import importlib

__all__ = ["Trainer", "TrainResult", "resolve_mixed_precision"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("deltatune.training.loop"), name)
    raise AttributeError(f"module 'deltatune.training' has no attribute {name!r}")
