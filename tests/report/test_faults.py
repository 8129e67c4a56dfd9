"""The faults a new user found in report.html (issue 15, N1 findings 1-3, 5, 6, 8-11, 14-18), one test each,
on hand-made run folders (no training)."""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path

import pytest

from deltatune.cli import main
from deltatune.errors import DeltatuneError
from deltatune.report import write_report
from deltatune.report.overfitting import diagnose
from deltatune.report.plots import MAX_POINTS, curves_figure, thin
from tests.report.test_overfitting import records
from tests.report.test_report import tables
from tests.report.test_sections import make_run

CLS = {"loss": 0.4, "accuracy": 0.75, "per_class": {"neg": {"precision": 1.0, "recall": 0.5, "f1": 0.67, "support": 2},
                                                     "pos": {"precision": 0.67, "recall": 1.0, "f1": 0.8, "support": 2}},
       "confusion_matrix": [[1, 1], [0, 2]]}


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _one_line_ok(capsys, run: Path) -> str:
    """``deltatune report RUN`` succeeds (no traceback) and the report is returned."""
    assert main(["report", str(run)]) == 0, capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err
    return (run / "report.html").read_text(encoding="utf-8")


# 1. wrong-typed eval.json values: left out with a note, never a traceback
def test_wrong_typed_eval_json_values_are_left_out_with_a_note(tmp_path, capsys):
    run = make_run(tmp_path / "r", "text-classification", dict(CLS))
    _edit_json(run / "eval.json", lambda ev: (
        ev["train"].update(best_step="x", global_step=[3], train_seconds={"a": 1}, early_stopped="yes"),
        ev["validation"].update(confusion_matrix=[[1, 1], [0]], per_class={**CLS["per_class"], "odd": 5}),
        ev.update(test=7, data="no", compressed_delta=[1]),
    ))
    html = _one_line_ok(capsys, run)
    for note in ('damaged eval.json: train.best_step is "x", not an integer; left out',
                 "damaged eval.json: train.global_step is [3], not an integer",
                 "damaged eval.json: validation.confusion_matrix is not a 2 x 2 table of counts",
                 "damaged eval.json: validation.per_class.odd is 5, not an object", "damaged eval.json: test is 7, not an object"):
        assert note.replace('"', "&#34;") in html, note
    assert not tables(html, "confusion") and tables(html, "per-class")  # the damaged part only
    assert "training time" not in html and "validation metrics" in html


# 2. wrong shapes in analysis.json
def test_wrong_shapes_in_analysis_json_are_left_out_with_a_note(tmp_path, capsys):
    run = make_run(tmp_path / "r", "text-classification", dict(CLS),
                   analysis={"worst_examples": {"rows": [{"row": "a", "score": "high", "input": ["tok", "ens"]}, 5]}, "generations": 7,
                             "split": {"x": 1}})
    html = _one_line_ok(capsys, run)
    for note in ('worst_examples.rows[0].row is "a", not an integer', 'worst_examples.rows[0].score is "high", not a number',
                 "worst_examples.rows[1] is 5, not an object", "generations is 7, not a list", 'split is {"x": 1}, not text'):
        assert f"damaged analysis.json: {note}".replace('"', "&#34;") in html, note
    (worst,) = tables(html, "worst")
    assert worst[1][:3] == ["-", "-", '["tok", "ens"]']  # the row kept, its damaged values as dashes


# 3. lone surrogates anywhere: replaced by U+FFFD, the write never fails on encoding
def test_lone_surrogates_are_replaced_and_the_report_is_written(tmp_path, capsys):
    lone = "\ud800 lone"
    v = {**CLS, "per_class": {lone: CLS["per_class"]["neg"], "pos": CLS["per_class"]["pos"]}}
    run = make_run(tmp_path / "r", "text-classification", v,
                   analysis={"worst_examples": {"score": lone, "rows": [{"row": 1, "input": lone, "reference": lone, "prediction": "x",
                                                                          "score": 0.1}]},
                             "generations": [{"row": 0, "input": lone, "before": lone, "after": lone, "reference": lone}]})
    assert "\\ud800" in (run / "analysis.json").read_text()  # valid JSON, as json.dumps writes it
    html = _one_line_ok(capsys, run)
    assert "\ufffd lone" in html and "\ud800" not in html
    assert not list(run.glob(".*.tmp"))


