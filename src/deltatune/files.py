"""Atomic writes: a file or a folder is replaced whole, or not at all (the one place this is written).

- :func:`write_atomically` writes a text file to a temporary file next to it, then renames it
  over the target (``os.replace``): a reader sees the old file or the new one, never half of one.
- :func:`replace_dir_atomically` fills a temporary folder ``.tmp-<name>`` next to the target,
  then swaps it in with two renames (old target aside as ``.old-<name>``, new one in), and only
  then deletes the old folder: at every moment the target name holds a complete folder (or, in
  the instant between the two renames, the complete old one waits under ``.old-<name>``, and
  the next call puts it back).

Both leave the previous target untouched and no temporary file or folder behind when the
writer (or the write itself) fails; the exception is re-raised unchanged for the caller to
explain (see :func:`deltatune.rundir.write_failure`).

Torch-free, and below every other layer (it imports nothing from deltatune).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def write_atomically(path: str | Path, write: Callable[[IO[str]], None]) -> None:
    """Write the UTF-8 text file ``path`` by calling ``write(f)`` on a temporary file next to it.

    The temporary file (``.<name>.<random>.tmp`` in the same folder) is renamed over ``path``
    once ``write`` returns; the new file keeps the permission bits of the file it replaces (or
    gets ``0o666`` minus the umask). Missing parent folders are made.

    Args:
        path: the file to write.
        write: called once with the open text file (newline translation off: ``"\\n"`` stays).

    Raises:
        OSError: the folder or file cannot be written (the previous file is untouched);
            anything ``write`` raises, unchanged. No temporary file is left either way.
    """
    def write_text(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            write(f)

    write_file_atomically(path, write_text)


def write_file_atomically(path: str | Path, write: Callable[[Path], None]) -> None:
    """Write the (binary) file ``path`` by calling ``write(tmp)`` with a temporary path next to it.

    For writers that take a file name (the ``gguf`` package's ``GGUFWriter``); the text
    counterpart is :func:`write_atomically`. The temporary file is renamed over ``path`` once
    ``write`` returns, with the permission bits of the file it replaces (or ``0o666`` minus the
    umask).

    Raises:
        OSError: the folder or file cannot be written (the previous file is untouched);
            anything ``write`` raises, unchanged. No temporary file is left either way.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
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


def temp_dir_for(target: Path) -> Path:
    """The temporary folder a new ``target`` is written to: ``.tmp-<name>`` next to it."""
    return target.with_name(f".tmp-{target.name}")


def old_dir_for(target: Path) -> Path:
    """Where the previous ``target`` waits during a swap: ``.old-<name>`` next to it."""
    return target.with_name(f".old-{target.name}")


def recover_dir(target: str | Path) -> None:
    """Finish or undo what an interrupted :func:`replace_dir_atomically` of ``target`` left.

    An ``.old-<name>`` with no ``target`` (stopped between the two renames) is renamed back to
    ``target``: it is the complete previous folder. Then a leftover ``.tmp-<name>`` (a write
    that never finished) and ``.old-<name>`` (a swap that finished but was not cleaned) are
    deleted.

    Raises:
        OSError: a rename or deletion failed.
    """
    target = Path(target)
    tmp, old = temp_dir_for(target), old_dir_for(target)
    if old.exists() and not target.exists():
        old.rename(target)
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)


def replace_dir_atomically(write: Callable[[Path], Any], target: str | Path) -> None:
    """Call ``write(tmp_dir)`` on a new empty folder, then swap it in as ``target``.

    Order: :func:`recover_dir` (leftovers of an earlier interrupted call); make ``.tmp-<name>``
    (parents too); ``write`` it; rename an existing ``target`` to ``.old-<name>``; rename
    ``.tmp-<name>`` to ``target``; delete ``.old-<name>``. The old folder is deleted only once
    the new one is in place, so a crash at any point leaves a complete folder (``target``, or
    ``.old-<name>`` that the next call puts back).

    Args:
        write: fills the folder it is given (a Path); its return value is ignored.
        target: the folder to create or replace.

    Raises:
        OSError: the folders cannot be written or renamed; anything ``write`` raises, unchanged.
            Either way ``target`` is as it was and ``.tmp-<name>`` is removed.
    """
    target = Path(target)
    tmp, old = temp_dir_for(target), old_dir_for(target)
    recover_dir(target)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        moved_aside = target.exists()
        if moved_aside:
            target.rename(old)
        try:
            tmp.rename(target)
        except BaseException:
            if moved_aside:
                old.rename(target)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
