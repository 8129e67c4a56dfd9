"""The runs of a runs folder as the web UI sees them, and the training processes it starts (torch-free).

A run folder holds only deltatune's own files (:data:`deltatune.rundir.RUN_ENTRIES`); what
the UI keeps about a run lives beside the runs, in ``<runs-dir>/.ui/``:

- ``logs/<name>.log``: the training process's stdout and stderr;
- ``jobs/<name>.json``: ``{"pid", "started", "argv", "returncode"}`` of the process the UI
  started (``returncode`` is filled in when it ends), so that a restarted UI still knows
  which runs are running and how the others ended.

A run's status (:func:`run_status`): ``running`` (its process is alive), ``finished``
(``eval.json``, written last, exists), ``interrupted`` (stopped with SIGINT, exit status
130, or checkpoints left without an ``eval.json``: resume it with ``deltatune train
--resume``), ``failed`` (any other end).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deltatune.errors import DeltatuneError
from deltatune.files import write_atomically
from deltatune.rundir import RunDir

UI_DIR = ".ui"
# a run name: one folder name of letters, digits, '.', '_' and '-' (no separators, no "..")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# metrics preferred as a run's "main metric" when the config names none (first found wins)
MAIN_METRICS = ("accuracy", "f1", "exact_match", "rougeL", "rouge_l", "rougeLsum", "bleu", "chrf", "perplexity", "loss")
# the first line deltatune train prints: "... | 7 steps (batch 32 x accumulation 1) | ..."
STEPS = re.compile(r"\|\s*(\d+) steps \(batch")
# a progress line (plain or bar): "step 3/7 | loss 0.69 ..."
PROGRESS = re.compile(r"step (\d+)/(\d+)")


class UiError(Exception):
    """A request the UI refuses: an HTTP 4xx ``status`` with a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def check_name(name: str) -> str:
    """``name`` if it is a valid run name (one folder name: letters, digits, ``._-``).

    Raises:
        UiError: 400 for an empty name, a path separator, ``..`` or another character.
    """
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise UiError(400, f"run name {name!r}: use 1-100 letters, digits, '.', '_' or '-' (no '/', no '..', not starting with '.')")
    return name


@dataclass
class Job:
    """A training process started by this UI process."""

    name: str
    process: subprocess.Popen
    log: Path


