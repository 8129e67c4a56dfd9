"""A run interrupted at step k and resumed ends exactly like an uninterrupted run."""

import json

import pytest
import torch
from safetensors.torch import load_file

from deltatune import finetune
from deltatune.errors import DeltatuneError
from tests.helpers import tiny_config


def _cfg(tiny_model_dir, sentiment_csv, out):
    train, val = sentiment_csv
    cfg = tiny_config(tiny_model_dir, train, val, out, num_train_epochs=3, save_steps=2)
    cfg["model"]["dropout"] = 0.1  # dropout uses the RNG: resume must restore it
    cfg["eval"] = {"eval_strategy": "steps", "eval_steps": 5}
    return cfg


def _losses(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r]


def test_resume_reaches_the_same_final_loss(tiny_model_dir, sentiment_csv, tmp_path):
    full = finetune(_cfg(tiny_model_dir, sentiment_csv, tmp_path / "full"), verbose=False)

    def stop_at_7(trainer, state):
        if state.global_step == 7:
            raise KeyboardInterrupt

    cfg = _cfg(tiny_model_dir, sentiment_csv, tmp_path / "cut")
    cut = finetune(cfg, callbacks=(stop_at_7,), verbose=False)
    assert cut.result.interrupted and cut.result.global_step == 7
    assert not (tmp_path / "cut" / "eval.json").exists()
    resumed = finetune(tmp_path / "cut", resume=True, verbose=False)
    assert resumed.result.global_step == full.result.global_step
    a, b = _losses(full.path), _losses(resumed.path)
    assert [s for s, _ in a] == [s for s, _ in b]
    assert a[-1][1] == pytest.approx(b[-1][1], abs=1e-6)
    wa = load_file(str(full.path / "model" / "model.safetensors"))
    wb = load_file(str(resumed.path / "model" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)
    assert resumed.metrics["validation"]["accuracy"] == full.metrics["validation"]["accuracy"]
    # a finished run has nothing left to resume: refused, the model is left as it was
    before = (full.path / "model" / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(DeltatuneError, match="finished run"):
        finetune(full.path, resume=True, verbose=False)
    assert (full.path / "model" / "model.safetensors").stat().st_mtime_ns == before


def test_resume_refuses_a_changed_config(tiny_model_dir, sentiment_csv, tmp_path):
    def stop_at_3(trainer, state):
        if state.global_step == 3:
            raise KeyboardInterrupt

    cfg = _cfg(tiny_model_dir, sentiment_csv, tmp_path / "r")
    finetune(cfg, callbacks=(stop_at_3,), verbose=False)
    cfg["train"]["learning_rate"] = 5e-4
    with pytest.raises(DeltatuneError, match="train.learning_rate"):
        finetune(cfg, resume=True, verbose=False)


def test_resume_without_a_run_is_refused(tmp_path):
    with pytest.raises(DeltatuneError, match="no config.yaml"):
        finetune({"output_dir": str(tmp_path / "none"), "data": {"train_file": "x.csv"}}, resume=True, verbose=False)
