"""``train.report_to``: TensorBoard and MLflow get what metrics.jsonl gets, a resumed run continues
the same tracker runs, a missing package is refused, and the default imports no tracking library.

The tracker files are read back with the libraries' own readers (TensorBoard's
``EventAccumulator``, ``MlflowClient``). The final metrics and artifacts are sent as the API does
after writing eval.json (``trainer.trackers.log_final`` / ``.finish``); when the API has already
done it, the second call does nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deltatune import finetune
from deltatune.config import build_config
from deltatune.errors import DeltatuneError
from deltatune.rundir import RunDir
from deltatune.training import tracking
from deltatune.training.checkpoint import list_checkpoints
from deltatune.training.tracking import (
    Trackers,
    check_report_to,
    check_tracking,
    check_tracking_uri,
    final_values,
    metric_values,
)
from tests.helpers import make_sentiment_rows, tiny_config, write_csv

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")


def _config(tiny_model_dir: str, tmp_path: Path, out: Path, **train_kw) -> dict:
    """A 24-step run (96 rows, batch 8, 2 epochs), evaluated each epoch, logged every step."""
    train = write_csv(tmp_path / "train.csv", make_sentiment_rows(96, 1))
    val = write_csv(tmp_path / "validation.csv", make_sentiment_rows(32, 2))
    cfg = tiny_config(tiny_model_dir, train, val, out, **train_kw)
    cfg["eval"] = {"eval_strategy": "epoch"}
    cfg["train"].update({"report_to": ["tensorboard", "mlflow"], "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    return cfg


def _train(cfg: dict, **kw):
    """finetune (which finishes the trackers itself), returning (run, trainer)."""
    seen = []

    def keep(trainer, state):
        if not seen:
            seen.append(trainer)

    run = finetune(cfg, callbacks=(keep, *kw.pop("callbacks", ())), verbose=False, **kw)
    return run, seen[0]


def _records(path: Path, key: str) -> dict[int, float]:
    """metrics.jsonl's ``key`` by step."""
    lines = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in lines if key in r}


def _tensorboard(path: Path, key: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(key)]


def _client(path: Path):
    from mlflow.tracking import MlflowClient

    ids = json.loads((path / "tracking.json").read_text())["mlflow"]
    return MlflowClient(ids["tracking_uri"]), ids["run_id"]


def _assert_tensorboard_matches(path: Path, key: str) -> None:
    expected = _records(path, key)
    got = _tensorboard(path, key)
    assert [s for s, _ in got] == sorted(expected), f"{key}: steps differ (duplicates or gaps)"
    for step, value in got:  # event files hold float32
        assert value == pytest.approx(expected[step], rel=1e-6, abs=1e-7)


