"""The per-task sections of report.html, from hand-made run files (no training): NER, QA, generation,
analysis.json, test split, compressed Δθ, a run without eval.json, a damaged file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deltatune.errors import DeltatuneError
from deltatune.report import write_report
from deltatune.report.reading import read_run
from deltatune.rundir import RunDir
from tests.report.test_report import tables


def make_run(root: Path, task: str, validation: dict, *, test: dict | None = None, analysis: dict | None = None, extra: dict | None = None,
             records: list[dict] | None = None) -> Path:
    rd = RunDir(root)
    rd.prepare(overwrite=False, resume=False)
    rd.config.write_text(f"task: {task}\nmodel:\n  name_or_path: minilm\ntrain:\n  learning_rate: 0.001\n  max_steps: 30\n")
    recs = records if records is not None else [
        r for s in range(1, 31) for r in ([{"step": s, "epoch": s / 10, "loss": 1 / s, "learning_rate": 1e-3, "examples_per_second": 9.0}]
                                          + ([{"step": s, "epoch": s / 10, "eval_loss": 1 / s + 0.1, "eval_f1": s / 30}] if s % 10 == 0 else []))
    ]
    rd.metrics.write_text("".join(json.dumps(r) + "\n" for r in recs))
    ev = {"validation": validation, "train": {"global_step": 30, "best_step": 30, "train_seconds": 12.5, "peak_rss_mib": 1024.0,
                                              "trainable_parameters": 10, "total_parameters": 100, "saved_bytes": 2**20}}
    if test is not None:
        ev["test"] = test
    ev.update(extra or {})
    rd.eval.write_text(json.dumps(ev))
    if analysis is not None:
        rd.analysis.write_text(json.dumps(analysis))
    return root


def test_ner_per_entity_type_table(tmp_path):
    v = {"loss": 0.3, "precision": 0.8, "recall": 0.7, "f1": 0.75, "accuracy": 0.9,
         "PER_precision": 0.9, "PER_recall": 0.8, "PER_f1": 0.85, "PER_support": 12,
         "LOC_precision": 0.5, "LOC_recall": 0.25, "LOC_f1": 0.333, "LOC_support": 4}
    html = write_report([make_run(tmp_path / "ner", "token-classification", v, test=dict(v, f1=0.7))]).read_text()
    ent = tables(html, "entities")
    assert len(ent) == 2  # validation and test
    assert ent[0][1:] == [["LOC", "0.5", "0.25", "0.333", "4"], ["PER", "0.9", "0.8", "0.85", "12"]]
    assert "PER_f1" not in html  # not repeated among the scalars
    assert "test metrics" in html


def test_qa_exact_match_and_f1_with_the_answerable_split(tmp_path):
    v = {"exact_match": 50.0, "f1": 60.0, "total": 10, "HasAns_exact": 40.0, "HasAns_f1": 55.0, "HasAns_total": 6,
         "NoAns_exact": 66.7, "NoAns_f1": 66.7, "NoAns_total": 4}
    html = write_report([make_run(tmp_path / "qa", "question-answering", v)]).read_text()
    (groups,) = tables(html, "qa-groups")
    assert groups[1:] == [["HasAns", "40", "55", "6"], ["NoAns", "66.7", "66.7", "4"]]
    assert "exact_match" in html and "10 rows used" not in html


def test_generation_metrics_samples_worst_examples_and_before_after_generations_are_shown_escaped(tmp_path):
    v = {"loss": 1.2, "rouge1": 30.0, "rougeL": 25.0, "samples": [{"prediction": "<i>hi</i>", "reference": "hello"}]}
    analysis = {
        "split": "validation", "task": "summarization",
        "worst_examples": {"score": "ROUGE-L F", "higher_is_better": True,
                           "rows": [{"row": 3, "input": "a <b>doc</b>", "reference": "ref", "prediction": "pred", "score": 0.01}]},
        "generations": [{"row": 0, "input": "src & more", "reference": "gold", "before": "<script>x()</script>", "after": "better"}],
    }
    extra = {"compressed_delta": {"delta_energy": 0.9, "delta_int8": True, "validation": {"loss": 1.3, "rougeL": 24.0}}}
    html = write_report([make_run(tmp_path / "gen", "summarization", v, analysis=analysis, extra=extra)]).read_text()
    (worst,) = tables(html, "worst")
    assert worst[1] == ["3", "0.01", "a <b>doc</b>", "ref", "pred"]
    (gen,) = tables(html, "generations")
    assert gen[1] == ["0", "src & more", "gold", "<script>x()</script>", "better"]
    (samples,) = tables(html, "samples")
    assert samples[1] == ["hello", "<i>hi</i>"]
    assert "<script>x()" not in html and "<i>hi" not in html and "<b>doc" not in html
    assert "Compressed Δθ" in html and "delta_energy" in html and "validation (compressed Δθ) metrics" in html
    assert "ROUGE-L F (higher is better)" in html


def test_eval_metric_for_best_model_is_the_plotted_metric_and_missing_optional_files_are_fine(tmp_path):
    root = make_run(tmp_path / "r", "text-classification", {"accuracy": 0.5}, records=[])
    (root / "eval.json").unlink()
    (root / "metrics.jsonl").unlink()
    run = read_run(root)
    assert run.status == "not started" and run.metric == "accuracy" and run.best_step is None
    html = write_report([root]).read_text()
    assert "Nothing logged yet" in html and "No training record yet" in html


def test_a_damaged_eval_json_is_one_line_naming_it(tmp_path):
    root = make_run(tmp_path / "r", "text-classification", {"accuracy": 0.5})
    (root / "eval.json").write_text("{not json")
    with pytest.raises(DeltatuneError, match="eval.json is not valid JSON"):
        write_report([root])
