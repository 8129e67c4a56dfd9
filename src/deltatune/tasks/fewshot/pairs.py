"""Seeded generation of the text pairs SetFit trains the encoder on (torch-free).

For ``iterations`` rounds, every training example that has a partner with the same label (its
*anchor* role) gets one positive pair (a random other example with the same label; target 1)
and one negative pair (a random example with another label; target 0), as SetFit's
``sentence_pairs_generation`` does. Multi-label examples are positive partners when their label
sets are equal. An example whose label (set) no other example has cannot be an anchor of a
positive pair: it is the anchor of a negative pair, and another anchor's extra positive pair
keeps the two counts equal. So:

- positives and negatives are equally many (``2 * iterations * n`` pairs when every label
  occurs at least twice);
- no pair joins an example with itself;
- every example is in some pair;
- the same ``seed`` gives the same pairs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

from deltatune.errors import DeltatuneError


@dataclass(frozen=True)
class Pair:
    """Two training examples by index (``first`` is the anchor) and the target cosine (1.0 or 0.0)."""

    first: int
    second: int
    target: float


def make_pairs(keys: Sequence[Hashable], iterations: int, seed: int, source: str = "training data") -> list[Pair]:
    """Positive and negative pairs of the examples whose label keys are ``keys`` (see the module).

    Args:
        keys: one hashable label key per example (a label, or a frozenset of labels for
            multi-label rows); equal keys make positive pairs.
        iterations: rounds over the examples (SetFit's ``num_iterations``, ``train.contrastive_iterations``).
        seed: the generator's seed (the run's ``seed``).
        source: names the data in error messages.

    Returns:
        The pairs, shuffled.

    Raises:
        DeltatuneError: fewer than 2 examples, a single label key (no negative pair), or no two
            examples with the same key (no positive pair).
    """
    n = len(keys)
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    if n < 2 or len(groups) < 2:
        raise DeltatuneError(
            f"{source}: contrastive training (train.method contrastive) needs rows with at least two different labels; "
            f"it has {n} row(s) with {len(groups)} distinct label(s)"
        )
    anchors = [i for i in range(n) if len(groups[keys[i]]) > 1]
    if not anchors:
        raise DeltatuneError(
            f"{source}: contrastive training (train.method contrastive) needs at least two rows with the same label "
            "(set of labels) to make a positive pair; add rows or use train.method standard"
        )
    lonely = [i for i in range(n) if len(groups[keys[i]]) == 1]
    members = {k: np.asarray(v) for k, v in groups.items()}
    rng = np.random.default_rng(seed)

    def positive(i: int) -> Pair:
        same = members[keys[i]]
        j = int(same[rng.integers(len(same) - 1)])
        j = j if j != i else int(same[-1])  # one draw among the others: i's slot maps to the last member
        return Pair(i, j, 1.0)

    other_of = {k: np.asarray([j for j in range(n) if keys[j] != k]) for k in groups}

    def negative(i: int) -> Pair:
        others = other_of[keys[i]]
        return Pair(i, int(others[rng.integers(len(others))]), 0.0)

    pairs: list[Pair] = []
    for _ in range(iterations):
        for i in anchors:
            pairs.append(positive(i))
            pairs.append(negative(i))
        for i in lonely:
            pairs.append(negative(i))
            pairs.append(positive(anchors[int(rng.integers(len(anchors)))]))
    order = rng.permutation(len(pairs))
    return [pairs[int(k)] for k in order]
