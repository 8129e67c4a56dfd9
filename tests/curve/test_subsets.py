"""data.train_fraction subsets: nested, stratified, seeded, deterministic; the config fields; _load_splits."""

from collections import Counter

import pytest

from deltatune.config import build_config
from deltatune.curve.subsets import subset_indices, subset_order, subset_size
from deltatune.errors import DeltatuneError

LABELS = ["a"] * 70 + ["b"] * 25 + ["c"] * 5  # imbalanced, one rare class


def test_subsets_are_nested_for_one_seed():
    for strat in (None, LABELS):
        previous: set[int] = set()
        for f in (0.02, 0.1, 0.25, 0.5, 0.8, 1.0):
            now = set(subset_indices(100, f, seed=3, stratify_by=strat))
            assert previous <= now and len(now) == subset_size(100, f)
            previous = now
        assert previous == set(range(100))


def test_subsets_are_stratified_and_keep_every_class():
    counts = Counter(LABELS[i] for i in subset_indices(100, 0.03, seed=0, stratify_by=LABELS))
    assert set(counts) == {"a", "b", "c"}  # 3 rows: one per class, even the rare one
    for f in (0.2, 0.4, 0.6):
        counts = Counter(LABELS[i] for i in subset_indices(100, f, seed=1, stratify_by=LABELS))
        k = round(100 * f)
        for label, share in (("a", 0.7), ("b", 0.25), ("c", 0.05)):
            assert abs(counts[label] - share * k) <= 1.5, (f, counts)


def test_subsets_are_seeded_and_deterministic():
    assert subset_order(50, 4, LABELS[:50]) == subset_order(50, 4, LABELS[:50])
    assert subset_indices(100, 0.3, 1) == subset_indices(100, 0.3, 1)
    assert subset_indices(100, 0.3, 1) != subset_indices(100, 0.3, 2)
    assert subset_indices(100, 0.3, 1, LABELS) != subset_indices(100, 0.3, 2, LABELS)


def test_subset_size_rounds_and_keeps_one_row():
    assert subset_size(8000, 0.25) == 2000 and subset_size(10, 0.01) == 1 and subset_size(7, 1.0) == 7
    with pytest.raises(ValueError):
        subset_size(10, 0.0)


@pytest.mark.parametrize("value", [0, -0.1, 1.5])
def test_train_fraction_is_validated_torch_free(value):
    with pytest.raises(DeltatuneError, match=r"data\.train_fraction"):
        build_config(None, {"data.train_fraction": value})
    cfg = build_config(None, {"data.train_fraction": 0.25, "data.subset_seed": 3})
    assert cfg.data.train_fraction == 0.25 and cfg.data.subset_seed == 3
    assert build_config(None).data.train_fraction == 1.0


def test_load_splits_subsets_training_rows_after_the_validation_split(tiny_model_dir, tmp_path, capsys):
    from deltatune.api import _load_splits
    from tests.helpers import make_sentiment_rows, tiny_config, write_csv

    train = write_csv(tmp_path / "all.csv", make_sentiment_rows(80))
    base = tiny_config(tiny_model_dir, train, None, tmp_path / "r")
    full = _load_splits(build_config(base))[1]
    splits = {}
    for f in (0.25, 0.5):
        splits[f] = _load_splits(build_config(base, {"data.train_fraction": f, "data.subset_seed": 1}))[1]
        assert splits[f].validation["text"] == full.validation["text"]  # the same validation rows at every fraction
    assert "train_fraction 0.25: 18 of 72 training rows" in capsys.readouterr().err
    assert len(splits[0.25].train) == 18 and len(splits[0.5].train) == 36
    assert set(splits[0.25].train["text"]) <= set(splits[0.5].train["text"]) <= set(full.train["text"])  # nested
    assert Counter(splits[0.5].train["label"]) == {"neg": 18, "pos": 18}  # stratified (72 rows: 36 of each)
