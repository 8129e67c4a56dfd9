"""The web UI's answers to the faults of issue 15's new-user test (fast: hand-made run folders and
stand-in processes, no training): one SIGINT per stop, runs trained by other processes, wrongly
shaped run files, lone surrogates, CSRF, the Host guard, the model and form checks, statuses,
non-run folders, error pages, the training cap and empty uploads."""

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


@pytest.fixture
def ui(tmp_path):
    from fastapi.testclient import TestClient

    from deltatune.ui.app import create_app

    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    app = create_app(runs_dir, device="cpu", max_trainings=1)
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        c.runs_dir, c.runs = runs_dir, app.state.runs
        yield c
    for job in list(app.state.runs.jobs.values()):  # the stand-in trainers
        if job.process.poll() is None:
            job.process.kill()
            job.process.wait()


def fake_run(runs_dir: Path, name: str, config: str = "task: text-classification\nmodel: {name_or_path: minilm}\ndelta: {method: lora}\n",
             eval_json: object | None = None, checkpoint: bool = False, model: bool = False) -> Path:
    """A run folder as deltatune train leaves it (marker, config.yaml, metrics.jsonl; eval.json, a checkpoint, model/)."""
    root = runs_dir / name
    root.mkdir(parents=True)
    (root / ".deltatune-run").write_text("{}")
    (root / "config.yaml").write_text(config)
    (root / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
    if eval_json is not None:
        (root / "eval.json").write_text(eval_json if isinstance(eval_json, str) else json.dumps(eval_json))
    if checkpoint:
        (root / "checkpoints" / "step-1").mkdir(parents=True)
    if model:
        (root / "model").mkdir()
    return root


def error(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    message = r.json()["error"]
    assert "\n" not in message and "Traceback" not in message
    return message


def job(ui, name: str, argv: list[str], record: dict | None = None):
    """A stand-in trainer ``argv`` registered as the UI's job ``name``."""
    from deltatune.ui.runs import Job

    log = ui.runs.log_path(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    ui.runs.jobs[name] = Job(name, process, log)
    ui.runs._write_job(name, {"pid": process.pid, "started": time.time(), "argv": argv, "returncode": None, **(record or {})})
    return process


SIGINT_COUNTER = (
    "import signal, sys, time\n"
    "n = 0\n"
    "def h(*_):\n"
    "    global n\n"
    "    n += 1\n"
    "    open(sys.argv[1], 'a').write('int\\n')\n"
    "signal.signal(signal.SIGINT, h)\n"
    "open(sys.argv[1] + '.ready', 'w').write('')\n"
    "time.sleep(30)\n"
)


def test_stop_sends_one_sigint_and_a_second_stop_is_refused(ui, tmp_path):
    fake_run(ui.runs_dir, "dbl", checkpoint=True)
    counter = tmp_path / "sigints"
    process = job(ui, "dbl", [sys.executable, "-c", SIGINT_COUNTER, str(counter)])
    deadline = time.monotonic() + 20
    while not Path(str(counter) + ".ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    detail = ui.get("/api/runs/dbl").json()
    assert detail["status"] == "running" and detail["own"] and not detail["stopping"]
    assert ui.post("/api/runs/dbl/stop", json={}).json() == {"name": "dbl", "stopping": True}
    assert "already stopping" in error(ui.post("/api/runs/dbl/stop", json={}), 409)
    assert "already stopping" in error(ui.post("/api/runs/dbl/stop", json={}), 409)
    assert ui.get("/api/runs/dbl").json()["stopping"] is True  # the page disables Stop
    time.sleep(0.3)
    assert counter.read_text() == "int\n"  # one SIGINT only
    assert process.poll() is None
    # a restarted UI (no in-memory job) remembers it too
    ui.runs.jobs.clear()
    assert "already stopping" in error(ui.post("/api/runs/dbl/stop", json={}), 409)
    # a process still running a minute after the first stop never saw it (it came during imports): stop again
    record = json.loads(ui.runs.job_path("dbl").read_text())
    record["stopping"] -= 61
    ui.runs.job_path("dbl").write_text(json.dumps(record))
    assert ui.post("/api/runs/dbl/stop", json={}).json() == {"name": "dbl", "stopping": True}
    time.sleep(0.3)
    assert counter.read_text() == "int\nint\n"
    process.kill()
    process.wait()


def _training_file(root: Path, pid: int) -> None:
    import psutil

    (root / ".training").write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                                "process_started": psutil.Process(pid).create_time()}))


def test_a_run_trained_by_another_process_shows_running_and_cannot_be_deleted_stopped_or_tried(ui):
    root = fake_run(ui.runs_dir, "cli", model=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _training_file(root, other.pid)
        (row,) = ui.get("/api/runs").json()["runs"]
        assert (row["name"], row["status"], row["own"], row["trainer_pid"]) == ("cli", "running", False, other.pid)
        assert "being trained (by process" in error(ui.delete("/api/runs/cli"), 409)
        assert f"kill -INT {other.pid}" in error(ui.post("/api/runs/cli/stop", json={}), 409)
        assert "still training" in error(ui.post("/api/runs/cli/predict", json={"inputs": {"text": "x"}}), 409)
        assert "still training" in ui.get("/runs/cli/report").text
        assert root.is_dir()
    finally:
        other.kill()
        other.wait()
    # a dead trainer's file does not count: the run is not running any more
    assert ui.get("/api/runs/cli").json()["status"] == "failed"


@pytest.mark.parametrize("config, eval_json, analysis", [
    ("task: text-classification\n", {"validation": {"accuracy": float("nan")}, "train": "x"}, None),
    ("task: text-classification\n", {"validation": [1, 2]}, None),
    ("model: foo\ndelta: 3\n", None, None),
    ("data: [1]\n", None, None),
    ("[1, 2]\n", None, None),
    ("task: [1]\n", None, None),
    ("task: text-classification\n", None, "[1]"),
    ("task: text-classification\n", "{cut", None),
])
def test_wrongly_shaped_run_files_give_a_damaged_run_and_the_others_list(ui, config, eval_json, analysis):
    fake_run(ui.runs_dir, "good", eval_json={"validation": {"accuracy": 0.75}, "train": {"train_seconds": 3.0}})
    bad = fake_run(ui.runs_dir, "bad", config=config, eval_json=eval_json)
    if analysis is not None:
        (bad / "analysis.json").write_text(analysis)
    r = ui.get("/api/runs")
    assert r.status_code == 200, r.text
    rows = {row["name"]: row for row in r.json()["runs"]}
    assert rows["good"]["status"] == "finished" and rows["good"]["value"] == 0.75 and rows["good"]["train_seconds"] == 3.0
    assert rows["bad"]["status"] == "damaged" and "\n" not in rows["bad"]["reason"]
    assert any(f in rows["bad"]["reason"] for f in ("config.yaml", "eval.json", "analysis.json"))
    detail = ui.get("/api/runs/bad")
    assert detail.status_code == 200 and detail.json()["error"] == rows["bad"]["reason"]
    assert ui.get("/runs/bad").status_code == 200
    report = ui.get("/runs/bad/report")
    assert report.status_code == 409 and "damaged" in report.text and report.headers["content-type"].startswith("text/html")
    assert "damaged" in error(ui.post("/api/runs/bad/predict", json={"inputs": {"text": "x"}}), 409)


def test_type_safe_reading_of_configs_for_the_try_form():
    from deltatune.ui.trying import input_fields

    assert input_fields({"task": "text-classification", "data": [1]}) == ["text"]
    assert input_fields({"task": "summarization", "data": "x"}) is None


def test_a_folder_that_is_not_a_run_is_404(ui):
    (ui.runs_dir / "junkdir").mkdir()
    assert "no run 'junkdir'" in error(ui.get("/api/runs/junkdir"), 404)
    page = ui.get("/runs/junkdir")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "no run" in page.text and 'href="/runs"' in page.text  # an HTML page with a way back, not raw JSON
    assert "not a deltatune run" in error(ui.delete("/api/runs/junkdir"), 409)
    assert ui.get("/api/runs").json()["runs"] == []


def test_lone_surrogates_are_a_400_naming_the_field(ui, tmp_path):
    fake_run(ui.runs_dir, "fin", eval_json={"validation": {"accuracy": 1.0}}, model=True)
    bad = "\ud800"
    body = json.dumps({"inputs": {"text": bad}})  # json.dumps writes the \ud800 escape
    r = ui.post("/api/runs/fin/predict", content=body, headers={"content-type": "application/json"})
    assert "inputs.text" in error(r, 400) and "surrogate" in r.json()["error"]
    for field in ("train_file", "model", "name", "settings"):
        form = {"name": "s1", "train_file": "/tmp/x.csv", field: f"/tmp/{bad}.csv"}
        r = ui.post("/api/runs", content=json.dumps(form), headers={"content-type": "application/json"})
        assert field in error(r, 400), r.text
        r = ui.post("/api/inspect", content=json.dumps(form), headers={"content-type": "application/json"})
        assert field in error(r, 400), r.text
    r = ui.post("/api/compare", content=json.dumps({"runs": ["fin", bad]}), headers={"content-type": "application/json"})
    assert "runs[1]" in error(r, 400)


def test_no_message_can_hold_a_lone_surrogate():
    from deltatune.ui.app import json_response, one_line

    assert one_line("file /tmp/\ud800.csv") == "file /tmp/\\ud800.csv"
    assert json.loads(json_response({"error": "x\ud800"}).body)["error"] == "x\ud800"  # sent as its \uXXXX escape


def test_cross_site_requests_are_refused(ui):
    fake_run(ui.runs_dir, "csrf1", checkpoint=True)
    # the catalogue's curl: a form post from another site
    r = ui.post("/api/runs/csrf1/stop", content=b"", headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site",
                                                               "content-type": "application/x-www-form-urlencoded"})
    assert "another site" in error(r, 403)
    assert "another site" in error(ui.delete("/api/runs/csrf1", headers={"Origin": "http://evil.example"}), 403)
    assert "another site" in error(ui.post("/api/runs/csrf1/stop", json={}, headers={"Sec-Fetch-Site": "cross-site"}), 403)
    assert "another site" in error(ui.put("/api/upload/a.csv", content=b"x", headers={"Origin": "http://127.0.0.1:9999"}), 403)
    # a simple request without Origin still needs JSON
    assert "application/json" in error(ui.post("/api/runs/csrf1/stop", content=b"", headers={"content-type": "text/plain"}), 415)
    assert "application/json" in error(ui.post("/api/runs/csrf1/stop"), 415)
    # the UI's own pages: same origin
    same = {"Origin": "http://127.0.0.1:7860", "Sec-Fetch-Site": "same-origin"}
    assert "not running" in error(ui.post("/api/runs/csrf1/stop", json={}, headers=same), 409)
    assert (ui.runs_dir / "csrf1").is_dir()
    assert "larger than" in error(ui.post("/api/runs", content=b"{}", headers={"content-type": "application/json",
                                                                                "content-length": str(50 << 20)}), 413)


def test_the_host_guard_stays_on_for_ipv6_loopback(tmp_path):
    from fastapi.testclient import TestClient

    from deltatune.ui.app import create_app
    from deltatune.ui.server import loopback_names

    assert loopback_names("::1") == ["127.0.0.1", "localhost", "[::1]"]
    app = create_app(tmp_path / "runs", allowed_hosts=loopback_names("::1"))
    for good in ("http://[::1]:18702", "http://[::1]", "http://localhost:7860", "http://127.0.0.1"):
        assert TestClient(app, base_url=good).get("/api/runs").status_code == 200, good
    r = TestClient(app, base_url="http://[::1]:18702").get("/api/runs", headers={"Host": "evil.com"})
    assert "invalid host header" in error(r, 400)
    page = TestClient(app, base_url="http://evil.com:18702").get("/runs")
    assert page.status_code == 400 and page.headers["content-type"].startswith("text/html")


def test_the_model_is_checked_before_a_run_starts(ui, tmp_path, monkeypatch):
    from deltatune.ui.forms import check_model

    train = write_csv(tmp_path / "train.csv", make_sentiment_rows(8, 1))
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a model")
    base = {"name": "m", "task": "text-classification", "train_file": str(train)}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "hub is offline" in error(ui.post("/api/runs", json={**base, "model": "nosuchmodel"}), 400)
    assert "not a GGUF file" in error(ui.post("/api/runs", json={**base, "model": str(fake)}), 400)
    assert "not found" in error(ui.post("/api/runs", json={**base, "model": str(tmp_path / "none.gguf")}), 400)
    assert "no config.json" in error(ui.post("/api/runs", json={**base, "model": str(tmp_path)}), 400)
    assert "hub is offline" in error(ui.post("/api/runs", json={**base, "settings": "model.name_or_path=nosuch"}), 400)
    assert not (ui.runs_dir / "m").exists()
    real = tmp_path / "real.gguf"
    real.write_bytes(b"GGUF\x03\x00\x00\x00")
    check_model(str(real))
    check_model("minilm")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    check_model("someorg/somemodel")  # a hub id while online


def test_form_numbers_and_refused_settings(ui, tmp_path):
    train = write_csv(tmp_path / "train.csv", make_sentiment_rows(8, 1))
    base = {"name": "n", "task": "text-classification", "train_file": str(train)}
    assert error(ui.post("/api/runs", json={**base, "epochs": 1e308}), 400).startswith("epochs:")
    assert error(ui.post("/api/runs", json={**base, "epochs": "abc"}), 400).startswith("epochs:")
    assert error(ui.post("/api/runs", json={**base, "epochs": -1}), 400).startswith("epochs:")
    assert error(ui.post("/api/runs", json={**base, "batch_size": 2.5}), 400).startswith("batch_size:")
    assert error(ui.post("/api/runs", json={**base, "batch_size": 1e23}), 400).startswith("batch_size:")
    assert "set by the run name" in error(ui.post("/api/runs", json={**base, "settings": "output_dir=/etc/x"}), 400)
    assert "CLI" in error(ui.post("/api/runs", json={**base, "settings": "model.trust_remote_code=true"}), 400)
    assert "not valid JSON" in error(ui.post("/api/runs", content=b"{no", headers={"content-type": "application/json"}), 422)
    assert not (ui.runs_dir / "n").exists()


@pytest.mark.parametrize("record, checkpoint, log, expected", [
    ({"returncode": 130}, True, "", ("interrupted", None)),
    ({"returncode": 130}, False, "", ("failed", "stopped before its first checkpoint")),
    ({"returncode": None, "stopping": 1.0}, True, "", ("interrupted", None)),
    ({"returncode": -9}, True, "", ("failed", "killed by signal 9")),  # kill -9, UI alive
    ({"returncode": None}, True, "", ("failed", "not watching")),  # kill -9, then a UI restart
    ({"returncode": 1}, False, "step 1/2\nerror: data file not found: x.csv\n", ("failed", "data file not found: x.csv")),
    (None, True, "", ("interrupted", None)),  # a CLI run: exit status unknown, resumable
    (None, False, "", ("failed", "no eval.json")),
])
def test_the_status_rule(ui, record, checkpoint, log, expected):
    fake_run(ui.runs_dir, "r", checkpoint=checkpoint)
    if record is not None:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        ui.runs._write_job("r", {"pid": dead.pid, "started": time.time() - 5, "argv": [], **record})
        ui.runs.log_path("r").parent.mkdir(parents=True, exist_ok=True)
        ui.runs.log_path("r").write_text(log)
    status, reason = ui.runs.status("r")
    assert status == expected[0]
    assert (reason is None) if expected[1] is None else (expected[1] in reason)
    note = ui.get("/api/runs/r").json()["log_note"]
    assert (note is None) if record is not None else ("not started by this UI" in note)


def test_a_reused_pid_is_not_a_running_trainer(ui):
    fake_run(ui.runs_dir, "old", checkpoint=True)
    ui.runs._write_job("old", {"pid": os.getpid(), "started": time.time() - 3600, "argv": [], "returncode": None})
    assert ui.runs.status("old")[0] == "failed"  # this process is alive but was not started then


def test_chat_roles_and_messages_read_as_the_ui(ui):
    fake_run(ui.runs_dir, "c", eval_json={"validation": {}}, model=True)
    assert "'user'" in error(ui.post("/api/runs/c/chat", json={"messages": [{"role": "hacker", "content": "hi"}]}), 400)
    from deltatune.ui.app import _for_the_ui

    assert "/v1/predict" not in _for_the_ui("it does not answer chat messages: send its inputs to POST /v1/predict")
    assert "serve" not in _for_the_ui("the prompt has 9 tokens; this server takes at most 4 (serve --max-input-tokens): shorten it")


def test_at_most_max_trainings_run_at_once(ui, tmp_path):
    sleeper = job(ui, "busy", [sys.executable, "-c", "import time; time.sleep(30)"])
    train = write_csv(tmp_path / "train.csv", make_sentiment_rows(8, 1))
    r = ui.post("/api/runs", json={"name": "more", "task": "text-classification", "train_file": str(train)})
    assert "the most this UI starts at once (1)" in error(r, 429)
    sleeper.send_signal(signal.SIGKILL)
    sleeper.wait()
    assert ui.runs.own_running() == []


def test_empty_uploads_are_refused(ui):
    assert "empty" in error(ui.put("/api/upload/train.csv", content=b""), 400)
    assert not any((ui.runs_dir / ".ui" / "uploads").glob("*/*"))
