"""Batch samplers: length-grouped shuffling for training, length-sorted order for evaluation.

Length grouping (as in HF Trainer's ``group_by_length``, after Megatron-LM's megabatches):
shuffle the indices, cut them into megabatches of ``50 x batch_size``, sort each megabatch by
length (longest first), cut into batches and shuffle the batch order, keeping the batch that
holds the longest example first so an out-of-memory error shows at step one. Examples in one
batch then have similar lengths and dynamic padding wastes little compute.

Everything is a pure function of (seed, epoch), so a resumed run sees the same batches.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

MEGABATCH_MULT = 50


def epoch_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    group_by_length: bool = True,
) -> list[list[int]]:
    """The training batches (lists of example indices) of one epoch.

    Args:
        lengths: token length of each example.
        batch_size: examples per batch (global across processes); the last batch may be smaller.
        seed, epoch: the order is a deterministic function of both.
        group_by_length: group examples of similar length (see module doc); else plain shuffle.

    Returns:
        ``ceil(len(lengths) / batch_size)`` batches covering every index once.
    """
    n = len(lengths)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    if not group_by_length:
        return [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    mega = batch_size * MEGABATCH_MULT
    batches: list[list[int]] = []
    for i in range(0, n, mega):
        chunk = sorted(perm[i : i + mega], key=lambda j: -lengths[j])
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    order = torch.randperm(len(batches), generator=g).tolist()
    batches = [batches[o] for o in order]
    longest = max(range(len(batches)), key=lambda b: max(lengths[j] for j in batches[b]))
    batches[0], batches[longest] = batches[longest], batches[0]
    return batches


def shard_batch(batch: list[int], num_replicas: int, rank: int) -> list[int]:
    """This process's part of a global batch (strided, so parts differ in size by at most one)."""
    return batch[rank::num_replicas]


def split_batch(batch: list[int], size: int) -> list[list[int]]:
    """``batch`` cut into consecutive micro-batches of at most ``size`` indices, in order."""
    return [batch[i : i + size] for i in range(0, len(batch), size)]


def eval_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches in descending length order (least padding); covers every index once."""
    order = sorted(range(len(lengths)), key=lambda j: -lengths[j])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def steps_per_epoch(num_examples: int, batch_size: int, accumulation: int) -> int:
    """Optimizer steps in one epoch: a partial last accumulation window still makes a step."""
    return math.ceil(math.ceil(num_examples / batch_size) / accumulation)