def test_wrong_types_in_an_auto_folder_and_metrics_jsonl_are_left_out(tmp_path, capsys):
    auto = tmp_path / "auto"
    auto.mkdir()
    (auto / "auto_report.json").write_text(json.dumps({
        "task": 5, "metric": ["f1"], "best": {"trial": "x", "value": "high"}, "importances": {"values": {"lr": "big", "wd": 0.5}},
        "study": [], "leaderboard": [5, {"trial": "y", "value": "z", "state": "COMPLETE", "test": 3}, {"trial": 1, "value": 0.5,
                                                                                                       "state": "COMPLETE"}]}))
    html = _one_line_ok(capsys, auto)
    assert 'damaged auto_report.json: best.trial is "x", not an integer'.replace('"', "&#34;") in html
    (board,) = tables(html, "leaderboard")
    assert len(board) == 3  # the two objects; the 5 left out
    run = make_run(tmp_path / "r", "text-classification", dict(CLS))
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": "x", "loss": 1}) + "\n" + json.dumps({"step": 31, "loss": "high", "learning_rate": 1e-3}) + "\n")
    html = _one_line_ok(capsys, run)
    assert "damaged metrics.jsonl: 1 record(s) without a whole-number step; left out" in html


# 9. JSON that is not an object: one-line "damaged" error
@pytest.mark.parametrize("name", ["eval.json", "analysis.json"])
def test_a_json_file_that_is_not_an_object_is_a_one_line_damaged_error(tmp_path, capsys, name):
    run = make_run(tmp_path / "r", "text-classification", dict(CLS), analysis={"split": "validation"})
    (run / name).write_text("[1]")
    with pytest.raises(DeltatuneError, match=f"^damaged {re.escape(str(run / name))}: it holds a JSON list, not an object"):
        write_report([run])
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "damaged" in err and len(err.splitlines()) == 1 and "Traceback" not in err


# 5. data sizes: from eval.json's train.data_files, never from the current folder
def test_data_sizes_come_from_eval_json_and_relative_paths_are_never_looked_up(tmp_path, monkeypatch):
    run = make_run(tmp_path / "r", "text-classification", dict(CLS))
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "data:\n  train_file: data/train.csv\n  validation_split: 0.1\n")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)
    (elsewhere / "data" / "train.csv").write_text("x" * 5000)  # an unrelated file at the same relative path
    monkeypatch.chdir(elsewhere)
    html = write_report([run]).read_text()
    (setup,) = [t for t in tables(html, "kv") if t and t[0][0] == "task"]
    rows = dict((r[0], r[1]) for r in setup)
    assert rows["train"] == "data/train.csv"  # an older run: as given, no size (the file here is not the run's)
    _edit_json(run / "eval.json", lambda ev: ev["train"].update(data_files={
        "train": {"file": "data/train.csv", "rows": 80, "path": "/data/train.csv", "bytes": 2048},
        "validation": {"rows": 9, "carved_from": "data/train.csv"}}))
    html = write_report([run]).read_text()
    rows = dict((r[0], r[1]) for t in tables(html, "kv") for r in t if len(r) == 2)
    assert rows["train"] == "data/train.csv (2.0 KiB; 80 rows used)"
    assert rows["validation"] == "0.1 of the training file (9 rows used)"


# 6. NaN / inf losses: diverged
@pytest.mark.parametrize("val, step", [([1.0, 0.8, 0.6, math.nan, math.nan, math.nan], 40), ([1.0, 0.8, 0.6, 5.0, math.inf], 50)])
def test_nan_or_infinite_losses_are_a_diverged_verdict(val, step):
    d = diagnose(records(val, [1.0, 0.8, 0.6, 0.5, 0.4, 0.3][: len(val)]))
    assert d.kind == "diverged" and not d.overfitting
    assert d.message.startswith("training diverged") and f"from step {step}" in d.message and "0.600 at step 30" in d.message
    train_nan = records([1.0, 0.8, 0.6, 0.5], [1.0, 0.8, 0.6, 0.5])
    train_nan[16]["loss"] = math.nan  # step 16 (an eval record follows each 10 training records)
    assert "the training loss is nan from step 16" in diagnose(train_nan).message


def test_a_diverged_run_says_so_in_its_report(tmp_path):
    recs = records([1.0, 0.8, 0.6, math.nan], [1.0, 0.8, 0.6, math.nan])
    run = make_run(tmp_path / "r", "text-classification", dict(CLS), records=recs)
    html = write_report([run]).read_text()
    assert 'class="verdict diverged"' in html and "no sign of overfitting" not in html


