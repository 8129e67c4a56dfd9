"""FSDP2 (``distributed.strategy: fsdp``) on 2 CPU processes (gloo) equals one process at the same global batch.

Two ``torch.multiprocessing`` launches of 2 processes train a tiny random BERT classifier with
FSDP2: full fine-tuning in micro-batches (the processes killed at step 3, after the sharded
checkpoint of step 2; the second launch resumes from it), and LoRA with activation
checkpointing (uninterrupted). Each must follow the single-process loss curve (per-device batch = the
global batch) to 1e-4 over 5 steps, and the model each saves (gathered by the main process into
an ordinary Hugging Face folder / PEFT adapter) must give the single-process model's logits.
The refusals (FSDP in one process, CPU offload on CPU, an accelerate FSDP config) are fast checks.
"""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

import deltatune
from deltatune import finetune
from deltatune.config import build_config
from deltatune.errors import DeltatuneError
from deltatune.training.loop import check_launch
from tests.helpers import make_easy_rows, write_csv

GLOBAL_BATCH = 8
WORLD = 2
STEPS = 5
STOP_AT = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(model_dir, train, val, out, per_device: int, method: str, strategy: str) -> dict:
    return {
        "task": "text-classification",
        "output_dir": str(out),
        "seed": 5,
        "model": {"name_or_path": model_dir, "dropout": 0.0},
        "data": {"train_file": str(train), "validation_file": str(val), "max_seq_length": 32},
        "delta": {"method": method},
        "train": {
            "per_device_train_batch_size": per_device,
            "learning_rate": 2e-3,
            "max_steps": STEPS,
            "logging_steps": 1,
            "save_steps": 2,
            "progress_bar": False,
            "mixed_precision": "no",
            "weight_decay": 0.0,
        },
        "eval": {"eval_strategy": "steps", "eval_steps": 2, "per_device_eval_batch_size": 4},
        "distributed": {"strategy": strategy},
    }


def _configs(model_dir, train, val, tmp_path, name: str, per_device: int, strategy: str) -> dict[str, dict]:
    """Full fine-tuning and LoRA; LoRA keeps the weights of its first evaluation (step 2: the highest
    validation loss, an order chosen so that the best weights are put back before saving)."""
    out = {m: _config(model_dir, train, val, tmp_path / f"{name}-{m}", per_device, m, strategy) for m in ("full", "lora")}
    out["lora"]["eval"].update(metric_for_best_model="loss", greater_is_better=True)
    return out


def _kill(trainer, state):
    from torch.distributed.tensor import DTensor

    params = list(trainer.model.parameters())
    assert params and all(isinstance(p, DTensor) for p in params)  # sharded, not replicated (DDP)
    if state.global_step == STOP_AT:  # killed: no interrupt checkpoint, the last one is step 2's
        torch.distributed.barrier()  # every collective of the step done on both processes
        time.sleep(1)  # (the other process leaves the barrier too before this one's sockets close)
        os._exit(0)


def _setup(rank: int, world: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
    )
    torch.set_num_threads(1)


def _killed_worker(rank: int, world: int, port: int, full: dict) -> None:
    """First launch: full fine-tuning until the processes are killed at STOP_AT."""
    _setup(rank, world, port)
    finetune(full, callbacks=(_kill,), verbose=False)
    raise AssertionError("not killed")


def _worker(rank: int, world: int, port: int, full: dict, lora: dict) -> None:
    """Second launch: full fine-tuning resumed from its sharded checkpoint, then LoRA."""
    _setup(rank, world, port)
    done = finetune(full["output_dir"], resume=True, verbose=False)
    assert not done.result.interrupted and done.result.global_step == STEPS
    finetune(lora, callbacks=(_sharded,), verbose=False)


def _sharded(trainer, state):
    from torch.distributed.tensor import DTensor

    lora = [p for n, p in trainer.model.named_parameters() if "lora_" in n]
    assert lora and all(isinstance(p, DTensor) and p.requires_grad for p in lora)


def _losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _logits(run_dir, val) -> torch.Tensor:
    import datasets

    predictor = deltatune.load(run_dir)
    outputs, _ = predictor.outputs(datasets.Dataset.from_csv(str(val)), with_labels=False)
    return torch.from_numpy(outputs["logits"])


