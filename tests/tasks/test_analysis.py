"""analysis.json: the per-example results every finished run writes (deltatune.tasks.examples).

Every registered task is trained for two steps on its own ``demo_rows()`` (as the contract test
does) and its analysis.json is checked against the schema report.html reads: the worst rows
first, their ``row`` pointing at the validation row they show, ``eval.worst_examples`` rows at
most, and generations before/after training for the generative tasks scored against
references. Classification's worst rows are recomputed by hand from ``predict_rows``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from datasets import Dataset

import deltatune
from deltatune.errors import DeltatuneError
from deltatune.metrics.text import rouge, squad_em_f1
from deltatune.tasks import get_task_class
from deltatune.tasks.base import GenerativeTask
from deltatune.tasks.examples import MAX_CHARS, compared_generations, cut, example_row, rouge_l, squad_f1, worst_examples
from deltatune.tasks.registry import REGISTRY, TASK_SPECS
from tests.helpers import make_sentiment_rows
from tests.tasks.demo_runs import demo_config, merge, write_jsonl

CASES = [(s.name, s.family) for s in TASK_SPECS] + [(s.name, "encoder-decoder") for s in TASK_SPECS if s.encoder_decoder]
MODEL_FIXTURES = {
    "encoder": "tiny_model_dir", "decoder": "tiny_llama_dir", "encoder-decoder": "tiny_t5_dir",
    "vision": "tiny_vit_dir", "audio": "tiny_whisper_dir", "vision-language": "tiny_vlm_dir",
    "speech-seq2seq": "tiny_whisper_asr_dir",
}
NO_ROW_SCORE = {"masked-lm", "causal-lm"}  # packed blocks of text, not rows: no worst_examples
OWN_ROW_SCORE = {"dpo", "orpo", "simpo", "kto"}  # generative, but the worst rows are by reward margin over all rows
ROW_KEYS = {"row", "input", "reference", "prediction", "score"}
GENERATION_KEYS = {"row", "input", "reference", "before", "after"}
K, COMPARE, GENERATED = 3, 2, 4  # eval.worst_examples, eval.compare_generations, eval.generation_max_samples

pytestmark = pytest.mark.usefixtures("one_thread")


def _read(run: Path) -> dict:
    return json.loads((run / "analysis.json").read_text(encoding="utf-8"))


def _shows_row(name: str, row: dict, record: dict) -> bool:
    """Whether ``record`` (a worst_examples or generations entry) shows validation row ``row``."""
    shown = record["input"]
    if name == "text-classification":
        return shown == row["text"] and record["reference"] == row["label"]
    if name == "text-regression":
        return shown == row["text"] and record["reference"] == f"{row['label']:.3g}"
    if name == "token-classification":
        return shown == " ".join(row["tokens"])
    if name == "question-answering":
        return shown == f"{row['question']} | {row['context']}" and record["reference"] == row["answers"]["text"][0]
    if name == "extractive-summarization":
        return shown == " ".join(row["text"]) and record["reference"] == row["target"]
    if name == "instruction":
        return shown == row["prompt"] and record["reference"] == row["completion"]
    if name == "generative-qa":
        return row["question"] in shown and row["context"] in shown and record["reference"] == row["answers"]["text"][0]
    if name in {"dpo", "orpo", "simpo"}:  # worst rows: prediction = the rejected response; generations: "after"
        return shown == row["prompt"] and record["reference"] == row["chosen"] and record.get("prediction", row["rejected"]) == row["rejected"]
    if name == "kto":  # worst rows: reference = the label's kind; generations: the desirable completion
        kind = "desirable" if row["label"] else "undesirable"
        return shown == row["prompt"] and (record["reference"] == kind and record["prediction"] == row["completion"] if "prediction" in record
                                          else record["reference"] == (row["completion"] if row["label"] else ""))
    if name == "grpo":
        return shown == row["prompt"] and record["reference"] == row["answer"]
    if name == "vision-language":  # the user turn's text (images by file name), the assistant's as reference
        user, answer = row["messages"][0]["content"], row["messages"][-1]["content"]
        return all(p["text"] in shown for p in user if p["type"] == "text") and record["reference"] == answer[0]["text"]
    if name == "speech-recognition":  # the audio file, its transcript
        return shown == row["audio"] and record["reference"] == row["text"]
    if name in {"image-classification", "audio-classification"}:  # the file's path and its label
        return shown == row["image" if name == "image-classification" else "audio"] and record["reference"] == row["label"]
    return row["source"] in shown and record["reference"] == row["target"]  # summarization, translation


def _check_worst(worst: dict, k: int, n_scored: int) -> None:
    assert set(worst) == {"score", "higher_is_better", "rows"} and isinstance(worst["score"], str) and worst["score"]
    rows = worst["rows"]
    assert len(rows) == min(k, n_scored)
    for r in rows:
        assert set(r) == ROW_KEYS
        assert isinstance(r["row"], int) and all(isinstance(r[key], str) for key in ("input", "reference", "prediction"))
        assert isinstance(r["score"], float) and math.isfinite(r["score"])
    scores = [r["score"] if worst["higher_is_better"] else -r["score"] for r in rows]
    assert scores == sorted(scores), "worst first"
    assert len({r["row"] for r in rows}) == len(rows)


@pytest.mark.parametrize(("name", "family"), CASES, ids=[f"{n}[{f}]" for n, f in CASES])
def test_a_finished_run_writes_its_analysis(name, family, tmp_path, request):
    model_dir = request.getfixturevalue(MODEL_FIXTURES[family])
    cls = get_task_class(name, family == "encoder-decoder")
    cfg, rows = demo_config(name, cls, model_dir, tmp_path)
    cfg = merge(cfg, {"eval": {"worst_examples": K, "compare_generations": COMPARE, "generation_max_samples": GENERATED}})
    run = deltatune.finetune(cfg, verbose=False)

    analysis_file, eval_file = run.path / "analysis.json", run.path / "eval.json"
    assert analysis_file.is_file() and eval_file.is_file()
    assert analysis_file.stat().st_mtime_ns <= eval_file.stat().st_mtime_ns  # eval.json stays the last file written
    analysis = _read(run.path)
    assert analysis["split"] == "validation" and analysis["task"] == name
    generates = issubclass(cls, GenerativeTask)
    compared = generates and cls.scores_generations
    assert compared == (generates and (REGISTRY[name].scorer is not None or name == "grpo"))  # grpo: scored by its reward
    from_generations = generates and name not in OWN_ROW_SCORE
    expected = {"split", "task"} | ({"worst_examples"} if name not in NO_ROW_SCORE else set()) | ({"generations"} if compared else set())
    assert set(analysis) == expected

    if "worst_examples" in analysis:
        worst = analysis["worst_examples"]
        _check_worst(worst, K, min(GENERATED, len(rows)) if from_generations else len(rows))
        for r in worst["rows"]:
            assert _shows_row(name, rows[r["row"]], r), (r, rows[r["row"]])
        if from_generations:  # scored generations: within the rows the final evaluation generated for
            assert all(r["row"] < GENERATED for r in worst["rows"])
    if compared:
        generations = analysis["generations"]
        assert [g["row"] for g in generations] == list(range(COMPARE))
        for g in generations:
            assert set(g) == GENERATION_KEYS and all(isinstance(g[key], str) for key in GENERATION_KEYS - {"row"})
            assert _shows_row(name, rows[g["row"]], g)
            for r in analysis["worst_examples"]["rows"]:  # one generation pass: the same "after" text
                if from_generations and r["row"] == g["row"]:
                    assert r["prediction"] == g["after"] and r["input"] == g["input"]


def _sentiment_run(tiny_model_dir, tmp_path: Path, **eval_overrides) -> tuple[deltatune.Run, list[dict]]:
    rows = make_sentiment_rows(16, 3)
    tmp_path.mkdir(parents=True, exist_ok=True)
    train = write_jsonl(tmp_path / "train.jsonl", make_sentiment_rows(32, 1))
    dev = write_jsonl(tmp_path / "dev.jsonl", rows)
    cfg = {
        "task": "text-classification",
        "output_dir": str(tmp_path / "run"),
        "seed": 7,
        "model": {"name_or_path": tiny_model_dir, "dropout": 0.0},
        "data": {"train_file": train, "validation_file": dev, "max_seq_length": 32},
        "train": {"per_device_train_batch_size": 8, "learning_rate": 1e-3, "max_steps": 2, "progress_bar": False},
        "eval": {"eval_strategy": "no", **eval_overrides},
    }
    return deltatune.finetune(cfg, verbose=False), rows


def test_classification_worst_rows_are_those_of_lowest_true_label_probability(tiny_model_dir, tmp_path):
    run, rows = _sentiment_run(tiny_model_dir, tmp_path, worst_examples=5)
    worst = _read(run.path)["worst_examples"]
    assert worst["score"] == "p(true label)" and worst["higher_is_better"] is True
    predictions = deltatune.load(run.path).predict_rows(Dataset.from_list(rows), "dev")
    p_true = [p["probabilities"][row["label"]] for p, row in zip(predictions, rows)]
    expected = sorted(range(len(rows)), key=lambda i: (p_true[i], i))[:5]
    assert [r["score"] for r in worst["rows"]] == pytest.approx([p_true[i] for i in expected], abs=1e-5)
    for r in worst["rows"]:
        assert r["score"] == pytest.approx(p_true[r["row"]], abs=1e-5)
        row, prediction = rows[r["row"]], predictions[r["row"]]
        assert (r["input"], r["reference"]) == (row["text"], row["label"])
        assert r["prediction"] == f"{prediction['label']} ({prediction['probabilities'][prediction['label']]:.2f})"
    # nothing left out scores lower than the last row kept (up to float noise between the two passes)
    assert max(r["score"] for r in worst["rows"]) <= min(p_true[i] for i in range(len(rows)) if i not in expected) + 1e-5


def test_worst_examples_takes_k_rows_and_zero_omits_them(tiny_model_dir, tmp_path):
    one, _ = _sentiment_run(tiny_model_dir, tmp_path / "one", worst_examples=1)
    assert len(_read(one.path)["worst_examples"]["rows"]) == 1
    none, _ = _sentiment_run(tiny_model_dir, tmp_path / "none", worst_examples=0)
    assert _read(none.path) == {"split": "validation", "task": "text-classification"}


def test_sentence_pairs_and_multi_label_rows(tiny_model_dir, tmp_path):
    rows = [
        {"text": f"premise {i}", "pair": f"hypothesis {i}", "label": ["a", "b"] if i % 3 == 0 else ["a"] if i % 3 == 1 else []}
        for i in range(9)
    ]
    cfg, _ = demo_config("text-classification", get_task_class("text-classification"), tiny_model_dir, tmp_path)
    write_jsonl(Path(cfg["data"]["train_file"]), rows)
    write_jsonl(Path(cfg["data"]["validation_file"]), rows)
    cfg = merge(cfg, {"data": {"text_pair_column": "pair"}, "eval": {"worst_examples": 20}})
    worst = _read(deltatune.finetune(cfg, verbose=False).path)["worst_examples"]
    assert worst["score"] == "Jaccard of predicted and true labels"
    _check_worst(worst, 20, len(rows))
    for r in worst["rows"]:
        row = rows[r["row"]]
        assert r["input"] == f"{row['text']} || {row['pair']}"
        assert r["reference"] == (", ".join(row["label"]) or "(none)")
        assert 0.0 <= r["score"] <= 1.0


# ---- generations before training -------------------------------------------------------------
def _count_generations(monkeypatch, cls) -> list[int]:
    """Count calls of ``cls.generate_rows`` (this package's own method)."""
    calls: list[int] = []
    original = cls.generate_rows

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "generate_rows", counted)
    return calls


