"""Memory-aware micro-batches: the same steps and losses with less memory; out of memory kept as a checkpoint."""

import json

import pytest
import torch
import yaml

from deltatune import finetune
from deltatune.errors import DeltatuneError
from deltatune.training import batch_plan
from deltatune.training.batch_plan import (
    GiB,
    divisors_descending,
    is_out_of_memory,
    plan_batch,
    plan_by_trial,
)
from deltatune.training.batching import epoch_batches, split_batch
from deltatune.training.checkpoint import list_checkpoints
from tests.helpers import tiny_config

# ---- the planner, pure ----------------------------------------------------------------


def test_plan_keeps_a_batch_that_fits():
    plan = plan_batch(32, 1, 384, lambda m: m * GiB, available=40 * GiB)
    assert (plan.micro_batch_size, plan.micro_batches_per_step, plan.source) == (32, 1, "fits")
    assert plan.message() is None


def test_plan_lowers_the_micro_batch_and_keeps_the_global_batch():
    plan = plan_batch(32, 1, 384, lambda m: int(1.8 * m * GiB), available=int(9.8 * GiB))
    assert plan.micro_batch_size == 4  # 8 needs 14.4 GiB: the largest divisor of 32 that fits is 4
    assert plan.micro_batches_per_step == 8 and plan.examples_per_step == 32
    assert plan.message() == (
        "batch 32 x 384 tokens needs ~57.6 GiB, 9.8 GiB available: "
        "micro-batch 4 x gradient accumulation 8 (same global batch 32)"
    )
    with_accum = plan_batch(24, 2, 128, lambda m: m * GiB, available=10 * GiB)
    assert (with_accum.micro_batch_size, with_accum.micro_batches_per_step, with_accum.examples_per_step) == (8, 6, 48)
    assert divisors_descending(12) == [12, 6, 4, 3, 2, 1]


def test_plan_refuses_when_one_example_does_not_fit_and_obeys_the_user():
    with pytest.raises(DeltatuneError) as e:
        plan_batch(32, 1, 2048, lambda m: (m + 30) * GiB, available=20 * GiB)
    msg = str(e.value)
    assert "\n" not in msg and "data.max_seq_length" in msg and "train.gradient_checkpointing" in msg
    given = plan_batch(32, 1, 2048, lambda m: (m + 30) * GiB, available=20 * GiB, micro_batch_size=6)
    assert (given.micro_batch_size, given.micro_batches_per_step, given.source) == (6, 6, "config")


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_trial_plan_takes_the_largest_batch_that_runs():
    tried, cleaned = [], []

    def try_step(m):
        tried.append(m)
        if m > 4:
            raise torch.OutOfMemoryError("CUDA out of memory")

    plan = plan_by_trial(16, 1, 256, try_step, lambda: cleaned.append(1))
    assert plan.micro_batch_size == 4 and plan.source == "trial" and tried == [16, 8, 4] and len(cleaned) == 2
    assert "ran out of memory in a trial step" in plan.message()

    def broken(m):
        raise RuntimeError("expected scalar type Float")

    with pytest.raises(RuntimeError, match="scalar type"):  # not memory: not hidden
        plan_by_trial(16, 1, 256, broken)


def test_cpu_probe_reports_available_ram():
    got = batch_plan.available_memory_bytes(torch.device("cpu"))
    assert 0 < got <= __import__("psutil").virtual_memory().total


# ---- the batches of an optimizer step ------------------------------------------------------


@pytest.mark.parametrize("group_by_length", [True, False])
def test_micro_batches_hold_the_same_examples_per_step(group_by_length):
    lengths = [(i * 37) % 50 + 1 for i in range(90)]
    batches = epoch_batches(lengths, 16, seed=3, epoch=1, group_by_length=group_by_length)
    pieces = [split_batch(b, 4) for b in batches]
    assert [sum(p, []) for p in pieces] == batches  # in order, nothing lost or repeated
    assert sorted(len(p) for ps in pieces for p in ps) == [2] + [4] * 22


# ---- end to end: the same losses under a memory limit; out of memory -------------------------------


def _cfg(tiny_model_dir, sentiment_csv, out, **train_kw):
    train, val = sentiment_csv
    cfg = tiny_config(tiny_model_dir, train, val, out, per_device_train_batch_size=16, num_train_epochs=2, **train_kw)
    cfg["data"]["max_train_samples"] = 90  # the last batch of each epoch is 10: micro-batches 8 + 2
    return cfg


def _losses(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r]


def test_memory_limit_gives_micro_batches_and_the_same_losses(tiny_model_dir, sentiment_csv, tmp_path, monkeypatch, capsys):
    needs = {}

    def record(trainer, state):
        needs["full"] = trainer.plan.needed_bytes

    monkeypatch.setattr(batch_plan, "available_memory_bytes", lambda device: 1 << 50)
    full = finetune(_cfg(tiny_model_dir, sentiment_csv, tmp_path / "full"), callbacks=(record,), verbose=False)
    assert full.metrics["train"]["micro_batch_size"] == 16

    # just less than the batch of 16 needs: it runs in micro-batches of 8, two per step
    monkeypatch.setattr(batch_plan, "available_memory_bytes", lambda device: needs["full"] - 1)
    small = finetune(_cfg(tiny_model_dir, sentiment_csv, tmp_path / "small"))
    out = capsys.readouterr().out
    assert "micro-batch 8 x gradient accumulation 2 (same global batch 16)" in out
    train = small.metrics["train"]
    assert (train["per_device_train_batch_size"], train["micro_batch_size"], train["micro_batches_per_step"]) == (16, 8, 2)
    assert train["planned_by"] == "lowered" and train["global_step"] == full.metrics["train"]["global_step"]
    a, b = _losses(full.path), _losses(small.path)
    assert [s for s, _ in a] == [s for s, _ in b] and len(a) >= 10
    for (_, x), (_, y) in zip(a, b):
        assert x == pytest.approx(y, rel=1e-5)
    assert small.metrics["validation"]["loss"] == pytest.approx(full.metrics["validation"]["loss"], rel=1e-5)
    # config.yaml says what the user asked for
    saved = yaml.safe_load((small.path / "config.yaml").read_text())["train"]
    assert saved["per_device_train_batch_size"] == 16 and saved.get("micro_batch_size") is None


