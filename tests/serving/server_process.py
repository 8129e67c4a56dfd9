"""``deltatune serve`` as a real subprocess on a free localhost port (tests and the README check)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running server: ``url`` (``http://127.0.0.1:PORT``), its process and its log file."""

    url: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 10 s)."""
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def output(self) -> str:
        """What the server printed so far."""
        return self.log.read_text(errors="replace")


def start_server(args: list[str], log: Path, timeout: float = 180.0, env: dict[str, str] | None = None) -> Server:
    """Start ``python -m deltatune serve ARGS --port P`` and wait until ``GET /health`` is 200.

    Raises:
        RuntimeError: the process exited or was not ready within ``timeout`` seconds (with its output).
    """
    port = free_port()
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    f = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "deltatune", "serve", *args, "--port", str(port)], stdout=f, stderr=subprocess.STDOUT, env=full_env
    )
    return wait_ready(Server(f"http://127.0.0.1:{port}", proc, log), "/health", "deltatune serve", timeout)


def wait_ready(server: "Server", path: str, what: str, timeout: float):
    """Poll ``GET server.url + path`` until it answers 200; returns ``server``.

    Raises:
        RuntimeError: the process exited or did not answer within ``timeout`` seconds (with its
            output); the process is stopped then.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{what} exited with {server.process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}{path}", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"{what} was not ready within {timeout} s:\n{server.output()}")