def _summarization_run(model_dir: str, folder: Path, compare: int) -> deltatune.Run:
    cls = get_task_class("summarization")
    cfg, _ = demo_config("summarization", cls, model_dir, folder)
    # sampling draws from the global generator: the comparison must not change what follows
    cfg = merge(cfg, {"eval": {"compare_generations": compare, "do_sample": True, "temperature": 1.0, "generation_max_samples": 4}})
    return deltatune.finetune(cfg, verbose=False)


def test_compare_generations_zero_generates_nothing_before_training(tiny_llama_dir, tmp_path, monkeypatch):
    cls = get_task_class("summarization")
    calls = _count_generations(monkeypatch, cls)
    without = _summarization_run(tiny_llama_dir, tmp_path / "without", 0)
    assert len(calls) == 1  # the final evaluation's one generation pass
    assert "generations" not in _read(without.path) and "worst_examples" in _read(without.path)
    calls.clear()
    with_before = _summarization_run(tiny_llama_dir, tmp_path / "with", 2)
    assert len(calls) == 2  # before training, and the final evaluation
    assert len(_read(with_before.path)["generations"]) == 2
    # the generations before training leave the random state alone: same training, same evaluation
    a = json.loads((without.path / "eval.json").read_text())
    b = json.loads((with_before.path / "eval.json").read_text())
    assert a["validation"] == b["validation"]


