"""Seeded, nested, stratified subsets of the training rows (``data.train_fraction``).

One seed orders the rows once (:func:`subset_order`); a fraction takes the first ``round(f * n)``
rows of that order (:func:`subset_indices`), so for one seed the 0.25 subset contains the 0.1
subset and a learning curve moves by data added, not by data swapped. With per-row class keys
(single-label classification) the order starts with one row of every class, in random order,
and then interleaves the classes by their share of the rows, so every prefix keeps the label
proportions (to within a row per class) and every class has a row once the prefix is at least
as long as there are classes. Pure Python (``random``): no torch, no numpy.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Hashable, Optional, Sequence


def subset_size(n: int, fraction: float) -> int:
    """Rows a ``fraction`` (0 < f <= 1) of ``n`` rows keeps: ``round(f * n)``, at least 1 (for ``n >= 1``)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return min(n, max(1, round(fraction * n))) if n else 0


def subset_order(n: int, seed: int, stratify_by: Optional[Sequence[Hashable]] = None) -> list[int]:
    """A seeded order of the row indices ``0..n-1`` whose prefixes are the nested subsets.

    Args:
        n: number of rows.
        seed: the seed (the same seed and rows give the same order).
        stratify_by: optional per-row class keys (``len == n``): the order is stratified as the
            module says; ``None``: a plain seeded shuffle.

    Returns:
        A permutation of ``range(n)``.
    """
    rng = random.Random(seed)
    if stratify_by is None:
        order = list(range(n))
        rng.shuffle(order)
        return order
    keys = list(stratify_by)
    if len(keys) != n:
        raise ValueError(f"stratify_by has {len(keys)} keys for {n} rows")
    by_class: dict[Hashable, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        by_class[k].append(i)
    ranked: list[tuple[int, float, float, int]] = []
    for members in by_class.values():
        rng.shuffle(members)
        size = len(members)
        for j, i in enumerate(members):
            # the first row of each class leads (tier 0); then row j of a class of `size` rows sits at j/size,
            # so a prefix of any length holds about the same share of every class
            ranked.append((0 if j == 0 else 1, j / size, rng.random(), i))
    ranked.sort()
    return [r[-1] for r in ranked]


def subset_indices(n: int, fraction: float, seed: int, stratify_by: Optional[Sequence[Hashable]] = None) -> list[int]:
    """The row indices of the ``fraction`` subset for ``seed``, in ascending (file) order.

    Nested: for one seed and rows, a smaller fraction's indices are a subset of a larger one's.
    """
    k = subset_size(n, fraction)
    return sorted(subset_order(n, seed, stratify_by)[:k])
