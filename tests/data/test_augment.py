"""EDA augmentation (deltatune.data.augment): each operation on a fixed seed, determinism, the
training split only, augmented_train.jsonl, and refusal for other tasks."""

from __future__ import annotations

import json
import random
from collections import Counter

import datasets
import pytest

from deltatune.config import build_config
from deltatune.data import augment
from deltatune.data.augment import (
    AUGMENTED_FILE,
    OPERATION_COLUMN,
    SOURCE_COLUMN,
    apply_operation,
    augment_rows,
    random_deletion,
    random_insertion,
    random_swap,
    synonym_replacement,
)
from deltatune.errors import DeltatuneError
from tests.helpers import make_sentiment_rows, tiny_config, write_csv

THESAURUS = {"movie": ["film", "picture"], "great": ["excellent"], "plot": ["story line"]}


def synonyms(word: str) -> list[str]:
    return THESAURUS.get(word.lower(), [])


WORDS = "the movie had a great plot and the actors".split()


def is_subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(w in it for w in small)


def test_synonym_replacement_replaces_n_content_words_by_their_synonyms():
    out = synonym_replacement(WORDS, 2, random.Random(0), synonyms)
    changed = [(a, b) for a, b in zip(WORDS, out) if a != b]
    assert len(out) == len(WORDS) and len(changed) == 2
    assert all(b in THESAURUS[a] for a, b in changed)
    assert out[0] == "the" and out[3] == "a"  # stop words are never replaced


def test_synonym_replacement_replaces_every_occurrence_and_keeps_capitals():
    out = synonym_replacement("Great fun , great cast".split(), 1, random.Random(3), synonyms)
    assert out == ["Excellent", "fun", ",", "excellent", "cast"]
    assert synonym_replacement(["the", "of"], 1, random.Random(0), synonyms) == ["the", "of"]  # nothing to replace


def test_random_insertion_inserts_n_synonyms_keeping_the_words_in_order():
    out = random_insertion(WORDS, 2, random.Random(1), synonyms)
    assert len(out) == len(WORDS) + 2 and is_subsequence(WORDS, out)
    inserted = list((Counter(out) - Counter(WORDS)).elements())
    assert sorted(inserted) != [] and all(any(w in s for s in THESAURUS.values()) for w in inserted)
    assert random_insertion(["the", "of"], 1, random.Random(0), synonyms) == ["the", "of"]


def test_random_swap_exchanges_two_words():
    out = random_swap(WORDS, 1, random.Random(2))
    assert sorted(out) == sorted(WORDS)
    assert sum(a != b for a, b in zip(WORDS, out)) == 2  # the two swapped words are different
    assert random_swap(["one"], 3, random.Random(0)) == ["one"]


def test_random_deletion_deletes_words_with_probability_p_and_keeps_one():
    words = [f"w{i}" for i in range(200)]
    out = random_deletion(words, 0.1, random.Random(4))
    assert is_subsequence(out, words) and 150 < len(out) < 200  # about 180 kept
    assert len(random_deletion(words[:5], 0.999999, random.Random(0))) == 1
    assert random_deletion(["only"], 0.9, random.Random(0)) == ["only"]


def test_apply_operation_uses_n_of_alpha_times_words():
    text = " ".join(f"w{i}" for i in range(30))
    out = apply_operation("random_swap", text, 0.1, random.Random(5), synonyms).split()
    assert 0 < sum(a != b for a, b in zip(text.split(), out)) <= 6  # n = int(0.1 * 30) = 3 swaps
    with pytest.raises(ValueError, match="random_swap"):
        apply_operation("back_translation", text, 0.1, random.Random(0), synonyms)


def rows_dataset(n: int = 6) -> datasets.Dataset:
    return datasets.Dataset.from_list(
        [{"text": f"the great movie number {i} had a plot", "pair": f"a movie {i}", "label": i % 2} for i in range(n)]
    )


def test_augment_rows_copies_labels_names_the_source_row_and_takes_operations_in_turn():
    ds = rows_dataset()
    out = augment_rows(ds, ["text", "pair"], 4, 0.2, augment.OPERATIONS, seed=0, synonyms=synonyms)
    assert (out.original_rows, out.added_rows, len(out.train)) == (6, 24, 30)
    assert out.train.column_names == ds.column_names and out.train.features == ds.features
    for i in range(6):
        group = [r for r in out.written if r[SOURCE_COLUMN] == i]
        assert group[0][OPERATION_COLUMN] == "original" and group[0]["text"] == ds[i]["text"]
        assert sorted(r[OPERATION_COLUMN] for r in group[1:]) == sorted(augment.OPERATIONS)  # each once with 4 copies
        assert {r["label"] for r in group} == {ds[i]["label"]}
    changed = [r for r in out.written if r[OPERATION_COLUMN] != "original" and r["pair"] != ds[r[SOURCE_COLUMN]]["pair"]]
    assert changed  # the second text of a pair is augmented too


