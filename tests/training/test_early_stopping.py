import json

from deltatune import finetune
from deltatune.training.early_stopping import EarlyStopping
from tests.helpers import tiny_config


def test_tracker_patience_and_threshold():
    s = EarlyStopping("loss", greater_is_better=False, patience=2, threshold=0.1)
    assert s.update(1.0, 1)
    assert not s.update(0.95, 2)  # within the threshold: no improvement
    assert not s.should_stop
    assert s.update(0.8, 3)
    assert not s.update(0.9, 4) and not s.update(0.85, 5)
    assert s.should_stop and s.best_step == 3 and s.best_value == 0.8


def test_training_stops_early_and_keeps_the_best_model(tiny_model_dir, sentiment_csv, tmp_path):
    train, val = sentiment_csv
    # a learning rate so small that validation loss cannot improve by the threshold
    cfg = tiny_config(tiny_model_dir, train, val, tmp_path / "es", learning_rate=1e-9, num_train_epochs=10)
    cfg["eval"] = {
        "eval_strategy": "steps",
        "eval_steps": 2,
        "metric_for_best_model": "loss",
        "early_stopping_patience": 2,
        "early_stopping_threshold": 0.01,
    }
    run = finetune(cfg, verbose=False)
    assert run.result.early_stopped
    assert run.result.global_step == 6  # evals at 2 (best), 4, 6 -> stop
    assert run.result.best_step == 2
    log = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "early_stopping" for r in log)
    assert json.loads((run.path / "eval.json").read_text())["train"]["best_step"] == 2


def test_early_stopping_restores_the_best_adapter(tiny_model_dir, tmp_path):
    """With LoRA, the adapter saved at the end is the one of the best evaluation, not the last."""
    import deltatune as dt
    from tests.helpers import make_easy_rows, write_csv

    train = write_csv(tmp_path / "t.csv", make_easy_rows(64, 1))
    val = write_csv(tmp_path / "v.csv", make_easy_rows(16, 2))
    # a huge constant learning rate: the first evaluation is the best, later ones diverge
    cfg = tiny_config(tiny_model_dir, train, val, tmp_path / "lora_es", learning_rate=5.0, num_train_epochs=4,
                      lr_scheduler_type="constant", warmup_ratio=0.0)
    cfg["delta"] = {"method": "lora", "lora_r": 4}
    cfg["eval"] = {"eval_strategy": "steps", "eval_steps": 2, "metric_for_best_model": "loss", "early_stopping_patience": 2}
    run = dt.finetune(cfg, verbose=False)
    log = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval_loss"] for r in log if "eval_loss" in r}
    best = min(evals, key=evals.get)
    assert run.result.best_step == best and best != run.result.global_step
    reloaded = dt.evaluate(run.path, str(val))
    assert abs(reloaded["loss"] - evals[best]) < 1e-4  # the saved adapter is the best one
