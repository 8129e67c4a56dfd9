"""Result files written for the user (predictions, metrics): refused when they would replace
an existing file without ``overwrite`` or the input being read, and written atomically
(:func:`deltatune.files.write_atomically`, re-exported here).

Torch-free, in the bottom layer with :mod:`deltatune.files`: the policy for *where* a result
may be written is needed by the API (evaluate), serving (predictions) and the CLI's checks
before torch is imported."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from deltatune.errors import DeltatuneError
from deltatune.files import write_atomically

__all__ = ["check_output", "write_atomically"]


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


# file types predict writes (by name ending)
PREDICTION_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


def check_output(
    path: str | Path,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
    input_flag: str = "--input",
    suffixes: tuple[str, ...] | None = None,
    keep: Iterable[str | Path] = (),
) -> Path:
    """Check that ``path`` may be written, before any work is done; return it as a Path.

    Args:
        path: the output file.
        overwrite: allow replacing an existing file (never one of ``inputs``).
        inputs: files being read (hub dataset names and ``None`` are ignored).
        input_flag: how the inputs are named in the error message (``--input``, ``--data``).
        suffixes: the file name endings allowed, lower case (``None``: any).
        keep: files and folders that are never written to or inside, even with ``overwrite``
            (the files of the run being read: its config, model, checkpoints, metrics).

    Raises:
        DeltatuneError: ``path`` is one of ``inputs``, is or lies inside one of ``keep``, is a
            directory, has a suffix not in ``suffixes``, or exists and ``overwrite`` is false.
    """
    out = Path(path)
    resolved = out.resolve()
    for kept in keep:
        k = Path(kept).resolve()
        if resolved == k or k in resolved.parents:
            raise DeltatuneError(
                f"--output {out} would replace {kept}, a file of the run being read; write to another file "
                "(--overwrite never replaces a run's own files)"
            )
    for src in inputs:
        if src is not None and _same_file(out, Path(src)):
            raise DeltatuneError(
                f"--output {out} is the {input_flag} file being read; write to another file (--overwrite never replaces the input)"
            )
    if suffixes is not None and out.suffix.lower() not in suffixes:
        raise DeltatuneError(f"--output {out}: use a file name ending in {', '.join(suffixes)}")
    if out.is_dir():
        raise DeltatuneError(f"--output {out} is a directory; give a file name")
    if out.exists() and not overwrite:
        raise DeltatuneError(f"--output {out} already exists; choose another file or pass --overwrite to replace it")
    return out
