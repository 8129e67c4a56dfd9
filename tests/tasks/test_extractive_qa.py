"""Extractive QA: answers parsing, windows and labels, post-processing, v2.0 null answers, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from deltatune.config import build_config
from deltatune.errors import DeltatuneError
from deltatune.tasks import Features, create_task
from deltatune.tasks.extractive_qa import (
    V2_ATTRIBUTE,
    ExtractiveQATask,
    GoldAnswer,
    parse_answers,
    postprocess_predictions,
    window_labels,
)
from tests.conftest import SHARED_DATA

XQUAD = SHARED_DATA / "question_answering" / "xquad_en" / "xquad.en.json"
NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty"
).split()


def _task(**data) -> ExtractiveQATask:
    return create_task(build_config({"task": "question-answering", "data": data}))


def _ds(questions, contexts, answers=None) -> datasets.Dataset:
    cols = {"question": questions, "context": contexts}
    if answers is not None:
        cols["answers"] = answers
    return datasets.Dataset.from_dict(cols)


def _long_context(n: int = 60) -> str:
    """Distinct words so that every answer text occurs once: 'alpha0 ... alpha59.'."""
    return " ".join(f"item{NUMBERS[i % 21]}{i // 21}" for i in range(n)) + "."


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# ---- answers ---------------------------------------------------------------------------------
def test_answer_forms_are_parsed_and_located():
    ctx = "Paris is the capital of France. Paris is big."
    assert parse_answers({"text": ["Paris"], "answer_start": [32]}, ctx, "f", 1, "answers") == [GoldAnswer("Paris", 32)]
    assert parse_answers({"text": "France", "answer_start": 24}, ctx, "f", 1, "answers") == [GoldAnswer("France", 24)]
    assert parse_answers([{"text": "Paris", "answer_start": 0}, {"text": "France"}], ctx, "f", 1, "a") == [
        GoldAnswer("Paris", 0),
        GoldAnswer("France", 24),
    ]
    # plain strings: first occurrence
    assert parse_answers("Paris", ctx, "f", 1, "a") == [GoldAnswer("Paris", 0)]
    assert parse_answers(["capital", "big"], ctx, "f", 1, "a") == [GoldAnswer("capital", 13), GoldAnswer("big", 41)]
    # no answer (SQuAD v2.0)
    for empty in ({"text": [], "answer_start": []}, [], "", None, float("nan")):
        assert parse_answers(empty, ctx, "f", 1, "a") == []


def test_bad_answers_name_file_row_and_column():
    ctx = "Paris is the capital of France."
    with pytest.raises(DeltatuneError, match=r"train.json: row 3 column 'answers': answer_start 1 does not point at .*'Paris'"):
        parse_answers({"text": ["Paris"], "answer_start": [1]}, ctx, "train.json", 3, "answers")
    with pytest.raises(DeltatuneError, match=r"train.csv: row 2 column 'ans': answer 'Lyon' is not in the context"):
        parse_answers("Lyon", ctx, "train.csv", 2, "ans")
    with pytest.raises(DeltatuneError, match=r"row 4 column 'answers': answer 'London' is not in the context \(answer_start 10\)"):
        parse_answers({"text": ["London"], "answer_start": [10]}, ctx, "train.json", 4, "answers")
    with pytest.raises(DeltatuneError, match=r"2 answer text\(s\) but 1 answer_start"):
        parse_answers({"text": ["Paris", "France"], "answer_start": [0]}, ctx, "t", 1, "answers")
    t = _task()
    with pytest.raises(DeltatuneError, match=r"dev.json: row 2 has an empty 'question'"):
        t.check(_ds(["Who?", "  "], [ctx, ctx], ["Paris", "Paris"]), "dev.json")
    with pytest.raises(DeltatuneError, match=r"dev.json: no column 'answers'"):
        t.check(_ds(["Who?"], [ctx]), "dev.json")
    t.check(_ds(["Who?"], [ctx]), "dev.json", with_labels=False)  # prediction rows need no answers


def test_fit_detects_squad_v2_from_unanswerable_rows():
    ctx = "Paris is the capital of France."
    answerable = _ds(["Capital?", "Country?"], [ctx, ctx], [{"text": ["Paris"], "answer_start": [0]}, {"text": ["France"], "answer_start": [24]}])
    mixed = _ds(["Capital?", "Mayor?"], [ctx, ctx], [{"text": ["Paris"], "answer_start": [0]}, {"text": [], "answer_start": []}])
    t = _task()
    t.fit(answerable, "train.json")
    assert t.version_2_with_negative is False
    t = _task()
    t.fit(mixed, "train.json")
    assert t.version_2_with_negative is True
    with pytest.raises(DeltatuneError, match=r"train.json: row 2 has no answer .*version_2_with_negative is false"):
        _task(version_2_with_negative=False).fit(mixed, "train.json")


def test_predict_inputs_must_be_question_context_pairs():
    t = _task()
    ds = t.rows_from_texts([("Who?", "Ann did.")])
    assert ds.to_list() == [{"question": "Who?", "context": "Ann did."}]
    with pytest.raises(DeltatuneError, match=r"input 1: question answering needs \(question, context\) pairs"):
        t.rows_from_texts(["Who did it? Ann did."])


# ---- windows and labels ------------------------------------------------------------------------
def _straddling_setup(tokenizer):
    """A long context in several 48-token windows (stride 16) and an answer cut by window 0's end."""
    t = _task(max_seq_length=48, doc_stride=16)
    t.set_tokenizer(tokenizer)
    context = _long_context()
    probe = t.encode(_ds(["Which item?"], [context]), tokenizer, with_labels=False)
    last = [o for o in probe.meta[0]["offsets"] if o is not None][-1]  # the last context token of window 0
    # three words around window 0's end: starts inside window 0, ends after it
    words_start = context.rfind(" ", 0, last[0]) + 1
    words_end = context.find(" ", context.find(" ", last[1]) + 1)
    answer = GoldAnswer(context[words_start:words_end], words_start)
    ds = _ds(["Which item?"], [context], [{"text": [answer.text], "answer_start": [answer.start]}])
    return t, ds, context, answer


