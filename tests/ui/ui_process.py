"""``deltatune ui`` as a real subprocess on a free localhost port (the API and browser tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.serving.server_process import Server, free_port, wait_ready


@dataclass
class Ui(Server):
    """A running UI: ``url`` (``http://127.0.0.1:PORT``), its process, log file (``stop``/``output``
    as a server's) and runs folder. Stopping it leaves the trainings it started running (their own sessions)."""

    runs_dir: Path


def start_ui(runs_dir: Path, log: Path, timeout: float = 60.0, args: list[str] | None = None) -> Ui:
    """Start ``python -m deltatune ui --port P --runs-dir RUNS_DIR`` and wait until it answers.

    Raises:
        RuntimeError: the process exited or did not answer within ``timeout`` seconds (with its output).
    """
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    f = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "deltatune", "ui", "--port", str(port), "--runs-dir", str(runs_dir), *(args or [])],
        stdout=f, stderr=subprocess.STDOUT, env=env,
    )
    return wait_ready(Ui(f"http://127.0.0.1:{port}", proc, log, runs_dir), "/api/options", "deltatune ui", timeout)


def wait_finished(ui: Ui, name: str, timeout: float = 300.0) -> dict:
    """Poll ``GET /api/runs/NAME`` until the run is no longer running; returns its detail."""
    deadline = time.monotonic() + timeout
    detail: dict = {}
    while time.monotonic() < deadline:
        detail = httpx.get(f"{ui.url}/api/runs/{name}", timeout=10).json()
        if detail.get("status") not in ("running", None):
            return detail
        time.sleep(0.5)
    raise AssertionError(f"run {name} still running after {timeout} s: {detail.get('log')}")
