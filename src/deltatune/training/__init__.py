"""The training loop and its parts: batching, optimizers, schedules, regularization,
early stopping, checkpointing and batched inference."""

from deltatune.training.loop import Trainer, TrainResult, resolve_mixed_precision

__all__ = ["Trainer", "TrainResult", "resolve_mixed_precision"]
