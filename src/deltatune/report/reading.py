"""Read a run folder (or a ``deltatune auto`` folder) into plain dataclasses, from its files only.

Torch-free; every optional file may be missing (older runs, a run still training, an
interrupted one, a run without a validation split): what is missing is ``None`` or empty.

- :func:`read_run`: ``config.yaml``, ``metrics.jsonl``, ``eval.json``, ``analysis.json`` ->
  :class:`RunData`.
- :func:`read_auto`: ``auto_report.json``, ``leaderboard.json`` and the best trial ->
  :class:`AutoData`.
- :func:`folder_kind`: ``"run"``, ``"auto"``, or a :class:`DeltatuneError` naming the path.

Every file goes through :mod:`deltatune.report.checked`: values of the wrong type are left out
with a note (``RunData.notes``, shown in the report); a JSON file that is not an object is a
``damaged <file>`` error.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from deltatune.config import build_config, read_yaml
from deltatune.errors import DeltatuneError
from deltatune.report.checked import (
    Checker,
    clean_analysis,
    clean_auto_report,
    clean_config,
    clean_eval,
    clean_leaderboard,
    clean_records,
    is_finite,
)
from deltatune.rundir import RunDir

# runs made before metrics.jsonl's start record: the metric a task selects the best checkpoint by
# when eval.metric_for_best_model is unset (each task class's ``default_metric``; tasks live in a
# higher layer; an unknown task falls back to the loss)
TASK_DEFAULT_METRICS = {
    "text-classification": "accuracy",
    "text-regression": "mse",  # lower is better (not in _GREATER_IS_BETTER)
    "token-classification": "f1",
    "question-answering": "f1",
    "extractive-summarization": "rougeL",
}
_GREATER_IS_BETTER = {"accuracy", "f1", "f1_micro", "f1_macro", "subset_accuracy", "exact_match", "rougeL", "rouge1",
                      "rouge2", "rougeLsum", "bleu", "chrf", "precision", "recall", "pearson", "spearman"}

WHAT_TO_GIVE = "give a run folder made by deltatune train (it holds config.yaml) or a deltatune auto folder (it holds auto_report.json)"


def folder_kind(path: Path) -> str:
    """``"auto"`` for a ``deltatune auto`` folder (it holds ``auto_report.json``), ``"run"`` for a run folder.

    A run folder holds the ``.deltatune-run`` marker, or (older runs) ``config.yaml`` with
    ``metrics.jsonl`` or ``eval.json`` beside it.

    Raises:
        DeltatuneError: the path does not exist, is a file, or is neither kind of folder.
    """
    p = Path(path)
    if not p.exists():
        raise DeltatuneError(f"{p} does not exist; {WHAT_TO_GIVE}")
    if not p.is_dir():
        raise DeltatuneError(f"{p} is a file, not a run folder; {WHAT_TO_GIVE}")
    if (p / "auto_report.json").is_file():
        return "auto"
    rd = RunDir(p)
    if rd.is_run() or (rd.config.is_file() and (rd.metrics.is_file() or rd.eval.is_file())):
        return "run"
    if (p / "trials").is_dir() and (p / "optuna.db").is_file():
        raise DeltatuneError(
            f"{p} is a deltatune auto folder whose search has not finished (no auto_report.json yet); "
            f"report one of its trials ({p / 'trials'}/trial-NNN), or wait for the search to end"
        )
    raise DeltatuneError(f"{p} is not a deltatune run folder (no .deltatune-run marker or config.yaml); {WHAT_TO_GIVE}")


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` when it is missing; a damaged file is an error naming it."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DeltatuneError(f"{path} is not valid JSON ({str(e).splitlines()[0]}); delete it or rerun the command that writes it") from None


_finite = is_finite
_CHECKPOINT = re.compile(r"^step-(\d+)$")
UNKNOWN = "unknown"


@dataclass
class RunData:
    """What a run folder holds, read once.

    Attributes:
        root: the run folder.
        config: the resolved config as nested dicts (``config.yaml`` completed with the defaults
            of this version when it validates; as written otherwise; ``{}`` when missing or empty,
            and then :attr:`config_known` is false: the settings are shown as unknown, not as defaults).
        records: ``metrics.jsonl`` records in file order (train: ``step, epoch, loss,
            learning_rate, examples_per_second``; eval: ``step, epoch, eval_loss, eval_<metric>``;
            events: ``step, event, best_step``).
        eval: ``eval.json`` (``None`` until the run finished).
        analysis: ``analysis.json`` (``None`` when absent).
        notes: what was left out of damaged files, or is unknown (``"damaged eval.json: ..."``).
    """

    root: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    eval: Optional[dict[str, Any]]
    analysis: Optional[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    @property
    def config_known(self) -> bool:
        """Whether config.yaml held settings (it is not missing or empty)."""
        return bool(self.config)

    @property
    def name(self) -> str:
        """The folder's name."""
        return self.root.resolve().name or str(self.root)

    def setting(self, dotted: str, default: Any = None) -> Any:
        """A config value by dotted key (``"train.learning_rate"``), ``default`` when unset."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return default if node is None else node

    @property
    def task(self) -> str:
        """The task name (``"unknown"`` when the config is missing or does not say)."""
        return str(self.setting("task", UNKNOWN))

    @property
    def train_records(self) -> list[dict[str, Any]]:
        """Training records (those with a finite ``loss``), in step order."""
        return sorted((r for r in self.records if _finite(r.get("loss")) and "event" not in r), key=lambda r: r.get("step", 0))

    @property
    def eval_records(self) -> list[dict[str, Any]]:
        """Evaluation records (any ``eval_*`` key), in step order."""
        return sorted((r for r in self.records if any(k.startswith("eval_") for k in r)), key=lambda r: r.get("step", 0))

    @property
    def train_summary(self) -> dict[str, Any]:
        """eval.json's ``train`` section (``{}`` until the run finished)."""
        return (self.eval or {}).get("train") or {}

    @property
    def start_record(self) -> dict[str, Any]:
        """metrics.jsonl's ``{"event": "start", ...}`` line (the trainer's metric and direction, the total
        steps); ``{}`` for runs made before it was written."""
        return next((r for r in self.records if r.get("event") == "start"), {})

    @property
    def metric(self) -> str:
        """The validation metric that selects the best step: ``eval.metric_for_best_model``, else the
        task's default (``f1_micro`` for multi-label classification, whose records have no accuracy)."""
        start = self.start_record
        if isinstance(start.get("metric_for_best_model"), str):
            return start["metric_for_best_model"]
        chosen = self.setting("eval.metric_for_best_model")
        if chosen:
            return str(chosen)
        if not self.config_known:  # guess from what was logged (see metric_known)
            return next((k[len("eval_"):] for r in self.eval_records for k, v in r.items()
                         if k.startswith("eval_") and k != "eval_loss" and _finite(v)), "loss")
        default = TASK_DEFAULT_METRICS.get(self.task, "loss")
        if default == "accuracy" and self.eval_records and not any("eval_accuracy" in r for r in self.eval_records):
            return "f1_micro"
        return default

    @property
    def metric_known(self) -> bool:
        """Whether :attr:`metric` is known (metrics.jsonl's start record or config.yaml says), not guessed."""
        return isinstance(self.start_record.get("metric_for_best_model"), str) or self.config_known

    @property
    def total_steps(self) -> Optional[int]:
        """The steps the run was to train (metrics.jsonl's start record), ``None`` for older runs."""
        n = self.start_record.get("total_steps")
        return n if isinstance(n, int) else None

    @property
    def checkpoint_steps(self) -> list[int]:
        """The steps of the checkpoints in ``checkpoints/`` (``step-N`` folders), ascending."""
        folder = RunDir(self.root).checkpoints
        try:
            names = os.listdir(folder)
        except OSError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := _CHECKPOINT.match(n)) and (folder / n).is_dir())

    @property
    def greater_is_better(self) -> bool:
        """Whether a higher :attr:`metric` is better (``eval.greater_is_better``, else by the metric's name)."""
        g = self.start_record.get("greater_is_better", self.setting("eval.greater_is_better"))
        if isinstance(g, bool):
            return g
        return self.metric in _GREATER_IS_BETTER

    @property
    def last_step(self) -> Optional[int]:
        """The last optimizer step: eval.json's ``global_step``, else the highest step logged or
        checkpointed (an interrupted run saves a checkpoint at the step it stopped, maybe after its
        last logged step)."""
        if "global_step" in self.train_summary:
            return int(self.train_summary["global_step"])
        steps = [r["step"] for r in self.records if isinstance(r.get("step"), int) and "event" not in r]
        steps += self.checkpoint_steps
        return max(steps) if steps else None

    @property
    def best_step(self) -> Optional[int]:
        """The step whose weights were kept: eval.json's ``best_step``, else the early-stopping event's,
        else the evaluation with the best :attr:`metric` so far (``None`` without evaluations)."""
        if self.train_summary.get("best_step") is not None:
            return int(self.train_summary["best_step"])
        events = [r for r in self.records if r.get("event") == "early_stopping" and r.get("best_step") is not None]
        if events:
            return int(events[-1]["best_step"])
        key = f"eval_{self.metric}"
        scored = [r for r in self.eval_records if _finite(r.get(key))]
        if not scored:
            return None
        pick = max if self.greater_is_better else min
        return int(pick(scored, key=lambda r: r[key])["step"])

    @property
    def status(self) -> str:
        """``"finished"``, ``"early-stopped"``, ``"training"`` (a live process trains it now: its
        ``.training`` file), ``"interrupted"`` (a run that logged its start record and stopped
        without eval.json and without a live trainer), ``"unfinished"`` (an older run without the
        start record: still training, or interrupted) or ``"not started"``."""
        if self.eval is not None:
            return "early-stopped" if self.train_summary.get("early_stopped") else "finished"
        if not (self.records or self.checkpoint_steps):
            return "not started"
        pid = RunDir(self.root).training_pid()
        if pid is not None and pid != os.getpid():  # the trainer itself writes the report of its interrupt
            return "training"
        return "interrupted" if self.start_record or pid == os.getpid() else "unfinished"


