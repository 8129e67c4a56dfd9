"""The search end to end on the tiny random BERT: leaderboard, best run, resume; pruning."""

import json
import time
from types import SimpleNamespace

import optuna
import pytest

import deltatune
from deltatune.auto.search import TrialReporter
from deltatune.cli import main
from deltatune.config import build_config
from deltatune.errors import DeltatuneError
from tests.helpers import make_easy_rows, write_csv


@pytest.fixture
def reviews_csv(tmp_path):
    rows = [{"review": r["text"], "stars": r["label"]} for r in make_easy_rows(60, 1)]
    return write_csv(tmp_path / "reviews.csv", rows)


def test_three_trial_search_keeps_a_reloadable_best_run_and_resumes(tiny_model_dir, reviews_csv, tmp_path):
    out = tmp_path / "auto"
    overrides = {"data.train_file": str(reviews_csv), "data.max_seq_length": 16, "output_dir": str(out), "seed": 3}
    res = deltatune.auto(None, overrides, models=[tiny_model_dir], n_trials=3, evals_per_epoch=1, verbose=False)

    assert res.task == "text-classification" and res.metric == "accuracy" and res.maximize
    rows = res.leaderboard
    assert sorted(r["trial"] for r in rows) == [0, 1, 2]
    (base,) = [r for r in rows if r["baseline"]]
    # trial 0 is the hand-set default of `deltatune train`
    assert (base["trial"], base["delta.method"], base["train.learning_rate"]) == (0, "full", 1e-4)
    assert (base["train.per_device_train_batch_size"], base["train.num_train_epochs"]) == (32, 1)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    assert res.best_value == max(r["value"] for r in done) >= res.baseline_value
    assert rows[0]["value"] == res.best_value  # best first
    assert len({(r["delta.method"], r["train.learning_rate"]) for r in rows}) == 3  # the trials differ

    for name in ("leaderboard.csv", "leaderboard.json", "auto_report.json", "optuna.db"):
        assert (out / name).is_file(), name
    report = json.loads((out / "auto_report.json").read_text())
    assert report["inference"]["settings"] == {"data.text_column": "review", "data.label_column": "stars"}
    assert report["best"]["path"] == str(res.best_path) and report["baseline"]["trial"] == 0
    assert "values" in report["importances"] or "error" in report["importances"]
    assert (out / "leaderboard.csv").read_text().count("\n") == 4

    # every trial is a run directory; only the best keeps its model, no trial keeps checkpoints
    for r in rows:
        trial_dir = out / "trials" / f"trial-{r['trial']:03d}"
        assert (trial_dir / "config.yaml").is_file() and (trial_dir / "metrics.jsonl").is_file()
        assert not (trial_dir / "checkpoints").exists()
        assert (trial_dir / "model").is_dir() == (trial_dir == res.best_path)

    # the best run reloads and predicts; its config.yaml holds the searched values
    preds = deltatune.load(res.best_path).predict(["good good good", "awful awful"])
    assert {p["label"] for p in preds} <= {"pos", "neg"}
    cfg = build_config(res.best_path / "config.yaml")
    best_row = rows[0]
    assert cfg.delta.method == best_row["delta.method"]
    assert cfg.train.learning_rate == pytest.approx(best_row["train.learning_rate"])
    assert cfg.train.per_device_train_batch_size == best_row["train.per_device_train_batch_size"]
    assert cfg.data.text_column == "review" and cfg.eval.eval_strategy == "steps"
    again = deltatune.finetune(res.best_path / "config.yaml", {"output_dir": str(tmp_path / "again")}, verbose=False)
    kept = json.loads((res.best_path / "eval.json").read_text())["validation"]
    assert again.metrics["validation"]["accuracy"] == kept["accuracy"] == res.best_value
    assert again.metrics["validation"]["loss"] == pytest.approx(kept["loss"], abs=1e-6)

    # a second search in the same folder is refused; --resume adds trials to the stored study
    with pytest.raises(DeltatuneError, match="--resume"):
        deltatune.auto(None, overrides, models=[tiny_model_dir], n_trials=1, verbose=False)
    more = deltatune.auto(None, overrides, models=[tiny_model_dir], n_trials=1, resume=True, evals_per_epoch=1, verbose=False)
    assert sorted(r["trial"] for r in more.leaderboard) == [0, 1, 2, 3]
    assert sum(r["baseline"] for r in more.leaderboard) == 1  # the default is not rerun
    study = optuna.load_study(study_name="deltatune-auto", storage=f"sqlite:///{out / 'optuna.db'}")
    assert len(study.trials) == 4


