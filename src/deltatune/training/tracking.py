"""Experiment tracking: ``train.report_to: [tensorboard, mlflow, wandb]``.

The trackers get what the run folder gets: every metrics.jsonl record's scalars (train records:
``loss``, ``learning_rate``, ``examples_per_second``; evaluation records: ``eval_*``) at the
record's ``step``, the flattened config as hyperparameters, the final metrics of eval.json, and
(MLflow, W&B) report.html and eval.json as artifacts. ``report_to: []`` (the default) keeps to
the run folder's files: this module then imports no tracking library.

Where things go:

- TensorBoard: event files in ``<run>/tensorboard/`` (``tensorboard --logdir runs/`` shows
  every run); the config as hparams in a time-named folder below it (Accelerate's
  :class:`accelerate.tracking.TensorBoardTracker`).
- MLflow: the store ``train.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else
  ``sqlite:///<output_dir's parent>/mlflow.db`` with artifacts in
  ``<output_dir's parent>/mlartifacts``; experiment ``train.tracking_project``, run name = the
  run folder's name. The URI is checked before anything is written (:func:`check_tracking_uri`,
  through :func:`check_tracking`); a SQLite store is opened under a lock file ``<db>.lock`` (runs
  starting at once) and, when new, created with its artifact root next to the file (MLflow's
  "Default" experiment 0 then points there, not at ``<cwd>/mlruns/0``). MLflow 2.14+ and 3.
- W&B: project ``train.tracking_project``, run name = the run folder's name, files under the run
  folder's parent (``<parent>/wandb/``), through :class:`accelerate.tracking.WandBTracker`.

The tracker run ids are kept in ``<run>/tracking.json`` so that ``deltatune train --resume``
continues the same MLflow and W&B runs; TensorBoard's writer is reopened with
``purge_step`` = the resumed step + 1, which drops the events of steps trained again.

MLflow goes through :class:`mlflow.tracking.MlflowClient` rather than Accelerate's
``MLflowTracker``: that one reads the tracking URI and the active run from MLflow's
process-wide state (``mlflow.set_tracking_uri``, ``mlflow.start_run``: it would change a user's
own MLflow session, and refuses to start while the process has an active run), honours
``$MLFLOW_RUN_ID`` over the saved run id, and always ends a run as FINISHED; the client takes
the URI and run id as arguments and ends a run KILLED or FAILED as well.

A tracker that fails while training prints one warning and is dropped for the rest of the run
(metrics.jsonl stays complete); one that cannot start is an error before the first step.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from deltatune.config import RunConfig, TrainConfig, flatten_dict
from deltatune.errors import DeltatuneError
from deltatune.files import write_atomically
from deltatune.rundir import RunDir

# tracker name -> (module that must be importable, how to install it)
TRACKER_PACKAGES: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "pip install 'deltatune[track]' (or pip install tensorboard)"),
    "mlflow": ("mlflow", "pip install 'deltatune[track]' (or pip install mlflow)"),
    "wandb": ("wandb", "pip install wandb (and wandb login, or WANDB_MODE=offline)"),
}
# keys of a metrics.jsonl record that are positions, not metrics
NOT_METRICS = frozenset({"step", "epoch", "event"})
STATUSES = ("FINISHED", "KILLED", "FAILED")


def check_report_to(report_to: list[str]) -> None:
    """Refuse a ``train.report_to`` tracker whose package is not installed (torch-free, imports nothing).

    Looked up with :func:`importlib.util.find_spec`, so it can run before anything is written
    (and, from a module that does not import torch, before torch loads).

    Raises:
        DeltatuneError: one line naming the tracker and the ``pip install`` that adds it.
    """
    for name in report_to:
        module, install = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise DeltatuneError(f"train.report_to: {name} is not installed; {install}")


# MLflow's own store schemes (mlflow.tracking._tracking_service.utils registers them; the database
# ones also with a driver: postgresql+psycopg2://, mysql+pymysql://, mssql+pyodbc://)
MLFLOW_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "file")
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def _mlflow_major() -> int:
    """The installed MLflow's major version (3 when unknown: the stricter rules), without importing it."""
    for dist in ("mlflow", "mlflow-skinny"):
        try:
            return int(importlib.metadata.version(dist).split(".")[0])
        except (importlib.metadata.PackageNotFoundError, ValueError):
            continue
    return 3


