"""DeepSpeed ZeRO (``distributed.strategy: deepspeed``) through Accelerate, on CPU processes (gloo).

The fast tests check the config, the plugin's settings, the refusals and ``deltatune check``'s
line without DeepSpeed. The slow ones (skipped without DeepSpeed; the first DeepSpeed start of a
machine compiles its shared-memory op for about 2 minutes) train a tiny random BERT classifier:
ZeRO-3 full fine-tuning on 2 processes in micro-batches of 2 (killed at step 3, after the
DeepSpeed checkpoint of step 2; a second launch resumes from it), ZeRO-2 full fine-tuning in one
process, and ZeRO-3 LoRA on 2 processes (the best weights of step 2 put back before saving).
Each follows the single-process loss curve at the same global batch to 1e-4 over 5 steps, and
the saved model (a whole Hugging Face folder, a non-empty adapter) gives the single-process
model's logits.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

import deltatune
from deltatune import finetune
from deltatune.config import DistributedConfig, build_config
from deltatune.errors import DeltatuneError
from deltatune.training.strategy import check_requested_strategy
from tests.helpers import make_easy_rows, write_csv

GLOBAL_BATCH = 8
WORLD = 2
STEPS = 5
STOP_AT = 3


# ---- fast: config, plugin settings, refusals ----------------------------------------------------------
def test_the_deepspeed_settings_are_checked_in_the_config():
    d = build_config({"distributed": {"strategy": "deepspeed", "zero_stage": 3, "offload_param": "cpu"}}).distributed
    assert (d.zero_stage, d.offload_optimizer, d.offload_param) == (3, "none", "cpu")
    assert build_config({}).distributed.zero_stage == 2
    with pytest.raises(DeltatuneError, match="offload_param applies to zero_stage 3"):
        build_config({"distributed": {"strategy": "deepspeed", "zero_stage": 2, "offload_param": "cpu"}})
    with pytest.raises(DeltatuneError, match="distributed.zero_stage"):
        build_config({"distributed": {"zero_stage": 4}})
    with pytest.raises(DeltatuneError, match="distributed.offload_optimizer"):
        build_config({"distributed": {"offload_optimizer": "nvme"}})


def test_the_plugin_gets_the_configs_settings():
    from accelerate.utils import DeepSpeedPlugin

    from deltatune.training.deepspeed_engine import batch_settings, plugin_options

    cfg = build_config({"train": {"max_grad_norm": 0.5},
                        "distributed": {"strategy": "deepspeed", "zero_stage": 3, "offload_optimizer": "cpu", "offload_param": "cpu"}})
    plugin = DeepSpeedPlugin(**plugin_options(cfg))
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # ZeRO-3 saves a whole model
    assert plugin.deepspeed_config["gradient_clipping"] == 0.5 and plugin.deepspeed_config["gradient_accumulation_steps"] == 1
    assert plugin.zero3_init_flag is False
    two = DeepSpeedPlugin(**plugin_options(build_config({"train": {"max_grad_norm": None}, "distributed": {"strategy": "deepspeed"}})))
    assert two.deepspeed_config["zero_optimization"]["stage"] == 2 and two.deepspeed_config["gradient_clipping"] == 0.0
    assert batch_settings(3, 4)["train_batch_size"] == 12 and batch_settings(3, 4)["train_micro_batch_size_per_gpu"] == 3


def _ds(**kwargs) -> DistributedConfig:
    return DistributedConfig(strategy="deepspeed", **kwargs)


def test_deepspeed_refusals(monkeypatch):
    for var in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)
    pytest.importorskip("deepspeed")
    check_requested_strategy(_ds(), 1, "no")  # one process, CPU or GPU: runs
    check_requested_strategy(_ds(zero_stage=3, offload_param="cpu"), 2, "bf16", device_type="cuda")
    with pytest.raises(DeltatuneError, match="fp16 is not supported by deltatune yet; use bf16"):
        check_requested_strategy(_ds(), 2, "fp16")
    with pytest.raises(DeltatuneError, match="train.torch_compile is not supported"):
        check_requested_strategy(_ds(), 2, "no", torch_compile=True)
    with pytest.raises(DeltatuneError, match="train.l1_lambda is not supported"):
        check_requested_strategy(_ds(), 2, "no", l1_lambda=0.1)
    with pytest.raises(DeltatuneError, match="offload_optimizer cpu moves GPU state to the CPU"):
        check_requested_strategy(_ds(offload_optimizer="cpu"), 2, "no", device_type="cpu")
    # accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml: its settings must agree with the config
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    check_requested_strategy(_ds(zero_stage=3), 2, "no")
    with pytest.raises(DeltatuneError, match=r"says zero_stage 3 \(ACCELERATE_DEEPSPEED_ZERO_STAGE\) and the run config distributed.zero_stage 2"):
        check_requested_strategy(_ds(), 2, "no")
    with pytest.raises(DeltatuneError, match="DeepSpeed config and distributed.strategy ddp .* set distributed.strategy deepspeed"):
        check_requested_strategy(DistributedConfig(), 2, "no")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "ds.json")
    with pytest.raises(DeltatuneError, match="DeepSpeed JSON file"):
        check_requested_strategy(_ds(zero_stage=3), 2, "no")


def test_deepspeed_not_installed_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # find_spec answers None for it: as if not installed
    with pytest.raises(DeltatuneError, match=r"needs DeepSpeed: pip install 'deltatune\[deepspeed\]'"):
        check_requested_strategy(_ds(), 2, "no")


def test_check_says_which_zero_stage_runs():
    from deltatune.training.distributed import describe_launch

    assert describe_launch(_ds(), 4).startswith("distributed: deepspeed ZeRO-2 over 4 processes (Accelerate's DeepSpeed plugin; gradients")
    line = describe_launch(_ds(zero_stage=3, offload_param="cpu"), 1)
    assert line.startswith("distributed: deepspeed ZeRO-3 in one process") and "offload_param in CPU memory" in line


def test_the_resume_advice_of_a_deepspeed_run_trusts_its_checkpoints():
    from deltatune.training.distributed import resume_command

    assert resume_command("runs/x", 1, deepspeed=True) == "deltatune train --resume runs/x --trust-checkpoint"
    assert resume_command("runs/x", 2, deepspeed=True) == "torchrun --nproc_per_node 2 -m deltatune train --resume runs/x --trust-checkpoint"
    assert "--trust-checkpoint" not in resume_command("runs/x", 2) and "--ray" in resume_command("runs/x", 2)


# ---- slow: training on CPU processes ------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(model_dir, train, val, out, per_device: int, method: str, strategy: str, zero_stage: int = 2) -> dict:
    return {
        "task": "text-classification",
        "output_dir": str(out),
        "seed": 5,
        "model": {"name_or_path": model_dir, "dropout": 0.0},
        "data": {"train_file": str(train), "validation_file": str(val), "max_seq_length": 32},
        "delta": {"method": method},
        "train": {"per_device_train_batch_size": per_device, "learning_rate": 2e-3, "max_steps": STEPS, "logging_steps": 1,
                  "save_steps": 2, "progress_bar": False, "mixed_precision": "no", "weight_decay": 0.0},
        # LoRA keeps the weights of its first evaluation (step 2: the highest validation loss), so they are put back before saving
        "eval": {"eval_strategy": "steps", "eval_steps": 2, "per_device_eval_batch_size": 4,
                 **({"metric_for_best_model": "loss", "greater_is_better": True} if method == "lora" else {})},
        "distributed": {"strategy": strategy, **({"zero_stage": zero_stage} if strategy == "deepspeed" else {})},
    }


def _setup(rank: int, world: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
    )
    torch.set_num_threads(1)


def _kill(trainer, state):
    engine = trainer.model
    assert type(engine).__name__ == "DeepSpeedEngine" and engine.zero_optimization_stage() == 3
    # ZeRO-3: this process holds about half of every parameter
    assert all(p.ds_tensor.numel() <= (p.ds_numel + 1) // 2 + 1 for p in engine.module.parameters())
    if state.global_step == STOP_AT:  # killed: no interrupt checkpoint, the last one is step 2's
        torch.distributed.barrier()
        time.sleep(1)
        os._exit(0)


def _run(rank: int, world: int, port: int, cfg: dict, kill: bool, resume: bool) -> None:
    """One DeepSpeed launch (a fresh process each: Accelerate keeps one state per process)."""
    _setup(rank, world, port)
    done = finetune(cfg["output_dir"] if resume else cfg, resume=resume, trust_checkpoint=resume,
                    callbacks=(_kill,) if kill else (), verbose=False)
    assert not kill, "not killed"
    assert not done.result.interrupted and done.result.global_step == STEPS


def _launch(world: int, cfg: dict, kill: bool = False, resume: bool = False) -> None:
    mp.spawn(_run, args=(world, _free_port(), cfg, kill, resume), nprocs=world)


def _losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _logits(run_dir, val) -> torch.Tensor:
    import datasets

    outputs, _ = deltatune.load(run_dir).outputs(datasets.Dataset.from_csv(str(val)), with_labels=False)
    return torch.from_numpy(outputs["logits"])


def _compare(one, two, val, what: str) -> None:
    """``two`` (DeepSpeed) followed ``one`` (a single process, no DeepSpeed) and saved the same model."""
    a, b = _losses(one), _losses(two)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, STEPS + 1)), what
    worst = max(abs(la - lb) for (_, la), (_, lb) in zip(a, b))
    print(what, "largest loss difference", worst)
    assert worst < 1e-4, (what, a, b)
    assert a[-1][1] < a[0][1]  # it trained
    best = json.loads((two / "eval.json").read_text())["train"]["best_step"]
    assert best == json.loads((one / "eval.json").read_text())["train"]["best_step"]
    torch.testing.assert_close(_logits(two, val), _logits(one, val), atol=1e-4, rtol=1e-4, msg=what)
    e1, e2 = (json.loads((r / "eval.json").read_text())["validation"] for r in (one, two))
    assert sum(map(sum, e2["confusion_matrix"])) == 11 and e2["loss"] == pytest.approx(e1["loss"], abs=1e-4)


def _data(tmp_path):
    # 43 rows: 5 global batches of 8; 11 validation rows (odd: one process evaluates one batch less)
    return write_csv(tmp_path / "train.csv", make_easy_rows(43, 5)), write_csv(tmp_path / "val.csv", make_easy_rows(11, 6))


@pytest.mark.slow
def test_zero3_on_two_processes_resumes_and_saves_the_whole_model(tiny_model_dir, tmp_path):
    pytest.importorskip("deepspeed")
    train, val = _data(tmp_path)
    one = finetune(_config(tiny_model_dir, train, val, tmp_path / "one", GLOBAL_BATCH, "full", "ddp"), verbose=False).path
    cfg = _config(tiny_model_dir, train, val, tmp_path / "zero3", GLOBAL_BATCH // WORLD, "full", "deepspeed", zero_stage=3)
    cfg["train"]["micro_batch_size"] = 2  # 2 backward passes per step: the engine's boundary on the second only
    _launch(WORLD, cfg, kill=True)
    run = tmp_path / "zero3"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "step-00000002"]
    ckpt = run / "checkpoints" / "step-00000002"
    assert (ckpt / "deepspeed" / "latest").is_file() and not (ckpt / "trainable.safetensors").exists()
    assert len(list((ckpt / "deepspeed" / "engine").glob("*optim_states.pt"))) == WORLD  # each process's partition
    from deltatune.training.checkpoint import UntrustedCheckpointError, read_checkpoint

    with pytest.raises(UntrustedCheckpointError, match="DeepSpeed's own checkpoint files.*--trust-checkpoint"):
        read_checkpoint(ckpt)  # DeepSpeed reads them with pickle: resumed only on the user's word
    assert read_checkpoint(ckpt, trust=True).deepspeed == ckpt / "deepspeed"
    _launch(WORLD, cfg, resume=True)
    saved = sorted(p.name for p in (run / "model").iterdir())
    assert "model.safetensors" in saved, saved
    _compare(one, run, val, "zero3 full, resumed")


@pytest.mark.slow
def test_zero2_in_one_process_and_zero3_lora_on_two(tiny_model_dir, tmp_path):
    pytest.importorskip("deepspeed")
    from safetensors.torch import load_file

    train, val = _data(tmp_path)
    for method in ("full", "lora"):
        one = finetune(_config(tiny_model_dir, train, val, tmp_path / f"one-{method}", GLOBAL_BATCH, method, "ddp"), verbose=False).path
        if method == "full":
            world, run = 1, tmp_path / "zero2-full"
            _launch(1, _config(tiny_model_dir, train, val, run, GLOBAL_BATCH, method, "deepspeed", zero_stage=2))
        else:
            world, run = WORLD, tmp_path / "zero3-lora"
            _launch(WORLD, _config(tiny_model_dir, train, val, run, GLOBAL_BATCH // WORLD, method, "deepspeed", zero_stage=3))
        _compare(one, run, val, f"{method} on {world} process(es)")
    adapter = load_file(str(tmp_path / "zero3-lora" / "model" / "adapter_model.safetensors"))
    reference = load_file(str(tmp_path / "one-lora" / "model" / "adapter_model.safetensors"))
    assert adapter.keys() == reference.keys() and all(t.numel() > 0 for t in adapter.values())  # not the empty ZeRO-3 adapter
    for k, t in adapter.items():
        torch.testing.assert_close(t, reference[k], atol=1e-4, rtol=1e-3, msg=k)
