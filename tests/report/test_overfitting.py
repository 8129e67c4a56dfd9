"""The overfitting verdict: diagnose() on hand-made records, and on real runs that do and do not overfit."""

from __future__ import annotations

import math

import pytest

import deltatune
from deltatune.report import write_report
from deltatune.report.overfitting import (
    ABS_TOL,
    MIN_EVALS,
    diagnose,
    diagnose_run,
    loss_pairs,
)
from tests.conftest import SST2


def records(val: list[float], train: list[float], every: int = 10) -> list[dict]:
    """Train records each step (linear between the given losses per evaluation) and an eval every ``every`` steps."""
    out = []
    for i, (v, t) in enumerate(zip(val, train), 1):
        step = i * every
        for s in range(step - every + 1, step + 1):
            out.append({"step": s, "epoch": s / 100, "loss": t, "learning_rate": 1e-4, "examples_per_second": 10.0})
        out.append({"step": step, "epoch": step / 100, "eval_loss": v, "eval_accuracy": 0.8})
    return out


def test_rising_validation_loss_with_falling_training_loss_is_overfitting_and_the_message_says_so():
    recs = records([0.50, 0.412, 0.45, 0.50, 0.583], [0.6, 0.35, 0.2, 0.1, 0.02])
    d = diagnose(recs, best_step=20, restored=True)
    assert d.overfitting and d.kind == "overfitting"
    assert "validation loss rose for the last 3 evaluations (0.412 at step 20 -> 0.583 at step 50)" in d.message
    assert "while training loss fell (0.350 -> 0.020)" in d.message
    assert "the best step (20) was restored" in d.message
    assert "eval.early_stopping_patience" in d.message and "model.dropout" in d.message and "train.weight_decay" in d.message
    kept = diagnose(recs, best_step=50, restored=False)
    assert kept.overfitting and "the final weights are from step 50" in kept.message and "eval.metric_for_best_model" in kept.message
    stopped = diagnose(recs + [{"step": 50, "event": "early_stopping", "best_step": 20}], best_step=20, restored=True)
    assert "early stopping ended training and the best step (20) was restored" in stopped.message
    assert "eval.early_stopping_patience" not in stopped.message and "model.dropout" in stopped.message  # not advised twice


def test_falling_and_flat_validation_loss_is_no_sign_of_overfitting():
    falling = diagnose(records([0.7, 0.5, 0.4, 0.35], [0.8, 0.5, 0.3, 0.2]))
    assert not falling.overfitting and falling.kind == "ok" and falling.message.startswith("no sign of overfitting")
    # a rise within the tolerance (max(2 % of the minimum, 0.01)) is flat
    flat = diagnose(records([0.5, 0.4, 0.405, 0.4 + ABS_TOL * 0.9], [0.8, 0.5, 0.3, 0.2]))
    assert not flat.overfitting and flat.kind == "ok" and "within the tolerance" in flat.message
    # a rise at the last evaluation only is not enough (one evaluation may be noise)
    once = diagnose(records([0.5, 0.45, 0.4, 0.6], [0.8, 0.5, 0.3, 0.2]))
    assert not once.overfitting and "last evaluation only" in once.message


def test_too_few_evaluations_and_no_records():
    d = diagnose(records([0.5, 0.9], [0.4, 0.1]))
    assert not d.overfitting and d.kind == "too_few" and f"at least {MIN_EVALS}" in d.message
    assert diagnose([]).kind == "too_few"


def test_evaluations_without_a_validation_loss_are_not_told_to_evaluate_more_often():
    recs = [{"step": s, "loss": 0.01, "reward": 0.5 + s / 10} for s in range(1, 7)]
    recs += [{"step": s, "eval_reward": 0.7 + s / 10} for s in (2, 4, 6)]  # GRPO: rewards, no eval_loss
    d = diagnose(recs)
    assert not d.overfitting and d.kind == "too_few"
    assert "log no validation loss" in d.message and "evaluate more often" not in d.message


def test_validation_loss_rising_with_training_loss_is_unstable_not_overfitting():
    d = diagnose(records([0.5, 0.4, 0.6, 0.8], [0.5, 0.45, 0.6, 0.9]))
    assert not d.overfitting and d.kind == "unstable" and "learning rate" in d.message


