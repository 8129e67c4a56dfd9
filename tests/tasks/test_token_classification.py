"""Token classification: rows, tag schemes, subword alignment, truncation, metrics, decoding, end to end."""

import json

import datasets
import numpy as np
import pytest
import torch

import deltatune
from deltatune.cli import main
from deltatune.config import build_config
from deltatune.data import load_table
from deltatune.errors import DeltatuneError
from deltatune.metrics.ner import entity_metrics, entity_spans
from deltatune.tasks import get_task_class
from deltatune.tasks.token_classification import TokenClassificationTask, align_labels
from tests.conftest import SHARED_DATA

CONLL = SHARED_DATA / "token_classification" / "conll2003"


def _task(**data) -> TokenClassificationTask:
    return TokenClassificationTask(build_config({"task": "token-classification", "data": data}))


def _ds(tokens, tags=None):
    cols = {"tokens": tokens}
    if tags is not None:
        cols["tags"] = tags
    return datasets.Dataset.from_dict(cols)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from deltatune.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("minilm"))


# ---- rows ---------------------------------------------------------------------------------
def test_registered_and_label_list_sorted_with_o_first():
    assert get_task_class("token-classification") is TokenClassificationTask
    t = _task()
    t.fit(_ds([["John", "in", "Paris"], ["EU", "x"]], [["B-PER", "O", "B-LOC"], ["B-ORG", "O"]]), "train.jsonl")
    # I-X is added for every type so continuation subwords and multi-word predictions have a label
    assert t.labels == ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]
    assert t.default_metric == "f1" and t.greater_is_better and t.peft_task_type == "TOKEN_CLS"


def test_iob1_training_tags_are_read_as_iob2():
    t = _task()
    ds = _ds([["Peter", "Blackburn", "and", "Anna", "Lee", "Tom"]], [["I-PER", "I-PER", "O", "I-PER", "I-PER", "B-PER"]])
    t.fit(ds, "train.conll")
    assert t._examples(ds, "train.conll", True)[0]["tags"] == ["B-PER", "I-PER", "O", "B-PER", "I-PER", "B-PER"]


def test_space_separated_strings_are_split():
    t = _task()
    ds = _ds(["John lives in Paris"], ["B-PER O O B-LOC"])
    t.fit(ds, "train.csv")
    assert t._examples(ds, "train.csv", True)[0]["words"] == ["John", "lives", "in", "Paris"]


def test_length_mismatch_names_file_row_and_both_lengths():
    with pytest.raises(DeltatuneError, match=r"train.jsonl: row 2 has 3 tokens in 'tokens' but 2 tags in 'tags'"):
        _task().fit(_ds([["a"], ["a", "b", "c"]], [["B-X"], ["O", "O"]]), "train.jsonl")


def test_empty_rows_tokens_and_tags_are_refused():
    with pytest.raises(DeltatuneError, match=r"t.jsonl: row 2 has no tokens in 'tokens'"):
        _task().fit(_ds([["a"], []], [["B-X"], []]), "t.jsonl")
    with pytest.raises(DeltatuneError, match=r"row 1 has an empty token \(number 2\)"):
        _task().fit(_ds([["a", " "]], [["B-X", "O"]]), "t.jsonl")
    with pytest.raises(DeltatuneError, match=r"row 1 has a missing tag in 'tags'"):
        _task().fit(_ds([["a", "b"]], [["B-X", None]]), "t.jsonl")
    with pytest.raises(DeltatuneError, match=r"t.jsonl: no column 'tags'"):
        _task().fit(_ds([["a"]]), "t.jsonl")


def test_non_bio_and_integer_tags_are_refused_with_the_row():
    with pytest.raises(DeltatuneError, match=r"row 1 in 'tags': tag 'PER' is not O, B-TYPE or I-TYPE"):
        _task().fit(_ds([["John"]], [["PER"]]), "t.jsonl")
    with pytest.raises(DeltatuneError, match=r"tag '3' is not O"):  # ints become strings, then must be BIO
        _task().fit(_ds([["John", "x"]], [[3, 0]]), "t.jsonl")
    with pytest.raises(DeltatuneError, match="holds only 'O' tags"):
        _task().fit(_ds([["a", "b"]], [["O", "O"]]), "t.jsonl")


