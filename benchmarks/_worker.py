"""Run one benchmark arm in its own Python process, so that its peak RSS is its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_worker(script: str, name: str, args: list[str]) -> dict:
    """Run ``python script --worker name *args`` offline and return the JSON it prints after ``RESULT ``.

    Raises:
        SystemExit: the worker failed (its output tail is printed to stderr).
    """
    proc = subprocess.run(
        [sys.executable, script, "--worker", name, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{name} failed with exit code {proc.returncode}")
    return json.loads(line[len("RESULT ") :])
