"""Tiny trained runs shared by the serving tests; copy one (tests.serving.runs.copy_run) before changing it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_sentiment_rows, write_csv
from tests.serving.runs import train_tiny_run


@pytest.fixture(scope="session")
def sentiment_files(tmp_path_factory) -> tuple[Path, Path]:
    """(train.csv, validation.csv): 32 and 16 synthetic sentiment rows."""
    d = tmp_path_factory.mktemp("serving_data")
    return write_csv(d / "train.csv", make_sentiment_rows(32, 1)), write_csv(d / "validation.csv", make_sentiment_rows(16, 2))


@pytest.fixture(scope="session")
def classifier_run(tiny_model_dir, sentiment_files, tmp_path_factory) -> Path:
    """A finished full fine-tuning text-classification run (1 step) on the tiny BERT."""
    return train_tiny_run(tiny_model_dir, sentiment_files, tmp_path_factory.mktemp("runs") / "classifier")


@pytest.fixture(scope="session")
def lora_run(tiny_model_dir, sentiment_files, tmp_path_factory) -> Path:
    """A finished LoRA text-classification run (1 step) on the tiny BERT (a local base folder)."""
    return train_tiny_run(tiny_model_dir, sentiment_files, tmp_path_factory.mktemp("runs") / "lora", delta={"method": "lora"})
