"""Which data references are local files, and the cheap checks on them (no ``datasets``, no torch).

Used by :func:`deltatune.data.loading.load_table` and by the CLI before it imports torch, so
that a mistyped path, or a column the task reads and the file lacks, is reported in a fraction
of a second with the same message as the full check (:func:`deltatune.data.columns.require_columns`).

Any of the formats may be gzip-compressed (``train.jsonl.gz``, ``dev.tsv.gz``): the format is
the suffix before ``.gz`` (:func:`data_suffix`), and the content is read decompressed.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from pathlib import Path
from typing import Iterable, Optional

from deltatune.errors import DeltatuneError

TEXT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "json", ".ndjson": "json", ".txt": "text"}
BINARY_FORMATS = {".parquet": "parquet", ".pq": "parquet"}
GZIP_SUFFIX = ".gz"
SUPPORTED = ", ".join(sorted(set(TEXT_FORMATS) | set(BINARY_FORMATS) | {".conll"})) + "; each also gzip-compressed, e.g. .jsonl.gz"
_KNOWN_SUFFIXES = set(TEXT_FORMATS) | set(BINARY_FORMATS)


def data_suffix(path: Path | str) -> tuple[str, bool]:
    """The lower-cased suffix that names a data file's format, and whether the file is gzip-compressed.

    ``train.jsonl.gz`` gives ``(".jsonl", True)``, ``dev.TSV`` gives ``(".tsv", False)``, a bare
    ``x.gz`` gives ``("", True)``.
    """
    p = Path(path)
    if p.suffix.lower() == GZIP_SUFFIX:
        return Path(p.stem).suffix.lower(), True
    return p.suffix.lower(), False


def looks_like_path(ref: str) -> bool:
    """Whether ``ref`` names a local file rather than a hub dataset: it starts with ``.``, ``/``
    or ``~``, or ends in a known data file extension (:data:`SUPPORTED`, optionally followed by ``.gz``)."""
    return ref.startswith((".", "/", "~")) or data_suffix(ref)[0] in _KNOWN_SUFFIXES


def check_data_file(ref: str) -> Path | None:
    """The local data file ``ref`` names, checked to exist; ``None`` when ``ref`` is a hub dataset name.

    Raises:
        DeltatuneError: ``ref`` is a folder, or looks like a path (:func:`looks_like_path`) and
            does not exist (the message names the path and the folder relative paths start from).
    """
    path = Path(ref).expanduser()
    if path.exists():
        if path.is_dir():
            if class_folder_kind(path) is not None:  # <class>/<file> images or audio files
                return path
            raise DeltatuneError(
                f"{path} is a folder; give a data file ({SUPPORTED}), or a folder of class folders "
                "(<class>/<file>) of images or audio files"
            )
        return path
    if looks_like_path(ref):
        raise DeltatuneError(f"data file not found: {path} (check the path; relative paths start from {Path.cwd()})")
    return None


# media files a class-folder directory may hold (the suffix picks the kind; datasets' imagefolder/audiofolder)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")


def media_kind(path: Path | str) -> Optional[str]:
    """``"image"`` or ``"audio"`` by the file's suffix (:data:`IMAGE_SUFFIXES`, :data:`AUDIO_SUFFIXES`), else ``None``."""
    suffix = Path(path).suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "audio" if suffix in AUDIO_SUFFIXES else None


def class_folder_kind(folder: Path) -> Optional[str]:
    """``"image"`` or ``"audio"`` when ``folder`` is a class-folder dataset (``<class>/<file>``: every
    visible sub-folder a class, its image or audio files the examples), else ``None``. The kind is
    that of the first media file found; :func:`deltatune.data.folders.read_class_folders` checks the rest."""
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(sub.iterdir()):
            kind = media_kind(f) if f.is_file() else None
            if kind is not None:
                return kind
    return None


def base_folder(source: str) -> Path:
    """The folder that relative file paths in the rows of ``source`` start from: the folder of the data
    file ``source`` names (a path, or :func:`deltatune.data.splits.split_source`'s ``"file (column=split
    rows, ...)"``), the folder itself for a class-folder directory, else the current folder (rows
    given in Python or over HTTP)."""
    cut = len(source)
    while cut > 0:
        path = Path(source[:cut]).expanduser()
        if path.is_file():
            return path.parent
        if path.is_dir():
            return path
        cut = source.rfind(" (", 0, cut)
    return Path.cwd()


def resolve_file(value: str, source: str) -> Path:
    """The file a row's path ``value`` names: absolute as given (``~`` expanded), relative from
    :func:`base_folder` of ``source``."""
    path = Path(str(value).strip()).expanduser()
    return path if path.is_absolute() else base_folder(source) / path


