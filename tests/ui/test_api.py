"""The web UI's JSON API (in-process, starlette's TestClient): options, inspect, starting a run
(a real ``python -m deltatune train`` subprocess on the tiny BERT), polling it to the end,
the runs list, the report, predictions, stop, delete and the 4xx answers to bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import make_sentiment_rows, write_csv


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """train.csv/dev.csv (text, label) and renamed.csv (review, sentiment) of synthetic sentiment rows."""
    d = tmp_path_factory.mktemp("ui_data")
    renamed = [{"review": r["text"], "sentiment": r["label"]} for r in make_sentiment_rows(24, 3)]
    return {
        "train": write_csv(d / "train.csv", make_sentiment_rows(32, 1)),
        "dev": write_csv(d / "dev.csv", make_sentiment_rows(16, 2)),
        "renamed": write_csv(d / "renamed.csv", renamed),
    }


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from deltatune.ui.app import create_app

    runs_dir = tmp_path_factory.mktemp("ui") / "runs"
    with TestClient(create_app(runs_dir, device="cpu")) as c:
        c.runs_dir = runs_dir
        yield c


def form(name: str, model: str, data: dict[str, Path], **extra) -> dict:
    """A new-run form for a short run of the tiny model."""
    return {
        "name": name, "task": "text-classification", "model": model, "train_file": str(data["train"]),
        "validation_file": str(data["dev"]), "method": "full", "batch_size": 8, "max_seq_length": 32,
        "settings": "train.max_steps=2\ntrain.logging_steps=1\nseed=7", **extra,
    }


def wait_done(client, name: str, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        detail = client.get(f"/api/runs/{name}").json()
        if detail["status"] != "running":
            return detail
        time.sleep(0.3)
    raise AssertionError(f"{name} still running: {detail['log']}")


@pytest.fixture(scope="module")
def finished(client, data, tiny_model_dir) -> dict:
    """A run started through the API and polled to its end: its final detail."""
    r = client.post("/api/runs", json=form("tiny", tiny_model_dir, data))
    assert r.status_code == 201, r.text
    assert r.json()["url"] == "/runs/tiny"
    return wait_done(client, "tiny")


def error(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    message = r.json()["error"]
    assert "\n" not in message and "Traceback" not in message
    return message


def test_options_list_the_registered_tasks_packaged_models_and_methods(client):
    from deltatune.delta.registry import METHOD_NAMES
    from deltatune.models.resolve import PACKAGED_MODELS
    from deltatune.tasks.registry import task_names

    o = client.get("/api/options").json()
    assert o["tasks"] == ["infer", *task_names()]
    assert [m["name"] for m in o["models"]] == list(PACKAGED_MODELS)
    assert [m["name"] for m in o["methods"]] == list(METHOD_NAMES)
    page = client.get("/")
    assert page.status_code == 200 and 'id="run-form"' in page.text and "minilm" in page.text
    assert "http://" not in page.text.replace("http://www.w3.org", "") and "https://" not in page.text  # nothing from the internet


def test_inspect_shows_the_inferred_task_and_columns_and_the_check_report(client, data, tiny_model_dir):
    r = client.post("/api/inspect", json={**form("x", tiny_model_dir, data), "task": "infer", "train_file": str(data["renamed"]),
                                          "validation_file": None})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["task"] == "text-classification"
    assert out["settings"] == {"data.text_column": "review", "data.label_column": "sentiment"}
    assert out["check"].startswith("text-classification: 24 encoded training examples")
    assert not (client.runs_dir / "x").exists()  # inspecting writes no run


def test_a_run_is_started_polled_to_the_end_listed_reported_and_tried(client, finished, data):
    assert finished["status"] == "finished", finished["log"]
    ev = json.loads((client.runs_dir / "tiny" / "eval.json").read_text())
    assert finished["eval"] == ev and finished["metric"] == "accuracy" and finished["value"] == ev["validation"]["accuracy"]
    assert finished["step"] == finished["total_steps"] == 2
    assert [r["step"] for r in finished["records"] if "loss" in r] == [1, 2]
    assert finished["inputs"] == ["text"] and finished["has_model"]
    # the run folder holds deltatune's files only; the log is beside the runs
    from deltatune.rundir import RunDir

    assert RunDir(client.runs_dir / "tiny").foreign_entries() == []
    assert (client.runs_dir / ".ui" / "logs" / "tiny.log").is_file()
    listed = client.get("/api/runs").json()["runs"]
    assert [(r["name"], r["status"], r["task"], r["method"]) for r in listed] == [("tiny", "finished", "text-classification", "full")]
    report = client.get("/runs/tiny/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html") and "tiny" in report.text, report.text[-800:]
    assert (client.runs_dir / "tiny" / "report.html").is_file()
    page = client.get("/runs/tiny")
    assert page.status_code == 200 and 'data-run="tiny"' in page.text

    r = client.post("/api/runs/tiny/predict", json={"inputs": {"text": "a great and wonderful film"}})
    assert r.status_code == 200, r.text
    (pred,) = r.json()["predictions"]
    import deltatune

    expected = deltatune.load(client.runs_dir / "tiny").predict(["a great and wonderful film"])[0]
    assert pred["label"] == expected["label"]
    assert pred["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
    assert client.post("/api/runs/tiny/load", json={}).json() == {"task": "text-classification", "generative": False, "chat": False, "inputs": ["text"]}
    # a classifier does not chat: serving's one-line refusal, as a 400
    assert "does not answer chat messages" in error(client.post("/api/runs/tiny/chat", json={"messages": [{"role": "user", "content": "hi"}]}), 400)


def test_bad_input_is_a_4xx_with_one_line(client, data, tiny_model_dir, finished):
    assert "data file not found" in error(client.post("/api/runs", json=form("m1", tiny_model_dir, data, train_file="/no/such.csv")), 400)
    assert "unknown key 'train.bogus'" in error(client.post("/api/runs", json=form("m2", tiny_model_dir, data, settings="train.bogus=1")), 400)
    assert "line 1" in error(client.post("/api/runs", json=form("m3", tiny_model_dir, data, settings="no equals sign")), 400)
    assert "no column" in error(client.post("/api/runs", json=form("m4", tiny_model_dir, data, settings="data.text_column=nope")), 400)
    assert "epochs" in error(client.post("/api/runs", json=form("m5", tiny_model_dir, data, epochs=-1)), 400)
    assert "training data" in error(client.post("/api/runs", json=form("m6", tiny_model_dir, data, train_file="")), 400)
    assert "model path not found" in error(client.post("/api/inspect", json=form("m7", "/no/model", data)), 400)
    for bad in ("../evil", "a/b", ".hidden", "", "x" * 101, "a b"):
        assert "run name" in error(client.post("/api/runs", json=form(bad, tiny_model_dir, data)), 400)
    assert "already exists" in error(client.post("/api/runs", json=form("tiny", tiny_model_dir, data)), 409)
    assert "no run 'nope'" in error(client.get("/api/runs/nope"), 404)
    page = client.get("/runs/nope")  # a page route: an HTML page with the line and a link back
    assert page.status_code == 404 and "no run " in page.text and "nope" in page.text and 'href="/runs"' in page.text
    error(client.post("/api/runs/nope/predict", json={"inputs": {"text": "x"}}), 404)
    assert "inputs.text" in error(client.post("/api/runs/tiny/predict", json={"inputs": {"txt": "x"}}), 400)
    assert "empty" in error(client.post("/api/runs/tiny/predict", json={"inputs": {"text": ""}}), 400)
    error(client.post("/api/runs/tiny/predict", content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert "not running" in error(client.post("/api/runs/tiny/stop", json={}), 409)
    error(client.post("/api/compare", json={"runs": ["tiny"]}), 400)
    assert "two different runs" in error(client.post("/api/compare", json={"runs": ["tiny", "tiny"]}), 400)
    assert client.get("/runs/compare/compare-nothere.html").status_code == 404
    assert client.get("/runs/compare/..%2Fconfig.yaml").status_code == 404
    assert "file name" in error(client.put("/api/upload/evil.sh", content=b"x"), 400)
    assert not any(p.name.startswith("m") for p in client.runs_dir.iterdir())  # nothing started


def test_an_uploaded_file_can_be_trained_on(client, data):
    r = client.put("/api/upload/train.csv", content=data["train"].read_bytes())
    assert r.status_code == 201, r.text
    path = Path(r.json()["path"])
    assert path.read_bytes() == data["train"].read_bytes() and client.runs_dir / ".ui" / "uploads" in path.parents


def test_compare_writes_a_comparison_and_serves_it(client, finished, data, tiny_model_dir):
    r = client.post("/api/runs", json=form("tiny2", tiny_model_dir, data, method="lora", learning_rate=0.01))
    assert r.status_code == 201, r.text
    assert wait_done(client, "tiny2")["status"] == "finished"
    r = client.post("/api/compare", json={"runs": ["tiny", "tiny2"]})
    assert r.status_code == 200, r.text
    url = r.json()["url"]
    assert url.startswith("/runs/compare/compare-") and url.endswith(".html")
    page = client.get(url)
    assert page.status_code == 200 and "tiny2" in page.text
    assert 'href="/runs"' in page.text  # a way back to the UI
    assert (client.runs_dir / ".ui" / url.rsplit("/", 1)[1]).is_file()
    # the runs' report links open: ../NAME/report.html from /runs/compare/ is /runs/NAME/report.html
    from urllib.parse import urljoin

    for name in ("tiny", "tiny2"):
        assert f"../{name}/report.html" in page.text
        report = client.get(urljoin(url, f"../{name}/report.html"))
        assert report.status_code == 200 and name in report.text and f'href="/runs/{name}"' in report.text
    # the same runs in another order: the same file
    assert client.post("/api/compare", json={"runs": ["tiny2", "tiny"]}).json()["url"] == url
    assert len(list((client.runs_dir / ".ui").glob("compare-*.html"))) == 1


def test_delete_refuses_a_running_run_and_anything_but_runs_inside_the_runs_folder(client, data, tiny_model_dir, tmp_path):
    r = client.post("/api/runs", json=form("long", tiny_model_dir, data, settings="train.max_steps=100000\ntrain.logging_steps=1"))
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 120
    metrics = client.runs_dir / "long" / "metrics.jsonl"
    while not (metrics.is_file() and '"loss":' in metrics.read_text()) and time.monotonic() < deadline:
        time.sleep(0.3)  # the training loop runs (the start record comes before it)
    assert client.get("/api/runs/long").json()["status"] == "running"
    assert "running" in error(client.delete("/api/runs/long"), 409)
    assert client.post("/api/runs/long/stop", json={}).status_code == 200
    assert "already stopping" in error(client.post("/api/runs/long/stop", json={}), 409)
    detail = wait_done(client, "long", timeout=60)
    assert detail["status"] == "interrupted", "\n".join(detail["log"])
    assert (client.runs_dir / "long" / "checkpoints").is_dir()  # SIGINT: the trainer saved a checkpoint

    # not runs: a plain folder, a link to a run outside the runs folder, a path out of it
    (client.runs_dir / "notarun").mkdir()
    (client.runs_dir / "notarun" / "keep.txt").write_text("mine")
    assert "not a deltatune run" in error(client.delete("/api/runs/notarun"), 409)
    outside = tmp_path / "outside"
    (outside / "model").mkdir(parents=True)
    (outside / ".deltatune-run").write_text("{}")
    (client.runs_dir / "link").symlink_to(outside)
    assert "link" in error(client.delete("/api/runs/link"), 400)
    assert client.delete("/api/runs/..%2F..%2Fetc").status_code in (400, 404)
    assert client.delete("/api/runs/..").status_code in (400, 404)
    assert (client.runs_dir / "notarun" / "keep.txt").is_file() and (outside / ".deltatune-run").is_file()

    assert client.delete("/api/runs/long").json() == {"name": "long", "deleted": True}
    assert not (client.runs_dir / "long").exists() and not (client.runs_dir / ".ui" / "logs" / "long.log").exists()
    assert "no run 'long'" in error(client.get("/api/runs/long"), 404)


def test_importing_the_ui_does_not_import_torch():
    code = "import sys, deltatune.ui.server, deltatune.ui.app; print(','.join(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_ui_command_reports_a_port_in_use_in_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "deltatune", "ui", "--port", str(port), "--runs-dir", str(tmp_path)],
                             check=False, capture_output=True, text=True, timeout=60, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2 and out.stderr.startswith("error: cannot listen on 127.0.0.1:") and out.stderr.count("\n") == 1


def test_a_host_other_than_loopback_prints_a_warning(tmp_path):
    with socket.socket() as s:  # the port is taken, so the command ends right after the warning
        s.bind(("0.0.0.0", 0))
        s.listen(1)
        port = s.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "deltatune", "ui", "--host", "0.0.0.0", "--port", str(port), "--runs-dir", str(tmp_path)],
                             check=False, capture_output=True, text=True, timeout=60, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert "warning: the UI on 0.0.0.0" in out.stderr and "SSH tunnel" in out.stderr



def test_a_local_ui_answers_only_requests_addressed_to_a_loopback_name(tmp_path):
    from fastapi.testclient import TestClient

    from deltatune.ui.app import create_app

    app = create_app(tmp_path / "runs", allowed_hosts=["127.0.0.1", "localhost"])
    assert TestClient(app, base_url="http://127.0.0.1:7860").get("/api/runs").status_code == 200
    r = TestClient(app, base_url="http://evil.example:7860").get("/api/runs")  # DNS rebinding
    assert "invalid host header" in error(r, 400)


def test_a_run_trained_from_the_cli_shows_running_and_is_not_deleted(client, data, tiny_model_dir):
    overrides = [f"model.name_or_path={tiny_model_dir}", "task=text-classification", f"data.train_file={data['train']}",
                 "data.max_seq_length=32", "train.per_device_train_batch_size=8", "train.max_steps=100000", "train.logging_steps=1",
                 f"output_dir={client.runs_dir / 'cli'}"]
    trainer = subprocess.Popen([sys.executable, "-m", "deltatune", "train", *overrides], stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 120
        metrics = client.runs_dir / "cli" / "metrics.jsonl"  # a step's record, not the start record of step 0:
        # a Ctrl-C before the first step leaves nothing to resume ("failed"), after it a checkpoint
        while not (metrics.is_file() and '"loss"' in metrics.read_text()) and time.monotonic() < deadline:
            assert trainer.poll() is None
            time.sleep(0.3)
        detail = client.get("/api/runs/cli").json()
        assert (detail["status"], detail["own"], detail["trainer_pid"]) == ("running", False, trainer.pid)
        assert "not started by this UI" in detail["log_note"]
        assert "running" in error(client.delete("/api/runs/cli"), 409)
        assert f"kill -INT {trainer.pid}" in error(client.post("/api/runs/cli/stop", json={}), 409)
        assert (client.runs_dir / "cli" / "metrics.jsonl").is_file()
    finally:
        trainer.send_signal(signal.SIGINT)
        trainer.wait(timeout=60)
    assert client.get("/api/runs/cli").json()["status"] == "interrupted"  # a checkpoint, exit status unknown to the UI
