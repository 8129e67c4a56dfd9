"""The README's "Serve" examples, run as written: its curl command and its ``openai`` client code
against a real ``deltatune serve`` process (tiny runs under the README's model ids).

The code blocks follow the markers ``<!-- test: serve-curl -->`` and ``<!-- test: serve-openai -->``;
the README's ``127.0.0.1:8000`` is replaced by the test server's address.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import deltatune
from deltatune.tasks import get_task_class
from tests.helpers import tiny_config
from tests.serving.server_process import start_server
from tests.tasks.demo_runs import demo_config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def readme_block(marker: str) -> str:
    """The code block after ``<!-- test: MARKER -->`` in the README."""
    m = re.search(rf"<!-- test: {marker} -->\s*```\w*\n(.*?)```", README, re.S)
    assert m, f"README has no code block after <!-- test: {marker} -->"
    return m.group(1)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tiny_llama_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readme")
    data = ROOT / "examples" / "data"
    cfg = tiny_config(tiny_model_dir, data / "support_tickets_train.csv", data / "support_tickets_validation.csv", tmp / "tickets", max_steps=2)
    tickets = deltatune.finetune(cfg, verbose=False).path
    cfg, _ = demo_config("instruction", get_task_class("instruction"), tiny_llama_dir, tmp / "sft", max_steps=1)
    sft = deltatune.finetune(cfg, verbose=False).path
    srv = start_server([f"support-tickets={tickets}", f"alpaca-sft={sft}"], tmp / "serve.log")
    yield srv
    srv.stop()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_curl_example_works(server):
    command = readme_block("serve-curl").replace("http://127.0.0.1:8000", server.url)
    p = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    body = json.loads(p.stdout)
    labels = {"shipping", "billing", "account", "technical"}
    assert body["model"] == "support-tickets" and len(body["predictions"]) == 2
    assert all(pred["label"] in pred["probabilities"] and set(pred["probabilities"]) <= labels | {pred["label"]} for pred in body["predictions"])


def test_the_readme_openai_client_example_works(server, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(readme_block("serve-openai").replace("http://127.0.0.1:8000", server.url))
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip(), "the example printed nothing"