def test_out_of_memory_keeps_the_last_step_and_resumes_with_a_smaller_micro_batch(tiny_model_dir, sentiment_csv, tmp_path):
    reference = finetune(_cfg(tiny_model_dir, sentiment_csv, tmp_path / "ref"), verbose=False)

    def exhaust_memory_at_step_4(trainer, state):
        if state.global_step == 3:  # the next step's forward pass fails to allocate
            def loss(model, batch):
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes")

            trainer.task.loss = loss

    out = tmp_path / "oom"
    with pytest.raises(DeltatuneError) as e:
        finetune(_cfg(tiny_model_dir, sentiment_csv, out), callbacks=(exhaust_memory_at_step_4,), verbose=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("out of memory at step 4 of 12")
    for setting in ("train.micro_batch_size", "train.per_device_train_batch_size", "data.max_seq_length", "train.gradient_checkpointing"):
        assert setting in msg
    assert f"deltatune train --resume {out} train.micro_batch_size=8" in msg
    assert [int(p.name.rsplit("-", 1)[1]) for p in list_checkpoints(out / "checkpoints")] == [3]
    assert not (out / "eval.json").exists()

    # resume as the message says: a smaller micro-batch, the same curve
    resumed = finetune(out, {"train.micro_batch_size": 8}, resume=True, verbose=False)
    assert resumed.metrics["train"]["micro_batch_size"] == 8
    a, b = _losses(reference.path), _losses(resumed.path)
    assert [s for s, _ in a] == [s for s, _ in b]
    assert a[-1][1] == pytest.approx(b[-1][1], rel=1e-5)


def test_out_of_memory_after_a_step_keeps_that_step(tiny_model_dir, sentiment_csv, tmp_path):
    def fail(trainer, state):
        raise MemoryError()

    with pytest.raises(DeltatuneError, match=r"out of memory at step 2 of 12 .*kept a checkpoint of step 1"):
        finetune(_cfg(tiny_model_dir, sentiment_csv, tmp_path / "a"), callbacks=(fail,), verbose=False)


def test_two_processes_with_micro_batches_equal_one_process(tiny_model_dir, tmp_path):
    """DDP (2 CPU processes, interrupted and resumed) with micro-batches of 1 per process: the curve of one process."""
    import torch.multiprocessing as mp

    from tests.helpers import make_easy_rows, write_csv
    from tests.training.test_distributed import GLOBAL_BATCH, WORLD, _config, _free_port, _worker

    train = write_csv(tmp_path / "train.csv", make_easy_rows(41, 5))  # a last global batch of 1
    val = write_csv(tmp_path / "val.csv", make_easy_rows(33, 6))
    single = finetune(_config(tiny_model_dir, train, val, tmp_path / "single", GLOBAL_BATCH), verbose=False)
    cfg = _config(tiny_model_dir, train, val, tmp_path / "ddp", GLOBAL_BATCH // WORLD)
    cfg["train"]["micro_batch_size"] = 1  # 4 per process and step, one at a time
    mp.spawn(_worker, args=(WORLD, _free_port(), cfg), nprocs=WORLD)
    a, b = _losses(single.path), _losses(tmp_path / "ddp")
    assert [s for s, _ in a] == [s for s, _ in b] and len(a) == 12
    for (step, la), (_, lb) in zip(a, b):
        assert abs(la - lb) < 1e-4, f"step {step}: {la} vs {lb}"
    train_section = json.loads((tmp_path / "ddp" / "eval.json").read_text())["train"]
    assert (train_section["micro_batch_size"], train_section["micro_batches_per_step"]) == (1, 4)


def test_batch_size_auto_is_accepted_and_nonsense_refused(tiny_model_dir, sentiment_csv, tmp_path, monkeypatch):
    from deltatune.config import build_config

    for bad in (0, -2, "big", 2.5):
        with pytest.raises(DeltatuneError, match=r"train.per_device_train_batch_size': must be a positive integer or auto"):
            build_config({"task": "text-classification", "train": {"per_device_train_batch_size": bad}})
    cfg = _cfg(tiny_model_dir, sentiment_csv, tmp_path / "auto")
    cfg["train"]["per_device_train_batch_size"] = "auto"
    monkeypatch.setattr(batch_plan, "available_memory_bytes", lambda device: 1 << 50)
    run = finetune(cfg, verbose=False)
    # on CPU: the default batch of 32, its micro-batch planned by the estimate (here: fits)
    assert (run.metrics["train"]["per_device_train_batch_size"], run.metrics["train"]["micro_batch_size"]) == (32, 32)
    assert run.result.global_step == 2 * 3  # 90 rows: 3 batches of 32 per epoch
    assert yaml.safe_load((run.path / "config.yaml").read_text())["train"]["per_device_train_batch_size"] == "auto"
