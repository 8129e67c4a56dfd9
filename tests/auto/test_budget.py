"""Budget parsing and the model-candidate checks (family, size, memory)."""

import pytest

from deltatune.auto import parse_duration, parse_memory
from deltatune.auto.candidates import FULL_BYTES_PER_PARAMETER, choose_candidates, fits_task
from deltatune.errors import DeltatuneError


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("20m", 1200), ("1.5h", 5400), ("1h30m", 5400), ("45", 45), (" 2 m ", 120), (30, 30)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "20x", "m", "0m", "-5m"])
def test_parse_duration_errors(text):
    with pytest.raises(DeltatuneError):
        parse_duration(text)


@pytest.mark.parametrize("text,n", [("8GB", 8 * 10**9), ("8GiB", 8 * 2**30), ("8G", 8 * 2**30), ("512MB", 512 * 10**6), ("1000", 1000), ("1.5kib", 1536)])
def test_parse_memory(text, n):
    assert parse_memory(text) == n


@pytest.mark.parametrize("text", ["", "eight GB", "8 parsecs", "0GB"])
def test_parse_memory_errors(text):
    with pytest.raises(DeltatuneError):
        parse_memory(text)


def test_fits_task():
    assert fits_task("encoder", "text-classification") is None
    assert "decoder" in fits_task("encoder", "instruction")
    assert fits_task("encoder-decoder", "translation") is None
    assert "encoder model" in fits_task("decoder", "token-classification")


def test_memory_budget_restricts_methods_and_skips(tiny_model_dir):
    kept, skipped = choose_candidates([tiny_model_dir], "text-classification", ["full", "lora"], None, None, 1000)
    (c,) = kept
    assert c.family == "encoder" and c.methods == ["full", "lora"] and 0 < c.non_embedding < c.parameters
    # room for LoRA's frozen weights (4 B/parameter) but not full fine-tuning (16 B/parameter)
    kept, _ = choose_candidates([tiny_model_dir], "text-classification", ["full", "lora"], c.parameters * 8, None, 1000)
    assert kept[0].methods == ["lora"] and any("no full fine-tuning" in n for n in kept[0].notes)
    kept, skipped = choose_candidates([tiny_model_dir], "text-classification", ["full"], c.parameters * FULL_BYTES_PER_PARAMETER - 1, None, 1000)
    assert not kept and "memory" in skipped[0].notes[-1]
    kept, skipped = choose_candidates([tiny_model_dir], "instruction", ["lora"], None, None, 1000)
    assert not kept and "needs a decoder" in skipped[0].notes[-1]


def test_time_budget_skips_hopeless_candidates(tiny_model_dir):
    # a corpus so large that one epoch cannot fit one second even at the matmul peak
    kept, skipped = choose_candidates(["minilm", tiny_model_dir], "text-classification", ["full"], None, 1.0, 10**12)
    assert [c.ref for c in skipped] == ["minilm"] and "time-budget" in skipped[0].notes[-1]
    # ... but the fastest is kept when all would be skipped: auto shortens its trials to the budget
    assert [c.ref for c in kept] == [tiny_model_dir] and "kept all the same" in kept[0].notes[-1]
    kept, _ = choose_candidates([tiny_model_dir], "text-classification", ["full"], None, 3600.0, 10**4)
    assert kept