def test_generated_rows_scores_average_to_the_run_metric(tiny_llama_dir, tmp_path):
    run = _summarization_run(tiny_llama_dir, tmp_path, 0)
    metrics = json.loads((run.path / "eval.json").read_text())["validation"]
    worst = _read(run.path)["worst_examples"]
    assert worst["score"] == "ROUGE-L F (0-100)"
    _check_worst(worst, 10, 4)  # eval.worst_examples 10 > 4 generated: every generated row, worst first
    assert sum(r["score"] for r in worst["rows"]) / 4 == pytest.approx(metrics["rougeL"], abs=1e-6)


def test_an_unwritable_analysis_json_fails_the_run_before_eval_json(tiny_model_dir, tmp_path):
    def block(trainer, state):  # a folder where analysis.json goes: the rename over it fails
        (Path(trainer.run_dir.root) / "analysis.json" / "x").mkdir(parents=True, exist_ok=True)

    cfg, _ = demo_config("text-classification", get_task_class("text-classification"), tiny_model_dir, tmp_path)
    with pytest.raises(DeltatuneError, match=r"analysis\.json.*--resume"):
        deltatune.finetune(cfg, verbose=False, callbacks=(block,))
    assert not (tmp_path / "run" / "eval.json").exists()


# ---- the shared helpers ------------------------------------------------------------------------
def test_strings_are_cut_to_the_limit_with_an_ellipsis():
    assert cut("short") == "short" and cut(None) == ""
    long = cut("x" * 5000)
    assert len(long) == MAX_CHARS and long.endswith("…")
    assert len(example_row(0, "y" * 3000, "r", "p", 0.5)["input"]) == MAX_CHARS
    assert cut("x" * MAX_CHARS) == "x" * MAX_CHARS