def _file_store_allowed() -> bool:
    """Whether MLflow opens a ``file:`` (``mlruns/`` folder) store: MLflow 2 always, MLflow 3 only with
    ``MLFLOW_ALLOW_FILE_STORE=true`` (or ``1``), as MLflow reads that variable."""
    return _mlflow_major() < 3 or os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("true", "1")


def _plugin_schemes() -> set[str]:
    """Store schemes that installed MLflow plugins add (entry points ``mlflow.tracking_store``)."""
    return {e.name for e in importlib.metadata.entry_points(group="mlflow.tracking_store")}


def _sqlite_suggestion(path: str) -> str:
    """``sqlite:///<absolute path>`` of a plain ``path``: the path itself when it names a database file,
    else ``<path>/mlflow.db``."""
    target = Path(path).expanduser()
    if target.suffix.lower() not in (".db", ".sqlite", ".sqlite3"):
        target = target / "mlflow.db"
    return "sqlite:///" + str(target.resolve())


def check_tracking_uri(uri: str, field: str = "train.tracking_uri") -> None:
    """Refuse an MLflow store URI that MLflow cannot open, before anything is written (torch-free,
    MLflow-free: the scheme is read with :func:`urllib.parse.urlsplit`).

    Accepted: ``sqlite:///path/mlflow.db`` (``sqlite:////abs/path``; MLflow makes missing folders),
    ``postgresql://``, ``mysql://``, ``mssql://`` (also ``+driver``), ``http(s)://host``,
    ``databricks`` / ``databricks://profile``, a scheme an installed MLflow plugin adds, and
    ``file:`` where MLflow opens it (MLflow 2, or MLflow 3 with ``MLFLOW_ALLOW_FILE_STORE=true``).
    Whether a server answers or a database accepts the login is not checked here: that is
    found when the run's tracker starts (:meth:`Trackers.start`).

    Args:
        uri: the store URI (``train.tracking_uri`` or ``$MLFLOW_TRACKING_URI``).
        field: what to name in the message.

    Raises:
        DeltatuneError: one line naming ``field``, what is wrong and a URI to use instead (a plain
            path -> ``sqlite:///<path>/mlflow.db``).
    """
    text = uri.strip()
    if not text or any(c.isspace() for c in text):
        raise DeltatuneError(f"{field}: {uri!r} is not a store URI (empty or with spaces); use e.g. sqlite:///runs/mlflow.db or http://host:5000")
    if text == "databricks":
        return
    scheme = urlsplit(text).scheme.lower()
    if len(scheme) <= 1:  # no scheme, or a Windows drive letter: a plain path (MLflow: a file store)
        if Path(text).suffix.lower() in (".db", ".sqlite", ".sqlite3") or not _file_store_allowed():
            raise DeltatuneError(
                f"{field}: {text} is a plain path, which MLflow takes as a folder store (mlruns/, refused by "
                f"MLflow 3 unless MLFLOW_ALLOW_FILE_STORE=true); for a SQLite database there use {_sqlite_suggestion(text)}"
            )
        return
    base = scheme.split("+", 1)[0]
    if base == "file":
        if not _file_store_allowed():
            raise DeltatuneError(
                f"{field}: MLflow 3 refuses file: stores unless MLFLOW_ALLOW_FILE_STORE=true is set; "
                f"use a database file instead, e.g. {_sqlite_suggestion(urlsplit(text).path or '.')}"
            )
        return
    if base not in MLFLOW_SCHEMES:
        if scheme in _plugin_schemes():
            return
        raise DeltatuneError(
            f"{field}: MLflow has no {scheme}:// store; use one of {', '.join(s + ':' for s in MLFLOW_SCHEMES)} "
            f"(e.g. sqlite:///runs/mlflow.db, http://host:5000)"
        )
    if "+" in scheme and base not in DATABASE_SCHEMES:
        raise DeltatuneError(f"{field}: {scheme}:// is not an MLflow store scheme (only databases take +driver); use {base}://")
    if base == "sqlite":
        if not text.lower().startswith(scheme + ":///"):
            raise DeltatuneError(
                f"{field}: {text} is not a SQLite URI; write sqlite:///relative/path.db or sqlite:////absolute/path.db (three or four slashes)"
            )
        path = text[len(scheme) + 4:].split("?", 1)[0]
        if not path:
            raise DeltatuneError(f"{field}: {text} names no database file; use e.g. sqlite:///runs/mlflow.db")
        if path != ":memory:" and Path(path).is_dir():
            raise DeltatuneError(f"{field}: {path} is a folder; name the database file in it, e.g. sqlite:///{Path(path) / 'mlflow.db'}")
    elif base in ("http", "https") and not urlsplit(text).hostname:
        raise DeltatuneError(f"{field}: {text} names no host; write {base}://host:port")


