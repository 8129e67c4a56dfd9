"""Checks that the columns a task needs exist and hold usable values."""

from __future__ import annotations

import math
from typing import Any, Iterable

import datasets

from deltatune.data.paths import missing_column_message
from deltatune.errors import DeltatuneError


def require_columns(
    ds: datasets.Dataset, columns: Iterable[str | None], source: str, config_key: str = "data", remedy: str | None = None
) -> None:
    """Raise if any of ``columns`` (``None`` entries are skipped) is missing from ``ds`` (``remedy``: what to do,
    as :func:`deltatune.data.paths.missing_column_message` takes it).

    Raises:
        DeltatuneError: naming the missing column, the file, and the columns that exist.
    """
    for col in columns:
        if col is not None and col not in ds.column_names and ds.column_names == ["text"] and str(source).lower().endswith(".txt"):
            # a .txt file read as paragraphs: the user meant a table or a token file
            raise DeltatuneError(
                f"{source}: no column '{col}': the file was read as plain text (one 'text' row per paragraph); "
                "give a CSV/JSONL file with that column, or for tokens and tags a CoNLL file ('word ... TAG' "
                "on every line, blank line between sentences; e.g. named .conll)"
            )
        if col is not None and col not in ds.column_names:
            raise DeltatuneError(missing_column_message(source, col, ds.column_names, config_key, remedy))


def is_missing(value: Any) -> bool:
    """True for None, NaN and empty/whitespace-only strings."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    return False


def check_text_column(values: list, column: str, source: str) -> None:
    """Raise on the first row whose text is missing or empty (rows are numbered from 1).

    Raises:
        DeltatuneError: all values missing, or the first missing row, with its number.
    """
    missing = [i for i, v in enumerate(values) if is_missing(v)]
    if len(missing) == len(values):
        raise DeltatuneError(f"{source}: column '{column}' is empty in every row; point data.text_column at the text")
    if missing:
        raise DeltatuneError(
            f"{source}: row {missing[0] + 1} has an empty '{column}' ({len(missing)} such rows); remove or fill them"
        )
