"""Fuzzing the real server with schemathesis (property-based tests from its OpenAPI schema).

Schemathesis (https://schemathesis.readthedocs.io) generates requests for every operation of
``/openapi.json`` (valid and invalid bodies, wrong types, odd strings, missing fields), sends
them to a ``deltatune serve`` process on localhost serving a classifier and an instruction run,
and checks ``not_a_server_error``: no answer may be a 5xx. The number of requests is printed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import deltatune
from deltatune.tasks import get_task_class
from tests.serving.server_process import start_server
from tests.tasks.demo_runs import demo_config

KEY = "fuzz-key"


def _statuses(ndjson: Path) -> list[int]:
    """Every response status recorded in schemathesis' NDJSON event log."""
    found: list[int] = []

    def walk(value):
        if isinstance(value, dict):
            if isinstance(value.get("status_code"), int):
                found.append(value["status_code"])
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for line in ndjson.read_text().splitlines():
        event = json.loads(line)
        if "ScenarioFinished" in event:
            walk(event["ScenarioFinished"].get("recorder", {}).get("interactions", {}))
    return found


@pytest.mark.skipif(shutil.which("schemathesis") is None and not Path(sys.executable).with_name("schemathesis").exists(),
                    reason="schemathesis is a test dependency (pip install -e .[test])")
def test_schemathesis_finds_no_server_error(tiny_model_dir, tiny_llama_dir, tmp_path):
    runs = []
    for name, model_dir in (("text-classification", tiny_model_dir), ("instruction", tiny_llama_dir)):
        cfg, _ = demo_config(name, get_task_class(name), model_dir, tmp_path / name, max_steps=1)
        runs.append(f"{name}={deltatune.finetune(cfg, verbose=False).path}")
    server = start_server([*runs, "--api-key", KEY, "--max-new-tokens-limit", "8", "--max-inputs", "16"], tmp_path / "serve.log")
    try:
        exe = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
        p = subprocess.run(
            [exe, "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "15", "--seed", "7",
             "--header", f"Authorization: Bearer {KEY}", "--request-timeout", "60", "--report", "ndjson",
             "--report-dir", str(tmp_path / "report")],
            capture_output=True, text=True, timeout=900,
        )
    finally:
        server.stop()
    statuses = _statuses(next((tmp_path / "report").glob("*.ndjson")))
    print(f"schemathesis sent {len(statuses)} requests: {sum(s < 500 for s in statuses)} answered below 500")
    assert p.returncode == 0, p.stdout[-4000:] + server.output()[-4000:]
    assert len(statuses) >= 100 and all(s < 500 for s in statuses)
    assert sum(200 <= s < 300 for s in statuses) >= 5, "the fuzzer never got past validation"
