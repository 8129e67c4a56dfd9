"""Data-parallel training on 2 CPU processes (gloo) equals one process with the same global batch.

The two-process run is launched with ``torch.multiprocessing`` (the environment variables
``torchrun`` would set), is interrupted at a step and resumed with the same number of
processes, and must give the same per-step loss curve (within 1e-4) and final weights as an
uninterrupted single-process run whose per-device batch is the global batch. The training set
has a last global batch of one example (one process gets nothing from it) and the validation
set an odd number of examples (the ranks get different numbers of evaluation batches, the last
one short); evaluation metrics must equal a single-process evaluation of the same weights.
``torchrun -m deltatune train`` is checked as a command too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file

from deltatune import evaluate, finetune
from tests.helpers import make_easy_rows, write_csv

GLOBAL_BATCH = 8
WORLD = 2
STOP_AT = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(model_dir, train, val, out, per_device: int) -> dict:
    return {
        "task": "text-classification",
        "output_dir": str(out),
        "seed": 11,
        "model": {"name_or_path": model_dir, "dropout": 0.0},
        "data": {"train_file": str(train), "validation_file": str(val), "max_seq_length": 32},
        "train": {
            "per_device_train_batch_size": per_device,
            "learning_rate": 1e-3,
            "num_train_epochs": 2,
            "logging_steps": 1,
            "save_steps": 2,
            "progress_bar": False,
            "mixed_precision": "no",
        },
        "eval": {"eval_strategy": "steps", "eval_steps": 5, "per_device_eval_batch_size": 4},
    }


def _stop(trainer, state):
    if state.global_step == STOP_AT:
        raise KeyboardInterrupt


def _worker(rank: int, world: int, port: int, cfg: dict) -> None:
    """One process of the distributed run: train, stop at STOP_AT, resume to the end."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
        OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
    )
    torch.set_num_threads(1)
    cut = finetune(cfg, callbacks=(_stop,), verbose=False)
    assert cut.result.interrupted and cut.result.global_step == STOP_AT
    done = finetune(cfg["output_dir"], resume=True, verbose=False)
    assert not done.result.interrupted


def _losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.fixture
def data(tmp_path):
    # 41 training rows: global batches of 8 and a last one of 1; 33 validation rows (odd)
    return write_csv(tmp_path / "train.csv", make_easy_rows(41, 5)), write_csv(tmp_path / "val.csv", make_easy_rows(33, 6))


def test_two_processes_equal_one_process_with_the_same_global_batch(tiny_model_dir, data, tmp_path):
    train, val = data
    single = finetune(_config(tiny_model_dir, train, val, tmp_path / "single", GLOBAL_BATCH), verbose=False)

    ddp_dir = tmp_path / "ddp"
    mp.spawn(_worker, args=(WORLD, _free_port(), _config(tiny_model_dir, train, val, ddp_dir, GLOBAL_BATCH // WORLD)), nprocs=WORLD)

    a, b = _losses(single.path), _losses(ddp_dir)
    assert [s for s, _ in a] == [s for s, _ in b] and len(a) == single.result.global_step == 12  # 2 epochs x 6 batches
    for (step, la), (_, lb) in zip(a, b):
        assert abs(la - lb) < 1e-4, f"step {step}: {la} vs {lb}"
    wa = load_file(str(single.path / "model" / "model.safetensors"))
    wb = load_file(str(ddp_dir / "model" / "model.safetensors"))
    for k in wa:
        if k.endswith("attention.self.key.bias"):
            # softmax is invariant to a key bias, so its true gradient is 0 and AdamW's normalisation
            # turns float noise into steps of ~lr: it differs between any two summation orders
            continue
        torch.testing.assert_close(wb[k], wa[k], atol=1e-5, rtol=1e-4, msg=k)
    # the main process alone wrote the run directory: one config, each step logged once
    log = [json.loads(x) for x in (ddp_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == sorted(set(steps))

    # distributed evaluation covered every validation example exactly once
    ddp_eval = json.loads((ddp_dir / "eval.json").read_text())["validation"]
    local = evaluate(ddp_dir, str(val))
    assert ddp_eval["confusion_matrix"] == local["confusion_matrix"] and sum(map(sum, local["confusion_matrix"])) == 33
    assert ddp_eval["accuracy"] == local["accuracy"] == single.metrics["validation"]["accuracy"]
    assert ddp_eval["loss"] == pytest.approx(local["loss"], abs=1e-6)


def test_torchrun_runs_the_cli(tiny_model_dir, data, tmp_path):
    train, val = data
    cfg = _config(tiny_model_dir, train, val, tmp_path / "cli", GLOBAL_BATCH // WORLD)
    cfg["train"]["max_steps"] = 3
    cfg["eval"]["per_device_eval_batch_size"] = 64  # one evaluation batch: the second process gets none
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_port", str(_free_port()),
           "-m", "deltatune", "train", str(path), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "cli"
    assert json.loads((run / "eval.json").read_text())["train"]["global_step"] == 3
    assert (run / "model" / "model.safetensors").is_file()
    assert proc.stdout.count("validation metrics") == 1  # printed by the main process only