def test_non_finite_values_are_skipped_and_the_last_record_of_a_step_wins():
    recs = records([0.5, 0.4, 0.45, 0.5, 0.6], [0.6, 0.35, 0.2, 0.1, 0.02])
    recs.append({"step": 30, "eval_loss": float("nan")})
    recs.append({"step": 60, "eval_loss": float("inf")})
    recs.append({"step": 61, "loss": float("nan")})
    pairs = loss_pairs(recs)
    assert [s for s, _, _ in pairs] == [10, 20, 30, 40, 50]
    assert all(math.isfinite(v) and (t is None or math.isfinite(t)) for _, v, t in pairs)
    finite = [r for r in recs if all(math.isfinite(v) for k, v in r.items() if k in ("loss", "eval_loss"))]
    d = diagnose(finite)
    assert d.overfitting and "nan" not in d.message.lower()
    # evaluations without training records: no training loss, so never "overfitting"
    only_evals = [r for r in finite if "eval_loss" in r]
    assert diagnose(only_evals).kind == "unstable"
    # a NaN or infinite loss anywhere: the run diverged, from the first step that logged one
    d = diagnose(recs)
    assert d.kind == "diverged" and not d.overfitting and "from step 30" in d.message and "learning rate" in d.message


def _sst2_config(tmp_path, **train) -> dict:
    return {
        "task": "text-classification", "output_dir": str(tmp_path / "run"), "seed": 1,
        "model": {"dropout": 0.0},
        "data": {"train_file": str(SST2 / "train.tsv"), "validation_file": str(SST2 / "dev.tsv"), "text_column": "sentence",
                 "max_train_samples": 16, "max_eval_samples": 32, "max_seq_length": 64},
        "train": {"per_device_train_batch_size": 8, "logging_steps": 1, "progress_bar": False, "weight_decay": 0.0,
                  "warmup_ratio": 0.0, **train},
        "eval": {"eval_strategy": "epoch"},
    }


@pytest.mark.usefixtures("one_thread")
def test_a_tiny_data_set_trained_for_many_epochs_is_diagnosed_as_overfitting(tiny_model_dir, tmp_path):
    """16 SST-2 rows, full fine-tuning of the tiny random BERT, 12 epochs at a constant high learning rate."""
    if not (SST2 / "train.tsv").is_file():
        pytest.skip("SST-2 data not available")
    cfg = _sst2_config(tmp_path, learning_rate=2e-3, num_train_epochs=12, lr_scheduler_type="constant")
    cfg["model"]["name_or_path"] = tiny_model_dir
    run = deltatune.finetune(cfg, verbose=False)
    d = diagnose_run(run.path)
    assert d is not None and d.overfitting, d.message
    assert "the model is overfitting" in d.message and "while training loss fell" in d.message
    assert ("was restored" in d.message) == (run.metrics["train"]["best_step"] != run.metrics["train"]["global_step"])
    html = write_report([run.path]).read_text()
    assert 'data-overfitting="true"' in html and "the model is overfitting" in html


@pytest.mark.usefixtures("one_thread")
def test_a_normal_run_is_not_diagnosed_as_overfitting(tiny_model_dir, tmp_path):
    """The tiny BERT on 96 easy synthetic rows, 3 epochs with a decaying learning rate: the validation loss falls."""
    from tests.helpers import make_sentiment_rows, tiny_config, write_csv

    train = write_csv(tmp_path / "train.csv", make_sentiment_rows(96, 1))
    dev = write_csv(tmp_path / "dev.csv", make_sentiment_rows(32, 2))
    cfg = tiny_config(tiny_model_dir, train, dev, tmp_path / "run", num_train_epochs=3)
    run = deltatune.finetune(cfg, verbose=False)
    d = diagnose_run(run.path)
    assert d is not None and not d.overfitting and d.kind == "ok", d.message


def test_diagnose_run_of_a_folder_without_records_is_none(tmp_path):
    from deltatune.rundir import RunDir

    rd = RunDir(tmp_path / "run")
    rd.prepare(overwrite=False, resume=False)
    rd.config.write_text("task: text-classification\n")
    assert diagnose_run(rd.root) is None
