"""Atomic writes: a file or a folder is replaced whole, or not at all (the one place this is written).

- :func:`write_atomically` writes a text file to a temporary file next to it, then renames it
  over the target (``os.replace``): a reader sees the old file or the new one, never half of one.
- :func:`replace_dir_atomically` fills a temporary folder ``.tmp-<name>`` next to the target,
  then swaps it in with two renames (old target aside as ``.old-<name>``, new one in), and only
  then deletes the old folder: at every moment the target name holds a complete folder (or, in
  the instant between the two renames, the complete old one waits under ``.old-<name>``, and
  the next call puts it back).

Files and folders they make get the permission bits of a file the user makes (``0o666``, or
``0o777`` for folders, minus the umask), also where a writer created them private (``tempfile``,
and ``safetensors`` >= 0.8, make files ``0600``).

A Ctrl-C (SIGINT) that arrives during one of these writes is held until the write is complete
(:func:`interrupts_deferred`): an interrupted trainer then saves its checkpoint and stops, instead
of a half-written ``torch.save`` zip raising its own error over the interrupt. A second Ctrl-C
abandons the write at once (the target is left as it was).

Both leave the previous target untouched and no temporary file or folder behind when the
writer (or the write itself) fails; the exception is re-raised unchanged for the caller to
explain (see :func:`deltatune.rundir.write_failure`).

Torch-free, and below every other layer (it imports nothing from deltatune).
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator


class InterruptedAgain(KeyboardInterrupt):
    """A second Ctrl-C inside :func:`interrupts_deferred`: the write or step in progress was abandoned."""


@contextmanager
def interrupts_deferred(what: str) -> Iterator[None]:
    """Hold a SIGINT (Ctrl-C, the web UI's Stop) that arrives inside the block until it ends.

    The first SIGINT prints one line to stderr (``interrupt: finishing <what> before stopping``)
    and is raised as ``KeyboardInterrupt`` when the block has completed; a second one raises
    ``KeyboardInterrupt`` at once, inside the block (the atomic writers then remove their
    temporary file or folder). Python's own handler is put back either way.

    Only in the main thread and only while Python's default SIGINT handler is installed
    (another handler, such as a server's, or a nested block, is left alone: the block runs
    unchanged).

    Raises:
        KeyboardInterrupt: after the block, when a SIGINT arrived during it; during it, on a second
            one (:class:`InterruptedAgain`, a KeyboardInterrupt).
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if received:
            raise InterruptedAgain
        received.append(signum)
        print(f"interrupt: finishing {what} before stopping (interrupt again to abandon it)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


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
        KeyboardInterrupt: after the file is in place, for a Ctrl-C during the write (a second
            one abandons it); see :func:`interrupts_deferred`.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    with interrupts_deferred(f"writing {out}"):
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
    """The process's umask (new files get ``0o666`` minus it), read without changing it.

    Linux shows it in ``/proc/self/status``; elsewhere it is read by setting it and setting it
    back, during which a file another thread creates would get no umask at all.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def give_umask_modes(folder: str | Path) -> None:
    """Give everything under ``folder`` the permission bits of what the user makes: files
    ``0o666`` (``0o777`` if executable), folders ``0o777``, minus the umask.

    Writers that make their files private (``tempfile.mkstemp``; ``safetensors.save_file`` since
    0.8 writes ``0600``) would otherwise leave exported weights unreadable to the user's group.
    Links are left alone.

    Raises:
        OSError: a mode cannot be changed.
    """
    keep = ~_umask()
    for root, dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                os.chmod(path, (0o777 if st.st_mode & 0o111 else 0o666) & keep)
        for name in dirs:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o777 & keep)


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
    (parents too); ``write`` it; give what it wrote the user's permission bits
    (:func:`give_umask_modes`); rename an existing ``target`` to ``.old-<name>``; rename
    ``.tmp-<name>`` to ``target``; delete ``.old-<name>``. The old folder is deleted only once
    the new one is in place, so a crash at any point leaves a complete folder (``target``, or
    ``.old-<name>`` that the next call puts back).

    Args:
        write: fills the folder it is given (a Path); its return value is ignored.
        target: the folder to create or replace.

    Raises:
        OSError: the folders cannot be written or renamed; anything ``write`` raises, unchanged.
            Either way ``target`` is as it was and ``.tmp-<name>`` is removed.
        KeyboardInterrupt: after the folder is in place, for a Ctrl-C during the write (a second
            one abandons it, ``target`` as it was); see :func:`interrupts_deferred`.
    """
    target = Path(target)
    tmp, old = temp_dir_for(target), old_dir_for(target)
    with interrupts_deferred(f"writing {target}"):
        recover_dir(target)
        tmp.mkdir(parents=True)
        try:
            write(tmp)
            give_umask_modes(tmp)
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