def _config(root: Path, notes: list[str]) -> dict[str, Any]:
    """config.yaml completed with this version's defaults (as written when it does not validate);
    ``{}`` and a note when it is missing or empty (the settings are unknown: no defaults shown)."""
    path = RunDir(root).config
    if not path.is_file():
        notes.append("config.yaml is missing: the run's settings are unknown")
        return {}
    raw = clean_config(read_yaml(path))
    if not raw:
        notes.append("config.yaml is empty: the run's settings are unknown")
        return {}
    try:
        return build_config(raw).to_dict()
    except (DeltatuneError, ValueError, TypeError) as e:  # an older or newer version's keys: show what is there
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        notes.append(f"config.yaml does not validate ({why}): its settings are shown as written, without defaults")
        return raw


def read_run(path: str | Path) -> RunData:
    """Read the run folder ``path`` (see :class:`RunData`).

    Values of the wrong type or shape are left out, each with a note in ``RunData.notes``
    (:mod:`deltatune.report.checked`).

    Raises:
        DeltatuneError: ``path`` is not a run folder (:func:`folder_kind`); config.yaml is not
            YAML or not a mapping; a line of metrics.jsonl other than the last is damaged;
            eval.json or analysis.json is not JSON, or is JSON but not an object (``damaged ...``).
    """
    root = Path(path)
    if folder_kind(root) != "run":
        raise DeltatuneError(f"{root} is a deltatune auto folder, not a run; give it alone (or one of its trials/trial-NNN folders)")
    rd = RunDir(root)
    notes: list[str] = []
    ev = clean_eval(_read_json(rd.eval), rd.eval, notes)
    an = clean_analysis(_read_json(rd.analysis), rd.analysis, notes)
    config = _config(root, notes)
    return RunData(root=root, config=config, records=clean_records(rd.read_log(), notes), eval=ev, analysis=an, notes=notes)


