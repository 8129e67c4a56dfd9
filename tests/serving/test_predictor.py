"""Writing predictions next to their inputs."""

from __future__ import annotations

import csv

from deltatune.serving.predictor import merge_record, write_predictions


def test_a_gold_label_column_is_kept_next_to_the_prediction(tmp_path):
    inputs = [{"text": "good", "label": "neg"}]
    records = [{"label": "pos", "probabilities": {"neg": 0.1, "pos": 0.9}}]
    assert merge_record(inputs[0], records[0])["label"] == "neg"
    out = tmp_path / "pred.csv"
    write_predictions(records, inputs, out)
    row = next(csv.DictReader(out.open()))
    assert row["label"] == "neg" and row["predicted_label"] == "pos"
    assert float(row["prob_pos"]) == 0.9


def test_without_a_clash_the_prediction_keeps_its_name():
    assert merge_record({"text": "x"}, {"label": "pos"}) == {"text": "x", "label": "pos"}


def test_list_and_dict_cells_are_json_in_csv_and_tsv(tmp_path):
    import json

    messages = [{"role": "user", "content": "grüß dich"}, {"role": "assistant", "content": "hallo"}]
    inputs = [{"messages": messages, "meta": {"id": 1}}]
    records = [{"generated": "hi", "ended_with_eos": True}]
    for name, delim in (("pred.csv", ","), ("pred.tsv", "\t")):
        out = tmp_path / name
        write_predictions(records, inputs, out)
        row = next(csv.DictReader(out.open(encoding="utf-8"), delimiter=delim))
        assert json.loads(row["messages"]) == messages and json.loads(row["meta"]) == {"id": 1}
        assert '"role"' in row["messages"] and "grüß" in row["messages"]


def test_an_existing_file_is_kept_unless_overwrite(tmp_path, monkeypatch):
    import pandas as pd
    import pytest

    from deltatune.errors import DeltatuneError

    out = tmp_path / "pred.csv"
    out.write_text("mine")
    inputs, records = [{"text": "good"}], [{"label": "pos"}]
    with pytest.raises(DeltatuneError, match="already exists.*--overwrite"):
        write_predictions(records, inputs, out)
    with pytest.raises(DeltatuneError, match="--input"):
        write_predictions(records, inputs, out, overwrite=True, inputs_path=out)
    assert out.read_text() == "mine"

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError):
        write_predictions(records, inputs, out, overwrite=True)
    assert out.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["pred.csv"]
    monkeypatch.undo()
    write_predictions(records, inputs, out, overwrite=True)
    assert out.read_text().splitlines() == ["text,label", "good,pos"]