class Runs:
    """The runs in ``root`` and the training processes started over them.

    Args:
        root: the runs folder (made when the first run starts).
        python: the interpreter that runs ``-m deltatune train`` (default: this one).
    """

    def __init__(self, root: Path, python: str | None = None):
        self.root = Path(root)
        self.python = python or sys.executable
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()

    # ---- paths ---------------------------------------------------------------------------
    @property
    def ui_dir(self) -> Path:
        """``<runs-dir>/.ui``: the UI's own files (logs, job records, comparisons, uploads)."""
        return self.root / UI_DIR

    def log_path(self, name: str) -> Path:
        """The training log of run ``name`` (outside the run folder)."""
        return self.ui_dir / "logs" / f"{name}.log"

    def job_path(self, name: str) -> Path:
        """The job record of run ``name``."""
        return self.ui_dir / "jobs" / f"{name}.json"

    def folder(self, name: str, must_exist: bool = True) -> Path:
        """The folder of run ``name``, checked to lie directly inside the runs folder.

        Raises:
            UiError: 400 for a bad name (:func:`check_name`); 404 when ``must_exist`` and there
                is no such run (neither a folder nor a job record).
        """
        check_name(name)
        path = self.root / name
        if path.resolve().parent != self.root.resolve():  # a symbolic link pointing elsewhere
            raise UiError(400, f"run {name!r} is a link out of the runs folder {self.root}; the UI only handles runs inside it")
        if must_exist and not path.is_dir() and not self.job_path(name).is_file():
            raise UiError(404, f"no run {name!r} in {self.root}")
        return path

    # ---- reading -------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Names of the runs (deltatune run folders and runs the UI started), newest first."""
        found: dict[str, float] = {}
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.is_dir() and NAME.fullmatch(p.name) and RunDir(p).is_run():
                    found[p.name] = p.stat().st_mtime
        jobs = self.ui_dir / "jobs"
        if jobs.is_dir():
            for p in jobs.glob("*.json"):
                if NAME.fullmatch(p.stem) and p.stem not in found and not (self.root / p.stem).exists():
                    found[p.stem] = p.stat().st_mtime  # started, no folder yet (or failed before making it)
        return sorted(found, key=lambda n: -found[n])

    def job_record(self, name: str) -> dict[str, Any]:
        """The job record of ``name`` (``{}`` when the UI did not start it)."""
        try:
            return json.loads(self.job_path(name).read_text())
        except (OSError, ValueError):
            return {}

    def is_running(self, name: str) -> bool:
        """Whether the training process of ``name`` is alive (started by this UI or an earlier one)."""
        job = self.jobs.get(name)
        if job is not None:
            return job.process.poll() is None
        record = self.job_record(name)
        pid = record.get("pid")
        if not isinstance(pid, int) or record.get("returncode") is not None:
            return False
        return _alive(pid, name)

    def run_status(self, name: str) -> str:
        """``running``, ``finished``, ``interrupted`` or ``failed`` (see the module docstring)."""
        if self.is_running(name):
            return "running"
        rd = RunDir(self.root / name)
        if rd.eval.is_file():
            return "finished"
        code = self.job_record(name).get("returncode")
        if code == 130 or (code is None and rd.checkpoints.is_dir() and any(rd.checkpoints.iterdir())):
            return "interrupted"
        return "failed"

    def summary(self, name: str) -> dict[str, Any]:
        """One row of the runs list: name, task, model, method, main metric, time, status."""
        rd = RunDir(self.root / name)
        cfg = read_config(rd)
        ev = read_json(rd.eval)
        metric, value = main_metric(ev.get("validation") or ev.get("test") or {}, cfg)
        record = self.job_record(name)
        started = record.get("started") or (rd.root.stat().st_mtime if rd.root.exists() else None)
        return {
            "name": name,
            "task": cfg.get("task"),
            "model": (cfg.get("model") or {}).get("name_or_path"),
            "method": (cfg.get("delta") or {}).get("method", "full" if cfg else None),
            "metric": metric,
            "value": value,
            "started": started,
            "train_seconds": (ev.get("train") or {}).get("train_seconds"),
            "status": self.run_status(name),
        }

    def detail(self, name: str, log_lines: int = 40) -> dict[str, Any]:
        """What the run page shows: the summary, config, metrics.jsonl records, eval.json,
        progress (step, total steps) and the last ``log_lines`` lines of the log."""
        self.folder(name)
        rd = RunDir(self.root / name)
        try:
            records = rd.read_log()
        except DeltatuneError:
            records = []
        log = tail(self.log_path(name), max(log_lines, 1))
        step, total = progress(log, records, head(self.log_path(name)))
        log = log[-log_lines:] if log_lines else []
        error = next((ln[len("error: "):] for ln in reversed(log) if ln.startswith("error: ")), None)
        return {
            **self.summary(name),
            "config": read_config(rd),
            "records": records,
            "eval": read_json(rd.eval),
            "step": step,
            "total_steps": total,
            "log": log,
            "error": error,
            "has_model": rd.model.is_dir(),
            "has_report": rd.report.is_file(),
        }

    # ---- changing ------------------------------------------------------------------------
    def start(self, name: str, overrides: list[str], env: dict[str, str] | None = None) -> Job:
        """Start ``python -m deltatune train OVERRIDES output_dir=<runs-dir>/<name>`` in the background.

        The process gets its own session (a Ctrl-C of the UI does not stop it); its output goes
        to :meth:`log_path`; a watcher thread writes its exit status to the job record.

        Raises:
            UiError: 400 for a bad name; 409 when a run (or any file) of that name exists, or a
                run of that name is being started.
        """
        with self.lock:
            check_name(name)
            target = self.root / name
            if target.exists() or target.is_symlink() or name in self.jobs or self.job_path(name).exists():
                raise UiError(409, f"a run named {name!r} already exists in {self.root}; choose another name")
            log = self.log_path(name)
            log.parent.mkdir(parents=True, exist_ok=True)
            argv = [self.python, "-m", "deltatune", "train", *overrides, f"output_dir={json.dumps(str(target))}"]
            with log.open("w") as f:
                process = subprocess.Popen(
                    argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                )
            job = Job(name, process, log)
            self.jobs[name] = job
            self._write_job(name, {"pid": process.pid, "started": time.time(), "argv": argv[1:], "returncode": None})
        threading.Thread(target=self._watch, args=(job,), name=f"ui-watch-{name}", daemon=True).start()
        return job

    def _watch(self, job: Job) -> None:
        code = job.process.wait()
        record = self.job_record(job.name)
        record["returncode"] = code
        record["ended"] = time.time()
        self._write_job(job.name, record)

    def _write_job(self, name: str, record: dict[str, Any]) -> None:
        write_atomically(self.job_path(name), lambda f: f.write(json.dumps(record) + "\n"))

    def stop(self, name: str) -> None:
        """Send SIGINT to the run's training process: the trainer saves a checkpoint and exits (130).

        Raises:
            UiError: 404 for an unknown run; 409 when it is not running.
        """
        self.folder(name)
        if not self.is_running(name):
            raise UiError(409, f"run {name!r} is not running")
        job = self.jobs.get(name)
        pid = job.process.pid if job is not None else self.job_record(name)["pid"]
        os.kill(pid, signal.SIGINT)

    def delete(self, name: str) -> None:
        """Delete run ``name``: its folder (only a deltatune run inside the runs folder), log and job record.

        Raises:
            UiError: 400 for a bad name or a link out of the runs folder; 404 for no such run;
                409 while it runs, or when the folder is not a deltatune run.
        """
        path = self.folder(name)
        if self.is_running(name):
            raise UiError(409, f"run {name!r} is running; stop it first")
        if path.is_symlink():
            raise UiError(400, f"{path} is a symbolic link; the UI deletes only real run folders")
        if path.exists() and not RunDir(path).is_run():
            raise UiError(409, f"{path} is not a deltatune run folder; the UI deletes only runs")
        with self.lock:
            if path.exists():
                shutil.rmtree(path)
            for p in (self.log_path(name), self.job_path(name)):
                p.unlink(missing_ok=True)
            self.jobs.pop(name, None)

    def stop_watching(self) -> None:
        """Forget the processes (they keep running in their own sessions)."""
        self.jobs.clear()