def _mlflow_uri_source(train: TrainConfig) -> tuple[str, str] | None:
    """The MLflow store a run would use when set by the user, with what sets it:
    ``(train.tracking_uri, "train.tracking_uri")``, else ``($MLFLOW_TRACKING_URI, "$MLFLOW_TRACKING_URI")``,
    else ``None`` (the default ``sqlite:///`` store next to the runs)."""
    if train.tracking_uri:
        return train.tracking_uri, "train.tracking_uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], "$MLFLOW_TRACKING_URI"
    return None


def check_tracking(train: TrainConfig) -> None:
    """The torch-free tracking checks of a train config, made before anything is written:
    :func:`check_report_to` (``train.report_to``'s packages), then :func:`check_tracking_uri` on
    ``train.tracking_uri`` when set (even without ``mlflow`` in report_to: a bad value is refused),
    else on ``$MLFLOW_TRACKING_URI`` when MLflow is used.

    Raises:
        DeltatuneError: one line, from either check.
    """
    check_report_to(list(train.report_to))
    source = _mlflow_uri_source(train)
    if source is not None and (train.tracking_uri or "mlflow" in train.report_to):
        check_tracking_uri(*source)


def mlflow_tracking_uri(config: RunConfig, run_dir: RunDir) -> str:
    """The MLflow store of a run: ``train.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else
    ``sqlite:///<output_dir's parent>/mlflow.db`` (absolute path)."""
    if config.train.tracking_uri:
        return config.train.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return "sqlite:///" + str(run_dir.root.resolve().parent / "mlflow.db")


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///path`` store, or ``None`` for other stores (and ``:memory:``)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri == prefix + ":memory:" or len(uri) == len(prefix):
        return None
    return Path(uri[len(prefix):].split("?", 1)[0])


