"""Few-shot (train.method contrastive): the pair generator and the config refusals, torch-free."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from deltatune.errors import DeltatuneError
from deltatune.tasks.fewshot.pairs import make_pairs


def test_pairs_are_balanced_seeded_without_self_pairs_and_use_every_example():
    keys = ["a"] * 8 + ["b"] * 8 + ["c"] * 3
    pairs = make_pairs(keys, iterations=5, seed=3)
    assert len(pairs) == 2 * 5 * len(keys)
    counts = Counter(p.target for p in pairs)
    assert counts[1.0] == counts[0.0]
    assert all(p.first != p.second for p in pairs)
    assert all((keys[p.first] == keys[p.second]) == (p.target == 1.0) for p in pairs)
    used = {p.first for p in pairs} | {p.second for p in pairs}
    assert used == set(range(len(keys)))
    assert make_pairs(keys, 5, seed=3) == pairs
    assert make_pairs(keys, 5, seed=4) != pairs


def test_multi_label_positives_have_equal_label_sets_and_a_lonely_set_is_still_used():
    keys = [("x",), ("x",), ("x", "y"), ("x", "y"), ("y",), ("y",), ("z",)]  # ("z",) has no partner
    pairs = make_pairs(keys, iterations=3, seed=0)
    counts = Counter(p.target for p in pairs)
    assert counts[1.0] == counts[0.0]
    assert all((keys[p.first] == keys[p.second]) == (p.target == 1.0) for p in pairs)
    assert 6 in {p.first for p in pairs} | {p.second for p in pairs}
    assert all(p.first != p.second for p in pairs)


@pytest.mark.parametrize(
    "keys, says",
    [(["a", "a", "a"], "two different labels"), (["a", "b", "c"], "two rows with the same label"), (["a"], "two different")],
)
def test_pairs_refuse_data_without_positives_or_negatives(keys, says):
    with pytest.raises(DeltatuneError, match=says):
        make_pairs(keys, 2, seed=0, source="train.csv")


def test_config_refusals_and_defaults_are_torch_free():
    code = r"""
import sys
from deltatune.config import build_config
from deltatune.errors import DeltatuneError
cases = [
    ({"train.method": "contrastive", "task": "token-classification"}, "applies to task text-classification only"),
    ({"train.contrastive_iterations": 5}, "applies to train.method contrastive"),
    ({"train.method": "contrastive", "data.text_pair_column": "b"}, "single texts"),
    ({"train.method": "fewshot"}, "'standard' or 'contrastive'"),
    ({"train.method": "contrastive", "train.contrastive_head": "svm"}, "logistic_regression"),
]
for overrides, says in cases:
    try:
        build_config(None, overrides)
    except DeltatuneError as e:
        assert says in str(e) and "\n" not in str(e), (overrides, str(e))
    else:
        raise AssertionError(overrides)
cfg = build_config(None, {"train.method": "contrastive"})
assert cfg.train.learning_rate == 2e-5 and cfg.train.contrastive_iterations == 20
assert build_config(None, {"train.method": "contrastive", "delta.method": "lora"}).train.learning_rate == 1e-3
assert build_config(None, {"train.method": "contrastive", "train.learning_rate": 1e-4}).train.learning_rate == 1e-4
assert build_config(cfg.to_dict()).train.method == "contrastive"  # a saved config reads back
assert build_config(None, {}).train.method == "standard"
assert "torch" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_few_shot_flag_sets_contrastive():
    from deltatune.cli import _config_source, _overrides, parse_args
    from deltatune.config import build_config

    args = parse_args(["train", "--train", "t.csv", "--few-shot"])
    assert build_config(_config_source(args), _overrides(args)).train.method == "contrastive"
    args = parse_args(["train", "--train", "t.csv"])
    assert build_config(_config_source(args), _overrides(args)).train.method == "standard"
