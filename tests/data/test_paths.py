"""The cheap header read of deltatune.data.paths agrees with the loader, or declines."""

from __future__ import annotations

import sys

import pytest

from deltatune.data.loading import load_table
from deltatune.data.paths import check_columns, header_columns
from deltatune.errors import DeltatuneError


@pytest.mark.parametrize(
    "name, text",
    [
        ("a.csv", "\ufefftext,label\n\ngood,pos\n"),  # byte-order mark, blank line
        ("b.csv", '"the text","a,b"\nx,y\n'),  # quoted names with a comma
        ("c.tsv", "text\tstars\ngood\t5\n"),
        ("d.jsonl", '\n{"text": "a", "label": 1}\n{"text": "b", "label": 0, "extra": 2}\n'),  # first row's keys
        ("e.json", '{"q": "a", "n": 1}\n{"q": "b", "n": 2}\n'),  # JSON Lines under .json
    ],
)
def test_the_header_is_the_columns_the_loader_makes(name, text, tmp_path):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    assert header_columns(p) == load_table(str(p)).column_names


@pytest.mark.parametrize(
    "name, text",
    [
        ("dup.csv", "a,a\n1,2\n"),  # pandas renames the second 'a'
        ("blank.csv", ",label\n1,2\n"),  # pandas names it 'Unnamed: 0'
        ("array.jsonl", '[{"text": "a"}]\n'),
        ("squad.json", '{"version": "v2.0", "data": []}\n'),  # one document, not JSON Lines
        ("pretty.json", '{\n  "text": ["a", "b"]\n}\n'),
        ("notes.txt", "some text\n"),
        ("t.parquet", "PAR1"),
        ("empty.csv", ""),
    ],
)
def test_a_header_that_is_not_cheap_or_certain_is_not_read(name, text, tmp_path):
    p = tmp_path / name
    p.write_text(text)
    assert header_columns(p) is None
    check_columns(str(p), ["anything"])  # nothing checked: the loader reports what is wrong


def test_a_missing_column_names_the_file_and_the_columns_it_has(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("review,label\ngood,pos\n")
    with pytest.raises(DeltatuneError) as e:
        check_columns(str(p), ["review", "text"])
    assert str(e.value) == (
        f"{p}: no column 'text'; columns are 'review', 'label' (set the column name in data.*_column, e.g. --text-column)"
    )
    check_columns(str(p), ["label", "review"])
    check_columns("stanfordnlp/imdb", ["text"])  # a hub dataset: checked when loaded


def test_the_header_read_is_torch_and_pandas_free():
    import subprocess

    code = "import sys, deltatune.data.paths\nprint(sorted(m for m in ('torch', 'pandas', 'datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
