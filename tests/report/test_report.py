"""report.html end to end: a classification run, a live run, a comparison, an auto folder, errors, the CLI."""

from __future__ import annotations

import json
import re
import shutil
import time
from html.parser import HTMLParser

import pytest

import deltatune
from deltatune.cli import main
from deltatune.errors import DeltatuneError
from deltatune.report import write_report
from deltatune.report.plots import curves_svg
from tests.helpers import make_easy_rows, make_sentiment_rows, tiny_config, write_csv

pytestmark = pytest.mark.usefixtures("one_thread")

BAD_LABEL = "<script>alert(1)</script>"
AMP_LABEL = 'pos & "fine"'


class Tables(HTMLParser):
    """Every <table> of a page as {"class": ..., "rows": [[cell text, ...], ...]}."""

    def __init__(self):
        super().__init__()
        self.tables: list[dict] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"class": dict(attrs).get("class", ""), "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables(html: str, cls: str) -> list[list[list[str]]]:
    p = Tables()
    p.feed(html)
    return [t["rows"] for t in p.tables if cls in t["class"].split()]


@pytest.fixture(scope="module")
def cls_run(tiny_model_dir, tmp_path_factory):
    """(run folder, validation rows): 2 epochs of the tiny BERT, labels holding HTML, an explicit validation file."""
    tmp = tmp_path_factory.mktemp("cls")
    relabel = {"neg": BAD_LABEL, "pos": AMP_LABEL}
    train = [{**r, "label": relabel[r["label"]]} for r in make_sentiment_rows(64, 1)]
    dev = [{**r, "label": relabel[r["label"]]} for r in make_sentiment_rows(24, 2)]
    cfg = tiny_config(tiny_model_dir, write_csv(tmp / "train.csv", train), write_csv(tmp / "dev.csv", dev), tmp / "run",
                      num_train_epochs=2)
    return deltatune.finetune(cfg, verbose=False).path, dev


@pytest.fixture(scope="module")
def cls_report(cls_run) -> str:
    return write_report([cls_run[0]]).read_text(encoding="utf-8")


def test_the_confusion_matrix_counts_equal_the_predictions_of_the_saved_model(cls_run, cls_report):
    from datasets import Dataset

    run, dev = cls_run
    preds = deltatune.load(run).predict_rows(Dataset.from_list([{"text": r["text"]} for r in dev]))
    (cm,) = tables(cls_report, "confusion")
    labels = cm[0][1:]
    assert sorted(labels) == sorted([BAD_LABEL, AMP_LABEL])  # the labels, unescaped back by the parser
    counts = {(row[0], labels[j]): int(c) for row in cm[1:] for j, c in enumerate(row[1:])}
    expected = {(t, p): 0 for t in labels for p in labels}
    for r, p in zip(dev, preds):
        expected[(r["label"], p["label"])] += 1
    assert counts == expected
    (pc,) = tables(cls_report, "per-class")
    assert {row[0]: int(row[4]) for row in pc[1:]} == {BAD_LABEL: 12, AMP_LABEL: 12}  # supports


def test_the_report_has_the_curves_the_verdict_and_the_header(cls_run, cls_report):
    assert cls_report.count("<svg") >= 1 and "validation loss" in cls_report and "learning rate" in cls_report
    assert "best step" in cls_report
    assert 'class="verdict' in cls_report
    for text in ("text-classification", "train.learning_rate", "peak memory (RSS)", "parameters trained", "training time", "dev.csv"):
        assert text in cls_report, text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in cls_report


def test_user_text_is_escaped_and_nothing_is_fetched_from_the_network(cls_report):
    assert BAD_LABEL not in cls_report and "&lt;script&gt;alert(1)&lt;/script&gt;" in cls_report
    assert "<script" not in cls_report.lower()  # no script at all, and no label turned into one
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", cls_report, re.I)
    assert "http://" not in cls_report and "https://" not in cls_report