def test_tensorboard_and_mlflow_get_the_metrics_config_and_artifacts(tiny_model_dir, tmp_path):
    out = tmp_path / "runs" / "demo-run"
    run, trainer = _train(_config(tiny_model_dir, tmp_path, out))
    assert len(_records(out, "loss")) == 24 and sorted(_records(out, "eval_loss")) == [12, 24]
    for key in ("loss", "eval_loss", "learning_rate", "eval_accuracy"):
        _assert_tensorboard_matches(out, key)

    client, run_id = _client(out)
    mlrun = client.get_run(run_id)
    assert mlrun.info.run_name == "demo-run" and mlrun.info.status == "FINISHED"
    assert mlrun.data.params["train.learning_rate"] == "0.001"
    assert mlrun.data.params["task"] == "text-classification"
    for key in ("loss", "eval_loss", "examples_per_second"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == pytest.approx(sorted(_records(out, key).items()))
    assert "epoch" not in mlrun.data.metrics and "step" not in mlrun.data.metrics
    assert mlrun.data.metrics["final_validation_accuracy"] == run.metrics["validation"]["accuracy"]
    assert mlrun.data.metrics["final_validation_per_class.pos.f1"] == run.metrics["validation"]["per_class"]["pos"]["f1"]
    artifacts = {f.path for f in client.list_artifacts(run_id)}
    assert "eval.json" in artifacts
    assert "report.html" in artifacts and (out / "report.html").is_file()  # written by finetune before finishing
    # artifacts next to the sqlite store, not in the working directory
    assert client.get_experiment_by_name("deltatune").artifact_location.startswith((tmp_path / "mlartifacts").as_uri())
    assert trainer.trackers.finished


def test_a_resumed_run_continues_the_mlflow_run_and_tensorboard_drops_redone_steps(tiny_model_dir, tmp_path):
    out = tmp_path / "cut"

    def stop_at_9(trainer, state):
        if state.global_step == 9:
            raise KeyboardInterrupt

    cfg = _config(tiny_model_dir, tmp_path, out, save_steps=4)
    cut, _ = _train(cfg, callbacks=(stop_at_9,))
    assert cut.result.interrupted
    client, run_id = _client(out)
    assert client.get_run(run_id).info.status == "KILLED"
    # the interrupt checkpoint (step 9) is lost: resume from step 8 trains step 9 again
    newest = list_checkpoints(out / "checkpoints")[-1]
    assert newest.name.endswith("9")
    shutil.rmtree(newest)
    resumed, _ = _train(str(out), resume=True)
    assert resumed.result.global_step == 24

    assert _client(out)[1] == run_id  # the same MLflow run
    mlrun = client.get_run(run_id)
    assert mlrun.info.status == "FINISHED"
    assert len(client.search_runs([mlrun.info.experiment_id])) == 1
    for key in ("loss", "eval_loss", "learning_rate"):
        _assert_tensorboard_matches(out, key)  # step 9 once, with the resumed run's value
    expected = _records(out, "loss")
    history = client.get_metric_history(run_id, "loss")
    assert {m.step for m in history} == set(expected)
    latest = {}
    for m in sorted(history, key=lambda m: m.timestamp):  # MLflow keeps the first step 9 as well
        latest[m.step] = m.value
    assert latest == pytest.approx(expected)


def test_a_missing_tracker_package_is_refused_in_one_line(monkeypatch, tmp_path):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(DeltatuneError) as err:
        check_report_to(["tensorboard", "wandb"])
    assert str(err.value) == "train.report_to: wandb is not installed; pip install wandb (and wandb login, or WANDB_MODE=offline)"
    check_report_to(["tensorboard", "mlflow"])
    cfg = build_config({"output_dir": str(tmp_path / "r"), "data": {"train_file": "x.csv"}, "train": {"report_to": ["wandb"]}})
    with pytest.raises(DeltatuneError, match="wandb is not installed"):
        Trackers(cfg, RunDir(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_records_become_scalars_and_eval_json_final_metrics():
    assert metric_values({"step": 3, "epoch": 0.5, "loss": 0.25, "learning_rate": 1e-3, "note": "x", "flag": True}) == {
        "loss": 0.25, "learning_rate": 1e-3,
    }
    assert metric_values({"step": 5, "event": "early_stopping", "best_step": 4}) == {}
    final = final_values({
        "validation": {"accuracy": 0.75, "per_class": {"pos": {"f1": 0.5}}, "confusion_matrix": [[1, 0], [0, 1]]},
        "test": {"loss": 0.1},
        "train": {"global_step": 24},
    })
    assert final == {"final_validation_accuracy": 0.75, "final_validation_per_class.pos.f1": 0.5, "final_test_loss": 0.1}


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None,
                    reason="with deepspeed installed, accelerate imports it on every save_pretrained, and deepspeed imports mlflow")
def test_the_default_imports_no_tracking_library(tiny_model_dir, tmp_path):
    cfg = _config(tiny_model_dir, tmp_path, tmp_path / "plain")
    del cfg["train"]["report_to"], cfg["train"]["tracking_uri"]
    code = (
        "import json, sys\n"
        "from deltatune import finetune\n"
        f"finetune(json.loads({json.dumps(json.dumps(cfg))}), verbose=False)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard', 'wandb', 'tensorboardX') "
        "or m.startswith('torch.utils.tensorboard'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert not (tmp_path / "plain" / "tensorboard").exists() and not (tmp_path / "plain" / "tracking.json").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_the_mlflow_store_is_the_config_then_the_environment_then_sqlite_next_to_the_runs(monkeypatch, tmp_path):
    base = {"output_dir": str(tmp_path / "runs" / "a"), "data": {"train_file": "x.csv"}}
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rd = RunDir(tmp_path / "runs" / "a")
    assert tracking.mlflow_tracking_uri(build_config(base), rd) == f"sqlite:///{(tmp_path / 'runs').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")
    assert tracking.mlflow_tracking_uri(build_config(base), rd) == "http://localhost:5000"
    cfg = build_config({**base, "train": {"tracking_uri": "sqlite:///x.db"}})
    assert tracking.mlflow_tracking_uri(cfg, rd) == "sqlite:///x.db"


def test_wandb_offline_run_is_continued_on_resume(tiny_model_dir, tmp_path, monkeypatch):
    """Runs where wandb is installed (offline mode: nothing leaves the machine)."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "runs" / "wb"
    cfg = _config(tiny_model_dir, tmp_path, out)
    cfg["train"]["report_to"] = ["wandb"]

    def stop_at_5(trainer, state):
        if state.global_step == 5:
            raise KeyboardInterrupt

    _train(cfg, callbacks=(stop_at_5,))
    first = json.loads((out / "tracking.json").read_text())["wandb"]
    assert first["project"] == "deltatune"
    _train(str(out), resume=True)
    assert json.loads((out / "tracking.json").read_text())["wandb"]["id"] == first["id"]
    # W&B's files go next to the run folder, not into it
    runs = sorted((tmp_path / "runs" / "wandb").glob(f"offline-run-*-{first['id']}"))
    assert len(runs) == 2 and (runs[-1] / "files" / "eval.json").exists()
    assert not (out / "wandb").exists()


def test_an_error_ends_the_mlflow_run_failed_and_a_bad_store_is_one_line(tiny_model_dir, tmp_path):
    def boom(trainer, state):
        if state.global_step == 3:
            raise RuntimeError("boom")

    out = tmp_path / "runs" / "failed"
    with pytest.raises(RuntimeError, match="boom"):
        _train(_config(tiny_model_dir, tmp_path, out), callbacks=(boom,))
    client, run_id = _client(out)
    assert client.get_run(run_id).info.status == "FAILED"
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [1, 2, 3]

    # a store that cannot be opened (its folder is a file): one line, naming the cause
    (tmp_path / "not-a-folder").write_text("x")
    cfg = _config(tiny_model_dir, tmp_path, tmp_path / "runs" / "bad")
    cfg["train"]["report_to"] = ["mlflow"]
    cfg["train"]["tracking_uri"] = f"sqlite:///{tmp_path / 'not-a-folder' / 'mlflow.db'}"
    with pytest.raises(DeltatuneError, match=r"^train.report_to: cannot start mlflow \(.*\); fix it") as err:
        finetune(cfg, verbose=False)
    assert "\n" not in str(err.value)

    # a scheme MLflow does not know is refused by the config check, before MLflow is asked
    cfg = _config(tiny_model_dir, tmp_path, tmp_path / "runs" / "bad-scheme")
    cfg["train"]["report_to"] = ["mlflow"]
    cfg["train"]["tracking_uri"] = "nosuchscheme://x"
    with pytest.raises(DeltatuneError, match=r"^train.tracking_uri: MLflow has no nosuchscheme:// store; use one of sqlite:"):
        finetune(cfg, verbose=False)
    assert not (tmp_path / "runs" / "bad-scheme").exists()  # refused before the run folder is made


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("foo://x", "train.tracking_uri: MLflow has no foo:// store; use one of sqlite:, postgresql:, mysql:, mssql:, http:, https:, databricks:, file:"),
        ("{tmp}/store", "train.tracking_uri: {tmp}/store is a plain path, which MLflow takes as a folder store"),
        ("{tmp}/runs/mlflow.db", "for a SQLite database there use sqlite:///{tmp}/runs/mlflow.db"),
        ("sqlite://mlflow.db", "is not a SQLite URI; write sqlite:///relative/path.db or sqlite:////absolute/path.db"),
        ("sqlite:///", "sqlite:/// names no database file"),
        ("sqlite:///{tmp}", "{tmp} is a folder; name the database file in it, e.g. sqlite:///{tmp}/mlflow.db"),
        ("http://", "train.tracking_uri: http:// names no host; write http://host:port"),
        ("https+x://host", "https+x:// is not an MLflow store scheme"),
        ("", "is not a store URI"),
        ("http://host :5000", "is not a store URI (empty or with spaces)"),
    ],
)
def test_a_store_uri_mlflow_cannot_open_is_refused_in_one_line(uri, expected, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    if uri == "{tmp}/store" and tracking._mlflow_major() < 3:
        pytest.skip("MLflow 2 opens a plain folder as a file store")
    tmp = str(tmp_path.resolve())
    with pytest.raises(DeltatuneError) as err:
        check_tracking_uri(uri.format(tmp=tmp))
    assert expected.format(tmp=tmp) in str(err.value)
    assert "\n" not in str(err.value)


def test_store_uris_mlflow_opens_pass_and_a_file_store_needs_mlflows_permission(tmp_path, monkeypatch):
    for uri in (
        f"sqlite:///{tmp_path}/new/folder/mlflow.db", "sqlite:///runs/mlflow.db", "sqlite:///:memory:",
        "postgresql://user@db:5432/mlflow", "postgresql+psycopg2://user@db/mlflow", "mysql+pymysql://u@h/m",
        "mssql+pyodbc://u@h/m", "http://localhost:5000", "https://mlflow.example.com", "databricks", "databricks://profile",
    ):
        check_tracking_uri(uri)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    if tracking._mlflow_major() >= 3:
        with pytest.raises(DeltatuneError, match=r"^train.tracking_uri: MLflow 3 refuses file: stores unless MLFLOW_ALLOW_FILE_STORE=true"):
            check_tracking_uri(f"file://{tmp_path}/mlruns")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_tracking_uri(f"file://{tmp_path}/mlruns")
    check_tracking_uri(str(tmp_path / "mlruns"))  # a plain folder is a file store MLflow now opens
    with pytest.raises(DeltatuneError, match="for a SQLite database there use sqlite:///"):
        check_tracking_uri(str(tmp_path / "mlflow.db"))  # but a .db "folder" is a slip for sqlite:///


def test_check_tracking_checks_the_config_uri_then_the_environment(tmp_path, monkeypatch):
    base = {"output_dir": str(tmp_path / "r"), "data": {"train_file": "x.csv"}}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://x")
    check_tracking(build_config(base).train)  # MLflow not used: the environment is not its business
    with pytest.raises(DeltatuneError, match=r"^\$MLFLOW_TRACKING_URI: MLflow has no bogus:// store"):
        check_tracking(build_config({**base, "train": {"report_to": ["mlflow"]}}).train)
    with pytest.raises(DeltatuneError, match=r"^\$MLFLOW_TRACKING_URI: MLflow has no bogus:// store"):
        Trackers(build_config({**base, "train": {"report_to": ["mlflow"]}}), RunDir(tmp_path / "r"))
    check_tracking(build_config({**base, "train": {"report_to": ["mlflow"], "tracking_uri": "http://h:5000"}}).train)
    with pytest.raises(DeltatuneError, match=r"^train.tracking_uri: MLflow has no foo:// store"):
        check_tracking(build_config({**base, "train": {"tracking_uri": "foo://x"}}).train)  # set but unused: still refused
    assert not (tmp_path / "r").exists()


def test_library_messages_are_cut_at_a_sentence_end_not_inside_a_url():
    url = "https://mlflow.org/docs/latest/self-hosting/migrate-from-file-store"
    text = "First sentence about the store. " * 8 + f"See {url} for guidance.\nsecond line"
    short = tracking._shorten(text)
    assert short.endswith("about the store.") and len(short) <= 300 and url not in short
    long_url = "x " + "https://host/" + "p" * 400
    assert tracking._shorten(long_url) == "x ..."
    assert tracking._shorten(f"error at {url}\nmore") == f"error at {url}"


RACE = """
import sys, time
from pathlib import Path
from deltatune.training.tracking import _MLflow
uri, name, ready = sys.argv[1], sys.argv[2], Path(sys.argv[3])
(ready / name).touch()
while len(list(ready.iterdir())) < 2:  # start together
    time.sleep(0.001)
print(_MLflow(uri, "deltatune", name, Path.cwd()).start({}, 0, {"a": 1})["run_id"])
"""


def test_two_runs_creating_a_fresh_store_at_once_both_start(tmp_path):
    """Without the lock, one or both of two processes usually fail ("table ... already exists",
    "duplicate column name"); with it, both start, in one experiment, three tries in a row."""
    from mlflow.tracking import MlflowClient

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for attempt in range(3):
        store, ready = tmp_path / f"runs{attempt}", tmp_path / f"ready{attempt}"
        ready.mkdir()
        uri = f"sqlite:///{store / 'mlflow.db'}"
        procs = [
            subprocess.Popen([sys.executable, "-c", RACE, uri, name, str(ready)], cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in ("a", "b")
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [err[-1500:] for _, err in outs]
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("deltatune")
        assert {r.info.run_id for r in client.search_runs([experiment.experiment_id])} == {o.strip().splitlines()[-1] for o, _ in outs}
        # MLflow's own "Default" experiment 0 is placed next to the store, not in the working directory
        assert client.get_experiment("0").artifact_location == (store / "mlartifacts" / "0").as_uri()
        assert experiment.artifact_location == (store / "mlartifacts").as_uri()
    # MLflow 2's client makes an empty mlruns/ in the working directory for any database store
    assert [p.name for p in cwd.iterdir()] == ([] if tracking._mlflow_major() >= 3 else ["mlruns"])
