"""``deltatune auto --time-budget``: trial estimates, the shortened default trial, trials not started,
and the leaderboard's model column.

No assertion depends on how fast this machine is: the measured rate is made slow by patching
:meth:`StepClock.timing` (our function), and the tests assert on the decisions taken.
"""

import csv
import dataclasses
import json
import re
import time
from types import SimpleNamespace

import optuna
import pytest

import deltatune
from deltatune.auto.candidates import Candidate
from deltatune.auto.report import format_leaderboard, leaderboard
from deltatune.auto.search import SearchSpace, make_objective
from deltatune.auto.timing import SAVE_SHARE, DefaultTrialPlanner, ShortenTrial, StepClock, TimeBudget, TrialTiming
from tests.helpers import make_easy_rows, write_csv


@pytest.fixture
def reviews_csv(tmp_path):
    rows = [{"review": r["text"], "stars": r["label"]} for r in make_easy_rows(60, 1)]
    return write_csv(tmp_path / "reviews.csv", rows)


def test_a_budget_far_below_the_default_trial_shortens_it_says_so_and_ends_the_search(
    tiny_model_dir, reviews_csv, tmp_path, monkeypatch, capsys
):
    # every step "takes" 10 s per example (80 s per step of 8): the 7-step default trial needs
    # ~13 minutes, the budget is 8
    real = StepClock.timing

    def slow(self):
        t = real(self)
        return None if t is None else dataclasses.replace(t, seconds_per_example=10.0, setup=1.0, evaluation=None, finish=None)

    monkeypatch.setattr(StepClock, "timing", slow)
    out = tmp_path / "auto"
    overrides = {"data.train_file": str(reviews_csv), "data.max_seq_length": 16, "output_dir": str(out),
                 "train.per_device_train_batch_size": 8}
    res = deltatune.auto(None, overrides, models=[tiny_model_dir], time_budget="8m", evals_per_epoch=1)
    printed = capsys.readouterr().out

    # the estimate is printed with the decision and what would make the default trial fit
    m = re.search(r"auto: default trial ~\S+ \(about 7 steps at 0\.013 steps/s\); budget 8m00s, \S+ left: "
                  r"it does not fit, so it restarts shortened to (\d) of 7 steps \(~\S+\); for the whole default trial "
                  r"give --time-budget \d+m, --max-train-samples \d+ or a smaller model \(--models\)", printed)
    assert m, printed
    steps = int(m.group(1))
    assert 1 <= steps < 7
    # the shortened run is what ran and what reproduces
    trial_dir = out / "trials" / "trial-000"
    assert deltatune.build_config(trial_dir / "config.yaml").train.max_steps == steps
    logged = [json.loads(x)["step"] for x in (trial_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) == steps
    # no further trial fits the time left: the search ends instead of starting one
    assert re.search(r"auto: \S+ of the budget left, less than the shortest trial needs \(~\S+\): the search ends", printed)
    (row,) = res.leaderboard
    assert row["state"] == "COMPLETE" and row["baseline"] and res.best_path == trial_dir
    assert row["note"] == f"shortened to {steps} of 7 steps to fit the time budget"
    assert f"shortened to {steps} of 7 steps" in printed  # the printed leaderboard says why
    assert res.report["seconds"] < 480
    assert res.report["trial_timings"][0]["seconds_per_example"] == 10.0
    # the model column names the model although there was one candidate (not searched)
    assert row["model.name_or_path"] == tiny_model_dir
    with (out / "leaderboard.csv").open() as f:
        assert [r["model.name_or_path"] for r in csv.DictReader(f)] == [tiny_model_dir]
    assert "model" in printed.split("(* = the hand-set default")[0].split("trial  state")[1].splitlines()[0]


def _space(n_train=100):
    return SearchSpace([Candidate("m", "encoder", 1000, 500, ["full"])], ["full"], {}, n_train, evals_per_epoch=2)


def test_a_trial_that_cannot_fit_the_time_left_is_not_started(tmp_path):
    budget = TimeBudget(60.0, time.monotonic())
    # measured on an earlier trial: 1 s per example; every trial of this space trains >= 100 examples
    budget.record(TrialTiming(1.0, 32, setup=2.0, evaluation=1.0, finish=3.0, non_embedding=500, method="full"))

    def must_not_run(*args, **kwargs):
        raise AssertionError("the trial was started")

    objective = make_objective(_space(), {"model.name_or_path": "m"}, tmp_path, "accuracy", budget, must_not_run)
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match=r"not started: needs ~\d+m\d\ds, \d+\.\ds of the budget left"):
        objective(trial)
    assert trial.user_attrs["skipped"] and trial.user_attrs["estimated_seconds"] >= 100 + 2 + 3
    assert trial.user_attrs["model"] == "m"

    # the same trial when the trials so far were fast: it starts
    fast = TimeBudget(60.0, time.monotonic())
    fast.record(TrialTiming(0.001, 32, setup=2.0, evaluation=1.0, finish=3.0, non_embedding=500, method="full"))

    def started(*args, **kwargs):
        raise RuntimeError("started")

    trial = study.ask()
    with pytest.raises(RuntimeError, match="started"):
        make_objective(_space(), {"model.name_or_path": "m"}, tmp_path, "accuracy", fast, started)(trial)
    assert trial.user_attrs["estimated_seconds"] < 60 and "skipped" not in trial.user_attrs


