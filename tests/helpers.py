"""Helpers shared by tests: synthetic data and tiny-run configs."""

from __future__ import annotations

import csv
import math
import random
import subprocess
import sys
from pathlib import Path

WORDS_POS = "great good lovely wonderful excellent fun charming superb delightful moving".split()
WORDS_NEG = "bad awful boring dull terrible weak poor tedious messy bland".split()
FILLER = "the movie film plot actors story was is a an and with very quite rather really".split()


def _rows(n: int, seed: int, text_of) -> list[dict]:
    """Alternating neg/pos rows; ``text_of(rng, word)`` builds the text around the sentiment word."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        word = rng.choice(WORDS_POS if label else WORDS_NEG)
        rows.append({"text": text_of(rng, word), "label": "pos" if label else "neg"})
    return rows


def _in_filler(rng: random.Random, word: str) -> str:
    filler = [rng.choice(FILLER) for _ in range(rng.randint(2, 14))]
    filler.insert(rng.randint(0, len(filler)), word)
    return " ".join(filler)


def make_sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """Synthetic two-class rows of varying length: label 1 iff the sentiment word is positive."""
    return _rows(n, seed, _in_filler)


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def tiny_config(model_dir: str, train: Path, validation: Path | None, out: Path, **train_kw) -> dict:
    """A config dict for fast runs on the tiny model."""
    cfg = {
        "task": "text-classification",
        "output_dir": str(out),
        "seed": 7,
        "model": {"name_or_path": model_dir, "dropout": 0.0},
        "data": {"train_file": str(train), "validation_file": str(validation) if validation else None, "max_seq_length": 32},
        "train": {
            "per_device_train_batch_size": 8,
            "learning_rate": 1e-3,
            "num_train_epochs": 2,
            "logging_steps": 1,
            "progress_bar": False,
            **train_kw,
        },
    }
    return cfg


def make_easy_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows a tiny random model learns in a few dozen steps: every token carries the label."""
    return _rows(n, seed, lambda rng, word: " ".join([word] * rng.randint(1, 6)))


_CLI_IN_A_FRESH_PROCESS = (
    "import sys\nfrom deltatune.cli import main\n"
    "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
    "print('torch loaded' if 'torch' in sys.modules else 'no torch', rc)\n"
)


def run_cli_fresh(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``deltatune <argv>`` in a fresh Python process in ``cwd``; its stdout is ``"no torch <rc>"``
    (or ``"torch loaded <rc>"``): whether the command imported torch before it ended, and its exit code."""
    return subprocess.run([sys.executable, "-c", _CLI_IN_A_FRESH_PROCESS, *argv], capture_output=True, text=True, cwd=cwd, timeout=120)


def predictions_close(a, b) -> bool:
    """Predictions equal: text and labels exactly, numbers within 1e-5 (nested dicts and lists)."""
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(predictions_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(predictions_close(x, y) for x, y in zip(a, b))
    return a == b
