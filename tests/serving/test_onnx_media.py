"""ONNX export of image-classification and audio-classification runs (serving/onnx_export.py,
serving/onnx_backend.py): a tiny random ViT and a tiny random Whisper encoder, trained a step or
two on generated PNGs / WAVs, exported, and predicted through the same Predictor path as PyTorch
(``deltatune.load`` on the export folder, ``predict --file`` / ``--input``); LoRA merged; bad
files refused with the PyTorch run's message; generative tasks refused.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

import deltatune
from deltatune.api import predict
from deltatune.cli import main as cli_main
from deltatune.errors import DeltatuneError
from deltatune.serving.onnx_backend import OnnxModel, is_onnx_export, load_onnx
from deltatune.serving.onnx_export import MEDIA_ONNX_TASKS, check_onnx_request, export_onnx

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(folder: Path, n: int) -> list[tuple[str, str]]:
    """``n`` images of two colours, of varied sizes (the processor resizes them to 32x32), as (relative path, label)."""
    out = []
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = ("red", "blue")[i % 2]
        colour = (200 + i, 20 + 3 * i, 30) if label == "red" else (30, 20 + 3 * i, 200 + i)
        img = Image.new("RGB", (24 + 5 * i, 40 - i), colour)
        img.putpixel((i, i), (255, 255, 255))
        rel = f"imgs/{label}-{i}.png"
        img.save(folder / rel)
        out.append((rel, label))
    return out


def _clips(folder: Path, n: int, rate: int = 8000) -> list[tuple[str, str]]:
    """``n`` tones of 0.3-0.6 s at ``rate`` Hz (resampled to 16 kHz when read), "low" / "high"."""
    out = []
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = ("low", "high")[i % 2]
        t = np.arange(int(rate * (0.3 + 0.05 * (i % 7)))) / rate
        x = 0.5 * np.sin(2 * np.pi * (300 if label == "low" else 2500) * (1 + 0.02 * i) * t)
        rel = f"wav/{label}-{i}.wav"
        sf.write(str(folder / rel), x.astype(np.float32), rate)
        out.append((rel, label))
    return out


def _csv(path: Path, column: str, rows) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([column, "label"])
        w.writerows(rows)
    return path


def _run(task: str, model_dir: str, folder: Path, **delta) -> tuple[Path, Path]:
    """(run folder, data CSV): a 2-step run of ``task`` on 12 generated files."""
    folder.mkdir(parents=True, exist_ok=True)
    column = "image" if task == "image-classification" else "audio"
    rows = _images(folder, 12) if column == "image" else _clips(folder, 12)
    data = _csv(folder / "data.csv", column, rows)
    cfg = {
        "task": task, "output_dir": str(folder / "run"), "seed": 3,
        "model": {"name_or_path": model_dir},
        "data": {"train_file": str(data), **({"max_audio_seconds": 0.5} if column == "audio" else {})},
        "train": {"per_device_train_batch_size": 6, "learning_rate": 5e-3, "max_steps": 2, "progress_bar": False},
        "eval": {"eval_strategy": "no"},
    }
    if delta:
        cfg["delta"] = delta
    return deltatune.finetune(cfg, verbose=False).path, data


def _assert_same(a: list[dict], b: list[dict], tol: float = 1e-4) -> float:
    """Same predicted labels (``predicted_label`` next to a gold ``label`` column), probabilities within
    ``tol``; returns the largest difference."""
    assert len(a) == len(b) > 0
    worst = 0.0
    for x, y in zip(a, b):
        key = "predicted_label" if "predicted_label" in x else "label"
        assert x[key] == y[key] and x.get("label") == y.get("label"), (x, y)
        assert set(x["probabilities"]) == set(y["probabilities"])
        worst = max(worst, max(abs(x["probabilities"][k] - y["probabilities"][k]) for k in x["probabilities"]))
    assert worst <= tol, worst
    return worst


@pytest.fixture(scope="module")
def image_run(tiny_vit_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_image")
    run, data = _run("image-classification", tiny_vit_dir, folder)
    out = folder / "onnx"
    assert cli_main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0  # the CLI's export path
    return run, data, out


@pytest.fixture(scope="module")
def audio_run(tiny_whisper_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_audio")
    run, data = _run("audio-classification", tiny_whisper_dir, folder)
    out = folder / "onnx"
    out.mkdir()
    export_onnx(deltatune.load(run, device="cpu"), out)
    return run, data, out


# ---- parity with the PyTorch run -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("which", "name", "shape"),
    [("image_run", "pixel_values", [None, 3, 32, 32]), ("audio_run", "input_features", [None, 16, 50])],  # 0.5 s: 50 frames
)
def test_a_media_run_predicts_like_pytorch(which, name, shape, request):
    run, data, out = request.getfixturevalue(which)
    assert is_onnx_export(out)
    files = {p.name for p in out.iterdir()}
    assert {"model.onnx", "config.json", "deltatune_onnx.json", "preprocessor_config.json"} <= files
    assert not any(f.startswith(("tokenizer", "adapter_", "model.safetensors")) for f in files)
    meta = json.loads((out / "deltatune_onnx.json").read_text())
    pytorch = deltatune.load(run, device="cpu")
    assert meta["task"] in MEDIA_ONNX_TASKS and meta["inputs"] == [name] and meta["outputs"] == ["logits"]
    assert meta["input_shapes"] == {name: shape} and meta["processor"] == type(pytorch.tokenizer).__name__
    assert OnnxModel(out / "model.onnx").input_names == [name]

    onnx = deltatune.load(out)  # the export folder loads with onnxruntime
    assert isinstance(onnx.model, OnnxModel) and type(onnx.tokenizer) is type(pytorch.tokenizer)
    assert onnx.tokenizer.to_dict() == pytorch.tokenizer.to_dict()  # the same processing
    rows = onnx.task.rows_from_texts([str(data.parent / r[0]) for r in list(csv.reader(data.open()))[1:]])
    reference = pytorch.predict_rows(rows, "files")
    assert len(reference) == 12
    for batch_size in (None, 1, 64):  # the batch axis is dynamic
        _assert_same(onnx.predict_rows(rows, "files", batch_size=batch_size), reference)
    # predict --input (paths relative to the data file) through the API: inputs and predictions
    records = predict(out, input=str(data))
    assert [r["label"] for r in records] == [r[1] for r in list(csv.reader(data.open()))[1:]]  # the gold column kept
    _assert_same([{"label": r["predicted_label"], "probabilities": r["probabilities"]} for r in records], reference)


def test_predict_cli_and_evaluate_on_an_onnx_export(image_run, capsys):
    run, data, out = image_run
    capsys.readouterr()
    first = str(data.parent / "imgs" / "red-0.png")
    assert cli_main(["predict", str(out), "--file", first]) == 0
    onnx_line = json.loads(capsys.readouterr().out.strip())
    assert cli_main(["predict", str(run), "--file", first]) == 0
    torch_line = json.loads(capsys.readouterr().out.strip())
    _assert_same([onnx_line], [torch_line])
    assert cli_main(["predict", str(out), "--text", "a red picture"]) != 0  # refused before onnxruntime loads
    assert "reads image files, not texts; give them with --file or --input" in capsys.readouterr().err
    # evaluate on the export folder: the PyTorch run's metrics
    onnx_metrics, torch_metrics = deltatune.evaluate(out, str(data)), deltatune.evaluate(run, str(data))
    assert onnx_metrics["accuracy"] == torch_metrics["accuracy"] and abs(onnx_metrics["loss"] - torch_metrics["loss"]) < 1e-4


def test_int8_image_export_predicts_close_to_fp32(image_run, tmp_path):
    run, data, fp32 = image_run
    int8 = tmp_path / "int8"
    int8.mkdir()
    meta = export_onnx(deltatune.load(run, device="cpu"), int8, "int8")
    assert meta["quantize"] == "int8" and [p.name for p in int8.glob("*.onnx")] == ["model.onnx"]
    assert (int8 / "model.onnx").read_bytes() != (fp32 / "model.onnx").read_bytes()
    records = predict(int8, input=str(data))
    # 32-wide random ViT, 7-bit weights: close to fp32, not equal
    worst = _assert_same(records, predict(fp32, input=str(data)), tol=0.05)
    assert worst > 0
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in records)


def test_a_lora_image_run_exports_merged(tiny_vit_dir, tmp_path):
    run, data = _run("image-classification", tiny_vit_dir, tmp_path, method="lora", lora_r=4)
    predictor = deltatune.load(run, device="cpu")
    lora_b = [p for n, p in predictor.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().max()) > 0 for p in lora_b)  # the adapter changed the model
    out = tmp_path / "onnx"
    out.mkdir()
    export_onnx(predictor, out)
    assert not list(out.glob("adapter_*"))
    assert type(predictor.model).__name__ == "PeftModel"  # merged on a copy
    rows = predictor.task.rows_from_texts([str(data.parent / "imgs" / f"{c}-{i}.png") for i, c in enumerate(["red", "blue"] * 3)])
    _assert_same(load_onnx(out, threads=1).predict_rows(rows, "files"), predictor.predict_rows(rows, "files"))


# ---- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("which", "bad", "content"), [("image_run", "imgs/bad.jpg", b"hello"), ("audio_run", "wav/bad.wav", b"")])
def test_a_bad_file_gets_the_pytorch_runs_message(which, bad, content, request, tmp_path):
    run, data, out = request.getfixturevalue(which)
    (data.parent / bad).write_bytes(content)
    column = "image" if which == "image_run" else "audio"
    rows = list(csv.reader(data.open()))[1:4]
    table = _csv(data.parent / f"with-bad-{column}.csv", column, rows[:2] + [[bad, rows[0][1]]] + rows[2:])
    with pytest.raises(DeltatuneError) as torch_error:
        predict(run, input=str(table))
    with pytest.raises(DeltatuneError) as onnx_error:
        predict(out, input=str(table))
    message = str(onnx_error.value)
    assert message == str(torch_error.value) and "\n" not in message
    assert f"row 3, column '{column}'" in message and bad.split("/")[1] in message


def test_generative_and_unknown_tasks_are_refused_naming_the_supported_ones(tmp_path):
    from deltatune.config import build_config
    from deltatune.serving.predictor import Predictor

    for task in ("speech-recognition", "vision-language"):
        with pytest.raises(DeltatuneError, match=rf"supports the encoder tasks text-classification.*image-classification, audio-classification; this run's task is {task}") as e:
            check_onnx_request(task, None)
        assert "\n" not in str(e.value)
    predictor = Predictor(build_config({"task": "speech-recognition"}), None, None, None, "cpu")  # refused before the model is read
    with pytest.raises(DeltatuneError, match="task is speech-recognition"):
        export_onnx(predictor, tmp_path)
    assert not any(tmp_path.iterdir())


def test_an_input_of_another_shape_is_refused_in_one_line(image_run):
    import torch

    model = OnnxModel(image_run[2] / "model.onnx", threads=1)
    with pytest.raises(DeltatuneError, match=r"model\.onnx cannot run this batch \(") as e:
        model(pixel_values=torch.zeros(2, 3, 48, 48))
    assert "\n" not in str(e.value)
    with pytest.raises(DeltatuneError, match="needs the input pixel_values"):
        model()


def test_an_image_export_is_served_with_the_onnx_backend(image_run):
    import base64

    from fastapi.testclient import TestClient

    from deltatune.serving.app import create_app
    from deltatune.serving.pool import ModelPool
    from deltatune.serving.settings import ServeSettings

    run, data, out = image_run
    settings = ServeSettings(backend="onnx")
    pool = ModelPool([("clothes", out)], settings)
    pool.load()
    client = TestClient(create_app(pool, settings, ["image-classification"]))
    path = data.parent / "imgs" / "blue-1.png"
    r = client.post("/v1/predict", json={"inputs": [base64.b64encode(path.read_bytes()).decode()]})
    assert r.status_code == 200, r.text
    assert r.json()["task"] == "image-classification"
    _assert_same(r.json()["predictions"], deltatune.load(run, device="cpu").predict([str(path)]))