def _contains(offsets, answer: GoldAnswer) -> str:
    ctx = [o for o in offsets if o is not None]
    if ctx[0][0] <= answer.start and answer.end <= ctx[-1][1]:
        return "whole"
    return "part" if ctx[0][0] < answer.end and answer.start < ctx[-1][1] else "none"


def test_answer_straddling_a_window_boundary_is_labelled_only_where_whole(tokenizer):
    t, ds, context, answer = _straddling_setup(tokenizer)
    f = t.encode(ds, tokenizer)
    assert len(f) >= 3 and all(m["example"] == 0 for m in f.meta)
    assert all(len(r["input_ids"]) <= 48 for r in f.rows)
    kinds = [_contains(m["offsets"], answer) for m in f.meta]
    assert kinds[0] == "part" and "whole" in kinds  # the setup really straddles window 0's end
    for row, m, kind in zip(f.rows, f.meta, kinds):
        s, e = row["start_positions"], row["end_positions"]
        if kind == "whole":
            assert 0 < s <= e
            assert context[m["offsets"][s][0] : m["offsets"][e][1]] == answer.text
        else:
            assert (s, e) == (m["cls_index"], m["cls_index"]) == (0, 0)
    # windows overlap by doc_stride tokens: window 1 starts 16 tokens before window 0's last token ends
    ctx0 = [o for o in f.meta[0]["offsets"] if o is not None]
    ctx1 = [o for o in f.meta[1]["offsets"] if o is not None]
    assert ctx1[:16] == ctx0[-16:]