# what to do about a missing column, by what the task reads (``Task.input_kind``); text tasks: the default of
# missing_column_message
COLUMN_REMEDIES = {
    "image": "set the column names in data.image_column / data.label_column, e.g. data.image_column=path; or check --task",
    "audio": "set the column names in data.audio_column / data.label_column, e.g. data.audio_column=path; or check --task",
    "image-text": "give each row a 'messages' (or 'conversations') column of chat turns; or check --task",
    "audio-text": "set the column names in data.audio_column / data.text_column, e.g. data.audio_column=path; or check --task",
}


def missing_column_message(
    source: str, column: str, columns: Iterable[str], config_key: str = "data", remedy: Optional[str] = None
) -> str:
    """The one-line message for a column the task reads that the table ``source`` lacks, listing
    the ``columns`` it has (the text of :func:`deltatune.data.columns.require_columns`).

    Args:
        remedy: what to do, in parentheses at the end (default: set the column name in the config,
            which is what training can do; a trained run's columns are fixed).
    """
    remedy = remedy or f"set the column name in {config_key}.*_column, e.g. --text-column"
    return f"{source}: no column '{column}'; columns are {', '.join(map(repr, columns))} ({remedy})"


def header_columns(path: Path) -> Optional[list[str]]:
    """The column names of a local table, when they can be read from its first record alone.

    CSV (``.csv``, parsed with :mod:`csv`) and TSV (``.tsv``/``.tab``, split on tabs, no quoting,
    as the loader reads it): the first non-blank line; JSON Lines (``.jsonl``/``.ndjson``, or a
    ``.json`` whose first two non-blank lines are each an object): the keys of the first row,
    which are the columns ``datasets.Dataset.from_list`` makes. Reads a few lines at most
    (of the decompressed text for a ``.gz`` file).

    Returns:
        The names in file order, or ``None`` when the header is not cheap or not certain to be
        what the loader will make (Parquet, JSON arrays or documents such as SQuAD, CoNLL,
        plain text, undecodable or empty files, duplicate or empty CSV names, which pandas renames).
    """
    suffix, compressed = data_suffix(path)
    fmt = TEXT_FORMATS.get(suffix)
    if fmt not in ("csv", "tsv", "json"):
        return None
    try:
        opened = gzip.open(path, "rt", encoding="utf-8-sig", newline="") if compressed else path.open(encoding="utf-8-sig", newline="")
        with opened as f:
            if fmt == "csv":
                row = next((r for r in csv.reader(f) if r), None)
            elif fmt == "tsv":
                line = next((ln for ln in f if ln.strip("\r\n")), None)
                row = line.rstrip("\r\n").split("\t") if line is not None else None
            else:
                return _first_json_row_keys(f, jsonl=suffix != ".json")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error):  # OSError includes gzip.BadGzipFile
        return None
    if not row or len(set(row)) != len(row) or any(not name.strip() for name in row):
        return None
    return row


def _first_json_row_keys(lines: Iterable[str], jsonl: bool) -> Optional[list[str]]:
    """Keys of the first JSON Lines row, or None (not JSON Lines for sure); a ``.json`` file
    (``jsonl`` false) counts as JSON Lines only when its second row is an object too."""
    rows = []
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(row, dict):
            return None
        rows.append(row)
        if jsonl or len(rows) == 2:
            return list(rows[0])
    return None


def check_columns(ref: str, columns: Iterable[str], remedy: Optional[str] = None) -> None:
    """Check that the local table ``ref`` has each of ``columns``, from its header alone.

    Nothing is checked for a hub dataset or a file whose header is not cheap
    (:func:`header_columns`); those are checked when loaded, with the same message.

    Raises:
        DeltatuneError: the first missing column, naming ``ref`` and the columns the file has.
    """
    path = Path(ref).expanduser()
    if not path.is_file():
        return
    have = header_columns(path)
    if have is None:
        return
    for col in columns:
        if col not in have:
            raise DeltatuneError(missing_column_message(ref, col, have, remedy=remedy))


__all__ = [
    "AUDIO_SUFFIXES",
    "IMAGE_SUFFIXES",
    "base_folder",
    "class_folder_kind",
    "media_kind",
    "resolve_file",
    "BINARY_FORMATS",
    "GZIP_SUFFIX",
    "SUPPORTED",
    "TEXT_FORMATS",
    "COLUMN_REMEDIES",
    "check_columns",
    "check_data_file",
    "data_suffix",
    "header_columns",
    "looks_like_path",
    "missing_column_message",
]
