"""A run whose loss turns NaN/inf stops with one line naming the learning rate, and saves no model."""

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