@pytest.mark.slow
def test_fsdp_on_two_processes_follows_one_process(tiny_model_dir, tmp_path):
    # 43 rows: 5 global batches of 8 (the 6th, of 3, is never reached); 11 validation rows (odd: one process evaluates one batch less)
    train = write_csv(tmp_path / "train.csv", make_easy_rows(43, 5))
    val = write_csv(tmp_path / "val.csv", make_easy_rows(11, 6))
    single = {m: finetune(c, verbose=False) for m, c in _configs(tiny_model_dir, train, val, tmp_path, "one", GLOBAL_BATCH, "ddp").items()}
    sharded = _configs(tiny_model_dir, train, val, tmp_path, "fsdp", GLOBAL_BATCH // WORLD, "fsdp")
    sharded["full"]["train"]["micro_batch_size"] = 2  # 2 forward/backward passes per step: no gradient sync on the first
    sharded["lora"]["train"]["gradient_checkpointing"] = True
    mp.spawn(_killed_worker, args=(WORLD, _free_port(), sharded["full"]), nprocs=WORLD)
    ckpts = sorted(p.name for p in (tmp_path / "fsdp-full" / "checkpoints").iterdir())
    assert ckpts == ["best", "step-00000002"], ckpts
    mp.spawn(_worker, args=(WORLD, _free_port(), sharded["full"], sharded["lora"]), nprocs=WORLD)

    for m in ("full", "lora"):
        one, two = single[m].path, tmp_path / f"fsdp-{m}"
        a, b = _losses(one), _losses(two)
        assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, STEPS + 1)), m
        for (step, la), (_, lb) in zip(a, b):
            assert abs(la - lb) < 1e-4, f"{m} step {step}: {la} vs {lb}"
        print(m, "largest loss difference", max(abs(la - lb) for (_, la), (_, lb) in zip(a, b)))
        best = json.loads((two / "eval.json").read_text())["train"]["best_step"]
        assert best == json.loads((one / "eval.json").read_text())["train"]["best_step"] == (2 if m == "lora" else STEPS)
        assert a[-1][1] < a[0][1]  # it trained
        # the gathered model: an ordinary folder (full weights / adapter) with the single-process logits
        saved = sorted(p.name for p in (two / "model").iterdir())
        assert ("adapter_model.safetensors" if m == "lora" else "model.safetensors") in saved, saved
        torch.testing.assert_close(_logits(two, val), _logits(one, val), atol=1e-4, rtol=1e-4, msg=m)
        # distributed evaluation of the sharded model: every validation row once, as one process sees it
        e1 = json.loads((one / "eval.json").read_text())["validation"]
        e2 = json.loads((two / "eval.json").read_text())["validation"]
        assert sum(map(sum, e2["confusion_matrix"])) == 11 and e2["confusion_matrix"] == e1["confusion_matrix"]
        assert e2["loss"] == pytest.approx(e1["loss"], abs=1e-4)
    # the resumed run's checkpoints are sharded: DCP metadata and one shard file per process
    ckpt = sorted((tmp_path / "fsdp-full" / "checkpoints").glob("step-*"))[-1]
    assert (ckpt / "sharded" / ".metadata").is_file() and len(list((ckpt / "sharded").glob("*.distcp"))) == WORLD
    assert not (ckpt / "trainable.safetensors").exists()
    assert not list((tmp_path / "fsdp-full" / "checkpoints").glob(".shard-*"))  # nothing half-written left


def _cfg(**distributed):
    return build_config({"train": {"mixed_precision": "no"}, "distributed": distributed})