def _trial_with_median(values):
    """A study whose first trial reported ``values``, and a second, running trial."""
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    first = study.ask()
    for step, v in enumerate(values, start=1):
        first.report(v, step)
    study.tell(first, values[-1])
    return study.ask()


def _state(step, accuracy):
    return SimpleNamespace(last_eval_step=step, global_step=step, last_eval_metrics={"accuracy": accuracy}, early_stopped=False)


def test_reporter_prunes_below_the_median_and_spares_the_baseline():
    trial = _trial_with_median([0.9, 0.95])
    reporter = TrialReporter(trial, "accuracy")
    reporter(None, SimpleNamespace(last_eval_step=3, global_step=4, last_eval_metrics={"accuracy": 0.1}))  # not an eval step
    assert reporter.reports == 0
    with pytest.raises(optuna.TrialPruned):
        reporter(None, _state(4, 0.5))
    assert "below the median" in trial.user_attrs["note"]
    protected = TrialReporter(_trial_with_median([0.9, 0.95]), "accuracy", protected=True)
    protected(None, _state(4, 0.5))  # reported, not pruned
    assert protected.reports == 1


def test_the_deadline_stops_every_trial_cleanly_once_it_has_evaluated():
    trainer = SimpleNamespace(total_steps=40)
    # the default trial too (it used to run on past the budget); its best evaluation counts
    for protected in (True, False):
        trial = _trial_with_median([0.0])
        reporter = TrialReporter(trial, "accuracy", deadline=time.monotonic() - 1, protected=protected)
        state = _state(4, 0.5)
        reporter(trainer, state)  # reported first, then stopped: no exception, the trainer wraps up
        assert reporter.reports == 1 and state.early_stopped is True
        assert trial.user_attrs["note"] == "stopped by the time budget at step 4 of 40; the best of its 1 evaluations counts"
    # at the last step there is nothing left to stop: the run ends as usual
    trial = _trial_with_median([0.0])
    last = SimpleNamespace(last_eval_step=-1, global_step=40, last_eval_metrics={}, early_stopped=False)
    TrialReporter(trial, "accuracy", deadline=time.monotonic() - 1)(trainer, last)
    assert last.early_stopped is False and "note" not in trial.user_attrs
    # no evaluation yet: nothing to keep, the trial is incomplete
    trial = _trial_with_median([0.0])
    state = SimpleNamespace(last_eval_step=-1, global_step=3, last_eval_metrics={}, early_stopped=False)
    with pytest.raises(optuna.TrialPruned, match="incomplete: stopped by the time budget at step 3 of 40"):
        TrialReporter(trial, "accuracy", deadline=time.monotonic() - 1)(trainer, state)
    assert state.early_stopped is False
    # ... but the default trial, the one result the search must return, stops cleanly and is evaluated there
    trial = _trial_with_median([0.0])
    TrialReporter(trial, "accuracy", deadline=time.monotonic() - 1, protected=True)(trainer, state)
    assert state.early_stopped is True
    assert trial.user_attrs["note"] == "incomplete: stopped by the time budget at step 3 of 40, before its first evaluation; evaluated there"