def test_a_run_still_training_gets_a_report_of_what_it_logged(cls_run, tmp_path):
    run = tmp_path / "live"
    run.mkdir()
    for name in (".deltatune-run", "config.yaml"):
        shutil.copy(cls_run[0] / name, run / name)
    lines = (cls_run[0] / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[: len(lines) // 2]) + "\n" + lines[-1][:10])  # a line being written
    start = json.loads(lines[0])
    assert start["event"] == "start"
    logged = max(json.loads(ln)["step"] for ln in lines[: len(lines) // 2])
    import subprocess
    import sys

    import psutil

    from deltatune.rundir import RunDir

    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live process trains it: "training now: step N of T"
        info = {"pid": trainer.pid, "host": __import__("socket").gethostname(), "process_started": psutil.Process(trainer.pid).create_time()}
        (run / ".training").write_text(json.dumps(info))
        assert RunDir(run).training_pid() == trainer.pid
        html = write_report([run]).read_text()
        assert 'class="status training"' in html and f"training now: step {logged} of {start['total_steps']}" in html and "<svg" in html
    finally:
        trainer.kill()
        trainer.wait()
    # the process is gone (Ctrl-C saved a checkpoint at a step after the last logged one): interrupted at that step
    (run / "checkpoints" / f"step-{logged + 1:08d}").mkdir(parents=True)
    html = write_report([run]).read_text()
    assert 'class="status interrupted"' in html and f"interrupted at step {logged + 1} of {start['total_steps']}" in html
    assert f"resume with: deltatune train --resume {run}" in html and "status unfinished" not in html
    assert sorted(p.name for p in run.iterdir()) == [".deltatune-run", ".training", "checkpoints", "config.yaml", "metrics.jsonl", "report.html"]
    # an older run (no start record): still training or interrupted, it cannot tell
    (run / "metrics.jsonl").write_text("\n".join(lines[1: len(lines) // 2]) + "\n")
    html = write_report([run]).read_text()
    assert 'class="status unfinished"' in html and "still training, or interrupted" in html


def test_a_1000_step_run_reports_well_under_two_seconds(cls_run, tmp_path, capsys):
    run = tmp_path / "long"
    run.mkdir()
    for name in (".deltatune-run", "config.yaml", "eval.json"):
        shutil.copy(cls_run[0] / name, run / name)
    recs = []
    for s in range(1, 1001):
        recs.append({"step": s, "epoch": s / 100, "loss": 1 / (1 + s / 100), "learning_rate": 1e-3 * (1 - s / 1000), "examples_per_second": 50.0})
        if s % 25 == 0:
            recs.append({"step": s, "epoch": s / 100, "eval_loss": 0.4 + ((s - 400) / 1000) ** 2, "eval_accuracy": 0.8, "eval_f1_macro": 0.8})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    write_report([run])  # matplotlib and jinja2 imported once
    start = time.perf_counter()
    html = write_report([run]).read_text()
    took = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nreport of a 1,000-step run: {took:.2f} s, {len(html) / 1024:.0f} KiB")
    assert took < 2.0
    assert "the model is overfitting" in html


def test_curves_svg_for_the_ui(cls_run):
    from deltatune.rundir import RunDir

    svg = curves_svg(RunDir(cls_run[0]).read_log(), "accuracy", best_step=2)
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>") and 'width="100%"' in svg and "viewBox" in svg
    assert "validation loss" in svg and "best step 2" in svg
    assert curves_svg([]) == ""


def test_a_metric_logged_by_training_records_is_drawn_next_to_its_validation_values():
    from deltatune.report.plots import curves_figure

    # GRPO: the reward per logged step; evaluations every 4 steps
    recs = [{"step": s, "loss": 0.01, "reward": 0.5 + 0.1 * s, "learning_rate": 1e-5} for s in range(1, 9)]
    recs += [{"step": 4, "eval_loss": 0.02, "eval_reward": 0.9}, {"step": 8, "eval_loss": 0.02, "eval_reward": 1.3}]
    svg, caption = curves_figure(recs, "reward", 8)
    assert caption.startswith("Training and validation loss, training and validation reward and learning rate per optimizer step")
    assert "training reward" in svg and "validation reward" in svg
    # evaluation off: the training reward alone
    svg, caption = curves_figure([r for r in recs if "eval_loss" not in r], "reward", None)
    assert caption == "Training loss, training reward and learning rate per optimizer step." and "training reward" in svg
    assert "validation reward" not in svg
    # a metric that training records do not log: as before
    _, caption = curves_figure(recs, "accuracy", None)
    assert "training accuracy" not in caption


@pytest.fixture(scope="module")
def ner_run(tiny_model_dir, tmp_path_factory):
    from deltatune.tasks import get_task_class
    from tests.tasks.demo_runs import demo_config

    cfg, _ = demo_config("token-classification", get_task_class("token-classification"), tiny_model_dir,
                         tmp_path_factory.mktemp("ner"), max_steps=2)
    return deltatune.finetune(cfg, verbose=False).path


def test_two_runs_of_different_tasks_compare_in_one_table(cls_run, ner_run, tmp_path):
    out = write_report([cls_run[0], ner_run], tmp_path / "cmp.html")
    html = out.read_text()
    (table,) = tables(html, "compare")
    rows = {r[0]: r[1:] for r in table[1:]}
    assert rows["task"] == ["text-classification", "token-classification"]
    assert len(table[0]) == 3 and "validation accuracy" in rows and "validation f1" in rows
    assert rows["validation f1_macro"][1] == "-"  # not a metric of the NER run
    assert "<svg" in html and "http://" not in html
    # the NER run's own report has the per-entity-type table
    ner_html = write_report([ner_run]).read_text()
    assert tables(ner_html, "entities")


def test_the_errors_are_one_line_and_name_the_path(cls_run, ner_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad, needle in ((empty, "is not a deltatune run folder"), (tmp_path / "missing", "does not exist")):
        with pytest.raises(DeltatuneError, match=needle) as e:
            write_report([bad])
        assert str(bad) in str(e.value) and "\n" not in str(e.value) and "deltatune train" in str(e.value)
    with pytest.raises(DeltatuneError, match="needs --output"):
        write_report([cls_run[0], ner_run])
    out = tmp_path / "cmp.html"
    out.write_text("mine")
    with pytest.raises(DeltatuneError, match="already exists"):
        write_report([cls_run[0], ner_run], out)
    assert out.read_text() == "mine"
    assert write_report([cls_run[0], ner_run], out, overwrite=True) == out and out.read_text() != "mine"
    for own in (cls_run[0] / "config.yaml", cls_run[0] / "eval.json", cls_run[0] / "model" / "x.html"):
        with pytest.raises(DeltatuneError, match="a file of the run being read"):
            write_report([cls_run[0], ner_run], own, overwrite=True)
    assert not list(cls_run[0].glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_the_cli_writes_the_report_and_errors_are_one_line(cls_run, ner_run, tmp_path, capsys):
    assert main(["report", str(cls_run[0])]) == 0
    assert capsys.readouterr().out.strip() == f"report: {cls_run[0] / 'report.html'}"
    assert main(["report", str(cls_run[0]), str(ner_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs --output" in err and len(err.splitlines()) == 1
    assert main(["report", str(cls_run[0]), str(ner_run), "--output", str(tmp_path / "c.html")]) == 0
    assert (tmp_path / "c.html").is_file()


@pytest.fixture(scope="module")
def auto_folder(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auto")
    rows = [{"review": r["text"], "stars": r["label"]} for r in make_easy_rows(60, 1)]
    csv = write_csv(tmp / "reviews.csv", rows)
    out = tmp / "auto"
    overrides = {"data.train_file": str(csv), "data.max_seq_length": 16, "output_dir": str(out), "seed": 3}
    deltatune.auto(None, overrides, models=[tiny_model_dir], n_trials=3, evals_per_epoch=1, verbose=False)
    return out


def test_an_auto_folder_gets_leaderboard_history_importances_and_the_best_trial(auto_folder):
    report = json.loads((auto_folder / "auto_report.json").read_text())
    out = write_report([auto_folder])
    assert out == auto_folder / "report.html"
    html = out.read_text()
    (board,) = tables(html, "leaderboard")
    assert len(board) == 1 + len(report["leaderboard"])
    assert sorted(int(r[0].rstrip("*")) for r in board[1:]) == sorted(r["trial"] for r in report["leaderboard"])
    assert html.count("<svg") >= 2  # history, and the best trial's curves
    assert "Optimization history" in html and "Parameter importances" in html
    if "values" in report["importances"]:
        assert html.count("<svg") >= 3
    assert f"Best trial: trial-{report['best']['trial']:03d}" in html
    assert "http://" not in html and "https://" not in html


def test_writing_a_report_imports_no_torch_and_leaves_matplotlib_state_alone(cls_run):
    """No torch (the CLI's report is fast); no pyplot backend chosen, rcParams as they were (a notebook's plots unchanged)."""
    import subprocess
    import sys

    keys = "('font.size', 'svg.fonttype', 'axes.grid', 'svg.hashsalt', 'grid.alpha')"  # not 'backend': reading it imports pyplot
    code = (f"import sys, matplotlib; get = lambda: [matplotlib.rcParams[k] for k in {keys}]; before = get(); "
            "from deltatune.report import write_report; write_report([sys.argv[1]]); assert get() == before, (get(), before); "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'matplotlib.pyplot') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(cls_run[0])], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