# 8. empty or missing config.yaml: unknown, not the defaults
def test_an_empty_or_missing_config_shows_unknown_settings_not_defaults(tmp_path):
    run = make_run(tmp_path / "r", "text-classification", dict(CLS))
    (run / "config.yaml").write_text("")
    html = write_report([run]).read_text()
    assert "config.yaml is empty: the run&#39;s settings are unknown" in html
    assert "train.learning_rate" not in html and "0.0001" not in html and "unknown (config.yaml is missing or empty)" in html
    assert "<p class=\"muted\">unknown · unknown · unknown</p>" in html
    # missing, with the start record: the metric is the trainer's
    (run / "config.yaml").unlink()
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    start = {"step": 0, "event": "start", "total_steps": 30, "metric_for_best_model": "accuracy", "greater_is_better": True}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [start, *recs]))
    _edit_json(run / "eval.json", lambda ev: ev["train"].update(best_step=20))
    html = write_report([run]).read_text()
    assert "config.yaml is missing" in html and "20 (by validation accuracy)" in html and "task ?" not in html
    # missing, no start record: the best step without a guessed metric
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    html = write_report([run]).read_text()
    rows = dict((r[0], r[1]) for t in tables(html, "kv") for r in t if len(r) == 2)
    assert rows["best step"] == "20"


# 10. a single training record, evaluation off
def test_a_single_training_record_is_visible_and_the_caption_names_only_what_is_drawn(tmp_path):
    recs = [{"step": 2, "epoch": 1.0, "loss": 0.69, "learning_rate": 1e-4, "examples_per_second": 5.0}]
    svg, caption = curves_figure(recs, "accuracy", None)
    assert caption == "Training loss and learning rate per optimizer step."
    assert "<use" in svg  # markers: a single point is drawn
    ticks = re.findall(r"<text[^>]*>\s*([^<\s]+)\s*</text>", svg)
    assert "1" in ticks and "3" in ticks and "1.90" not in ticks  # the step axis is 1-3, not 1.9-2.1
    run = make_run(tmp_path / "r", "text-classification", dict(CLS), records=recs)
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "eval:\n  eval_strategy: 'no'\n")
    html = write_report([run]).read_text()
    assert "<figcaption>Training loss and learning rate per optimizer step" in html
    assert "no evaluations: evaluation was off (eval.eval_strategy: no)" in html
    # metric_for_best_model=loss: "validation loss" once
    _, caption = curves_figure(records([0.5, 0.4, 0.3], [0.6, 0.5, 0.4]), "loss", 30)
    assert caption == "Training and validation loss and learning rate per optimizer step; dashed line: the best step (30)."


# 14. verdict wording
def test_the_verdict_counts_the_rises_at_the_end_and_gives_each_advice_once():
    d = diagnose(records([0.5, 2.0, 3.0, 0.52], [0.6, 0.4, 0.3, 0.2]))
    assert "rose for the last 3" not in d.message
    assert "above its minimum (0.500 at step 10) since step 20 (0.520 at step 40)" in d.message
    d = diagnose(records([0.5, 0.45, 0.5, 0.6], [0.6, 0.4, 0.3, 0.2]), best_step=40, restored=False)
    assert "rose for the last 2 evaluations" in d.message
    assert d.message.count("early stopping") == 1 and d.message.count("eval.early_stopping_patience") == 1
    restored = diagnose(records([0.5, 0.45, 0.5, 0.6], [0.6, 0.4, 0.3, 0.2]), best_step=20, restored=True)
    assert restored.message.count("early stopping") == 1
    off = diagnose(records([], []) + [{"step": 1, "loss": 0.5}], no_evaluations="evaluation was off (eval.eval_strategy: no)")
    assert off.message.startswith("no evaluations: evaluation was off (eval.eval_strategy: no)") and "evaluate more often" not in off.message


# 15. the same run twice
def test_the_same_run_given_twice_is_reported_once(tmp_path, monkeypatch):
    run = make_run(tmp_path / "s1", "text-classification", dict(CLS))
    monkeypatch.chdir(tmp_path)
    for given in (["s1", "s1"], ["s1", "s1/", "./s1", str(run)]):
        out = write_report(given, tmp_path / "same.html", overwrite=True)
        html = out.read_text()
        assert not tables(html, "compare") and html.count("<h1>") == 1 and "<h1>s1</h1>" in html
    other = make_run(tmp_path / "s2", "text-classification", dict(CLS))
    html = write_report(["s1", str(other), "./s1"], tmp_path / "two.html").read_text()
    (table,) = tables(html, "compare")
    assert table[0][1:] == ["s1", "s2"]