def _sqlite_folder(uri: str) -> Path | None:
    """The folder of a ``sqlite:///path`` store's database file, or ``None`` for other stores."""
    db = _sqlite_file(uri)
    return None if db is None else db.parent


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<db>.lock`` next to a ``sqlite:///`` store's file (made with its
    folder when missing), so that runs starting at once in one runs folder do not create MLflow's
    tables together (SQLite: "table ... already exists"). Other stores, and systems without
    :mod:`fcntl` (Windows), are not locked. The lock file is left in place (an empty file)."""
    db = _sqlite_file(uri)
    try:
        import fcntl
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    if db is None or fcntl is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def hyperparameters(config: RunConfig) -> dict[str, Any]:
    """The run config as flat ``section.key`` -> bool/int/float/str (``None`` and lists as text),
    the form TensorBoard's hparams, MLflow params and W&B config all take."""
    flat = flatten_dict(config.model_dump(mode="json"))
    out: dict[str, Any] = {}
    for key, value in flat.items():
        out[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return out


def metric_values(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of a metrics.jsonl ``record``: numbers (not booleans), without ``step``/``epoch``;
    an event record (``{"event": ...}``) has none."""
    if "event" in record:
        return {}
    return {
        k: float(v) for k, v in record.items()
        if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def final_values(metrics: dict[str, Any]) -> dict[str, float]:
    """eval.json's ``validation`` and ``test`` scalars as ``final_validation_<key>`` / ``final_test_<key>``;
    nested dicts are flattened with dots (``final_validation_per_class.pos.f1``), lists skipped."""
    out: dict[str, float] = {}
    for split in ("validation", "test"):
        section = metrics.get(split)
        if not isinstance(section, dict):
            continue
        for key, value in flatten_dict(section).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"final_{split}_{key}"] = float(value)
    return out


def _shorten(text: str, limit: int = 300) -> str:
    """The first line of ``text``, cut to at most ``limit`` characters at a sentence end (``". "``),
    else at a space, so that a URL or path in it is never cut; ``"..."`` marks a cut."""
    lines = text.strip().splitlines()
    line = " ".join(lines[0].split()) if lines else ""
    if len(line) <= limit:
        return line
    head = line[: limit + 1]
    end = max(head.rfind(". "), head.rfind("; "))
    if end > limit // 3:
        return line[: end + 1]
    space = head.rfind(" ")
    return (line[:space] if space > 0 else line[:limit]).rstrip(" ,;:") + " ..."


def _one_line(error: BaseException) -> str:
    """``Type: message`` of ``error`` on one line (:func:`_shorten`)."""
    text = _shorten(str(error))
    return f"{type(error).__name__}{': ' + text if text else ''}"


class _TensorBoard:
    """TensorBoard event files in ``<run>/tensorboard/`` through Accelerate's ``TensorBoardTracker``."""

    name = "tensorboard"

    def __init__(self, run_dir: RunDir):
        self.run_dir = run_dir
        self.tracker: Any = None

    def start(self, saved: dict[str, Any], resumed_step: int, params: dict[str, Any]) -> dict[str, Any]:
        from accelerate.tracking import TensorBoardTracker

        # a resumed run trains the steps after its checkpoint again: their old events are dropped
        kwargs = {"purge_step": resumed_step + 1} if resumed_step > 0 else {}
        self.tracker = TensorBoardTracker(self.run_dir.tensorboard.name, self.run_dir.root, **kwargs)
        self.tracker.start()
        if resumed_step == 0:
            self.tracker.store_init_configuration(params)
        return {"logdir": str(self.run_dir.tensorboard)}

    def log(self, values: dict[str, float], step: int) -> None:
        self.tracker.log(values, step=step)

    def artifacts(self, paths: list[Path]) -> None:
        """TensorBoard keeps no files: nothing to do."""

    def finish(self, status: str) -> None:
        self.tracker.finish()


class _MLflow:
    """An MLflow run through :class:`mlflow.tracking.MlflowClient` (see the module docstring for why)."""

    name = "mlflow"

    def __init__(self, uri: str, experiment: str, run_name: str, run_path: Path):
        self.uri = uri
        self.experiment = experiment
        self.run_name = run_name
        self.run_path = run_path
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, saved: dict[str, Any], resumed_step: int, params: dict[str, Any]) -> dict[str, Any]:
        logged: dict[str, str] = {}
        experiment_id = self._open_store()
        if saved.get("run_id") and saved.get("tracking_uri") == self.uri:
            run = self._reopen(saved["run_id"])
            if run is not None:
                self.run_id, logged = run.info.run_id, dict(run.data.params)
        if self.run_id is None:
            self.run_id = self.client.create_run(experiment_id, run_name=self.run_name, tags={"deltatune.run_dir": str(self.run_path)}).info.run_id
        self._log_params(params, logged)
        return {"run_id": self.run_id, "tracking_uri": self.uri, "experiment": self.experiment}

    def _reopen(self, run_id: str) -> Any:
        """The saved run, set RUNNING again; ``None`` (with a warning) when the store no longer has it."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
            if run.info.lifecycle_stage != "active":
                raise MlflowException(f"run {run_id} is deleted")
            self.client.update_run(run_id, status="RUNNING")
            return run
        except MlflowException as e:
            print(f"warning: cannot continue MLflow run {run_id} ({_one_line(e)}); starting a new one", file=sys.stderr, flush=True)
            return None

    def _open_store(self) -> str:
        """Make the client and the experiment's id, under :func:`_store_lock` for a SQLite store.

        A SQLite store that fails to open is tried once more (after 1 s): where the lock does not
        hold (no :mod:`fcntl`, a network file system), another run creating the tables at the
        same moment is the usual cause.
        """
        from mlflow.tracking import MlflowClient

        tries = 2 if _sqlite_file(self.uri) is not None else 1
        for attempt in range(tries):
            try:
                with _store_lock(self.uri):
                    self._create_sqlite_store()
                    self.client = MlflowClient(tracking_uri=self.uri)
                    return self._experiment_id()
            except Exception:
                if attempt + 1 == tries:
                    raise
                time.sleep(1.0)
        raise AssertionError("unreachable")

    def _create_sqlite_store(self) -> None:
        """Create a new SQLite store's tables with the artifact root ``<db folder>/mlartifacts``.

        MLflow makes a "Default" experiment (id 0) in every new store, with artifacts under the
        store's default artifact root: a client opening the store would give it
        ``<working directory>/mlruns/0``. Creating the store here first (with
        :class:`mlflow.store.tracking.sqlalchemy_store.SqlAlchemyStore`, whose
        ``(db_uri, default_artifact_root)`` MLflow 2 and 3 share) gives it
        ``<db folder>/mlartifacts/0`` instead; nothing of ours goes to experiment 0. An existing
        store, and any other store, is left as it is.
        """
        db = _sqlite_file(self.uri)
        if db is None or (db.is_file() and db.stat().st_size > 0):
            return
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore(self.uri, (db.parent.resolve() / "mlartifacts").as_uri())

    def _experiment_id(self) -> str:
        """The id of experiment ``self.experiment``, made when missing (artifacts next to a sqlite store's file)."""
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        folder = _sqlite_folder(self.uri)
        location = (folder.resolve() / "mlartifacts").as_uri() if folder is not None else None
        return self.client.create_experiment(self.experiment, artifact_location=location)

    def _log_params(self, params: dict[str, Any], logged: dict[str, str]) -> None:
        """Log the params not logged yet (MLflow refuses to change a param; a resumed run keeps its first values)."""
        from mlflow.entities import Param
        from mlflow.utils.validation import (
            MAX_PARAM_VAL_LENGTH,
            MAX_PARAMS_TAGS_PER_BATCH,
        )

        todo = [Param(k, str(v)) for k, v in params.items() if k not in logged and len(str(v)) <= MAX_PARAM_VAL_LENGTH]
        for i in range(0, len(todo), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=todo[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


class _WandB:
    """A W&B run through Accelerate's ``WandBTracker`` (resumed by id with ``resume="allow"``)."""

    name = "wandb"

    def __init__(self, project: str, run_name: str, folder: Path):
        self.project = project
        self.run_name = run_name
        self.folder = folder
        self.tracker: Any = None

    def start(self, saved: dict[str, Any], resumed_step: int, params: dict[str, Any]) -> dict[str, Any]:
        from accelerate.tracking import WandBTracker

        self.tracker = WandBTracker(
            self.project, name=self.run_name, dir=str(self.folder), id=saved.get("id") or None, resume="allow"
        )
        self.tracker.start()
        self.tracker.store_init_configuration(params)
        return {"id": self.tracker.run.id, "project": self.project}

    def log(self, values: dict[str, float], step: int) -> None:
        self.tracker.log(values, step=step)

    def artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            self.tracker.run.save(str(path), base_path=str(path.parent), policy="now")

    def finish(self, status: str) -> None:
        self.tracker.run.finish(exit_code=0 if status == "FINISHED" else 1)


class Trackers:
    """The experiment trackers of one run (``train.report_to``), on the main process only.

    Made cheaply (nothing imported, nothing written); :meth:`start` opens or continues the
    tracker runs, :meth:`log` sends each metrics.jsonl record, :meth:`log_final` the final
    metrics, :meth:`finish` the artifacts and the end status. With ``report_to: []`` or
    ``active=False`` (another process of a distributed launch) every method does nothing.

    Args:
        config: the run config (``train.report_to``, ``train.tracking_uri``, ``train.tracking_project``).
        run_dir: the run folder (its name is the tracker run name; tracking.json is written in it).
        active: whether this process reports (the main process).

    Raises:
        DeltatuneError: a tracker's package is missing (:func:`check_report_to`); with ``mlflow``,
            a store URI MLflow cannot open (:func:`check_tracking_uri`).
    """

    def __init__(self, config: RunConfig, run_dir: RunDir, active: bool = True):
        self.config = config
        self.run_dir = run_dir
        self.names = list(config.train.report_to) if active else []
        check_report_to(self.names)
        source = _mlflow_uri_source(config.train)
        if "mlflow" in self.names and source is not None:
            check_tracking_uri(*source)
        self.backends: list[Any] = []
        self.step = 0
        self.finished = False

    def _make(self, name: str) -> Any:
        tc = self.config.train
        folder_name = self.run_dir.root.resolve().name
        if name == "tensorboard":
            return _TensorBoard(self.run_dir)
        if name == "mlflow":
            return _MLflow(mlflow_tracking_uri(self.config, self.run_dir), tc.tracking_project, folder_name, self.run_dir.root.resolve())
        return _WandB(tc.tracking_project, folder_name, self.run_dir.root.resolve().parent)

    def start(self, resumed_step: int = 0) -> None:
        """Open the tracker runs, or continue those named in tracking.json, and log the config.

        Args:
            resumed_step: the step training continues from (0 for a new run): TensorBoard drops
                its events after it, which are logged again.

        Raises:
            DeltatuneError: a tracker cannot start (unreachable store, bad URI): one line naming
                it, the cause and what to do; trackers started before it are ended FAILED.
        """
        if not self.names:
            return
        saved = {k: v for k, v in self._saved().items() if isinstance(v, dict)}
        params = hyperparameters(self.config)
        ids: dict[str, Any] = {}
        self.step, self.finished = resumed_step, False
        for name in self.names:
            backend = self._make(name)
            try:
                ids[name] = backend.start(saved.get(name, {}), resumed_step, params)
            except Exception as e:
                self.finish([], "FAILED")
                again = f"deltatune train --resume {self.run_dir.root}" if resumed_step else "start again with --overwrite"
                raise DeltatuneError(
                    f"train.report_to: cannot start {name} ({_one_line(e)}); fix it (train.tracking_uri, login) or "
                    f"remove {name} from train.report_to, then {again}"
                ) from None
            self.backends.append(backend)
        self._save(ids)

    def _saved(self) -> dict[str, Any]:
        """tracking.json's tracker ids (empty when missing or unreadable: new tracker runs are opened)."""
        try:
            data = json.loads(self.run_dir.tracking.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self, ids: dict[str, Any]) -> None:
        """Write tracking.json atomically (``{"mlflow": {"run_id", ...}, "wandb": {"id", ...}}``)."""
        try:
            write_atomically(self.run_dir.tracking, lambda f: f.write(json.dumps(ids, indent=2) + "\n"))
        except OSError as e:
            print(f"warning: cannot write {self.run_dir.tracking} ({_one_line(e)}); a resumed run opens new tracker runs", file=sys.stderr, flush=True)

    def _send(self, values: dict[str, float], step: int) -> None:
        """``values`` at ``step`` to every tracker; one that fails is warned about and dropped."""
        if not values:
            return
        for backend in list(self.backends):
            try:
                backend.log(values, step)
            except Exception as e:
                self._drop(backend, "log metrics", e)

    def _drop(self, backend: Any, what: str, error: BaseException) -> None:
        print(
            f"warning: train.report_to: {backend.name} failed to {what} ({_one_line(error)}); it gets nothing more "
            f"from this run (metrics.jsonl has everything)", file=sys.stderr, flush=True,
        )
        self.backends.remove(backend)

    def log(self, record: dict[str, Any]) -> None:
        """Send one metrics.jsonl ``record``'s scalars (:func:`metric_values`) at ``record["step"]``."""
        if not self.backends:
            return
        self.step = int(record.get("step", self.step))
        self._send(metric_values(record), self.step)

    def log_final(self, metrics: dict[str, Any]) -> None:
        """Send eval.json's final metrics (:func:`final_values`) at the last logged step."""
        if self.backends:
            self._send(final_values(metrics), self.step)

    def finish(self, artifacts: list[Path], status: str) -> None:
        """Upload the ``artifacts`` that exist (MLflow, W&B) and end every tracker run with ``status``.

        Never raises (a failure is a warning): it runs after a finished run's files are written,
        or while an error or interrupt is on its way up. Calling it again does nothing.

        Args:
            artifacts: files to attach (report.html, eval.json); missing ones are skipped.
            status: ``"FINISHED"``, ``"KILLED"`` (interrupted) or ``"FAILED"`` (an error).
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        existing = [Path(p) for p in artifacts if Path(p).is_file()]
        for backend in list(self.backends):
            try:
                if status == "FINISHED" and existing:
                    backend.artifacts(existing)
                backend.finish(status)
            except Exception as e:
                self._drop(backend, f"finish ({status})", e)
        self.backends = []
        self.finished = True
