"""The run directory: config, metrics log, checkpoints, model, evaluation.

Layout (see DESIGN.md)::

    runs/<name>/.deltatune-run  marker written when the run directory is created (JSON: version, time)
    runs/<name>/config.yaml     resolved config
    runs/<name>/metrics.jsonl   one JSON object per log/eval event
    runs/<name>/checkpoints/    step-<N>/ folders, newest few
    runs/<name>/model/          best (or final) model in Hugging Face format
    runs/<name>/eval.json       final metrics per split
    runs/<name>/.training       while a process trains the run: its pid, host and start time (JSON)

Every refusal is checked before anything is touched (:meth:`RunDir.check`); ``--overwrite``
replaces only a folder that is a run (:meth:`RunDir.is_run`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from deltatune.errors import DeltatuneError
from deltatune.files import write_atomically
from deltatune.version import __version__

MARKER = ".deltatune-run"
TRAINING = ".training"  # present while a process trains the run (RunDir.training)
# everything a run of any deltatune version writes at its top level
RUN_ENTRIES = frozenset(
    {MARKER, TRAINING, "config.yaml", "metrics.jsonl", "checkpoints", "model", "eval.json", "analysis.json", "report.html", "tensorboard", "tracking.json",
     "teacher_logits.safetensors",  # distillation: the teacher's outputs (deltatune.tasks.distill)
     "augmented_train.jsonl"}  # data.augmentation: the training rows with their copies (deltatune.data.augment)
)


def write_failure(target: Path, error: BaseException, remedy: str) -> DeltatuneError:
    """The one-line error for a failed write of ``target``: the cause in words, then ``remedy``.

    Args:
        error: the ``OSError`` (or a library error whose text says ``No space left``) raised.
    """
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or "No space left" in str(error):
        why = "no space left on the device; free disk space"
    elif isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = f"the folder is not writable ({error.strerror}); make {target.parent} writable"
    elif isinstance(error, OSError) and error.errno in (errno.ENOTDIR, errno.EEXIST):
        why = f"a file stands where a folder is needed ({error.strerror}: {error.filename}); move that file away"
    else:
        text = str(error).strip()
        why = f"{type(error).__name__}{': ' + text.splitlines()[0] if text else ''}; fix the cause"
    return DeltatuneError(f"cannot write {target}: {why}, {remedy}")


class RunDir:
    """Paths inside one run directory, and its creation rules.

    Args:
        root: the run directory.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.yaml")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    checkpoints = property(lambda self: self.root / "checkpoints")
    model = property(lambda self: self.root / "model")
    eval = property(lambda self: self.root / "eval.json")
    analysis = property(lambda self: self.root / "analysis.json")  # per-example results for the report
    report = property(lambda self: self.root / "report.html")
    tensorboard = property(lambda self: self.root / "tensorboard")  # train.report_to: [tensorboard]
    tracking = property(lambda self: self.root / "tracking.json")  # tracker run ids, to continue them on --resume

    def exists(self) -> bool:
        """Whether the run directory exists and holds anything (a file at the path counts)."""
        if not self.root.is_dir():
            return self.root.exists() or self.root.is_symlink()
        return any(self.root.iterdir())

    def is_run(self) -> bool:
        """Whether the folder is a deltatune run that ``--overwrite`` may replace.

        True when it holds the ``.deltatune-run`` marker (written at creation since this version),
        or, for runs made by older versions (no marker), when it holds ``config.yaml`` and at
        least one of ``metrics.jsonl``, ``checkpoints/``, ``model/`` (a folder with merely a
        config.yaml is someone's project, not a run).
        """
        if (self.root / MARKER).is_file():
            return True
        return (
            self.config.is_file()
            and (self.metrics.is_file() or self.checkpoints.is_dir() or self.model.is_dir())
            and not self.foreign_entries()
        )

    def check_loadable(self) -> None:
        """Check that the folder holds a finished run to load (torch-free, so the CLI checks it first).

        Raises:
            DeltatuneError: the folder does not exist or has no config.yaml; it has no model/
                folder (an unfinished run: resume it; or a folder that was never trained).
        """
        if self.root.is_file():
            raise DeltatuneError(f"{self.root} is a file, not a run directory; give the folder made by deltatune train (it holds config.yaml)")
        if not self.root.is_dir():
            raise DeltatuneError(f"run directory {self.root} does not exist; give the folder made by deltatune train")
        if not self.config.is_file():
            raise DeltatuneError(f"{self.root} is not a deltatune run directory (no config.yaml); give the folder made by deltatune train")
        if not self.model.is_dir():
            if self.checkpoints.is_dir() or self.metrics.is_file():
                raise DeltatuneError(
                    f"{self.root} has no model/ folder: the run did not finish (resume it with deltatune train --resume {self.root})"
                )
            raise DeltatuneError(
                f"{self.root} holds a config.yaml but no model/ and no training record: it was never trained; "
                f"train it with: deltatune train {self.config}"
            )

    def own_paths(self) -> list[Path]:
        """The run's own files and folders (config, marker, metrics, checkpoints, model, eval), which
        ``evaluate``/``predict --output`` must never replace."""
        return [self.root / name for name in sorted(RUN_ENTRIES)]

    def foreign_entries(self) -> list[str]:
        """Names in the folder that no deltatune run writes (sorted); a legacy run must have none."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.name not in RUN_ENTRIES and not p.name.startswith((".tmp-", ".old-")))

    def check(self, overwrite: bool, resume: bool) -> None:
        """Refuse what :meth:`prepare` would refuse, touching nothing.

        Raises:
            DeltatuneError: as :meth:`prepare`.
        """
        for p in (self.root, *self.root.parents):  # the nearest existing path must be a folder
            if p.exists() or p.is_symlink():
                if p == self.root and not p.is_dir():
                    raise DeltatuneError(
                        f"the run directory {self.root} is an existing file, not a folder; choose another --output-dir "
                        "(or move the file away)"
                    )
                if not p.is_dir():
                    raise DeltatuneError(
                        f"{p} is a file, so the run directory {self.root} cannot be made inside it; choose another --output-dir"
                    )
                break
        pid = self.training_pid() if self.root.is_dir() else None
        if pid is not None and not _same_launch(pid):
            raise DeltatuneError(
                f"{self.root} is being trained right now by process {pid}; wait for it to end or stop it "
                f"(Ctrl-C / kill -INT {pid}), or choose another --output-dir"
            )
        if resume:
            if not self.root.exists():
                raise DeltatuneError(f"cannot resume: run directory {self.root} does not exist; give the run directory made by deltatune train")
            if not self.config.is_file():
                raise DeltatuneError(f"cannot resume: {self.root} has no config.yaml (start a new run without --resume)")
            if self.eval.is_file():
                raise DeltatuneError(
                    f"cannot resume: {self.root} is a finished run (model in {self.model}, metrics in {self.eval}); "
                    "train longer in a new run (another --output-dir) or replace it with --overwrite"
                )
            return
        if not self.exists():
            return
        if not overwrite:
            raise DeltatuneError(
                f"run directory {self.root} already exists; use --overwrite to replace it, deltatune train --resume {self.root} to continue it, "
                "or choose another --output-dir"
            )
        if self.root.is_symlink():
            raise DeltatuneError(f"{self.root} is a symbolic link: --overwrite only replaces real run folders; choose another --output-dir")
        if self.root.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
            raise DeltatuneError(
                f"{self.root} is the current folder or one above it: --overwrite would delete it; choose another --output-dir"
            )
        if self.is_run() and self.foreign_entries():
            foreign = self.foreign_entries()
            raise DeltatuneError(
                f"--overwrite would delete files in {self.root} that no run writes: {', '.join(foreign[:5])}"
                f"{' ...' if len(foreign) > 5 else ''} (your data or predictions?); move them out of the run folder "
                "first, or choose another --output-dir"
            )
        if not self.is_run():
            foreign = self.foreign_entries()
            holds = f"; it holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, which no run writes" if foreign else ""
            raise DeltatuneError(
                f"{self.root} is not a deltatune run directory (no {MARKER} marker, and not config.yaml with "
                f"metrics.jsonl, checkpoints/ or model/ and nothing else{holds}): --overwrite only replaces runs; "
                "choose another --output-dir"
            )

    def prepare(self, overwrite: bool, resume: bool) -> None:
        """Create the directory for a new run (with its marker), or accept it for a resume.

        Every check (:meth:`check`) passes before anything is deleted or written.

        Raises:
            DeltatuneError: the path (or a folder above it) is a file; the directory exists and
                neither ``overwrite`` nor ``resume`` is set; ``overwrite`` on a folder that is
                not a run (:meth:`is_run`), a symbolic link, or the current folder or one above
                it; ``resume`` is set and there is nothing to resume (no run, or a finished one:
                its ``eval.json`` is written last); the folder cannot be written.
        """
        self.check(overwrite, resume)
        if resume:
            return
        try:
            if self.exists():
                shutil.rmtree(self.root)
            self.root.mkdir(parents=True, exist_ok=True)
            marker = {"deltatune_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (self.root / MARKER).write_text(json.dumps(marker) + "\n")
        except OSError as e:
            raise write_failure(self.root, e, "or choose another --output-dir") from e

    @contextlib.contextmanager
    def training(self, main: bool = True) -> Iterator[None]:
        """While the block runs, ``.training`` names this process (pid, host, the process's start
        time), so that other processes (the web UI, a second ``train --resume`` or ``--overwrite``)
        see the run is being trained (:meth:`training_pid`); removed when the block ends however it
        ends. A ``kill -9`` leaves the file, but a dead or reused pid does not count. Only the
        ``main`` process writes it.

        Raises:
            DeltatuneError: the file cannot be written.
        """
        if not main:
            yield
            return
        path = self.root / TRAINING
        info = {"pid": os.getpid(), "host": socket.gethostname(), "process_started": _process_start_time(os.getpid()),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            write_atomically(path, lambda f: f.write(json.dumps(info) + "\n"))
        except OSError as e:
            raise write_failure(path, e, "then start again") from e
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    def training_pid(self) -> Optional[int]:
        """The pid of the live process on this machine that is training this run now, else ``None``
        (no ``.training`` file, an unreadable one, another host's, or its process has ended or its pid
        was reused by another process)."""
        try:
            info = json.loads((self.root / TRAINING).read_text())
            pid, host, started = int(info["pid"]), info["host"], info.get("process_started")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if host != socket.gethostname():
            return None
        now = _process_start_time(pid)
        if now is None or (started is not None and abs(now - float(started)) > 1.0):
            return None
        return pid

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl.

        Raises:
            DeltatuneError: it cannot be written (full disk, read-only folder).
        """
        try:
            with self.metrics.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise write_failure(self.metrics, e, f"then continue with: deltatune train --resume {self.root}") from e

    def _records(self, on_cut_line: str) -> list[dict[str, Any]]:
        """metrics.jsonl as records; an unreadable *last* line (cut by a kill mid-write) is dropped.

        ``on_cut_line``: ``"warn"`` prints a warning when a line is dropped, ``"quiet"`` does not.

        Raises:
            DeltatuneError: a line other than the last is not a JSON object (names file and line).
        """
        if not self.metrics.is_file():
            return []
        lines = self.metrics.read_bytes().decode("utf-8", errors="replace").split("\n")
        numbered = [(i, ln) for i, ln in enumerate(lines, 1) if ln.strip()]
        try:  # every line a JSON object (the usual case): one json.loads, ~3x faster on a 200,000-step log
            records = json.loads("[" + ",".join(ln for _, ln in numbered) + "]")
            if len(records) == len(numbered) and all(type(r) is dict for r in records):
                return records
        except ValueError:
            pass  # a cut or damaged line: the line-by-line pass below names or drops it
        records = []
        for k, (i, ln) in enumerate(numbered):
            try:
                rec = json.loads(ln)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                if k == len(numbered) - 1:
                    if on_cut_line == "warn":
                        print(
                            f"warning: dropping the unreadable last line {i} of {self.metrics} (cut short when the run "
                            "stopped); it is logged again", file=sys.stderr, flush=True,
                        )
                    continue
                raise DeltatuneError(
                    f"{self.metrics}, line {i}: not a JSON object ({str(e).splitlines()[0]}); delete or fix that line"
                ) from e
            records.append(rec)
        return records

    def truncate_log(self, after_step: int) -> None:
        """Drop metrics.jsonl lines logged after ``after_step`` (they are redone on resume).

        A cut last line is dropped with a warning; the file is replaced atomically.

        Raises:
            DeltatuneError: a damaged line before the last, or the file cannot be written.
        """
        if not self.metrics.is_file():
            return
        keep = [r for r in self._records("warn") if r.get("step", 0) <= after_step]
        try:
            write_atomically(self.metrics, lambda f: f.write("".join(json.dumps(r) + "\n" for r in keep)))
        except OSError as e:
            raise write_failure(self.metrics, e, f"then continue with: deltatune train --resume {self.root}") from e

    def read_log(self) -> list[dict[str, Any]]:
        """All metrics.jsonl records (a last line still being written, or cut, is left out).

        Raises:
            DeltatuneError: a damaged line before the last.
        """
        return self._records("quiet")


def _process_start_time(pid: int) -> Optional[float]:
    """When process ``pid`` started (seconds since the epoch), or ``None`` when it does not exist."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError):
        return None


def _same_launch(pid: int) -> bool:
    """Whether ``pid`` is this process or, in a multi-process launch (``WORLD_SIZE`` > 1: torchrun,
    ``accelerate launch``, ``torch.multiprocessing.spawn``), another process of it (same parent):
    the main process of a launch writes ``.training`` while the others are still checking the folder."""
    import psutil

    if pid == os.getpid():
        return True
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return False
    try:
        return psutil.Process(pid).ppid() == os.getppid()
    except psutil.Error:
        return False
