"""``kill -9`` of a real ``deltatune train`` process, then ``--resume``: the same end as an uninterrupted run.

The process is killed once in the middle of a checkpoint write (at a random step, held there by
the ``DELTATUNE_TEST_CHECKPOINT_PAUSE`` hook of :mod:`deltatune.training.checkpoint`) and, in the
slow variant, once more at a random moment of the resumed run; the last resume must reach the
uninterrupted run's final loss and saved weights (tolerance 1e-6). Checkpoints every step
(``train.save_steps: 1``), dropout on (the RNG states must be restored).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from deltatune import finetune
from deltatune.training.checkpoint import PAUSE_ENV, list_checkpoints
from tests.helpers import make_sentiment_rows, tiny_config, write_csv

ROOT = Path(__file__).resolve().parents[2]
STEPS = 24  # 96 rows, batch 8, 2 epochs


def _config(tiny_model_dir: str, tmp_path: Path, method: str, out: Path) -> dict:
    train = write_csv(tmp_path / "train.csv", make_sentiment_rows(96, 1))
    val = write_csv(tmp_path / "validation.csv", make_sentiment_rows(32, 2))
    cfg = tiny_config(tiny_model_dir, train, val, out, num_train_epochs=2, save_steps=1, save_total_limit=2)
    cfg["model"]["dropout"] = 0.1
    cfg["eval"] = {"eval_strategy": "steps", "eval_steps": 5}
    cfg["delta"] = {"method": method}
    return cfg


def _start(args: list[str], log: Path, pause: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop(PAUSE_ENV, None)
    if pause:
        env[PAUSE_ENV] = pause
    with log.open("ab") as f:
        return subprocess.Popen([sys.executable, "-m", "deltatune", "train", *args], cwd=ROOT, env=env, stdout=f, stderr=f)


def _wait_until(proc: subprocess.Popen, ready, log: Path, what: str, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"train exited ({proc.returncode}) before {what}: {log.read_text()[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _logged_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(ln).get("step", 0) for ln in lines if ln.endswith("}")]
    return max(steps, default=0)


def _losses(run: Path) -> list[tuple[int, float]]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    files = sorted((run / "model").rglob("*.safetensors"))
    assert files
    return {f"{f.relative_to(run)}:{k}": v for f in files for k, v in load_file(str(f)).items()}


def _killed_and_resumed(tiny_model_dir, tmp_path, method: str, kill_again: bool) -> None:
    rng = random.Random()
    mid_write = rng.randint(3, 9)
    again = rng.randint(mid_write + 2, STEPS - 4)
    print(f"kill -9 during the checkpoint write of step {mid_write}" + (f", then at step >= {again}" if kill_again else ""))

    reference = finetune(_config(tiny_model_dir, tmp_path, method, tmp_path / "reference"), verbose=False)
    run = tmp_path / "killed"
    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump(_config(tiny_model_dir, tmp_path, method, run)))
    log = tmp_path / "train.log"

    # 1. killed in the middle of writing checkpoint `mid_write` (its first file is written)
    proc = _start([str(config)], log, pause=f"{mid_write}:120")
    partial = run / "checkpoints" / f".tmp-step-{mid_write:08d}" / "trainable.safetensors"
    _wait_until(proc, partial.is_file, log, f"the checkpoint write of step {mid_write}")
    _kill(proc)
    assert partial.parent.is_dir()  # killed mid-write: the temporary folder is there, half-written
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [
        f"step-{mid_write - 2:08d}", f"step-{mid_write - 1:08d}"
    ]  # the half-written one is not listed, the older ones are untouched

    # 2. (slow variant) resumed, then killed again at whatever it is doing at step `again`
    if kill_again:
        proc = _start([str(run), "--resume"], log)
        _wait_until(proc, lambda: _logged_step(run) >= again, log, f"step {again}")
        _kill(proc)

    # 3. resumed to the end
    done = subprocess.run(
        [sys.executable, "-m", "deltatune", "train", str(run), "--resume"],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # leftovers cleaned

    a, b = _losses(reference.path), _losses(run)
    assert [s for s, _ in a] == [s for s, _ in b] and a[-1][0] == STEPS
    assert b[-1][1] == pytest.approx(a[-1][1], abs=1e-6)
    wa, wb = _weights(reference.path), _weights(run)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-6, rtol=0, msg=k)


def test_kill_during_a_checkpoint_write_then_resume(tiny_model_dir, tmp_path):
    _killed_and_resumed(tiny_model_dir, tmp_path, "full", kill_again=False)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_kill_twice_then_resume(tiny_model_dir, tmp_path, method):
    _killed_and_resumed(tiny_model_dir, tmp_path, method, kill_again=True)


def _interrupted_in_checkpoint_5(tiny_model_dir, tmp_path: Path, name: str, pause_seconds: int) -> tuple[Path, subprocess.Popen, Path]:
    """A ``deltatune train`` process held in the middle of writing checkpoint 5 (``pause_seconds``),
    sent one SIGINT there: ``(run, process, log)``."""
    run = tmp_path / name
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(_config(tiny_model_dir, tmp_path, "full", run)))
    log = tmp_path / "train.log"
    proc = _start([str(config)], log, pause=f"5:{pause_seconds}")
    partial = run / "checkpoints" / ".tmp-step-00000005" / "trainable.safetensors"
    _wait_until(proc, partial.is_file, log, "the checkpoint write of step 5")
    proc.send_signal(signal.SIGINT)
    return run, proc, log


def test_ctrl_c_during_a_checkpoint_write_finishes_it_then_stops_resumably(tiny_model_dir, tmp_path):
    """SIGINT in the middle of writing checkpoint 5 (held there 3 s): the write completes, the
    trainer stops with 130 ("interrupted", not a torch.save error), and --resume ends as the
    uninterrupted run does."""
    reference = finetune(_config(tiny_model_dir, tmp_path, "full", tmp_path / "reference"), verbose=False)
    run, proc, log = _interrupted_in_checkpoint_5(tiny_model_dir, tmp_path, "stopped", 3)
    assert proc.wait(timeout=60) == 130, log.read_text()[-3000:]
    assert "finishing writing" in log.read_text() and "Traceback" not in log.read_text()
    checkpoints = [p.name for p in list_checkpoints(run / "checkpoints")]
    assert checkpoints[-1] == "step-00000005" and (run / "checkpoints" / "step-00000005" / "optimizer.pt").is_file()
    done = subprocess.run([sys.executable, "-m", "deltatune", "train", str(run), "--resume"], cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from checkpoint step-00000005: step 5 of 24" in done.stdout
    assert _losses(run)[-1][1] == pytest.approx(_losses(reference.path)[-1][1], abs=1e-6)


def test_a_second_ctrl_c_abandons_the_checkpoint_write_and_keeps_the_previous_one(tiny_model_dir, tmp_path):
    run, proc, log = _interrupted_in_checkpoint_5(tiny_model_dir, tmp_path, "abandoned", 30)
    _wait_until(proc, lambda: "finishing writing" in log.read_text(), log, "the first interrupt's message")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, log.read_text()[-3000:]
    text = log.read_text()
    assert "interrupted again: the step in progress was abandoned; continue from step-00000004 with: deltatune train --resume" in text
    assert "Traceback" not in text
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000003", "step-00000004"]  # no step 5
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # nor its temporary folder
