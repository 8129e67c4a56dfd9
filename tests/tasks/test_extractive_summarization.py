"""Extractive summarization: oracle labels, sentence <-> document bookkeeping, metrics, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

from deltatune.config import build_config
from deltatune.errors import DeltatuneError
from deltatune.metrics.text import rouge
from deltatune.models import resolve_model
from deltatune.tasks.extractive_summarization import ExtractiveSummarizationTask, top_k_in_order
from deltatune.data.sentences import greedy_oracle, split_sentences
from tests.conftest import SHARED_DATA

SCITLDR = SHARED_DATA / "summarization" / "scitldr_a"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model("minilm"))


def _task(**data) -> ExtractiveSummarizationTask:
    return ExtractiveSummarizationTask(build_config({"task": "extractive-summarization", "data": data}))


DOC = [
    "The weather was cold and grey all week.",  # 0: unrelated
    "We propose a new method for sparse attention in transformers.",  # 1: the summary
    "Prior work used dense attention.",  # 2: shares 'attention'
    "Our sparse attention method halves memory use on long documents.",  # 3: second summary sentence
    "Lunch was served at noon.",  # 4: unrelated
]
REF = "We propose a new sparse attention method for transformers that halves memory use on long documents."


def test_greedy_oracle_picks_the_summary_sentences_and_stops_without_gain():
    assert greedy_oracle(DOC, [REF], 1) == [3]  # the single best sentence by ROUGE-1+2
    assert greedy_oracle(DOC, [REF], 2) == [1, 3]  # then the one adding most, in document order
    # no third sentence raises ROUGE-1+2 F (the unrelated ones only lower precision)
    assert greedy_oracle(DOC, [REF], 5) == [1, 3]
    # with several references, the best reference decides; an unrelated one changes nothing
    assert greedy_oracle(DOC, ["Lunch at noon.", REF], 1) == [3]
    assert greedy_oracle(DOC, ["Lunch was served at noon today."], 1) == [4]
    assert greedy_oracle(DOC, ["zebra quantum"], 2) == []
    assert greedy_oracle(["", "lunch at noon"], ["lunch at noon"], 2) == [1]  # empty sentences never picked


def test_split_sentences_keeps_abbreviations_and_decimals():
    text = "We compare with Smith et al. in Fig. 3. Accuracy rose by 3.5 points! Why?  "
    assert split_sentences(text) == ["We compare with Smith et al. in Fig. 3.", "Accuracy rose by 3.5 points!", "Why?"]
    assert split_sentences("   ") == []


def test_top_k_is_returned_in_document_order_with_stable_ties():
    assert top_k_in_order(np.array([0.1, 0.9, 0.3, 0.8]), 2) == [1, 3]
    assert top_k_in_order(np.array([0.9, 0.1, 0.95]), 2) == [0, 2]
    assert top_k_in_order(np.array([0.5, 0.5, 0.5]), 2) == [0, 1]  # ties: earlier sentences
    assert top_k_in_order(np.array([0.2]), 3) == [0]


def test_encode_one_feature_per_sentence_with_oracle_labels_and_meta(tokenizer):
    t = _task(text_column="source", summary_sentences=2, max_seq_length=40)
    ds = datasets.Dataset.from_dict(
        {"source": [DOC, ["Lunch was served at noon.", "We propose sparse attention."]], "target": [[REF], ["Sparse attention proposed."]]}
    )
    t.fit(ds, "train.jsonl")
    f = t.encode(ds, tokenizer)
    assert f.meta == [(0, j) for j in range(5)] + [(1, 0), (1, 1)]
    assert [r["labels"] for r in f.rows] == [0, 1, 0, 1, 0, 0, 1]
    assert f.examples[1]["sentences"] == ["Lunch was served at noon.", "We propose sparse attention."]
    assert f.examples[0]["oracle"] == [1, 3] and f.examples[1]["references"] == ["Sparse attention proposed."]
    # each feature is the pair (sentence, document), cut to max_seq_length by shortening the document
    first = f.rows[1]
    assert len(first["input_ids"]) == 40 and first["token_type_ids"][1] == 0 and first["token_type_ids"][-1] == 1
    sentence_part = tokenizer.decode(first["input_ids"][1 : first["token_type_ids"].index(1) - 1])
    assert sentence_part == DOC[1].lower()
    # documents given as strings are split into sentences; references as strings are one reference
    text = datasets.Dataset.from_dict({"source": ["Lunch was served at noon. We propose sparse attention."], "target": ["Sparse attention proposed."]})
    g = t.encode(text, tokenizer)
    assert g.examples == f.examples[1:] and [r["labels"] for r in g.rows] == [0, 1]
    # prediction rows: no labels, no references
    p = t.encode(ds.remove_columns("target"), tokenizer, with_labels=False)
    assert "labels" not in p.rows[0] and p.examples[0]["references"] is None


def test_bad_rows_are_named_with_file_row_and_column():
    t = _task(text_column="source")
    with pytest.raises(DeltatuneError, match=r"train.jsonl: row 2 has no reference summary in column 'target'"):
        t.fit(datasets.Dataset.from_dict({"source": [["A b."], ["C d."]], "target": ["x", ""]}), "train.jsonl")
    with pytest.raises(DeltatuneError, match=r"dev.jsonl: row 1 has no sentence in column 'source'"):
        t.check(datasets.Dataset.from_dict({"source": [["", " "]], "target": ["x"]}), "dev.jsonl")
    with pytest.raises(DeltatuneError, match=r"no column 'summary'"):
        _task(text_column="source", target_column="summary").fit(
            datasets.Dataset.from_dict({"source": [["A b."]], "target": ["x"]}), "train.jsonl"
        )
    # prediction needs no reference column
    t.check(datasets.Dataset.from_dict({"source": ["One sentence. Two."]}), "input", with_labels=False)


def _logits_for(features, chosen: dict[int, set[int]]) -> np.ndarray:
    """Logits (N, 2) that make the sentences in ``chosen[doc]`` the top ones, graded by sentence index."""
    out = []
    for doc, sent in features.meta:
        score = 3.0 - 0.1 * sent if sent in chosen[doc] else -1.0 - 0.1 * sent
        out.append([0.0, score])
    return np.array(out)


def test_metrics_group_sentences_by_document_whatever_the_feature_order(tokenizer):
    t = _task(text_column="source", summary_sentences=2)
    ds = datasets.Dataset.from_dict(
        {
            "source": [DOC, ["Lunch was served at noon.", "We propose sparse attention.", "It is fast."], ["Cats sleep.", "Dogs bark."]],
            "target": [[REF], ["Sparse attention proposed.", "Fast sparse attention."], ["Dogs bark loudly."]],
        }
    )
    t.fit(ds, "train.jsonl")
    f = t.encode(ds, tokenizer)
    chosen = {0: {1, 3}, 1: {1, 2}, 2: {1}}
    outputs = {"logits": _logits_for(f, chosen), "labels": np.array([r["labels"] for r in f.rows])}
    m = t.compute_metrics(outputs, f)
    expected = [DOC[1] + " " + DOC[3], "We propose sparse attention. It is fast.", "Cats sleep. Dogs bark."]
    want = rouge(expected, [ex["references"] for ex in f.examples])
    assert m["rougeL"] == pytest.approx(want["rougeL"]) and m["rouge2"] == pytest.approx(want["rouge2"])
    assert m["documents"] == 3 and 0 <= m["sentence_accuracy"] <= 1
    records = t.decode(outputs, f)
    assert [r["summary"] for r in records] == expected
    assert [r["sentence_indices"] for r in records] == [[1, 3], [1, 2], [0, 1]]
    assert len(records[0]["scores"]) == 5 and records[0]["scores"][1] > records[0]["scores"][0]

    # the same features in another order (e.g. length-sorted evaluation merged back), with meta permuted alike
    from deltatune.tasks.base import Features

    perm = np.random.default_rng(0).permutation(len(f))
    g = Features([f.rows[i] for i in perm], [f.lengths[i] for i in perm], [f.meta[i] for i in perm], f.examples)
    shuffled = {k: v[perm] for k, v in outputs.items()}
    assert t.compute_metrics(shuffled, g) == pytest.approx(m)
    assert t.decode(shuffled, g) == records
    # and a wrong mapping would change the result: the test can fail
    wrong = {"logits": outputs["logits"][perm], "labels": outputs["labels"]}
    assert t.decode(wrong, f) != records


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _synthetic_docs(n: int, seed: int) -> list[dict]:
    """Documents whose summary sentence is the one saying 'we propose'; the target paraphrases it."""
    rng = np.random.default_rng(seed)
    topics = "graphs vision speech robots proteins music".split()
    rows = []
    for i in range(n):
        topic = topics[i % len(topics)]
        sents = [f"Filler sentence number {k} talks about the weather." for k in range(int(rng.integers(3, 6)))]
        pos = int(rng.integers(0, len(sents) + 1))
        sents.insert(pos, f"We propose a new model for {topic}.")
        rows.append({"source": sents, "target": f"A new model for {topic} is proposed."})
    return rows


def test_end_to_end_tiny_model_trains_evaluates_and_predicts(tmp_path, tiny_model_dir):
    import deltatune

    train = _write_jsonl(tmp_path / "train.jsonl", _synthetic_docs(24, 1))
    dev = _write_jsonl(tmp_path / "dev.jsonl", _synthetic_docs(8, 2))
    cfg = {
        "task": "extractive-summarization",
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": tiny_model_dir, "dropout": 0.0},
        "data": {"train_file": str(train), "validation_file": str(dev), "text_column": "source", "max_seq_length": 48},
        "train": {"per_device_train_batch_size": 8, "learning_rate": 1e-3, "num_train_epochs": 3, "progress_bar": False},
    }
    run = deltatune.finetune(cfg, verbose=False)
    m = run.metrics["validation"]
    assert m["documents"] == 8 and {"rouge1", "rouge2", "rougeL", "rougeLsum", "sentence_accuracy", "loss"} <= set(m)
    pred = deltatune.load(run.path)
    # the metrics of the reloaded run equal the run's own (the predictor maps features back the same way)
    ds = datasets.Dataset.from_list(_synthetic_docs(8, 2))
    assert pred.metrics(ds)["rougeL"] == pytest.approx(m["rougeL"])
    out = pred.predict(["The sky is blue today. We propose a new model for music. It rained."])
    assert len(out) == 1 and len(out[0]["sentence_indices"]) == 1 and len(out[0]["scores"]) == 3
    assert out[0]["summary"] in ["The sky is blue today.", "We propose a new model for music.", "It rained."]


@pytest.mark.slow
def test_minilm_on_scitldr_slice(tmp_path):
    """The packaged MiniLM on 24 SciTLDR training documents for a few steps, evaluated on 10 dev documents."""
    import deltatune

    if not (SCITLDR / "train.jsonl").is_file():
        pytest.skip("SciTLDR data not available")
    lines = (SCITLDR / "train.jsonl").read_text().splitlines()
    train = _write_jsonl(tmp_path / "train.jsonl", [json.loads(x) for x in lines[:24]])
    dev_rows = [json.loads(x) for x in (SCITLDR / "dev.jsonl").read_text().splitlines()[:10]]
    dev = _write_jsonl(tmp_path / "dev.jsonl", dev_rows)
    cfg = {
        "task": "extractive-summarization",
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": "minilm"},
        "data": {"train_file": str(train), "validation_file": str(dev), "text_column": "source", "max_seq_length": 64},
        "train": {"per_device_train_batch_size": 16, "max_steps": 4, "learning_rate": 5e-5, "progress_bar": False},
    }
    run = deltatune.finetune(cfg, verbose=False)
    m = run.metrics["validation"]
    assert m["documents"] == 10 and 0 < m["rouge1"] <= 100 and m["rouge2"] <= m["rouge1"]
    out = deltatune.load(run.path).predict_rows(datasets.Dataset.from_list(dev_rows[:2]))
    for rec, row in zip(out, dev_rows):
        assert rec["summary"] in row["source"] or rec["summary"] in [s.strip() for s in row["source"]]