def test_pruning_leaves_the_training_loop_cleanly(tiny_model_dir, reviews_csv, tmp_path):
    trial = _trial_with_median([0.0])  # never below this median: only the deadline stops it
    reporter = TrialReporter(trial, "accuracy", deadline=time.monotonic() - 1)  # already past: stop at step 1
    cfg = {
        "output_dir": str(tmp_path / "run"), "model.name_or_path": tiny_model_dir, "data.train_file": str(reviews_csv),
        "data.text_column": "review", "data.label_column": "stars", "data.max_seq_length": 16,
        "train.per_device_train_batch_size": 8, "train.logging_steps": 1, "train.progress_bar": False,
    }
    with pytest.raises(optuna.TrialPruned):
        deltatune.finetune(None, cfg, callbacks=(reporter,), verbose=False)
    assert "incomplete: stopped by the time budget at step 1 of" in trial.user_attrs["note"]
    run = tmp_path / "run"
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[0]["total_steps"] > 1
    assert [r["step"] for r in log[1:]] == [1]  # nothing after the step that stopped it
    assert (run / "config.yaml").is_file() and not (run / "eval.json").exists() and not (run / "model").exists()
    # the process is left in a state where the next run trains normally
    again = deltatune.finetune(None, {**cfg, "output_dir": str(tmp_path / "next"), "train.max_steps": 2}, verbose=False)
    assert again.result.global_step == 2 and (tmp_path / "next" / "model").is_dir()


def test_cli_bad_input_is_one_line(tmp_path, capsys, tiny_model_dir):
    bad = write_csv(tmp_path / "numbers.csv", [{"x": 1.5, "y": 2}, {"x": 2.5, "y": 3}])
    code = main(["auto", "--train", str(bad), "--models", tiny_model_dir, "--output-dir", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "'x', 'y'" in err and "--task" in err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--methods", "lora,bogus"], "unknown --methods 'bogus'"),
        (["--n-trials", "0"], "--n-trials must be at least 1"),
        (["--storage", "bogus://x"], "cannot open the optuna storage 'bogus://x'"),
        (["--resume"], "nothing to resume"),
    ],
)
def test_bad_search_options_are_one_line_and_leave_nothing(tmp_path, capsys, tiny_model_dir, reviews_csv, extra, needle):
    out = tmp_path / "a"
    code = main(["auto", "--train", str(reviews_csv), "--models", tiny_model_dir, "--output-dir", str(out), "--quiet", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and needle in err, err
    assert not out.exists()  # so the next plain start is not blocked


def test_a_default_trial_failing_on_the_config_stops_the_search_and_user_columns_are_reported(tmp_path, capsys, tiny_model_dir):
    rows = [{"text": r["text"], "review": r["text"], "stars": r["label"]} for r in make_easy_rows(40, 1)]
    data = write_csv(tmp_path / "two_texts.csv", rows)
    out = tmp_path / "a"
    argv = ["auto", "--train", str(data), "--models", tiny_model_dir, "--output-dir", str(out), "--text-column", "review",
            "--max-seq-length", "16", "--n-trials", "3", "eval.metric_for_best_model=nonexistent"]
    code = main(argv)
    captured = capsys.readouterr()
    assert "data.text_column = 'review': set by you (inferred: 'text')" in captured.out
    assert code == 2 and captured.err.strip().count("\n") == 0
    assert "the default trial failed, so every trial would" in captured.err and "nonexistent" in captured.err
    assert len(list((out / "trials").iterdir())) == 1  # trials 1 and 2 were not started


def test_few_labelled_rows_per_class_make_auto_train_few_shot(tiny_model_dir, tmp_path):
    rows = [{"review": r["text"], "stars": r["label"]} for r in make_easy_rows(20, 2)]  # 10 rows per class
    data = write_csv(tmp_path / "few.csv", rows)
    out = tmp_path / "auto"
    overrides = {"data.train_file": str(data), "data.max_seq_length": 16, "output_dir": str(out), "seed": 3}
    res = deltatune.auto(None, overrides, models=[tiny_model_dir], n_trials=1, evals_per_epoch=1, verbose=False)
    best = build_config(str(res.best_path / "config.yaml"))
    assert best.train.method == "contrastive"
    assert "label" in deltatune.load(res.best_path).predict(["good film"])[0]