def test_window_labels_token_boundaries():
    offsets = [None, None, None, (0, 5), (6, 9), (9, 13), (14, 18), None]  # "Paris cap##ital city"
    assert window_labels(offsets, GoldAnswer("capital", 6)) == (4, 5)
    assert window_labels(offsets, GoldAnswer("ital city", 9)) == (5, 6)
    assert window_labels(offsets, GoldAnswer("Par", 0)) == (3, 3)  # inside a token: that token
    assert window_labels(offsets, GoldAnswer("city and more", 14)) == (0, 0)  # runs past the window
    assert window_labels(offsets, None, cls_index=0) == (0, 0)


def test_postprocessing_recovers_the_span_from_the_right_window(tokenizer):
    t, ds, context, answer = _straddling_setup(tokenizer)
    f = t.encode(ds, tokenizer)
    starts = [np.full(len(r["input_ids"]), -5.0) for r in f.rows]
    ends = [np.full(len(r["input_ids"]), -5.0) for r in f.rows]
    good = next(i for i, r in enumerate(f.rows) if r["start_positions"] > 0)
    s, e = f.rows[good]["start_positions"], f.rows[good]["end_positions"]
    starts[good][s], ends[good][e] = 6.0, 6.0
    # window 0 sees only the beginning of the answer: a high start with its best end scores lower
    cut = f.meta[0]["offsets"]
    first_cut = next(i for i, o in enumerate(cut) if o is not None and o[1] > answer.start)
    starts[0][first_cut], ends[0][len(cut) - 2] = 5.0, 5.0
    # question tokens and padding never win, however high their logits
    starts[good][1], ends[good][2] = 50.0, 50.0
    out = t.decode({"start_logits": _ragged(starts), "end_logits": _ragged(ends)}, f)
    assert out == [{"answer": answer.text, "score": 12.0, "start": answer.start, "end": answer.end}]
    assert context[out[0]["start"] : out[0]["end"]] == out[0]["answer"]


def _ragged(rows):
    arr = np.empty(len(rows), dtype=object)
    for i, r in enumerate(rows):
        arr[i] = r
    return arr


def test_span_rules_end_not_before_start_and_max_answer_length():
    context = "one two three four five six"
    offsets = [None, None, None, (0, 3), (4, 7), (8, 13), (14, 18), (19, 23), (24, 27), None]
    meta = [{"example": 0, "offsets": offsets, "cls_index": 0}]
    s, e = np.zeros(10), np.zeros(10)
    s[7], e[4] = 9.0, 9.0  # the best start ("five") lies after the best end ("two"): not a span
    s[3] = 4.0  # "one two": 4 + 9 = 13, the best valid span
    s[4] = 0.5  # "two": 0.5 + 9 = 9.5
    e[8] = 2.0  # "five six": 9 + 2 = 11

    def answer(**kw):
        p = postprocess_predictions([s], [e], meta, [context], **kw)[0]
        return p.text, p.score, p.start, p.end

    assert answer(n_best_size=20, max_answer_length=30) == ("one two", 13.0, 0, 7)
    assert answer(n_best_size=20, max_answer_length=1) == ("two", 9.5, 4, 7)
    # with one candidate each, start 7 and end 4 make no span: every start and end is then tried
    assert answer(n_best_size=1, max_answer_length=30) == ("one two", 13.0, 0, 7)


def _one_window(cls_start: float, cls_end: float, span: float = 3.0):
    """One window over "Denver Broncos won": [CLS] q [SEP] Denver Broncos won [SEP]."""
    offsets = [None, None, None, (0, 6), (7, 14), (15, 18), None]
    s, e = np.zeros(7), np.zeros(7)
    s[0], e[0] = cls_start, cls_end
    s[3], e[4] = span, span  # "Denver Broncos": 2 * span
    return s, e, {"example": 0, "offsets": offsets, "cls_index": 0}


