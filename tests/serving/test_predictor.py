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
