"""``deltatune export --format onnx|gguf`` from the command line, and serving the ONNX export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import deltatune
from deltatune.tasks import get_task_class
from tests.serving.server_process import start_server
from tests.tasks.demo_runs import demo_config


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deltatune", *args], capture_output=True, text=True, timeout=timeout)


def test_an_onnx_export_serves_the_same_predictions_as_the_run(classifier_run, tmp_path):
    out = tmp_path / "onnx"
    p = _cli("export", str(classifier_run), "--format", "onnx", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert {"model.onnx", "deltatune_onnx.json", "config.json"} <= {f.name for f in out.iterdir()}
    texts = ["the film was great fun", "dull and tedious", "a charming story"]
    expected = deltatune.load(classifier_run, device="cpu").predict(texts)
    server = start_server([f"sentiment={out}", "--backend", "onnx"], tmp_path / "serve.log")
    try:
        r = httpx.post(f"{server.url}/v1/predict", json={"inputs": texts}, timeout=60)
    finally:
        server.stop()
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    for g, e in zip(got, expected):
        assert g["probabilities"] == pytest.approx(e["probabilities"], abs=1e-5)


def test_export_refusals_are_one_line_errors(classifier_run, tmp_path):
    cases = [
        (["--format", "gguf", "--out", str(tmp_path / "m.gguf")], "--format gguf is for decoder runs"),
        (["--format", "model", "--quantize", "int8", "--out", str(tmp_path / "m")], "--quantize applies to --format onnx only"),
        (["--format", "onnx", "--out", str(Path(classifier_run) / "model" / "onnx")], "is inside run"),
        (["--format", "onnx", "--gguf-dtype", "f32", "--out", str(tmp_path / "o")], "--gguf-dtype applies to --format gguf only"),
    ]
    for args, message in cases:
        p = _cli("export", str(classifier_run), *args)
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)


def test_a_decoder_lora_run_exports_as_gguf_that_transformers_reads_back(tiny_llama_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    cfg, _ = demo_config("instruction", get_task_class("instruction"), tiny_llama_dir, tmp_path / "sft", max_steps=2)
    cfg["delta"] = {"method": "lora"}
    cfg["train"]["learning_rate"] = 5e-2
    run = deltatune.finetune(cfg, verbose=False).path
    out = tmp_path / "export" / "sft.gguf"
    p = _cli("export", str(run), "--format", "gguf", "--gguf-dtype", "f32", "--out", str(out))
    assert p.returncode == 0, p.stderr
    again = _cli("export", str(run), "--format", "gguf", "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr
    no_suffix = _cli("export", str(run), "--format", "gguf", "--out", str(tmp_path / "folder"))
    assert no_suffix.returncode == 2 and "name it with .gguf" in no_suffix.stderr
    notes = tmp_path / "notes.gguf"
    notes.write_text("my notes")
    refused = _cli("export", str(run), "--format", "gguf", "--out", str(notes), "--overwrite")
    assert refused.returncode == 2 and "is not a GGUF file" in refused.stderr and notes.read_text() == "my notes"
    merged = deltatune.load(run, device="cpu").model.merge_and_unload()
    read = AutoModelForCausalLM.from_pretrained(str(out.parent), gguf_file=out.name)
    ids = torch.tensor([[1, 5, 9, 200, 31]])
    with torch.no_grad():
        assert torch.allclose(read(ids).logits, merged(ids).logits, atol=1e-4)
