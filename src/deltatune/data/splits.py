"""Carve a validation split out of the training rows when none is given."""

from __future__ import annotations

from collections import Counter
from typing import Hashable, Sequence

import datasets
from sklearn.model_selection import train_test_split

from deltatune.errors import DeltatuneError


def train_validation_split(
    ds: datasets.Dataset,
    fraction: float,
    seed: int,
    stratify_by: Sequence[Hashable] | None = None,
    contiguous: bool = False,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split ``ds`` into (train, validation) with ``fraction`` of the rows in validation.

    Stratified by ``stratify_by`` (one hashable key per row, e.g. the label) when every class
    has at least two rows, so both parts keep the label proportions; otherwise a plain seeded
    shuffle split. Deterministic for a given ``seed``.

    Args:
        ds: the rows to split (at least 2).
        fraction: share of rows for validation, 0 < fraction < 1; at least one row each side.
        seed: random seed of the shuffle.
        stratify_by: optional per-row class keys, ``len(stratify_by) == len(ds)``.
        contiguous: take the last ``fraction`` of the rows in order instead (for running text,
            where a random split would leak neighbouring context into validation).

    Returns:
        (train, validation) datasets; row order inside each is the shuffled order.
    """
    train_idx, val_idx = train_validation_indices(len(ds), fraction, seed, stratify_by, contiguous)
    return ds.select(train_idx), ds.select(val_idx)


def train_validation_indices(
    n: int,
    fraction: float,
    seed: int,
    stratify_by: Sequence[Hashable] | None = None,
    contiguous: bool = False,
) -> tuple[list[int], list[int]]:
    """The row indices (from 0) of :func:`train_validation_split`'s two parts of ``n`` rows, in the
    parts' order: index ``j`` of a part is row ``indices[j]`` of the file (what :class:`FileRows` keeps
    so that messages name the file's row, not the part's)."""
    n_val = min(max(1, round(n * fraction)), n - 1)
    idx = list(range(n))
    if contiguous:
        return idx[: n - n_val], idx[n - n_val :]
    strat = list(stratify_by) if stratify_by is not None else None
    if strat is not None:
        counts = Counter(strat)
        if min(counts.values()) < 2 or n_val < len(counts) or n - n_val < len(counts):
            strat = None
    train_idx, val_idx = train_test_split(idx, test_size=n_val, random_state=seed, shuffle=True, stratify=strat)
    return [int(i) for i in train_idx], [int(i) for i in val_idx]


class FileRows(str):
    """How messages name a split (a ``str``, as every ``source`` argument is) that also knows which
    row of its file each of the split's rows is: ``file_rows[j]`` is the file row (from 0) of the
    split's row ``j``. The two parts of a training file carved by :func:`train_validation_split` are
    shuffled, so a part's own row index is not the row a user finds in the file; tasks name rows by
    :func:`row_number`, which reads this."""

    file_rows: tuple[int, ...] | None

    def __new__(cls, name: str, file_rows: Sequence[int] | None = None) -> "FileRows":
        obj = super().__new__(cls, name)
        obj.file_rows = tuple(int(r) for r in file_rows) if file_rows is not None else None
        return obj


def row_number(source: str, index: int) -> int:
    """The row messages name for row ``index`` (from 0) of the split that ``source`` names: data rows
    counted from 1, as in the file when ``source`` is a :class:`FileRows` that knows the split's file
    rows, else the split's own ``index + 1``."""
    rows = getattr(source, "file_rows", None)
    return rows[index] + 1 if rows is not None and 0 <= index < len(rows) else index + 1


# values of data.split_column and the split they put a row in
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation", "eval": "validation",
    "test": "test",
}


def split_source(file: str, column: str | None, split: str) -> str:
    """How error messages and ``deltatune check`` name the rows of ``split`` taken from ``file`` by
    ``data.split_column`` ``column``: row numbers then count that split's rows, not the file's
    lines, and the name says so. Without a split column: ``file``."""
    if not column:
        return file
    return f"{file} ({column}={split} rows, numbered among themselves)"


def split_by_column(ds: datasets.Dataset, column: str, source: str) -> dict[str, datasets.Dataset]:
    """The rows of one file divided by the value of its ``column`` (``data.split_column``).

    Values (case-insensitive, surrounding spaces ignored): ``train``/``training``; ``validation``,
    ``valid``, ``val``, ``dev``, ``eval``; ``test`` (:data:`SPLIT_NAMES`). The column stays in the rows.

    Returns:
        ``{"train": ..., "validation": ..., "test": ...}`` holding the splits that have rows, in file order.

    Raises:
        DeltatuneError: ``column`` is missing, a row has another value (naming the row, 1-based, and
            the value), or no row is a training row.
    """
    if column not in ds.column_names:
        raise DeltatuneError(
            f"{source}: no column '{column}' (data.split_column); columns are {', '.join(ds.column_names)}"
        )
    indices: dict[str, list[int]] = {}
    for i, value in enumerate(ds[column]):
        name = SPLIT_NAMES.get(str(value).strip().lower()) if value is not None else None
        if name is None:
            raise DeltatuneError(
                f"{source}: row {i + 1} has {column}={value!r}; data.split_column values must be train, validation "
                "(or valid/val/dev/eval) or test"
            )
        indices.setdefault(name, []).append(i)
    if "train" not in indices:
        raise DeltatuneError(f"{source}: no row has {column}=train, so there is nothing to train on")
    return {name: ds.select(rows) for name, rows in indices.items()}