def _clock(started_ago, marks):
    """A StepClock whose trial started ``started_ago`` s ago, with (seconds ago, examples seen, evaluated) marks."""
    now = time.monotonic()
    clock = StepClock(500, "full", started=now - started_ago)
    clock.marks = [(now - ago, seen, evaluated) for ago, seen, evaluated in marks]
    return clock


def test_step_clock_measures_steps_without_the_first_step_and_evaluations():
    # step 1 ended 10 s after the start (setup + one step); steps 2, 4: 2 s each; step 3 also evaluated (5 s)
    clock = _clock(19, [(9, 8, False), (7, 16, False), (2, 24, True), (0, 32, False)])
    t = clock.timing()
    assert t.seconds_per_example == pytest.approx(0.25, abs=1e-3)
    assert t.examples_per_step == 8 and t.step_seconds == pytest.approx(2.0, abs=0.01)
    assert t.evaluation == pytest.approx(3.0, abs=0.01)
    assert t.setup == pytest.approx(8.0, abs=0.01)
    assert t.finish is None and t.steps == 4
    # an estimate of a trial twice as long with 3 evaluations, on a model twice the size
    assert t.estimate(8, 8, 3, scale=2.0) == pytest.approx(16 + 8 * 8 * 0.5 + 3 * 6 + (8 * SAVE_SHARE * 2 + 2 * 6), abs=0.1)


def _trainer(total_steps):
    return SimpleNamespace(total_steps=total_steps, eval_features=None)


def _step(n):
    return SimpleNamespace(global_step=n, last_eval_step=-1, examples_seen=8 * n, last_eval_metrics={})


FOUR_STEPS = [(6, 8, False), (4, 16, False), (2, 24, False), (0, 32, False)]  # 2 s per step of 8 examples


def test_the_default_trial_is_shortened_to_the_steps_that_fit():
    said = []
    budget = TimeBudget(90.8, time.monotonic() - 10, said.append)  # 80.8 s left
    # started 9 s ago: 1 s setup, 2 s per step, an evaluation as long as a step (none measured yet),
    # the finish 2 evaluations and a quarter of the setup: 100 steps need ~3m29s
    clock = _clock(9, FOUR_STEPS)
    planner = DefaultTrialPlanner(clock, budget, eval_steps=50, evaluations=2, train_rows=1000)
    for step in (1, 2, 3):  # before the deciding step: nothing
        planner(_trainer(100), _step(step))
    assert not said
    with pytest.raises(ShortenTrial) as stop:
        planner(_trainer(100), _step(4))
    # (80.8 s / 1.15 - setup 1 s - finish 4.25 s - 2 evaluations 4 s) / 2 s per step = 30.5
    assert (stop.value.steps, stop.value.planned) == (30, 100)
    (line,) = said
    assert line.startswith("auto: default trial ~3m29s (about 100 steps at 0.5 steps/s); budget 1m31s, 1m2")
    assert "it does not fit, so it restarts shortened to 30 of 100 steps" in line
    assert "--max-train-samples 300" in line and "--time-budget 5m" in line  # 1 s before the trial + 3m29s x 1.15


def test_a_default_trial_that_fits_goes_on_and_one_that_cannot_even_be_shortened_runs_to_the_budget():
    said = []
    budget = TimeBudget(3600.0, time.monotonic(), said.append)
    DefaultTrialPlanner(_clock(9, FOUR_STEPS), budget, 50, 2)(_trainer(100), _step(4))
    assert said[-1].endswith("it fits")
    # slow steps: decided at step 2 already, once they took a tenth of the time left (3 s): 2 s
    budget = TimeBudget(3.0, time.monotonic(), said.append)  # not even setup and one step after a restart
    planner = DefaultTrialPlanner(_clock(5, [(2, 8, False), (0, 16, False)]), budget, 50, 2)
    planner(_trainer(100), _step(2))
    assert "it does not fit, not even shortened to 1 step; it goes on until the budget stops it and is evaluated there" in said[-1]


