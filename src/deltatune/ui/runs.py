"""The runs of a runs folder as the web UI sees them, and the training processes it starts (torch-free).

A run folder holds only deltatune's own files (:data:`deltatune.rundir.RUN_ENTRIES`); what
the UI keeps about a run lives beside the runs, in ``<runs-dir>/.ui/``:

- ``logs/<name>.log``: the training process's stdout and stderr;
- ``jobs/<name>.json``: ``{"pid", "started", "argv", "returncode", "stopping"}`` of the
  process the UI started (``returncode`` is filled in when it ends; ``stopping``: when the UI
  sent it SIGINT), so that a restarted UI still knows which runs are running, which it
  stopped and how the others ended.

A run's status (:meth:`Runs.run_status`), one rule, first match wins:

- ``running``: a live process trains it (the UI's own job, or any ``deltatune train`` named in
  the run's ``.training`` file: :meth:`deltatune.rundir.RunDir.training_pid`);
- ``damaged``: config.yaml, eval.json or analysis.json is unreadable or of the wrong shape
  (the reason names the file and field);
- ``finished``: ``eval.json`` (written last) exists;
- ``interrupted``: stopped with SIGINT (exit status 130, or the UI sent SIGINT and did not see
  the exit status) and a checkpoint exists: resume it with ``deltatune train --resume``. A run
  the UI did not start (no exit status known) with a checkpoint counts as interrupted too;
- ``failed``: anything else (an error, ``kill -9``, stopped before its first checkpoint); the
  reason is the last ``error:`` line of the log, or what the UI knows of the end.
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

from deltatune.config import read_yaml
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


# seconds after a Stop during which another Stop is refused (it could cut the checkpoint being saved)
RESTOP_SECONDS = 60

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
        max_trainings: how many trainings the UI runs at once (:meth:`check_capacity`).
    """

    def __init__(self, root: Path, python: str | None = None, max_trainings: int = 2):
        self.root = Path(root)
        self.python = python or sys.executable
        self.max_trainings = max_trainings
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
                is no such run (neither a deltatune run folder nor a job record).
        """
        check_name(name)
        path = self.root / name
        if path.resolve().parent != self.root.resolve():  # a symbolic link pointing elsewhere
            raise UiError(400, f"run {name!r} is a link out of the runs folder {self.root}; the UI only handles runs inside it")
        if must_exist and not self.job_path(name).is_file() and not (path.is_dir() and RunDir(path).is_run()):
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

    def trainer(self, name: str) -> tuple[int, bool] | None:
        """``(pid, own)`` of the live process training ``name``, else ``None``; ``own``: a job this
        UI (or an earlier UI on this runs folder) started; otherwise a ``deltatune train`` started
        elsewhere (the CLI), found by the run's ``.training`` file."""
        job = self.jobs.get(name)
        if job is not None and job.process.poll() is None:
            return job.process.pid, True
        record = self.job_record(name)
        pid = record.get("pid")
        if job is None and isinstance(pid, int) and record.get("returncode") is None and _alive(pid, record.get("started")):
            return pid, True
        folder = self.root / name
        other = RunDir(folder).training_pid() if folder.is_dir() else None
        if other is not None:
            return other, other == pid and record.get("returncode") is None
        return None

    def is_running(self, name: str) -> bool:
        """Whether a live process trains ``name`` (:meth:`trainer`)."""
        return self.trainer(name) is not None

    def status(self, name: str) -> tuple[str, str | None]:
        """``(status, reason)``: the status of the module docstring's rule and, for ``failed``
        and ``damaged``, a one-line reason (else ``None``)."""
        if self.is_running(name):
            return "running", None
        rd = RunDir(self.root / name)
        reason = damage(rd)
        if reason is not None:
            return "damaged", reason
        if rd.eval.is_file():
            return "finished", None
        record = self.job_record(name)
        code = record.get("returncode")
        checkpoint = rd.checkpoints.is_dir() and any(rd.checkpoints.iterdir())
        sigint = code == 130 or (code is None and bool(record.get("stopping")))
        if checkpoint and (sigint or not record):
            return "interrupted", None
        if sigint:
            return "failed", "stopped before its first checkpoint: nothing to resume; start a new run"
        error = next((ln[len("error: "):] for ln in reversed(tail(self.log_path(name), 200)) if ln.startswith("error: ")), None)
        if error:
            return "failed", error
        if isinstance(code, int) and code < 0:
            return "failed", f"the trainer was killed by signal {-code}"
        if isinstance(code, int) and code:
            return "failed", f"the trainer ended with exit status {code}; see the log"
        if record:
            return "failed", "the trainer ended while the UI was not watching (killed?) and left no eval.json"
        return "failed", "no eval.json and no checkpoint: the run ended before finishing"

    def run_status(self, name: str) -> str:
        """``running``, ``finished``, ``interrupted``, ``failed`` or ``damaged`` (see the module docstring)."""
        return self.status(name)[0]

    def summary(self, name: str) -> dict[str, Any]:
        """One row of the runs list: name, task, model, method, main metric, time, status (and its reason).
        Safe for any content of the run's files (wrong shapes give ``damaged``)."""
        rd = RunDir(self.root / name)
        status, reason = self.status(name)
        cfg = read_config(rd) if status != "damaged" else {}
        ev = read_json(rd.eval) if status != "damaged" else {}
        split = ev.get("validation") if isinstance(ev.get("validation"), dict) else ev.get("test")
        metric, value = main_metric(split if isinstance(split, dict) else {}, cfg)
        record = self.job_record(name)
        started = record.get("started") if isinstance(record.get("started"), (int, float)) else None
        if started is None and rd.root.exists():
            started = rd.root.stat().st_mtime
        seconds = _section(ev, "train").get("train_seconds")
        trainer = self.trainer(name) if status == "running" else None
        return {
            "name": name,
            "task": _text(cfg.get("task")),
            "model": _text(_section(cfg, "model").get("name_or_path")),
            "method": _text(_section(cfg, "delta").get("method", "full" if cfg else None)),
            "metric": metric,
            "value": value,
            "started": started,
            "train_seconds": seconds if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None,
            "status": status,
            "reason": reason,
            "trainer_pid": trainer[0] if trainer else None,
            "own": bool(trainer and trainer[1]),
            "stopping": bool(trainer and record.get("stopping")),
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
        summary = self.summary(name)
        damaged = summary["status"] == "damaged"
        if self.log_path(name).is_file():
            log_note = None
        elif self.job_record(name):
            log_note = "the UI's log of this run is missing (deleted?)"
        else:
            log_note = "no log here: this run was not started by this UI; its output went to the terminal that ran deltatune train"
        return {
            **summary,
            "config": {} if damaged else read_config(rd),
            "records": records,
            "eval": {} if damaged else read_json(rd.eval),
            "error": summary["reason"],
            "log_note": log_note,
            "step": step,
            "total_steps": total,
            "log": log,
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
            self.check_capacity()
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

    def own_running(self) -> list[str]:
        """Names of the runs this UI (or an earlier one on this folder) started that still train."""
        jobs = self.ui_dir / "jobs"
        names = set(self.jobs) | ({p.stem for p in jobs.glob("*.json")} if jobs.is_dir() else set())
        return sorted(n for n in names if NAME.fullmatch(n) and (t := self.trainer(n)) is not None and t[1])

    def check_capacity(self) -> None:
        """Raises :class:`UiError` 429 when :attr:`max_trainings` runs started by the UI train already."""
        running = self.own_running()
        if len(running) >= self.max_trainings:
            raise UiError(429, f"{len(running)} trainings are running ({', '.join(running)}), the most this UI starts at once "
                               f"({self.max_trainings}); wait for one to end or stop one")

    def _watch(self, job: Job) -> None:
        code = job.process.wait()
        with self.lock:
            record = self.job_record(job.name)
            if record:  # not deleted meanwhile
                record["returncode"] = code
                record["ended"] = time.time()
                self._write_job(job.name, record)

    def _write_job(self, name: str, record: dict[str, Any]) -> None:
        write_atomically(self.job_path(name), lambda f: f.write(json.dumps(record) + "\n"))

    def stop(self, name: str) -> None:
        """Send SIGINT, once, to the training process the UI started: the trainer saves a
        checkpoint and exits (130). The job record remembers it (``stopping``), so a second stop
        (which would interrupt the checkpoint being saved) is refused, by this UI and a restarted one,
        for :data:`RESTOP_SECONDS`; after that a process still running probably never saw the first
        signal (it arrived while Python was still importing) and may be stopped again.

        Raises:
            UiError: 404 for an unknown run; 409 when it is not running, is already stopping, or
                is trained by a process the UI did not start (stop that where it runs).
        """
        self.folder(name)
        with self.lock:
            trainer = self.trainer(name)
            if trainer is None:
                raise UiError(409, f"run {name!r} is not running")
            pid, own = trainer
            if not own:
                raise UiError(409, f"run {name!r} is trained by process {pid}, which this UI did not start; stop it where it runs "
                                   f"(Ctrl-C in its terminal, or kill -INT {pid})")
            record = self.job_record(name)
            since = time.time() - float(record.get("stopping") or 0)
            if record.get("stopping") and since < RESTOP_SECONDS:
                raise UiError(409, f"run {name!r} is already stopping (saving a checkpoint); wait for it to end "
                                   f"(if it still runs {RESTOP_SECONDS} s after the first stop, stop it again)")
            record["stopping"] = time.time()
            self._write_job(name, record)
            os.kill(pid, signal.SIGINT)

    def delete(self, name: str) -> None:
        """Delete run ``name``: its folder (only a deltatune run inside the runs folder), log and job record.

        Raises:
            UiError: 400 for a bad name or a link out of the runs folder; 404 for no such run;
                409 while it runs, or when the folder is not a deltatune run.
        """
        path = self.folder(name, must_exist=False)
        if path.is_symlink():
            raise UiError(400, f"{path} is a symbolic link; the UI deletes only real run folders")
        if not path.exists() and not self.job_path(name).is_file():
            raise UiError(404, f"no run {name!r} in {self.root}")
        trainer = self.trainer(name)
        if trainer is not None:
            who = "" if trainer[1] else f" (by process {trainer[0]}, not started by this UI)"
            raise UiError(409, f"run {name!r} is running (being trained{who}); stop it first")
        if path.is_symlink():
            raise UiError(400, f"{path} is a symbolic link; the UI deletes only real run folders")
        if path.exists() and not RunDir(path).is_run():
            raise UiError(409, f"{path} is not a deltatune run folder; the UI deletes only runs")
        with self.lock:
            if self.is_running(name):  # started meanwhile (a train --resume)
                raise UiError(409, f"run {name!r} is running (being trained); stop it first")
            if path.exists():
                shutil.rmtree(path)
            for p in (self.log_path(name), self.job_path(name)):
                p.unlink(missing_ok=True)
            self.jobs.pop(name, None)

    def stop_watching(self) -> None:
        """Forget the processes (they keep running in their own sessions)."""
        self.jobs.clear()


def _alive(pid: int, started: Any) -> bool:
    """Whether process ``pid`` lives and is the one started at ``started`` (seconds since the
    epoch, the job record's; pids are reused: a process started more than 10 s away is another)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        created = proc.create_time()
    except (psutil.Error, ValueError):
        return False
    return not isinstance(started, (int, float)) or abs(created - float(started)) <= 10.0


def _section(d: Any, key: str) -> dict[str, Any]:
    """``d[key]`` when ``d`` is a dict and that is a dict, else ``{}`` (type-safe reading)."""
    value = d.get(key) if isinstance(d, dict) else None
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    """``value`` if it is a string, else ``None``."""
    return value if isinstance(value, str) else None


CONFIG_SECTIONS = ("model", "data", "delta", "train", "eval")


def damage(rd: RunDir) -> str | None:
    """Why the run's files cannot be shown (one line naming the file and field), or ``None``:
    config.yaml not a mapping of the config's shape (``task`` a text; model, data, delta,
    train, eval mappings), eval.json not an object of splits (each an object), analysis.json
    not an object. Missing files are no damage (a run being made)."""
    if rd.config.is_file():
        try:
            cfg = read_yaml(rd.config)  # as training reads it
        except (DeltatuneError, OSError) as e:
            return f"{rd.config.name}: {str(e).splitlines()[0] if str(e) else 'unreadable'}; fix or delete the run"
        if "task" in cfg and not isinstance(cfg["task"], str):
            return f"{rd.config.name}: task is {_short(cfg['task'])}, not a task name"
        for key in CONFIG_SECTIONS:
            if key in cfg and not isinstance(cfg[key], dict):
                return f"{rd.config.name}: {key} is {_short(cfg[key])}, not a mapping of settings"
        for key, sub in (("model", "name_or_path"), ("delta", "method"), ("eval", "metric_for_best_model")):
            value = cfg.get(key, {}).get(sub)
            if value is not None and not isinstance(value, str):
                return f"{rd.config.name}: {key}.{sub} is {_short(value)}, not a text"
    for path, splits in ((rd.eval, True), (rd.analysis, False)):
        if not path.is_file():
            continue
        try:
            value = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return f"{path.name} is not readable JSON; fix or delete it"
        if not isinstance(value, dict):
            return f"{path.name} is not a JSON object"
        if splits:
            for split, metrics in value.items():
                if not isinstance(metrics, dict):
                    return f"{path.name}: {split} is {_short(metrics)}, not an object of metrics"
    return None


def _short(value: Any) -> str:
    """A value in a message: its repr, at most 40 characters (escapes control characters and surrogates)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, or ``{}`` when missing or unreadable (a file being written)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_config(rd: RunDir) -> dict[str, Any]:
    """The run's config.yaml as a dict, read as training reads it (:func:`deltatune.config.read_yaml`,
    YAML 1.2); ``{}`` when missing or unreadable."""
    try:
        return read_yaml(rd.config)
    except (DeltatuneError, OSError):
        return {}


def main_metric(metrics: dict[str, Any], cfg: dict[str, Any]) -> tuple[str | None, float | None]:
    """(name, value) of a split's main metric: ``eval.metric_for_best_model`` when set and
    present, else the first of :data:`MAIN_METRICS` present; ``(None, None)`` when none."""
    if not isinstance(metrics, dict):
        return None, None
    chosen = _section(cfg, "eval").get("metric_for_best_model")
    for name in ([chosen] if isinstance(chosen, str) and chosen else []) + list(MAIN_METRICS):
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
    ``N steps`` of the summary line (in the log's ``first`` lines), else from metrics.jsonl's start record."""
    step = max((r["step"] for r in records if isinstance(r.get("step"), int) and not isinstance(r.get("step"), bool)), default=0)
    total = next((int(m.group(1)) for m in map(STEPS.search, list(first) + list(log)) if m), None)
    if total is None:
        total = next((r["total_steps"] for r in records if r.get("event") == "start" and isinstance(r.get("total_steps"), int)), None)
    for line in reversed(log):
        m = PROGRESS.search(line)
        if m:
            return max(step, int(m.group(1))), int(m.group(2))
    return step, total