def _alive(pid: int, name: str) -> bool:
    """Whether process ``pid`` lives and is a deltatune training of ``name`` (pids are reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return True  # no /proc (macOS): trust the pid
    return "deltatune" in cmdline and name in cmdline


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, or ``{}`` when missing or unreadable (a file being written)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_config(rd: RunDir) -> dict[str, Any]:
    """The run's config.yaml as a dict (``{}`` when missing or unreadable)."""
    import yaml

    try:
        value = yaml.safe_load(rd.config.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


def main_metric(metrics: dict[str, Any], cfg: dict[str, Any]) -> tuple[str | None, float | None]:
    """(name, value) of a split's main metric: ``eval.metric_for_best_model`` when set and
    present, else the first of :data:`MAIN_METRICS` present; ``(None, None)`` when none."""
    chosen = (cfg.get("eval") or {}).get("metric_for_best_model")
    for name in ([chosen] if chosen else []) + list(MAIN_METRICS):
        value = metrics.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return name, float(value)
    return None, None


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a log (a progress bar's ``\\r`` updates count as lines)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    out = [ln.rstrip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]
    return out[-lines:]


def head(path: Path, size: int = 8192) -> list[str]:
    """The first lines of a log (its first ``size`` bytes)."""
    try:
        with path.open("rb") as f:
            text = f.read(size).decode("utf-8", errors="replace")
    except OSError:
        return []
    return [ln.rstrip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]


def progress(log: list[str], records: list[dict[str, Any]], first: list[str] = ()) -> tuple[int, int | None]:
    """(step, total steps): the later of the last ``step N/M`` of the log's last lines ``log``
    and the largest step of the metrics records; the total from that line, else from the
    ``N steps`` of the summary line (in the log's ``first`` lines)."""
    step = max((r["step"] for r in records if isinstance(r.get("step"), int)), default=0)
    total = next((int(m.group(1)) for m in map(STEPS.search, list(first) + list(log)) if m), None)
    for line in reversed(log):
        m = PROGRESS.search(line)
        if m:
            return max(step, int(m.group(1))), int(m.group(2))
    return step, total