def test_leaderboard_model_comes_from_the_trial_or_its_config(tmp_path):
    run = tmp_path / "trial-000"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  name_or_path: minilm\n")
    dist = {"delta.method": optuna.distributions.CategoricalDistribution(["full", "lora"])}
    old = optuna.trial.create_trial(  # a trial stored by an earlier version: no "model" attribute
        params={"delta.method": "full"}, distributions=dist, value=0.5,
        user_attrs={"path": str(run), "settings": {"delta.method": "full"}},
    )
    new = optuna.trial.create_trial(
        params={"delta.method": "lora"}, distributions=dist, value=0.6,
        user_attrs={"path": str(tmp_path / "gone"), "settings": {"delta.method": "lora"}, "model": "smollm2"},
    )
    rows = leaderboard([old, new], "accuracy", True, {})
    assert [r["model.name_or_path"] for r in rows] == ["smollm2", "minilm"]
    table = format_leaderboard(rows)
    assert table.splitlines()[0].split()[:5] == ["trial", "state", "accuracy", "model", "method"]


def test_no_trial_starts_once_the_budget_is_spent(tiny_model_dir, reviews_csv, tmp_path, capsys):
    out = tmp_path / "auto"
    # 10 ms: used up by reading the data and choosing the model, before the default trial
    res = deltatune.auto(None, {"data.train_file": str(reviews_csv), "output_dir": str(out)}, models=[tiny_model_dir],
                         time_budget="0.01s")
    (row,) = res.leaderboard
    assert row["state"] == "PRUNED" and row["note"] == "not started: the time budget was used up before it"
    assert res.best_path is None and not (out / "trials").exists()
    assert "no trial completed" in capsys.readouterr().out


def test_a_trial_past_the_deadline_after_an_evaluation_ends_cleanly_with_its_best_weights(tiny_model_dir, reviews_csv, tmp_path):
    from deltatune.auto.search import TrialReporter

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    reporter = TrialReporter(trial, "accuracy", deadline=time.monotonic() + 3600, protected=True)  # the default trial

    def budget_runs_out_at_step_2(trainer, state):
        if state.global_step == 2:
            reporter.deadline = time.monotonic() - 1
    cfg = {
        "output_dir": str(tmp_path / "run"), "model.name_or_path": tiny_model_dir, "data.train_file": str(reviews_csv),
        "data.text_column": "review", "data.label_column": "stars", "data.max_seq_length": 16,
        "train.per_device_train_batch_size": 8, "train.progress_bar": False,
        "eval.eval_strategy": "steps", "eval.eval_steps": 2,
    }
    run = deltatune.finetune(None, cfg, callbacks=(budget_runs_out_at_step_2, reporter), verbose=False)
    # stopped after its first evaluation (step 2 of 7), and finished as a run: model, eval.json, a value
    assert run.result.global_step == 2 and trial.user_attrs["budget_stopped"]
    assert trial.user_attrs["note"] == "stopped by the time budget at step 2 of 7; the best of its 1 evaluations counts"
    assert (tmp_path / "run" / "model").is_dir() and "accuracy" in run.metrics["validation"]


def test_the_default_trial_past_the_deadline_before_any_evaluation_is_evaluated_where_it_stopped(tiny_model_dir, reviews_csv, tmp_path):
    from deltatune.auto.search import TrialReporter

    trial = optuna.create_study(direction="maximize").ask()
    reporter = TrialReporter(trial, "accuracy", deadline=time.monotonic() - 1, protected=True)  # past already
    cfg = {
        "output_dir": str(tmp_path / "run"), "model.name_or_path": tiny_model_dir, "data.train_file": str(reviews_csv),
        "data.text_column": "review", "data.label_column": "stars", "data.max_seq_length": 16,
        "train.per_device_train_batch_size": 8, "train.progress_bar": False, "eval.eval_strategy": "steps", "eval.eval_steps": 4,
    }
    run = deltatune.finetune(None, cfg, callbacks=(reporter,), verbose=False)
    assert run.result.global_step == 1 and (tmp_path / "run" / "model").is_dir() and "accuracy" in run.metrics["validation"]
    assert trial.user_attrs["note"] == "incomplete: stopped by the time budget at step 1 of 7, before its first evaluation; evaluated there"


@pytest.mark.parametrize("flag, value, needle", [("--time-budget", "2 minutes", "cannot read the duration"),
                                                 ("--max-memory", "lots", "cannot read the memory size")])
def test_a_bad_budget_is_refused_before_torch_loads(tmp_path, flag, value, needle):
    import subprocess
    import sys

    code = ("import sys\nfrom deltatune.cli import main\n"
            f"rc = main(['auto', '--train', 'x.csv', {flag!r}, {value!r}])\n"
            "print(rc, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert done.stderr.strip().count("\n") == 0 and needle in done.stderr
