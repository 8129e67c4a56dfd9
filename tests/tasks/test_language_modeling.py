"""Decoder mechanics on a tiny random Llama: token-normalized accumulation, packing, generation."""

import json

import pytest
import torch
from safetensors.torch import load_file

import deltatune
from deltatune.config import build_config
from deltatune.tasks import CausalLMTask
from deltatune.tasks.generation import GenerationSettings, generate


def _alpaca(tmp_path, n=8):
    rows = [
        {"instruction": f"Repeat the word {w}" + " please" * (i % 3), "input": "", "output": " ".join([w] * (1 + 3 * i))}
        for i, w in enumerate(["red", "blue", "green", "cyan", "pink", "gold", "gray", "teal", "navy", "lime"][:n])
    ]
    p = tmp_path / "sft.json"
    p.write_text(json.dumps(rows))
    return p


def _one_step(model_dir, train, out, batch, accum):
    cfg = {
        "task": "instruction",
        "output_dir": str(out),
        "model": {"name_or_path": model_dir, "dropout": 0.0},
        "data": {"train_file": str(train), "validation_split": 0.2, "max_seq_length": 96},
        "train": {
            "per_device_train_batch_size": batch, "gradient_accumulation_steps": accum, "optimizer": "sgd",
            "momentum": 0.0, "weight_decay": 0.0, "learning_rate": 1.0, "lr_scheduler_type": "constant",
            "max_grad_norm": None, "max_steps": 1, "group_by_length": False, "progress_bar": False,
        },
        "eval": {"eval_strategy": "no", "generation_max_samples": 0},
    }
    deltatune.finetune(cfg, verbose=False)
    return load_file(str(out / "model" / "model.safetensors"))


def test_token_normalized_accumulation_on_variable_lengths(tiny_llama_dir, tmp_path):
    train = _alpaca(tmp_path, 10)  # 8 train + 2 validation; responses of 1..22 words
    ref = _one_step(tiny_llama_dir, train, tmp_path / "b8", 8, 1)
    acc = _one_step(tiny_llama_dir, train, tmp_path / "b1a8", 1, 8)
    for k in ref:
        torch.testing.assert_close(acc[k], ref[k], atol=1e-5, rtol=0, msg=k)


def test_left_padded_batched_generation_equals_one_by_one(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    prompts = [tok(t)["input_ids"] for t in ["hello there", "a much longer prompt with many more words in it", "x"]]
    s = GenerationSettings(max_new_tokens=8, batch_size=3)
    batched, _ = generate(model, tok, prompts, s)
    single = [generate(model, tok, [p], GenerationSettings(max_new_tokens=8, batch_size=1))[0][0] for p in prompts]
    assert batched == single
    assert len(set(batched)) > 1


@pytest.mark.parametrize("task_name, row", [("translation", {"source": "a red house"}), ("summarization", {"source": "A long text."})])
def test_prompted_generation_needs_no_target_column(tiny_llama_dir, task_name, row):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deltatune.tasks import create_task

    task = create_task(build_config({"task": task_name, "model": {"name_or_path": tiny_llama_dir}, "eval": {"max_new_tokens": 3}}))
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    task.set_tokenizer(tok)
    ds = Dataset.from_list([row])
    task.check(ds, "new.jsonl", with_labels=False)
    texts, ended = task.generate_rows(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), tok, ds)
    assert len(texts) == 1 and isinstance(texts[0], str)


def test_causal_lm_packs_documents_into_blocks(tiny_llama_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    task = CausalLMTask(build_config({"task": "causal-lm", "data": {"max_seq_length": 16}}))
    ds = Dataset.from_dict({"text": ["one two three " * 5, "four five " * 7]})
    task.fit(ds, "x")
    f = task.encode(ds, tok)
    stream = sum((tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in ds["text"]), [])
    flat = [i for r in f.rows for i in r["input_ids"]]
    # order kept, EOS between docs; only a final 1-token block (nothing to predict) may be left out
    assert flat == stream[: len(flat)] and len(stream) - len(flat) <= 1
    assert all(len(r["input_ids"]) == 16 for r in f.rows[:-1])
    assert all(r["labels"] == r["input_ids"] for r in f.rows)


def test_instruction_run_reports_preflight_counts_and_generates(tiny_llama_dir, tmp_path):
    train = _alpaca(tmp_path, 10)
    cfg = {
        "task": "instruction", "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": tiny_llama_dir},
        "data": {"train_file": str(train), "validation_split": 0.2, "max_seq_length": 40},
        "train": {"per_device_train_batch_size": 4, "num_train_epochs": 2, "learning_rate": 1e-3, "progress_bar": False},
        "eval": {"max_new_tokens": 4, "generation_max_samples": 2},
    }
    run = deltatune.finetune(cfg, verbose=False)
    data = run.metrics["data"]["train"]
    assert data["examples"] == 8 and data["truncated"] >= 1  # the long responses do not fit in 40 tokens
    v = run.metrics["validation"]
    assert {"loss", "perplexity", "rougeL", "generation_eos_share"} <= set(v)
    predictor = deltatune.load(run.path)
    out = predictor.predict(["Repeat the word red"])
    assert isinstance(out[0]["generated"], str)
    # inputs to predict need no answer column: Alpaca rows without 'output' generate the same text
    from datasets import Dataset

    rows = predictor.predict_rows(Dataset.from_list([{"instruction": "Repeat the word red", "input": ""}]), "new.json")
    assert rows[0]["generated"] == out[0]["generated"]


def test_check_marks_trained_spans_and_counts(tiny_llama_dir, tmp_path):
    from deltatune.api import check

    train = _alpaca(tmp_path, 4)
    report = check({"task": "instruction", "model": {"name_or_path": tiny_llama_dir},
                    "data": {"train_file": str(train), "max_seq_length": 64}}, examples=2)
    assert "[[red<|im_end|>]]" in report  # the first response, with its EOS, is the trained span
    assert "<|im_start|>user\nRepeat the word red<|im_end|>" in report  # the prompt is shown unmarked
    assert "truncated" in report and "dropped (no trained token) 0" in report