def test_null_answer_wins_only_beyond_the_threshold():
    s, e, m = _one_window(4.0, 4.0)  # null 8 vs best span 6: difference 2
    ctx = ["Denver Broncos won"]
    pick = lambda **kw: postprocess_predictions([s], [e], [m], ctx, **kw)[0]  # noqa: E731
    assert pick(version_2_with_negative=True, null_score_diff_threshold=1.0).record() == {
        "answer": "",
        "score": 8.0,
        "start": None,
        "end": None,
    }
    assert pick(version_2_with_negative=True, null_score_diff_threshold=3.0).text == "Denver Broncos"
    assert pick(version_2_with_negative=False).text == "Denver Broncos"  # v1.1 never abstains
    # the null score is the minimum over windows: a second window with a low [CLS] score keeps the span
    s2, e2, m2 = _one_window(-1.0, -1.0, span=0.0)
    p = postprocess_predictions([s, s2], [e, e2], [m, m2], ctx, version_2_with_negative=True, null_score_diff_threshold=1.0)[0]
    assert p.text == "Denver Broncos" and p.score == 6.0


def test_metrics_split_answerable_and_unanswerable_questions():
    t = ExtractiveQATask(build_config({"task": "question-answering"}), version_2_with_negative=True)
    windows = [_one_window(4.0, 4.0), _one_window(-4.0, -4.0), _one_window(4.0, 4.0), _one_window(-4.0, -4.0)]
    meta = [{**m, "example": i} for i, (_, _, m) in enumerate(windows)]
    gold = [GoldAnswer("Denver Broncos", 0)]
    examples = [{"context": "Denver Broncos won", "answers": a} for a in (gold, gold, [], [])]
    features = Features([{"input_ids": [0] * 7}] * 4, [7] * 4, meta=meta, examples=examples)
    outputs = {
        "start_logits": np.stack([w[0] for w in windows]),
        "end_logits": np.stack([w[1] for w in windows]),
        "loss": np.array([1.0, 2.0, 3.0, 4.0]),
    }
    m = t.compute_metrics(outputs, features)
    # predictions: "", "Denver Broncos", "", "Denver Broncos"
    assert m["loss"] == pytest.approx(2.5)
    assert m["exact_match"] == pytest.approx(50.0) and m["f1"] == pytest.approx(50.0) and m["total"] == 4
    assert (m["HasAns_exact"], m["HasAns_f1"], m["HasAns_total"]) == (50.0, 50.0, 2)
    assert (m["NoAns_exact"], m["NoAns_f1"], m["NoAns_total"]) == (50.0, 50.0, 2)


# ---- model, loss, saved config -------------------------------------------------------------------
def test_loss_per_window_ignores_padding_and_counts_windows(tiny_model_dir, tokenizer):
    t = _task(max_seq_length=48, doc_stride=16)
    t.fit(_ds(["Which?"], ["itemone0 itemtwo0."], ["itemtwo0"]), "train.json")
    t.set_tokenizer(tokenizer)
    model = t.build_model(tiny_model_dir, {}).eval()
    assert any(n.startswith("qa_outputs") for n in t.new_parameter_names)
    assert getattr(model.config, V2_ATTRIBUTE) is False
    _, ds, _, _ = _straddling_setup(tokenizer)
    short = t.encode(_ds(["Which?"], ["itemone0 itemtwo0."], ["itemtwo0"]), tokenizer)
    long = t.encode(ds, tokenizer)
    alone = t.collate([short[0]])
    padded = t.collate([short[0], long[0]])
    assert padded["input_ids"].shape[1] > alone["input_ids"].shape[1]
    assert t.num_targets(padded) == 2
    with torch.no_grad():
        loss_alone, n_alone = t.loss(model, alone)
        per_window = t.eval_step(model, padded)["loss"]
        loss_pair, n_pair = t.loss(model, padded)
    assert int(n_alone) == 1 and int(n_pair) == 2
    assert per_window[0] == pytest.approx(float(loss_alone), rel=1e-5)
    assert float(loss_pair) == pytest.approx(float(per_window.sum()), rel=1e-5)


