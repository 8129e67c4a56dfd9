"""train.gradient_checkpointing and train.torch_compile train, with the plain run's first-step loss."""

import json

import pytest

import deltatune
from deltatune.training import compute


def _run(model_dir, tmp_path, name, verbose=False, callbacks=(), **train):
    # two-digit numbers are two tokens each: every example has the same length (one compiled shape)
    rows = [{"instruction": f"Say the colour number {i}.", "input": "", "output": f"colour {i} colour {i}"} for i in range(10, 20)]
    data = tmp_path / "sft.json"
    data.write_text(json.dumps(rows))
    cfg = {
        "task": "instruction",
        "output_dir": str(tmp_path / name),
        "model": {"name_or_path": model_dir, "dropout": 0.0},
        "data": {"train_file": str(data), "validation_split": 0.2, "max_seq_length": 64},
        "train": {"per_device_train_batch_size": 2, "max_steps": 2, "logging_steps": 1, "progress_bar": False, "group_by_length": False, **train},
        "eval": {"eval_strategy": "no", "generation_max_samples": 0},
        "delta": {"method": "lora"},
    }
    run = deltatune.finetune(cfg, verbose=verbose, callbacks=callbacks)
    records = [json.loads(ln) for ln in (run.path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    return run, losses


@pytest.fixture(scope="module")
def plain(tiny_llama_dir, tmp_path_factory):
    return _run(tiny_llama_dir, tmp_path_factory.mktemp("plain"), "plain")[1]


def test_gradient_checkpointing_trains_with_the_same_loss(tiny_llama_dir, tmp_path, plain, capsys):
    seen = []

    def check(trainer, state):
        seen.append(trainer.accelerator.unwrap_model(trainer.model).base_model.model.model.gradient_checkpointing)

    run, losses = _run(tiny_llama_dir, tmp_path, "ckpt", verbose=True, callbacks=(check,), gradient_checkpointing=True)
    assert seen == [True, True]
    assert abs(losses[0] - plain[0]) < 1e-5 and abs(losses[1] - plain[1]) < 1e-4
    assert losses[1] != losses[0]  # it trained
    out = capsys.readouterr().out
    assert "memory estimate" in out and "activations" in out


def test_torch_compile_trains_with_the_same_loss(tiny_llama_dir, tmp_path, plain, monkeypatch):
    import torch._dynamo

    monkeypatch.setattr(compute, "COMPILE_BACKEND", "aot_eager")  # graph capture without code generation
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    run, losses = _run(tiny_llama_dir, tmp_path, "compiled", torch_compile=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert abs(losses[0] - plain[0]) < 1e-5 and abs(losses[1] - plain[1]) < 1e-4
    torch._dynamo.reset()


def test_transformer_blocks_finds_the_layer_stack(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert compute.transformer_blocks(model) is model.model.layers