def test_fsdp_in_one_process_is_refused(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(DeltatuneError, match="fsdp shards the model over several processes, and this launch has 1"):
        check_launch(_cfg(strategy="fsdp"))
    assert check_launch(_cfg()) is False  # ddp, one process: plain training


def test_cpu_offload_on_cpu_and_accelerate_fsdp_configs_are_refused(monkeypatch):  # deepspeed's: tests/training/test_deepspeed.py
    monkeypatch.setenv("WORLD_SIZE", "2")
    if not torch.cuda.is_available():
        with pytest.raises(DeltatuneError, match="fsdp_cpu_offload .* run on the CPU already"):
            check_launch(_cfg(strategy="fsdp", fsdp_cpu_offload=True))
    assert check_launch(_cfg(strategy="fsdp")) is True
    # accelerate launch --use_fsdp: Accelerate would form DDP on CPU without a word
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(DeltatuneError, match="FSDP config is not used by deltatune"):
        check_launch(_cfg(strategy="fsdp"))


def test_an_unknown_strategy_is_a_config_error():
    with pytest.raises(DeltatuneError, match="distributed.strategy"):
        build_config({"distributed": {"strategy": "zero3"}})


def _tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    return BertForSequenceClassification(cfg)


def test_the_fsdp_units_are_the_transformer_blocks_also_under_peft():
    from peft import LoraConfig, get_peft_model

    from deltatune.training.distributed import block_modules

    model = _tiny_bert()
    assert [type(m).__name__ for m in block_modules(model)].count("BertLayer") == 2
    assert all(type(m).__name__ in model._no_split_modules for m in block_modules(model))
    peft = get_peft_model(_tiny_bert(), LoraConfig(r=2, target_modules=["query", "value"]))
    units = block_modules(peft)
    assert sum(type(m).__name__ == "BertLayer" for m in units) == 2
    assert block_modules(model, ["BertSelfAttention"]) and block_modules(model, ["NoSuchBlock"]) == []


def test_the_memory_estimate_is_per_process_under_sharding():
    from deltatune.training.memory import estimate_memory

    model = _tiny_bert()
    whole = estimate_memory(model, "adamw", 4, 16, bits16=False)
    half = estimate_memory(model, "adamw", 4, 16, bits16=False, shards=2)
    for part in ("parameters", "gradients", "optimizer"):  # ceil(dim0 / 2) rows: a little over half
        assert 0.5 * getattr(whole, part) <= getattr(half, part) < 0.6 * getattr(whole, part), part
    assert half.activations == whole.activations and half.gathered > 0 and whole.gathered == 0
    assert "per process" in half.format() and "fsdp over 2 processes" in half.format() and "per process" not in whole.format()


def test_check_says_which_strategy_runs():
    from deltatune.config import DistributedConfig
    from deltatune.training.distributed import describe_launch

    assert describe_launch(DistributedConfig(strategy="fsdp"), 2).startswith("distributed: fsdp over 2 processes")
    assert "single process is refused" in describe_launch(DistributedConfig(strategy="fsdp"), 1)
    assert describe_launch(DistributedConfig(), 4).startswith("distributed: ddp over 4 processes")
    assert describe_launch(DistributedConfig(), 1).startswith("distributed: single process")


def _sft_config(model_dir, data, out, per_device: int, strategy: str) -> dict:
    return {
        "task": "instruction", "output_dir": str(out), "seed": 3,
        "model": {"name_or_path": model_dir, "dropout": 0.0},
        "data": {"train_file": str(data), "validation_split": 0.2, "max_seq_length": 64},
        "train": {"per_device_train_batch_size": per_device, "max_steps": 3, "logging_steps": 1, "progress_bar": False,
                  "mixed_precision": "no", "learning_rate": 1e-3},
        "eval": {"eval_strategy": "no", "generation_max_samples": 2, "max_new_tokens": 3, "compare_generations": 0},
        "delta": {"method": "lora"}, "distributed": {"strategy": strategy},
    }


def _sft_worker(rank: int, world: int, port: int, cfg: dict) -> None:
    _setup(rank, world, port)
    finetune(cfg, verbose=False)


@pytest.mark.slow
def test_fsdp_decoder_with_the_chunked_loss_and_generation(tiny_llama_dir, tmp_path):
    # the SmolLM2 vocabulary (49,152) turns the chunked loss on: the output head is called after the model's
    # forward, a different number of times per process; the final evaluation generates through peft's generate()
    rows = [{"instruction": f"Say the colour number {i}.", "input": "", "output": f"colour {i} colour {i}"} for i in range(10, 30)]
    data = tmp_path / "sft.json"
    data.write_text(json.dumps(rows))
    one = finetune(_sft_config(tiny_llama_dir, data, tmp_path / "one", 4, "ddp"), verbose=False)
    mp.spawn(_sft_worker, args=(WORLD, _free_port(), _sft_config(tiny_llama_dir, data, tmp_path / "two", 2, "fsdp")), nprocs=WORLD)
    a, b = _losses(one.path), _losses(tmp_path / "two")
    assert len(a) == len(b) == 3 and max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < 1e-4, (a, b)
    e1 = json.loads((one.path / "eval.json").read_text())["validation"]
    e2 = json.loads((tmp_path / "two" / "eval.json").read_text())["validation"]
    assert e2["loss"] == pytest.approx(e1["loss"], abs=1e-4) and e2["samples"] == e1["samples"]


def test_the_copy_kept_for_saving_is_on_the_cpu_with_ties_kept():
    from transformers import LlamaConfig, LlamaForCausalLM

    from deltatune.training.distributed import plain_copy

    cfg = LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    copy = plain_copy(model)
    assert copy.lm_head.weight is copy.model.embed_tokens.weight and copy.lm_head.weight is not model.lm_head.weight
    for (name, a), b in zip(model.state_dict().items(), copy.state_dict().values()):
        assert torch.equal(a, b) and b.device.type == "cpu" and a.data_ptr() != b.data_ptr(), name


def test_check_ends_with_the_strategy_line(tiny_model_dir, sentiment_csv, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    train, _ = sentiment_csv
    from deltatune import api

    report = api.check({"model": {"name_or_path": tiny_model_dir}, "data": {"train_file": str(train)}, "distributed": {"strategy": "fsdp"}}, examples=0)
    assert report.splitlines()[-1].startswith("distributed: fsdp over 2 processes")