def test_from_pretrained_config_restores_v2_flag():
    cfg = build_config({"task": "question-answering"})

    class Saved:
        pass

    saved = Saved()
    setattr(saved, V2_ATTRIBUTE, True)
    assert ExtractiveQATask.from_pretrained_config(cfg, saved).version_2_with_negative is True
    cfg2 = build_config({"task": "question-answering", "data": {"version_2_with_negative": True}})
    assert ExtractiveQATask.from_pretrained_config(cfg2, Saved()).version_2_with_negative is True
    assert ExtractiveQATask.from_pretrained_config(cfg, Saved()).version_2_with_negative is False


def test_doc_stride_too_large_is_a_clear_error(tokenizer):
    t = _task(max_seq_length=48, doc_stride=42)  # room: 48 - 3 question - 3 special tokens = 42
    with pytest.raises(DeltatuneError, match=r"data.doc_stride 42 must be smaller than the context tokens per window \(42"):
        t.encode(_ds(["Which item?"], [_long_context()]), tokenizer, with_labels=False)


# ---- end to end ----------------------------------------------------------------------------------
def _squad_json(path: Path, n: int, unanswerable_every: int = 0) -> Path:
    """SQuAD v2.0-style file: each paragraph names a colour; questions ask for it."""
    colours = "red green blue yellow purple orange black white".split()
    paragraphs = []
    for i in range(n):
        colour = colours[i % len(colours)]
        context = f"The {_long_context(8 + i % 5)} The favourite colour of unit {i} is {colour}. It rains."
        impossible = bool(unanswerable_every) and i % unanswerable_every == 0
        qa = {"id": f"q{i}", "question": f"What is the favourite colour of unit {i}?", "is_impossible": impossible}
        qa["answers"] = [] if impossible else [{"text": colour, "answer_start": context.index(f" is {colour}.") + 4}]
        paragraphs.append({"context": context, "qas": [qa]})
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "colours", "paragraphs": paragraphs}]}))
    return path


