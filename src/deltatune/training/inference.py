"""Batched forward passes for evaluation and prediction, in length order, results in input order."""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch

from deltatune.tasks.base import Features, Task
from deltatune.training.batching import eval_batches


@torch.no_grad()
def batched_outputs(
    model: torch.nn.Module,
    task: Task,
    features: Features,
    batch_size: int,
    device: torch.device | str,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    rank: int = 0,
    world: int = 1,
    step: Callable[[torch.nn.Module, dict[str, torch.Tensor]], dict[str, np.ndarray]] | None = None,
) -> list[tuple[list[int], dict[str, np.ndarray]]]:
    """Run :meth:`Task.eval_step` (or ``step``, e.g. :meth:`Task.reference_step`) over this process's
    share of length-sorted batches.

    Args:
        batch_size: examples per forward pass.
        autocast: factory of the mixed-precision context (``accelerator.autocast``).
        rank, world: this process's index and the number of processes; batch ``b`` goes to
            process ``b % world``.

    Returns:
        (example indices, outputs) per batch, for :func:`merge_outputs`.
    """
    parts = []
    for idx in eval_batches(features.lengths, batch_size)[rank::world]:
        batch = {k: v.to(device) for k, v in task.collate([features[i] for i in idx]).items()}
        with autocast():
            parts.append((idx, (step or task.eval_step)(model, batch)))
    return parts


def merge_outputs(parts: list[tuple[list[int], dict[str, np.ndarray]]], n: int) -> dict[str, np.ndarray]:
    """Put per-batch outputs back in example order; each example index appears once.

    Args:
        parts: (example indices, outputs with first axis = those examples) per batch.
        n: number of examples.

    Returns:
        dict key -> array with first axis n (ragged outputs are returned as object arrays).

    Raises:
        RuntimeError: an example is missing or duplicated (gathering bug).
    """
    if not parts:
        return {}
    order = [i for idx, _ in parts for i in idx]
    if sorted(order) != list(range(n)):
        raise RuntimeError(f"evaluation covered {len(set(order))} of {n} examples ({len(order)} outputs)")
    inverse = np.empty(n, dtype=np.int64)
    inverse[np.asarray(order)] = np.arange(n)
    merged = {}
    for key in parts[0][1]:
        chunks = [out[key] for _, out in parts]
        try:
            arr = np.concatenate(chunks, axis=0)
        except ValueError:
            arr = np.empty(n, dtype=object)
            flat = [row for c in chunks for row in c]
            for k, row in enumerate(flat):
                arr[k] = row
        merged[key] = arr[inverse]
    return merged