def test_eval_tag_unknown_to_training_names_the_tag():
    t = _task()
    t.fit(_ds([["John", "x"]], [["B-PER", "O"]]), "train.jsonl")
    t.check(_ds([["Ann", "Lee"]], [["B-PER", "I-PER"]]), "dev.jsonl")  # I-PER was added with B-PER
    with pytest.raises(DeltatuneError, match=r"dev.jsonl: row 2 has tag 'B-LOC' \(word 2\) in 'tags' whose entity type 'LOC' the training data does not have \(known types: PER\)"):
        t.check(_ds([["Ann"], ["in", "Paris"]], [["B-PER"], ["O", "B-LOC"]]), "dev.jsonl")
    t.check(_ds([["Ann"], ["Paris"]]), "dev.jsonl", with_labels=False)  # no tags needed to predict


# ---- subword alignment ----------------------------------------------------------------------
WORDS = ["Anna", "Kournikova", "beat", "Wickramasinghe", "in", "Kalpitiya"]
TAGS = ["B-PER", "I-PER", "O", "B-PER", "O", "B-LOC"]


@pytest.mark.parametrize("all_subwords", [False, True])
def test_first_subword_labelled_continuations_ignored_or_i_tagged(tokenizer, all_subwords):
    t = _task(label_all_subwords=all_subwords)
    ds = _ds([WORDS], [TAGS])
    t.fit(ds, "train.jsonl")
    f = t.encode(ds, tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(f[0]["input_ids"])
    assert pieces == ["[CLS]", "anna", "ko", "##urn", "##iko", "##va", "beat", "wi", "##ck", "##rama", "##sing", "##he",
                      "in", "ka", "##lp", "##iti", "##ya", "[SEP]"]  # fmt: skip
    l2i, X = t.label2id, -100
    o, bp, ip, bl, il = l2i["O"], l2i["B-PER"], l2i["I-PER"], l2i["B-LOC"], l2i["I-LOC"]
    if all_subwords:  # continuation subwords carry the word's tag, B- turned into I-
        expected = [X, bp, ip, ip, ip, ip, o, bp, ip, ip, ip, ip, o, bl, il, il, il, X]
    else:
        expected = [X, bp, ip, X, X, X, o, bp, X, X, X, X, o, bl, X, X, X, X]
    assert f[0]["labels"] == expected
    assert f.meta[0]["word_ids"] == [None, 0, 1, 1, 1, 1, 2, 3, 3, 3, 3, 3, 4, 5, 5, 5, 5, None]
    assert f.lengths == [18]


def test_align_labels_handles_words_without_tokens():
    # word 1 produced no token (e.g. a zero-width character): nothing is labelled for it
    assert align_labels([None, 0, 2, 2, None], [5, 6, 7], [0, 1, 2, 3, 4, 5, 6, 8, 8], True) == [-100, 5, 7, 8, -100]


def test_collate_pads_labels_with_ignore_index(tokenizer):
    t = _task()
    ds = _ds([["John"], WORDS], [["B-PER"], TAGS])
    t.fit(ds, "train.jsonl")
    t.set_tokenizer(tokenizer)
    f = t.encode(ds, tokenizer)
    batch = t.collate([f[0], f[1]])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 18)
    assert batch["labels"][0, 3:].eq(-100).all() and batch["attention_mask"][0].sum() == 3
    assert t.num_targets(batch) == 1 + len(WORDS)