def test_augmentation_is_deterministic_per_seed():
    ds = rows_dataset()
    a = augment_rows(ds, ["text"], 3, 0.3, augment.OPERATIONS, seed=11, synonyms=synonyms).written
    b = augment_rows(ds, ["text"], 3, 0.3, augment.OPERATIONS, seed=11, synonyms=synonyms).written
    c = augment_rows(ds, ["text"], 3, 0.3, augment.OPERATIONS, seed=12, synonyms=synonyms).written
    assert a == b and a != c
    # a row's copies depend on its index and the seed only, not on the rows after it
    d = augment_rows(ds.select(range(3)), ["text"], 3, 0.3, augment.OPERATIONS, seed=11, synonyms=synonyms).written
    assert d == a[: len(d)]


def test_another_task_is_refused_naming_the_supported_ones():
    with pytest.raises(DeltatuneError, match="applies to text-classification, text-regression, not token-classification"):
        build_config({"task": "token-classification", "data": {"augmentation": "eda"}})
    assert build_config({"task": "text-regression", "data": {"augmentation": "eda"}}).data.augmentation == "eda"


def test_missing_wordnet_is_one_line_naming_the_way_out(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])  # nltk's documented search list: an empty folder
    with pytest.raises(DeltatuneError, match=r"WordNet corpus.*random_swap,random_deletion") as e:
        augment.wordnet_synonyms()
    assert "\n" not in str(e.value)


def test_wordnet_synonyms_when_the_corpus_is_there():
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        pytest.skip("no WordNet corpus on nltk's data path (docs/augmentation.md)")
    found = augment.wordnet_synonyms()("movie")
    assert "film" in found and "movie" not in found


def split_config(tmp_path, augmentation: dict) -> dict:
    train = write_csv(tmp_path / "train.csv", make_sentiment_rows(40, 3))
    cfg = tiny_config("unused", train, None, tmp_path / "run")
    cfg["data"].update(validation_split=0.25, **augmentation)
    return cfg


def test_only_the_training_split_is_augmented_after_the_validation_split_is_carved(tmp_path):
    from deltatune.api import _load_splits

    swap_delete = {"augmentation_operations": ["random_swap", "random_deletion"]}
    _, plain = _load_splits(build_config(split_config(tmp_path, {})))
    _, augmented = _load_splits(build_config(split_config(tmp_path, {"augmentation": "eda", **swap_delete})))
    assert augmented.validation.to_list() == plain.validation.to_list()  # untouched
    originals = [r for r in augmented.augmented.written if r[OPERATION_COLUMN] == "original"]
    assert [{"text": r["text"], "label": r["label"]} for r in originals] == plain.train.to_list()
    assert len(augmented.train) == 5 * len(plain.train)
    copied = {r["text"] for r in augmented.augmented.written}
    assert not copied & set(plain.validation["text"]) - set(plain.train["text"])  # no copy of a validation row


def test_text_regression_copies_the_targets(tmp_path):
    from deltatune.api import _load_splits

    rows = [{"text": f"the film scored {i} points in a row", "label": i / 4} for i in range(12)]
    cfg = {"task": "text-regression", "output_dir": str(tmp_path / "run"),
           "data": {"train_file": str(write_csv(tmp_path / "r.csv", rows)), "augmentation": "eda", "augmentation_copies": 2,
                    "augmentation_operations": ["random_swap"]}}
    _, splits = _load_splits(build_config(cfg))
    by_source: dict[int, set] = {}
    for r in splits.augmented.written:
        by_source.setdefault(r[SOURCE_COLUMN], set()).add(r["label"])
    assert len(splits.train) == 3 * splits.augmented.original_rows and all(len(v) == 1 for v in by_source.values())


def test_a_run_writes_augmented_train_jsonl_and_counts_the_rows(tiny_model_dir, tmp_path):
    from deltatune import finetune

    train = write_csv(tmp_path / "train.csv", make_sentiment_rows(16, 1))
    val = write_csv(tmp_path / "val.csv", make_sentiment_rows(8, 2))
    cfg = tiny_config(tiny_model_dir, train, val, tmp_path / "run", num_train_epochs=1)
    cfg["data"].update(augmentation="eda", augmentation_copies=2, augmentation_operations=["random_swap", "random_deletion"])
    run = finetune(cfg, verbose=False)
    written = [json.loads(line) for line in (run.path / AUGMENTED_FILE).read_text().splitlines()]
    assert len(written) == 48 and Counter(r[OPERATION_COLUMN] for r in written)["original"] == 16
    assert {r[SOURCE_COLUMN] for r in written} == set(range(16))
    log = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    event = next(r for r in log if r.get("event") == "augmentation")
    assert (event["original_rows"], event["added_rows"]) == (16, 32)
    files = json.loads((run.path / "eval.json").read_text())["train"]["data_files"]["train"]
    assert files["rows"] == 48 and files["augmentation"]["added_rows"] == 32
    assert files["file"] == str(train)