def test_ranking_is_worst_first_either_way_and_a_missing_score_is_worst():
    rows = [example_row(i, f"in {i}", "ref", "pred", s) for i, s in enumerate([0.5, 0.1, float("nan"), 0.9, 0.1])]
    up = worst_examples("s", True, rows, 4)
    assert [r["row"] for r in up["rows"]] == [2, 1, 4, 0] and up["rows"][0]["score"] is None
    down = worst_examples("loss", False, rows, 2)
    assert [r["row"] for r in down["rows"]] == [2, 3]
    assert worst_examples("s", True, rows, 0) is None and worst_examples("s", True, [], 3) is None


def test_row_scores_match_the_corpus_metrics():
    preds = ["the red house", "a blue car is here", ""]
    refs = [["red house"], ["the blue car", "a car"], ["green"]]
    assert sum(rouge_l(p, r) for p, r in zip(preds, refs)) / 3 == pytest.approx(rouge(preds, refs)["rougeL"])
    assert sum(squad_f1(p, r) for p, r in zip(preds, refs)) / 3 == pytest.approx(squad_em_f1(preds, refs)["f1"])
    after = [example_row(i, f"in {i}", "ref", f"after {i}", 1.0) for i in range(3)]
    assert compared_generations(["b0", "b1"], after) == [
        {"row": 0, "input": "in 0", "reference": "ref", "before": "b0", "after": "after 0"},
        {"row": 1, "input": "in 1", "reference": "ref", "before": "b1", "after": "after 1"},
    ]
