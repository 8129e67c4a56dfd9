"""Read a table of rows from a local file or a hub dataset into a ``datasets.Dataset``.

Formats by extension: ``.csv``, ``.tsv``/``.tab`` (tab separated, no quoting, as GLUE ships
them), ``.json``/``.jsonl``/``.ndjson`` (JSON Lines or one JSON array), ``.parquet``/``.pq``.
``.txt`` gives one row per blank-line separated paragraph in a column ``text``, unless its
lines are CoNLL (``word ... TAG``, read as below). SQuAD-style
nested JSON gives one row per question (:mod:`deltatune.data.squad`); CoNLL token files
(``.conll``/``.iob``/``.bio``, or any other extension whose lines look like ``word ... TAG``,
e.g. CoNLL-2003's ``eng.train``) give one row per sentence with ``tokens`` and ``tags``
(:mod:`deltatune.data.conll`).
A folder of class folders (``<class>/<file>``, images or audio files) gives one row per file
with columns ``image`` or ``audio`` (its absolute path) and ``label`` (:mod:`deltatune.data.folders`).
Anything that is not an existing path is treated as a hub dataset name (needs network).
Each format may be gzip-compressed (``train.jsonl.gz``): the suffix before ``.gz`` names the
format and every check below applies to the decompressed content.

Before parsing, text files are checked to be UTF-8 so that a bad byte is reported with its
line number instead of a parser traceback.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import datasets

from deltatune.data.conll import CONLL_SUFFIXES, looks_like_conll, read_conll
from deltatune.data.paths import BINARY_FORMATS, SUPPORTED, TEXT_FORMATS, check_data_file, data_suffix
from deltatune.data.squad import flatten_squad, is_squad
from deltatune.errors import DeltatuneError

_TEXT_FORMATS, _BINARY_FORMATS = TEXT_FORMATS, BINARY_FORMATS


def _check_utf8(path: Path) -> None:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DeltatuneError(
            f"{path}: line {line} is not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start}); "
            "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def load_table(ref: str, split: str = "train", config_name: str | None = None) -> datasets.Dataset:
    """Load rows from ``ref`` (a local file, or a hub dataset name) as a ``datasets.Dataset``.

    Args:
        ref: path to a CSV/TSV/JSON/JSONL/Parquet/text file (optionally gzip-compressed,
            ``x.jsonl.gz``), a folder of class folders of images or audio files, or a hub dataset id.
        split: the split to take from a hub dataset (ignored for files).
        config_name: the hub dataset's configuration name, if it has several.

    Returns:
        A ``datasets.Dataset`` with one row per record (text files: one row per line, column
        ``text``).

    Raises:
        DeltatuneError: missing file, unsupported extension, a corrupt gzip file, invalid UTF-8
            (with line number), a file that does not parse, an empty file, or an unreachable hub dataset.
    """
    path = check_data_file(ref)  # the same checks the CLI makes before importing torch
    return _load_file(path) if path is not None else _load_hub(ref, split, config_name)


def _load_gzip(path: Path) -> datasets.Dataset:
    """A ``.gz`` data file: decompressed into a temporary folder under its inner name (``x.jsonl``),
    read as that format, with ``path`` named in every message. The rows are held in memory, so
    the temporary file is removed before returning.

    Raises:
        DeltatuneError: the file is not valid gzip (one line naming it), or any error of the inner format.
    """
    with tempfile.TemporaryDirectory(prefix="deltatune-gz-") as tmp:
        inner = Path(tmp) / path.stem
        try:
            with gzip.open(path, "rb") as src, inner.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (OSError, EOFError, zlib.error) as e:  # OSError includes gzip.BadGzipFile
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DeltatuneError(
                f"{path}: is not a valid gzip file ({first}); re-compress it with gzip, or give the uncompressed file"
            ) from None
        try:
            return _load_file(inner)
        except DeltatuneError as e:
            raise DeltatuneError(str(e).replace(str(inner), str(path))) from None


def _load_file(path: Path) -> datasets.Dataset:
    if path.is_dir():  # <class>/<file> images or audio files (check_data_file accepted it)
        from deltatune.data.folders import read_class_folders

        return read_class_folders(path)
    if data_suffix(path)[1]:
        return _load_gzip(path)
    ext = path.suffix.lower()
    fmt = _TEXT_FORMATS.get(ext) or _BINARY_FORMATS.get(ext)
    # CoNLL by content: no known extension, or a .txt whose lines are all "word ... TAG"
    if ext in CONLL_SUFFIXES or ((fmt is None or fmt == "text") and path.stat().st_size and looks_like_conll(path)):
        fmt = "conll"
    if fmt is None:
        raise DeltatuneError(f"{path}: unsupported file type '{ext or '(none)'}'; use one of {SUPPORTED}")
    if path.stat().st_size == 0:
        what = "at least one sentence" if fmt == "conll" else "a header row and at least one data row" if fmt in ("csv", "tsv") else "at least one row"
        raise DeltatuneError(f"{path} is empty; it needs {what}")
    if fmt != "parquet":
        _check_utf8(path)
    try:
        if fmt == "csv":
            ds = datasets.Dataset.from_pandas(_read_csv(path, sep=","), preserve_index=False)
        elif fmt == "tsv":
            ds = datasets.Dataset.from_pandas(_read_csv(path, sep="\t", quoting=csv.QUOTE_NONE), preserve_index=False)
        elif fmt == "json":
            rows = _read_json_rows(path)
            _check_consistent_json(rows, path)
            ds = datasets.Dataset.from_list(rows)
        elif fmt == "conll":
            ds = datasets.Dataset.from_list(read_conll(path))
        elif fmt == "parquet":
            ds = datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
        else:
            ds = datasets.Dataset.from_dict({"text": _paragraphs(path.read_text(encoding="utf-8-sig"))})
    except DeltatuneError:
        raise
    except Exception as e:  # parser errors from pandas/pyarrow: report them in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeltatuneError(f"{path}: could not be read as {fmt.upper()}: {first}") from None
    if len(ds) == 0:
        raise DeltatuneError(f"{path} has no data rows")
    return ds


def _kind(value) -> str:
    """The JSON kind of a cell as Arrow columns need it uniform: text, number, true/false, object or list."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _check_consistent_json(rows: list[dict], path: Path) -> None:
    """A column must hold one kind of value in every row (text, number, true/false, object or a
    list; nulls aside): Arrow cannot mix them, and its own error names neither row nor column.

    Raises:
        DeltatuneError: naming the column and the first row whose kind differs from the first row's.
    """
    first: dict[str, tuple[str, int]] = {}
    for i, row in enumerate(rows, start=1):
        for key, value in row.items():
            if value is None:
                continue
            kind = _kind(value)
            if key not in first:
                first[key] = (kind, i)
            elif first[key][0] != kind:
                hint = "e.g. a list of sentences everywhere" if "a list" in (kind, first[key][0]) else 'e.g. quote numbers as text: "4"'
                raise DeltatuneError(
                    f"{path}: column '{key}' holds {first[key][0]} in row {first[key][1]} but {kind} in row {i}; "
                    f"use the same kind in every row ({hint})"
                )


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs of a text file (each keeps its inner newlines)."""
    import re

    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def _read_csv(path: Path, **kw):
    """Only empty cells are missing: text such as "NA", "None" or "null" stays text."""
    import pandas as pd

    try:
        return pd.read_csv(path, encoding="utf-8-sig", keep_default_na=False, na_values=[""], **kw)  # -sig: drop a byte-order mark
    except pd.errors.EmptyDataError:
        raise DeltatuneError(f"{path} is empty; it needs a header row and at least one data row") from None


def _read_json_rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8-sig")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DeltatuneError(f"{path}: line {e.lineno} is not valid JSON: {e.msg}") from None
        if not all(isinstance(r, dict) for r in rows):
            raise DeltatuneError(f"{path}: a JSON array must hold objects (one per row)")
        return rows
    if stripped.startswith("{") and path.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None  # fall through to JSON Lines
        if is_squad(obj):
            return flatten_squad(obj, str(path))
        if isinstance(obj, dict):
            # {"data": [...]} or {"col": [...], ...}
            if isinstance(obj.get("data"), list) and all(isinstance(r, dict) for r in obj["data"]):
                return obj["data"]
            if obj and all(isinstance(v, list) for v in obj.values()):
                n = {len(v) for v in obj.values()}
                if len(n) == 1:
                    keys = list(obj)
                    return [dict(zip(keys, vals)) for vals in zip(*obj.values())]
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DeltatuneError(f"{path}: line {i} is not valid JSON ({e.msg}); JSON Lines needs one object per line") from None
        if not isinstance(row, dict):
            raise DeltatuneError(f"{path}: line {i} is a {type(row).__name__}, expected a JSON object per line")
        rows.append(row)
    return rows


def _load_hub(name: str, split: str, config_name: str | None) -> datasets.Dataset:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise DeltatuneError(
            f"'{name}' is not a local file and the hub is offline (HF_HUB_OFFLINE=1); give a path to a data file"
        )
    try:
        return datasets.load_dataset(name, config_name, split=split)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeltatuneError(f"'{name}' is neither a local file nor a loadable hub dataset: {first}") from None
