"""Splits of one file by a column (data.split_column) and the carved validation split."""

from __future__ import annotations

import json

import datasets
import pytest

from deltatune import api
from deltatune.data.splits import FileRows, row_number, split_by_column, train_validation_indices, train_validation_split
from deltatune.errors import DeltatuneError


def test_rows_are_divided_by_their_split_value_in_file_order():
    ds = datasets.Dataset.from_dict({"x": list(range(6)), "split": ["train", "eval", "Train ", "test", "dev", "train"]})
    parts = split_by_column(ds, "split", "f.jsonl")
    assert parts["train"]["x"] == [0, 2, 5] and parts["validation"]["x"] == [1, 4] and parts["test"]["x"] == [3]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["train", "holdout"], r"f.jsonl: row 2 has split='holdout'"),
        (["eval", "test"], "no row has split=train"),
    ],
)
def test_bad_split_values_are_refused_naming_the_row(values, message):
    ds = datasets.Dataset.from_dict({"x": [1, 2], "split": values})
    with pytest.raises(DeltatuneError, match=message):
        split_by_column(ds, "split", "f.jsonl")


def test_a_missing_split_column_is_named():
    with pytest.raises(DeltatuneError, match="no column 'part' \\(data.split_column\\)"):
        split_by_column(datasets.Dataset.from_dict({"x": [1]}), "part", "f.jsonl")


def test_check_reads_the_validation_rows_of_the_split_column(tiny_llama_dir, tmp_path):
    rows = [{"prompt": f"Q{i}?", "completion": f"A{i}.", "split": "eval" if i % 4 == 0 else "train"} for i in range(12)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = api.check(
        {"task": "instruction", "model": {"name_or_path": tiny_llama_dir}, "data": {"train_file": str(path), "split_column": "split"}}
    )
    assert "9 encoded training examples" in report
    assert "=== validation: 3 encoded examples" in report and "(split=validation rows, numbered among themselves)" in report


def test_rows_of_a_split_are_named_as_such_in_errors_and_a_second_source_is_refused(tiny_llama_dir, tmp_path):
    rows = [{"prompt": f"Q{i}?", "completion": f"A{i}.", "split": "eval" if i % 4 == 0 else "train"} for i in range(12)]
    rows[8]["completion"] = ""  # the 3rd validation row (file line 9) has an empty answer
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"task": "instruction", "model": {"name_or_path": tiny_llama_dir}, "data": {"train_file": str(path), "split_column": "split"}}
    with pytest.raises(DeltatuneError, match=r"rows.jsonl \(split=validation rows, numbered among themselves\).* row 3"):
        api.check(cfg)
    rows[8]["completion"] = "A8."
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    other = tmp_path / "dev.jsonl"
    other.write_text(json.dumps({"prompt": "Q?", "completion": "A."}) + "\n")
    cfg["data"]["validation_file"] = str(other)
    with pytest.raises(DeltatuneError, match=r"has 3 rows with split=validation and data.validation_file is .*dev.jsonl too; use one"):
        api.check(cfg)


def test_carved_parts_name_the_rows_of_the_file():
    ds = datasets.Dataset.from_dict({"x": list(range(10))})
    train_idx, val_idx = train_validation_indices(len(ds), 0.3, seed=4)
    train, val = train_validation_split(ds, 0.3, seed=4)
    assert train["x"] == train_idx and val["x"] == val_idx  # the same parts
    source = FileRows("train.csv", val_idx)
    assert source == "train.csv" and f"{source}: row" == "train.csv: row"
    assert [row_number(source, j) for j in range(len(val))] == [i + 1 for i in val_idx]
    assert row_number("dev.csv", 2) == 3  # a file of its own: its rows as they are


def test_a_file_rows_source_survives_pickling():
    import pickle

    source = pickle.loads(pickle.dumps(FileRows("train.csv", [4, 1])))
    assert source == "train.csv" and row_number(source, 0) == 5