def test_tiny_end_to_end_v2_train_save_predict_and_cli(tiny_model_dir, tmp_path):
    import deltatune
    from deltatune.cli import main

    train = _squad_json(tmp_path / "train.json", 24, unanswerable_every=4)
    dev = _squad_json(tmp_path / "dev.json", 8, unanswerable_every=4)
    cfg = {
        "task": "question-answering",
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": tiny_model_dir, "dropout": 0.0},
        "data": {"train_file": str(train), "validation_file": str(dev), "max_seq_length": 48, "doc_stride": 16},
        "train": {"per_device_train_batch_size": 8, "learning_rate": 1e-3, "max_steps": 3, "progress_bar": False},
        "eval": {"eval_strategy": "no"},
    }
    run = deltatune.finetune(cfg, verbose=False)
    m = run.metrics["validation"]
    assert 0 <= m["exact_match"] <= m["f1"] <= 100 and math.isfinite(m["loss"])
    assert m["HasAns_total"] == 6 and m["NoAns_total"] == 2
    # evaluating the saved run on the same file gives the same numbers (same windows, same post-processing)
    again = deltatune.evaluate(run.path, str(dev))
    assert again["f1"] == pytest.approx(m["f1"]) and again["exact_match"] == pytest.approx(m["exact_match"])
    assert again["loss"] == pytest.approx(m["loss"], rel=1e-4)
    predictor = deltatune.load(run.path)
    assert predictor.task.version_2_with_negative is True
    context = "The favourite colour of unit 3 is green. It rains."
    (rec,) = predictor.predict([("What is the favourite colour of unit 3?", context)])
    assert set(rec) == {"answer", "score", "start", "end"}
    if rec["answer"]:
        assert context[rec["start"] : rec["end"]] == rec["answer"]
    else:
        assert rec["start"] is None and rec["end"] is None
    out = tmp_path / "pred.jsonl"
    assert main(["predict", str(run.path), "--input", str(dev), "--output", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 8 and all({"question", "context", "answer", "start", "end", "score"} <= set(r) for r in lines)
    for r in lines:
        assert r["answer"] == (r["context"][r["start"] : r["end"]] if r["start"] is not None else "")


def test_tiny_model_learns_to_point_at_the_answer(tiny_model_dir, tmp_path):
    """Labels, loss and post-processing agree: the colour after "is" is found in unseen paragraphs."""
    import deltatune

    cfg = {
        "task": "question-answering",
        "output_dir": str(tmp_path / "run"),
        "seed": 7,
        "model": {"name_or_path": tiny_model_dir, "dropout": 0.0},
        "data": {
            "train_file": str(_squad_json(tmp_path / "train.json", 48)),
            "validation_file": str(_squad_json(tmp_path / "dev.json", 16)),
            "max_seq_length": 48,
            "doc_stride": 16,
        },
        "train": {"per_device_train_batch_size": 8, "learning_rate": 3e-3, "max_steps": 40, "progress_bar": False},
        "eval": {"eval_strategy": "no"},
    }
    m = deltatune.finetune(cfg, verbose=False).metrics["validation"]
    # an untrained head scores ~0 here (and the window loss starts near ln(48) ~ 3.9)
    assert m["f1"] >= 30 and m["loss"] < 2.0, m


def test_lora_adapter_run_keeps_head_and_v2_flag(tiny_model_dir, tmp_path):
    import deltatune

    train = _squad_json(tmp_path / "train.json", 16, unanswerable_every=4)
    cfg = {
        "task": "question-answering",
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": tiny_model_dir},
        "data": {"train_file": str(train), "max_seq_length": 48, "doc_stride": 16},
        "train": {"per_device_train_batch_size": 8, "max_steps": 2, "progress_bar": False},
        "eval": {"eval_strategy": "no"},
        "delta": {"method": "lora"},
    }
    run = deltatune.finetune(cfg, verbose=False)
    assert run.metrics["train"]["trainable_parameters"] < run.metrics["train"]["total_parameters"] / 2
    from safetensors import safe_open

    with safe_open(str(run.path / "model" / "adapter_model.safetensors"), "pt") as f:  # the fresh head is saved in full
        assert {"base_model.model.qa_outputs.weight", "base_model.model.qa_outputs.bias"} <= set(f.keys())
    predictor = deltatune.load(run.path)  # an adapter folder: the task comes back from the stored model config
    assert predictor.task.version_2_with_negative is True
    ctx = "The favourite colour of unit 1 is red."
    (rec,) = predictor.predict([("What is the favourite colour of unit 1?", ctx)])
    assert rec["answer"] == (ctx[rec["start"] : rec["end"]] if rec["start"] is not None else "")


@pytest.mark.slow
@pytest.mark.skipif(not XQUAD.is_file(), reason="XQuAD data not available")
def test_minilm_xquad_slice_trains_evaluates_and_predicts(tmp_path):
    import deltatune
    from deltatune.data import load_table

    rows = load_table(str(XQUAD)).to_list()
    train, dev = rows[:60], rows[60:72]  # 60 questions of the first articles / the next 12
    for name, part in (("train", train), ("dev", dev)):
        with (tmp_path / f"{name}.jsonl").open("w") as f:
            for r in part:
                f.write(json.dumps({"question": r["question"], "context": r["context"], "answers": r["answers"]}) + "\n")
    cfg = {
        "task": "question-answering",
        "output_dir": str(tmp_path / "run"),
        "seed": 1,
        "model": {"name_or_path": "minilm"},
        "data": {
            "train_file": str(tmp_path / "train.jsonl"),
            "validation_file": str(tmp_path / "dev.jsonl"),
            "max_seq_length": 192,
            "doc_stride": 64,
        },
        "train": {"per_device_train_batch_size": 8, "learning_rate": 1e-4, "max_steps": 2, "progress_bar": False},
        "eval": {"eval_strategy": "no", "per_device_eval_batch_size": 32},
    }
    run = deltatune.finetune(cfg, verbose=False)
    m = run.metrics["validation"]
    assert run.config.data.version_2_with_negative is None and "NoAns_total" not in m
    assert 0 <= m["exact_match"] <= m["f1"] <= 100 and m["total"] == 12 and math.isfinite(m["loss"])
    question, context = dev[0]["question"], dev[0]["context"]
    (rec,) = deltatune.load(run.path).predict([(question, context)])
    assert rec["answer"] and rec["answer"] in context  # v1.1: always an answer
    assert context[rec["start"] : rec["end"]] == rec["answer"] and isinstance(rec["score"], float)


# ---- evaluating v2.0 data on a run that never abstains (issue 20) --------------------------------
def test_abstention_warning_only_for_runs_that_never_learned_to_abstain():
    from deltatune.tasks.extractive_qa import abstention_warning

    w = abstention_warning("dev.json", 3, 10, False, 0)
    assert w is not None and "\n" not in w
    assert "dev.json: 3 of 10 questions have no answer" in w and "data.version_2_with_negative" in w
    assert "v2.0" in abstention_warning("dev.json", 3, 10, True, 0)  # v2.0 flag on, but no negatives seen in training
    assert abstention_warning("dev.json", 3, 10, False, None) is not None  # older run without the count
    assert abstention_warning("dev.json", 3, 10, True, 5) is None  # trained with unanswerable questions
    assert abstention_warning("dev.json", 3, 10, True, None) is None  # older v2.0 run: the flag decides
    assert abstention_warning("dev.json", 0, 10, False, 0) is None  # every question answerable


def test_fit_counts_unanswerable_training_questions_and_the_run_keeps_the_count(tiny_model_dir):
    t = _task()
    t.fit(_ds(["Q1?", "Q2?"], ["It is red.", "It is blue."], [["red"], []]), "train.json")
    assert t.train_unanswerable == 1
    model = t.build_model(tiny_model_dir, {})
    back = ExtractiveQATask.from_pretrained_config(t.config, model.config)
    assert back.train_unanswerable == 1 and back.version_2_with_negative is True
    dev = _ds(["Q?", "Q?"], ["It is red.", "It is red."], [["red"], []])
    assert back.evaluation_warning(dev, "dev.json") is None


def test_evaluate_warns_when_a_v1_run_meets_unanswerable_questions(tiny_model_dir, tmp_path, capsys):
    import deltatune

    def run(name, unanswerable_every):
        cfg = {
            "task": "question-answering",
            "output_dir": str(tmp_path / name),
            "model": {"name_or_path": tiny_model_dir},
            "data": {"train_file": str(_squad_json(tmp_path / f"{name}.json", 8, unanswerable_every)),
                     "max_seq_length": 48, "doc_stride": 16},
            "train": {"per_device_train_batch_size": 8, "max_steps": 1, "progress_bar": False},
            "eval": {"eval_strategy": "no"},
        }
        return deltatune.finetune(cfg, verbose=False).path

    dev = _squad_json(tmp_path / "dev.json", 8, unanswerable_every=4)
    v1, v2 = run("v1", 0), run("v2", 4)
    capsys.readouterr()
    m = deltatune.evaluate(v1, str(dev))
    err = capsys.readouterr().err
    assert m["NoAns_total"] == 2
    (line,) = [x for x in err.splitlines() if "no answer" in x]
    assert line.startswith("warning: ") and "2 of 8 questions" in line and "data.version_2_with_negative" in line
    deltatune.evaluate(v2, str(dev))
    assert "no answer" not in capsys.readouterr().err
