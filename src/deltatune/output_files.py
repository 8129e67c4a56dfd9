"""Result files written for the user (predictions, metrics): refused when they would replace
an existing file without ``overwrite`` or the input being read, and written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterable

from deltatune.errors import DeltatuneError


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_output(
    path: str | Path,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
    input_flag: str = "--input",
    suffixes: tuple[str, ...] | None = None,
) -> Path:
    """Check that ``path`` may be written, before any work is done; return it as a Path.

    Args:
        path: the output file.
        overwrite: allow replacing an existing file (never one of ``inputs``).
        inputs: files being read (hub dataset names and ``None`` are ignored).
        input_flag: how the inputs are named in the error message (``--input``, ``--data``).
        suffixes: the file name endings allowed, lower case (``None``: any).

    Raises:
        DeltatuneError: ``path`` is one of ``inputs``, a directory, has a suffix not in
            ``suffixes``, or exists and ``overwrite`` is false.
    """
    out = Path(path)
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


def write_atomically(path: str | Path, write: Callable[[IO[str]], None]) -> None:
    """Write a UTF-8 text file by calling ``write(f)`` on a temporary file next to ``path``, then
    renaming it over ``path``: readers never see a half-written file, and a failure leaves any
    previous file untouched."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            write(f)
        os.chmod(tmp, out.stat().st_mode & 0o7777 if out.exists() else 0o666 & ~_umask())
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
