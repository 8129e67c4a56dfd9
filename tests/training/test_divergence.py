"""A run whose loss turns NaN/inf stops with one line naming the learning rate, and saves no model."""

import re

import pytest

from deltatune import finetune
from deltatune.errors import DeltatuneError
from tests.helpers import tiny_config


def test_a_diverging_run_stops_and_saves_nothing(tiny_model_dir, sentiment_csv, tmp_path):
    train, val = sentiment_csv
    out = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, train, val, out, learning_rate=1e30, warmup_ratio=0.0, max_steps=6)
    with pytest.raises(DeltatuneError, match=r"training diverged at step \d+: the loss is nan.*train\.learning_rate \(now 1e\+30\)") as e:
        finetune(cfg, verbose=False)
    assert "\n" not in str(e.value)
    assert not (out / "model").exists() and not (out / "eval.json").exists()


def test_a_sane_learning_rate_is_not_stopped(tiny_model_dir, sentiment_csv, tmp_path):
    train, val = sentiment_csv
    run = finetune(tiny_config(tiny_model_dir, train, val, tmp_path / "run", max_steps=3), verbose=False)
    assert (run.path / "model").is_dir()


def test_weights_with_a_nan_validation_loss_are_not_checkpointed(tiny_model_dir, sentiment_csv, tmp_path):
    import torch
    from safetensors.torch import load_file

    from deltatune.training.checkpoint import list_checkpoints

    train, val = sentiment_csv
    out = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, train, val, out, learning_rate=1e30, warmup_ratio=0.0, max_steps=6, save_steps=1)
    cfg["eval"] = {"eval_strategy": "steps", "eval_steps": 1}
    with pytest.raises(DeltatuneError, match=r"training diverged at step (\d+)") as e:
        finetune(cfg, verbose=False)
    diverged = int(re.search(r"step (\d+)", str(e.value)).group(1))
    for ckpt in list_checkpoints(out / "checkpoints"):  # only steps before the divergence, with finite weights
        assert int(ckpt.name.split("-")[1]) < diverged, ckpt
        assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "trainable.safetensors")).values()), ckpt
    logged = (out / "metrics.jsonl").read_text() if (out / "metrics.jsonl").exists() else ""
    assert "NaN" not in logged and "Infinity" not in logged
    assert not (out / "model").exists()