# 16. --output inside another run folder
def test_an_output_inside_another_run_folder_is_refused(tmp_path):
    s1 = make_run(tmp_path / "s1", "text-classification", dict(CLS))
    o2 = make_run(tmp_path / "o2", "text-classification", dict(CLS))
    write_report([o2])
    before = (o2 / "report.html").read_text()
    (o2 / "model").mkdir()
    for out, needle in ((o2 / "report.html", "inside the run folder"), (o2 / "model" / "inside.html", "the model folder of a run"),
                        (o2 / "sub" / "x.html", "inside the run folder"), (o2 / "checkpoints" / "c.html", "the checkpoints folder")):
        with pytest.raises(DeltatuneError, match=needle) as e:
            write_report([s1], out, overwrite=True)
        assert "\n" not in str(e.value)
    assert (o2 / "report.html").read_text() == before and not (o2 / "model" / "inside.html").exists()
    assert write_report([o2], o2 / "report.html") == o2 / "report.html"  # its own report, rewritten
    assert write_report([s1, o2], tmp_path / "cmp.html").is_file()


# 17. long labels and texts
def test_long_labels_are_cut_with_the_full_text_in_a_title_and_long_texts_scroll(tmp_path):
    long_label = "L" * 300
    v = {**CLS, "per_class": {long_label: CLS["per_class"]["neg"], "pos": CLS["per_class"]["pos"]}}
    run = make_run(tmp_path / "r", "text-classification", v,
                   analysis={"worst_examples": {"score": "p", "rows": [{"row": 1, "input": "w" * 3000, "reference": long_label,
                                                                        "prediction": "pos", "score": 0.1}]}})
    html = write_report([run]).read_text()
    assert f'<span title="{long_label}">{"L" * 31}…</span>' in html  # confusion matrix header and rows
    assert f'<span title="{long_label}">{"L" * 39}…</span>' in html  # per-class table
    assert f'<div class="clip">{"w" * 3000}</div>' in html
    assert "overflow-wrap: anywhere" in html and ".clip { max-height" in html


# 18. long runs: thinned curves, fast
def test_thin_keeps_the_shape_first_last_and_best():
    steps = list(range(1, 200_001))
    values = [1 / s for s in steps]
    values[123_456] = 50.0  # a spike
    xs, ys = thin(steps, values, keep=(77_777,))
    assert len(xs) <= MAX_POINTS + 3 and xs == sorted(xs)
    assert xs[0] == 1 and xs[-1] == 200_000 and 77_777 in xs and 123_457 in xs and 50.0 in ys
    assert thin([1, 2], [0.5, 0.4]) == ([1, 2], [0.5, 0.4])


def test_a_200000_step_run_reports_in_seconds_and_thins_its_curves(tmp_path, capsys):
    recs = [{"step": 0, "event": "start", "total_steps": 200_000, "metric_for_best_model": "accuracy", "greater_is_better": True}]
    for s in range(1, 200_001):
        recs.append({"step": s, "epoch": s / 1000, "loss": 1 / (1 + s / 1000), "learning_rate": 1e-4 * (1 - s / 200_000),
                     "examples_per_second": 50.0})
        if s % 100 == 0:
            recs.append({"step": s, "epoch": s / 1000, "eval_loss": 0.4 + ((s - 80_000) / 400_000) ** 2, "eval_accuracy": 0.8})
    run = make_run(tmp_path / "long", "text-classification", dict(CLS), records=recs)
    _edit_json(run / "eval.json", lambda ev: ev["train"].update(global_step=200_000, best_step=80_000))
    write_report([make_run(tmp_path / "warm", "text-classification", dict(CLS))])  # matplotlib and jinja2 imported once
    start = time.perf_counter()
    html = write_report([run]).read_text()
    took = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nreport of a 200,000-step run: {took:.2f} s, {len(html) / 1024:.0f} KiB "
              f"(metrics.jsonl {(run / 'metrics.jsonl').stat().st_size / 2**20:.0f} MiB)")
    # a guard against work that grows with the log (a quadratic pass takes minutes), not a timing goal:
    # about 1-3 s here on a loaded 2-core CPU
    assert took < 15.0 and len(html) < 600 * 1024
    assert "long series thinned" in html and "the model is overfitting" in html and "best step 80000" in html


def test_a_copied_run_folder_reports_like_the_original(tmp_path):
    """A run folder moved elsewhere keeps its report content (nothing depends on the current folder)."""
    run = make_run(tmp_path / "a", "text-classification", dict(CLS))
    html = write_report([run]).read_text()
    shutil.copytree(run, tmp_path / "b")
    other = write_report([tmp_path / "b"]).read_text()
    strip = lambda h: re.sub(r"<h1>.*?</h1>|<title>.*?</title>| on \d{4}-\d\d-\d\d [^.]*\.", "", h)  # noqa: E731
    assert strip(html) == strip(other)
