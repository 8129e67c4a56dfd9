"""ONNX export (serving/onnx_export.py) and the ONNX backend (serving/onnx_backend.py).

Parity on the real packaged MiniLM with SST-2 dev sentences; for each encoder task a tiny
2-step run on the task's own ``demo_rows()`` exported and predicted through the same
Predictor path as PyTorch; int8, LoRA (merged), refusals and a damaged model file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from datasets import Dataset

import deltatune
from deltatune.errors import DeltatuneError
from deltatune.serving.onnx_backend import OnnxModel, is_onnx_export, load_onnx
from deltatune.serving.onnx_export import ONNX_TASKS, check_onnx_request, export_onnx
from deltatune.tasks import get_task_class
from tests.conftest import SST2
from tests.tasks.demo_runs import demo_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


pytestmark = pytest.mark.usefixtures("one_thread")


def _train_demo_run(name: str, model_dir: str, tmp: Path, **delta) -> Path:
    """A 2-step run of task ``name`` on its own demo rows (as tests/tasks/test_contract.py trains them)."""
    cfg, _ = demo_config(name, get_task_class(name), model_dir, tmp)
    if delta:
        cfg["delta"] = delta
    return deltatune.finetune(cfg, verbose=False).path


def _export(run: Path, out: Path, quantize: str | None = None) -> Path:
    out.mkdir()
    export_onnx(deltatune.load(run, device="cpu"), out, quantize)
    return out


def _assert_same_predictions(a: list[dict], b: list[dict], tol: float = 1e-4) -> None:
    """Records equal, floats within ``tol`` (labels, entities, answers, summaries exact)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        _assert_close(x, y, tol)


def _assert_close(x, y, tol: float) -> None:
    if isinstance(x, dict):
        assert isinstance(y, dict) and set(x) == set(y), (x, y)
        for k in x:
            _assert_close(x[k], y[k], tol)
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), (x, y)
        for u, v in zip(x, y):
            _assert_close(u, v, tol)
    elif isinstance(x, float):
        assert abs(x - y) <= tol, (x, y)
    else:
        assert x == y, (x, y)


# ---- parity on the real MiniLM ---------------------------------------------------------------
@pytest.mark.skipif(not (SST2 / "dev.tsv").is_file(), reason="../shared/data/text_classification/sst2 not present")
def test_minilm_classifier_logits_match_pytorch_on_sst2_sentences(tmp_path):
    from deltatune.models import resolve_model

    dev = pd.read_csv(SST2 / "dev.tsv", sep="\t", quoting=3)
    train = tmp_path / "train.tsv"
    dev.iloc[:16].to_csv(train, sep="\t", index=False)
    cfg = {
        "task": "text-classification", "output_dir": str(tmp_path / "run"), "seed": 7,
        "model": {"name_or_path": resolve_model("minilm")},
        "data": {"train_file": str(train), "text_column": "sentence", "max_seq_length": 128},
        "train": {"per_device_train_batch_size": 8, "max_steps": 1, "progress_bar": False},
        "eval": {"eval_strategy": "no"},
    }
    deltatune.finetune(cfg, verbose=False)
    predictor = deltatune.load(tmp_path / "run", device="cpu")
    out = _export(tmp_path / "run", tmp_path / "onnx")

    # 16 real sentences of different lengths, one padded batch
    texts = sorted(dev["sentence"].tolist()[100:400], key=len)[::19][:16]
    ds = Dataset.from_list([{"sentence": t} for t in texts])
    features = predictor.task.encode(ds, predictor.tokenizer, with_labels=False)
    batch = predictor.task.collate(features.rows)
    assert len(set(features.lengths)) > 8 and batch["input_ids"].shape[0] == 16
    with torch.no_grad():
        reference = predictor.model(**batch).logits.float()
    onnx = OnnxModel(out / "model.onnx")(**batch).logits
    assert onnx.shape == reference.shape == (16, 2)
    assert float((onnx - reference).abs().max()) <= 1e-4
    # the whole predict path: same labels, probabilities within 1e-4
    _assert_same_predictions(load_onnx(out).predict(texts), predictor.predict(texts))