@dataclass
class AutoData:
    """A ``deltatune auto`` folder.

    Attributes:
        root: the folder.
        report: ``auto_report.json`` (task, metric, direction, best, importances, leaderboard, ...).
        leaderboard: the leaderboard rows (``leaderboard.json``, else the report's).
        best: the best trial's run (``None`` when no trial completed or its folder is gone).
        notes: what was left out of damaged files (see :class:`RunData`).
    """

    root: Path
    report: dict[str, Any]
    leaderboard: list[dict[str, Any]] = field(default_factory=list)
    best: Optional[RunData] = None
    notes: list[str] = field(default_factory=list)

    @property
    def best_path(self) -> Optional[Path]:
        """The best trial's folder: ``trials/<name of auto_report.json's best.path>`` inside this
        folder (it may have been moved or copied), else that path as written, else ``<auto>/best``."""
        best = self.report.get("best") or {}
        for candidate in (best.get("path"), best.get("trial") is not None and f"trials/trial-{int(best['trial']):03d}"):
            if not candidate:
                continue
            p = Path(candidate)
            for q in (self.root / "trials" / p.name, self.root / p, p):  # inside this folder first (it may have been moved)
                if q.is_dir():
                    return q
        return self.root / "best" if (self.root / "best").is_dir() else None


def read_auto(path: str | Path) -> AutoData:
    """Read the ``deltatune auto`` folder ``path`` (see :class:`AutoData`).

    Raises:
        DeltatuneError: auto_report.json or leaderboard.json is not JSON; auto_report.json is not
            a JSON object.
    """
    root = Path(path)
    notes: list[str] = []
    report = clean_auto_report(_read_json(root / "auto_report.json"), root / "auto_report.json", notes)
    rows = _read_json(root / "leaderboard.json")
    data = AutoData(root=root, report=report, notes=notes)
    if rows is not None:
        data.leaderboard = clean_leaderboard(rows, Checker("leaderboard.json", notes))
    else:
        data.leaderboard = list(report.get("leaderboard") or [])
    best = data.best_path
    if best is not None:
        try:
            data.best = read_run(best)
        except DeltatuneError:
            data.best = None
    return data
