"""Packing decoder training examples into sequences of at most ``max_length`` tokens.

Short SFT examples padded to the longest one in a batch waste most of the compute (the
reference SFT-like data of issue 6: mean length 371 of at most 1,024). Packing concatenates
several examples into one sequence so that batches are nearly free of padding, without letting
one example see another:

- ``position_ids`` restart at 0 for each example, and the packed rows carry no padding
  ``attention_mask``. From restarting position ids transformers (>= 5) builds a block-diagonal
  causal mask itself (``masking_utils.find_packed_sequence_indices`` in ``create_causal_mask``
  when ``attention_mask`` is ``None`` and no cache is used), and flash-attention models use
  variable-length kernels. Attention never crosses an example boundary, so a packed example's
  logits equal its logits alone.
- The first token of every example is labelled -100: it is never trained as the continuation
  of the example before it. (Alone, an example's first token is never a target either, since
  the loss predicts token t+1 from t.) The packed loss is therefore the same sum over the same
  target tokens as without packing.

Examples are assigned to packs by first-fit decreasing (Johnson 1973, "Near-optimal bin
packing algorithms"; uses at most 11/9 OPT + 6/9 bins, Dósa 2007): longest first, each into the
first pack with room. Ties are broken by example index, so packing is a deterministic function
of the lengths. Packs are made once per run; the epoch order of packs is shuffled by the usual
(length-grouped) batch sampler.

This is data/batching logic of the training loop (DESIGN.md: ``training/``: batching,
packing); tasks only need to collate the ``position_ids`` key and leave out the attention mask
when it is absent (see ``LanguageModelTask.collate``).
"""

from __future__ import annotations

from typing import Any, Sequence

from deltatune.errors import DeltatuneError
from deltatune.tasks.base import Features

IGNORE_INDEX = -100


class PackedFeatures(Features):
    """Features whose rows are packs of several encoded examples.

    ``members[k]`` lists the indices (into the unpacked features) of the examples in pack ``k``,
    in the order they were concatenated; ``lengths[k]`` is the pack's token count.
    """

    def __init__(self, rows: list[dict[str, Any]], lengths: Sequence[int], members: list[list[int]]):
        super().__init__(rows, lengths, meta=members)
        self.members = members

    def examples_in(self, indices: Sequence[int]) -> int:
        """Number of original examples in the packs ``indices``."""
        return sum(len(self.members[i]) for i in indices)

    @property
    def num_examples(self) -> int:
        return sum(len(m) for m in self.members)


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Assign items to bins of ``capacity`` by first-fit decreasing.

    Args:
        lengths: item sizes (tokens); an item larger than ``capacity`` gets a bin of its own.
        capacity: bin size (tokens), > 0.

    Returns:
        Bins as lists of item indices; every index appears exactly once. Bins are in the order
        they were opened, items in a bin in the order they were placed (longest first).

    Runs in O(n log n): a segment tree over bins holds each bin's free space, and the leftmost
    bin with enough room is found by descending the tree.
    """
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    size = 1
    while size < max(1, len(lengths)):
        size *= 2
    tree = [0] * (2 * size)  # max free space in each subtree; unopened bins have 0
    bins: list[list[int]] = []

    def set_free(b: int, free: int) -> None:
        k = size + b
        tree[k] = free
        k //= 2
        while k:
            tree[k] = max(tree[2 * k], tree[2 * k + 1])
            k //= 2

    for i in order:
        n = lengths[i]
        if n <= capacity and tree[1] >= n:
            k = 1
            while k < size:
                k = 2 * k if tree[2 * k] >= n else 2 * k + 1
            b = k - size
            bins[b].append(i)
            set_free(b, tree[k] - n)
        else:
            bins.append([i])
            set_free(len(bins) - 1, max(capacity - n, 0))
    return bins


def pack_rows(rows: Sequence[dict[str, Any]], bins: list[list[int]]) -> list[dict[str, Any]]:
    """Concatenate each bin's rows into one packed row.

    Each row needs ``input_ids`` and ``labels`` (lists of ints of equal length). A packed row
    has ``input_ids`` and ``labels`` (concatenated; each example's first label set to -100) and
    ``position_ids`` (0..len-1 per example); no ``attention_mask``.
    """
    packed = []
    for members in bins:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for i in members:
            r = rows[i]
            n = len(r["input_ids"])
            ids.extend(r["input_ids"])
            labels.append(IGNORE_INDEX)
            labels.extend(r["labels"][1:n])
            positions.extend(range(n))
        packed.append({"input_ids": ids, "labels": labels, "position_ids": positions})
    return packed


def pack_features(features: Features, max_length: int) -> PackedFeatures:
    """Pack encoded decoder examples into sequences of at most ``max_length`` tokens.

    Args:
        features: rows with ``input_ids`` and ``labels`` (as made by the decoder tasks).
        max_length: tokens per pack (``data.max_seq_length``).

    Returns:
        :class:`PackedFeatures`, one row per pack (see :func:`pack_rows`).

    Raises:
        DeltatuneError: the rows have no ``labels`` (not decoder training features).
    """
    if len(features) and ("labels" not in features[0] or "input_ids" not in features[0]):
        raise DeltatuneError("train.packing needs decoder training examples (input_ids and labels)")
    bins = first_fit_decreasing(features.lengths, max_length)
    rows = pack_rows(features.rows, bins)
    return PackedFeatures(rows, [len(r["input_ids"]) for r in rows], bins)


def pack_training_features(task, features: Features, max_length: int) -> PackedFeatures:
    """:func:`pack_features` for a task that supports packing (``task.supports_packing``).

    Raises:
        DeltatuneError: the task cannot train on packed sequences (encoder tasks, whose
            attention is bidirectional and whose heads see one example per row).
    """
    if not task.supports_packing:
        raise DeltatuneError(
            f"train.packing applies to decoder tasks (causal-lm, instruction, summarization, translation, "
            f"generative-qa), not {task.name}; set train.packing false"
        )
    return pack_features(features, max_length)


def packing_report(packed: PackedFeatures, max_length: int) -> dict[str, float]:
    """Counts for the data report: examples, packs, and the share of pack slots holding tokens."""
    tokens = sum(packed.lengths)
    return {
        "examples": packed.num_examples,
        "packs": len(packed),
        "tokens": tokens,
        "fill": round(tokens / max(1, len(packed) * max_length), 4),
    }