def test_loss_is_summed_over_labelled_tokens():
    t = _task()
    t.fit(_ds([["a", "b"]], [["B-X", "O"]]), "t.jsonl")  # 3 labels

    class M(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return type("O", (), {"logits": torch.zeros(*input_ids.shape, 3)})()

    labels = torch.tensor([[-100, 0, 1, -100], [-100, 2, -100, -100]])
    total, n = t.loss(M(), {"input_ids": torch.ones(2, 4, dtype=torch.long), "labels": labels})
    assert int(n) == 3 and torch.isclose(total, torch.tensor(3 * np.log(3), dtype=torch.float32))


# ---- outputs -> metrics / predictions -------------------------------------------------------
def _perfect_outputs(f, n_labels, ragged=True):
    """eval_step-like outputs that predict the gold label at every labelled token."""
    preds = [np.array([max(x, 0) for x in r["labels"]]) for r in f.rows]
    scores = [np.full(len(p), 0.9, dtype=np.float32) for p in preds]
    out = {
        "predictions": np.empty(len(preds), dtype=object),
        "scores": np.empty(len(preds), dtype=object),
        "loss": np.ones(len(preds)),
        "num_targets": np.array([sum(x != -100 for x in r["labels"]) for r in f.rows]),
    }
    for i, (p, s) in enumerate(zip(preds, scores)):
        out["predictions"][i], out["scores"][i] = p, s
    return out


def test_perfect_predictions_give_f1_one(tokenizer):
    t = _task()
    ds = _ds([WORDS, ["Paris", "and", "Kalpitiya"]], [TAGS, ["B-LOC", "O", "B-LOC"]])
    t.fit(ds, "train.jsonl")
    f = t.encode(ds, tokenizer)
    m = t.compute_metrics(_perfect_outputs(f, len(t.labels)), f)
    assert m["f1"] == m["accuracy"] == 1.0 and m["PER_support"] == 2 and m["LOC_support"] == 3
    assert m["truncated_words"] == 0 and m["loss"] == pytest.approx(2 / (6 + 3))


def test_truncated_words_are_counted_and_scored_as_o(tokenizer):
    t = _task(max_seq_length=10)
    ds = _ds([WORDS], [TAGS])
    t.fit(ds, "train.jsonl")
    f = t.encode(ds, tokenizer)
    # [CLS] anna ko ##urn ##iko ##va beat wi ##ck [SEP]: words 0-3 kept, "in" and "Kalpitiya" cut
    assert len(f[0]["input_ids"]) == 10 and f.meta[0]["word_ids"][-2] == 3
    out = _perfect_outputs(f, len(t.labels))
    m = t.compute_metrics(out, f)
    assert m["truncated_words"] == 2
    expected = entity_metrics([TAGS], [["B-PER", "I-PER", "O", "B-PER", "O", "O"]])
    assert m["recall"] == pytest.approx(2 / 3) and m["precision"] == 1.0 and m["LOC_recall"] == 0.0
    assert {k: m[k] for k in expected} == pytest.approx(expected)
    with pytest.warns(UserWarning, match="2 words in 1 rows lie beyond data.max_seq_length=10"):
        rec = t.decode(out, f)
    assert rec[0]["tags"] == ["B-PER", "I-PER", "O", "B-PER", "O", "O"]


def test_decode_gives_entities_with_offsets_into_the_text(tokenizer):
    t = _task()
    t.fit(_ds([WORDS], [TAGS]), "train.jsonl")
    texts = ["Anna  Kournikova beat\tWickramasinghe in Kalpitiya ."]  # irregular spacing is kept
    ds = t.rows_from_texts(texts)
    t.check(ds, "input", with_labels=False)
    f = t.encode(ds, tokenizer, with_labels=False)
    assert "labels" not in f[0]
    l2i = t.label2id
    word_tags = ["B-PER", "I-PER", "O", "I-PER", "O", "B-LOC", "O"]  # an I- after O starts an entity
    preds = np.array([l2i[word_tags[w]] if w is not None else 0 for w in f.meta[0]["word_ids"]])
    scores = np.linspace(0.5, 1.0, len(preds)).astype(np.float32)
    rec = t.decode({"predictions": preds[None], "scores": scores[None]}, f)[0]
    assert rec["tags"] == ["B-PER", "I-PER", "O", "B-PER", "O", "B-LOC", "O"]  # written as the entity it starts
    ents = rec["entities"]
    assert [(e["type"], e["text"]) for e in ents] == [("PER", "Anna  Kournikova"), ("PER", "Wickramasinghe"), ("LOC", "Kalpitiya")]
    for e in ents:
        assert texts[0][e["start"] : e["end"]] == e["text"]
    first = [f.meta[0]["word_ids"].index(w) for w in range(7)]
    assert ents[0]["score"] == pytest.approx((scores[first[0]] + scores[first[1]]) / 2)


def test_from_pretrained_config_restores_labels():
    from transformers import BertConfig

    labels = ["O", "B-LOC", "I-LOC"]
    cfg = BertConfig(id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    t = TokenClassificationTask.from_pretrained_config(build_config({"task": "token-classification"}), cfg)
    assert t.labels == labels


def test_tiny_model_trains_with_lora_and_predicts(tiny_model_dir, tmp_path):
    rows = [{"tokens": ["Paris", "is", "nice"], "tags": ["B-LOC", "O", "O"]}, {"tokens": ["see", "John", "Smith"], "tags": ["O", "B-PER", "I-PER"]}] * 16
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = deltatune.finetune({
        "task": "token-classification", "output_dir": str(tmp_path / "run"), "seed": 1,
        "model": {"name_or_path": tiny_model_dir},
        "data": {"train_file": str(path), "validation_file": str(path), "max_seq_length": 16},
        "delta": {"method": "lora"},
        "train": {"per_device_train_batch_size": 8, "learning_rate": 1e-2, "num_train_epochs": 3, "progress_bar": False},
    }, verbose=False)  # fmt: skip
    m = run.metrics["validation"]
    assert 0.0 <= m["f1"] <= 1.0 and m["accuracy"] > 0.5 and "loss" in m
    # the adapter and the fresh head were saved: reloading gives the same metrics
    again = deltatune.evaluate(run.path, str(path))
    assert again["loss"] == pytest.approx(m["loss"], rel=1e-4) and again["f1"] == pytest.approx(m["f1"])
    rec = deltatune.load(run.path).predict(["John Smith is in Paris"])
    assert len(rec) == 1 and len(rec[0]["tags"]) == 5


# ---- end to end on the packaged MiniLM and CoNLL-2003 ---------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not (CONLL / "eng.train").is_file(), reason="CoNLL-2003 not present in ../shared/data")
def test_minilm_on_conll_slice_trains_saves_and_predicts(tmp_path, capsys):
    out = tmp_path / "run"
    run = deltatune.finetune({
        "task": "token-classification", "output_dir": str(out), "seed": 3,
        "model": {"name_or_path": "minilm"},
        "data": {"train_file": str(CONLL / "eng.train"), "validation_file": str(CONLL / "eng.testa"),
                 "max_train_samples": 200, "max_eval_samples": 100},
        "train": {"per_device_train_batch_size": 16, "learning_rate": 3e-4, "num_train_epochs": 3, "progress_bar": False},
        "eval": {"eval_strategy": "no"},
    }, verbose=False)  # fmt: skip
    m = run.metrics["validation"]
    # tagging every word O scores 0.7985 on these 100 sentences; this run gets about 0.86 and F1 0.29
    assert 0.0 <= m["f1"] <= 1.0 and m["accuracy"] > 0.82
    assert m["f1"] > 0.1 and m["PER_support"] > 0 and m["truncated_words"] == 0

    # the same 100 sentences as a CoNLL file: evaluate reproduces the training-time metrics,
    # and the CLI predicts it with entity texts equal to the substrings at their offsets
    sl = tmp_path / "eng.testa-slice.conll"
    sl.write_text("\n\n".join((CONLL / "eng.testa").read_text().split("\n\n")[:100]) + "\n")
    again = deltatune.evaluate(out, str(sl))
    assert again["f1"] == pytest.approx(m["f1"]) and again["loss"] == pytest.approx(m["loss"], rel=1e-4)
    assert main(["predict", str(out), "--input", str(sl), "--output", str(tmp_path / "preds.jsonl")]) == 0
    preds = [json.loads(x) for x in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert len(preds) == 100
    gold = [r["tags"] for r in load_table(str(sl))]
    n_entities = 0
    for p, g in zip(preds, gold):
        text = " ".join(p["tokens"])
        # the input's gold tags are kept; the prediction clashing with that column is predicted_tags
        assert p["tags"] == g and len(p["predicted_tags"]) == len(p["tokens"])
        assert [e["type"] for e in p["entities"]] == [kind for kind, _, _ in entity_spans(p["predicted_tags"])]
        for e in p["entities"]:
            assert text[e["start"] : e["end"]] == e["text"] and 0 < e["score"] <= 1
            n_entities += 1
    assert n_entities > 0

    rec = deltatune.load(out).predict(["Peter Blackburn met officials of the European Commission in Brussels ."])
    for e in rec[0]["entities"]:
        assert "Peter Blackburn met officials of the European Commission in Brussels ."[e["start"] : e["end"]] == e["text"]
    assert main(["predict", str(out), "--text", "John Smith lives in Paris"]) == 0
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert printed[0]["text"] == "John Smith lives in Paris" and len(printed[0]["tags"]) == 5