# ---- every encoder task on a tiny run ----------------------------------------------------------
@pytest.mark.parametrize("name", ONNX_TASKS)
def test_each_encoder_task_predicts_like_pytorch(name, tiny_model_dir, tmp_path):
    run = _train_demo_run(name, tiny_model_dir, tmp_path)
    out = _export(run, tmp_path / "onnx")
    assert is_onnx_export(out) and not is_onnx_export(run)
    assert {"model.onnx", "config.json", "deltatune_onnx.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    meta = json.loads((out / "deltatune_onnx.json").read_text())
    assert meta["task"] == name and meta["quantize"] is None and meta["inputs"][:2] == ["input_ids", "attention_mask"]
    rows = Dataset.from_list(get_task_class(name).demo_rows()["rows"])
    reference = deltatune.load(run, device="cpu").predict_rows(rows, "demo")
    onnx = load_onnx(out, threads=1)
    assert isinstance(onnx.model, OnnxModel)
    _assert_same_predictions(onnx.predict_rows(rows, "demo"), reference)
    # batch size 1 and a large batch give the same records (dynamic batch and sequence axes)
    _assert_same_predictions(onnx.predict_rows(rows, "demo", batch_size=1), reference)
    _assert_same_predictions(onnx.predict_rows(rows, "demo", batch_size=64), reference)


def test_int8_export_is_smaller_and_still_predicts(classifier_run, tmp_path):
    fp32 = _export(classifier_run, tmp_path / "fp32")
    int8 = _export(classifier_run, tmp_path / "int8", "int8")
    assert [p.name for p in int8.glob("*.onnx")] == ["model.onnx"]
    assert (int8 / "model.onnx").stat().st_size < (fp32 / "model.onnx").stat().st_size
    assert json.loads((int8 / "deltatune_onnx.json").read_text())["quantize"] == "int8"
    records = load_onnx(int8).predict(["a great film", "a dull and boring plot"])
    assert [set(r) for r in records] == [{"label", "probabilities"}] * 2
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in records)


def test_a_lora_run_exports_merged_with_parity(lora_run, tmp_path):
    predictor = deltatune.load(lora_run, device="cpu")
    out = tmp_path / "onnx"
    out.mkdir()
    export_onnx(predictor, out)
    assert not list(out.glob("adapter_*"))
    texts = ["a great film", "the plot was very dull and the actors were bad", "fun"]
    # the predictor's own (unmerged) model is left as it was and agrees with the export
    _assert_same_predictions(load_onnx(out).predict(texts), predictor.predict(texts))


# ---- refusals and damaged files ------------------------------------------------------------------
def test_a_generative_run_and_an_unknown_quantization_are_refused(classifier_run, tmp_path):
    with pytest.raises(DeltatuneError, match=r"supports the encoder tasks text-classification.*--format gguf"):
        check_onnx_request("instruction", None)
    with pytest.raises(DeltatuneError, match="--quantize 'int4' is not supported; use --quantize int8"):
        check_onnx_request("text-classification", "int4")
    out = tmp_path / "onnx"
    out.mkdir()
    with pytest.raises(DeltatuneError, match="--quantize 'fp16'"):
        export_onnx(deltatune.load(classifier_run, device="cpu"), out, "fp16")
    assert not any(out.iterdir())


def test_a_generative_predictor_is_refused(tmp_path):
    from deltatune.config import build_config
    from deltatune.serving.predictor import Predictor

    predictor = Predictor(build_config({"task": "causal-lm"}), None, None, None, "cpu")  # refused before the model is read
    with pytest.raises(DeltatuneError, match=r"task is causal-lm: export decoder runs \(instruction, causal-lm, prompted tasks\) with --format gguf, other runs as a merged model"):
        export_onnx(predictor, tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_damaged_or_missing_model_file_is_named(classifier_run, tmp_path):
    out = _export(classifier_run, tmp_path / "onnx")
    model = out / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(DeltatuneError, match=r"model\.onnx cannot be loaded by onnxruntime .*damaged"):
        load_onnx(out)
    model.unlink()
    with pytest.raises(DeltatuneError, match=r"model\.onnx is missing"):
        load_onnx(out)
    (out / "deltatune_onnx.json").write_text("{not json")
    with pytest.raises(DeltatuneError, match=r"deltatune_onnx\.json is damaged"):
        load_onnx(out)
    with pytest.raises(DeltatuneError, match="is not an ONNX export"):
        load_onnx(classifier_run)
