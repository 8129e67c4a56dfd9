"""Train, evaluate and predict with the real packaged MiniLM on a small slice of SST-2."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import deltatune
from deltatune.cli import main
from tests.conftest import SST2

pytestmark = pytest.mark.skipif(not (SST2 / "train.tsv").is_file(), reason="../shared/data/text_classification/sst2 not present")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    dev = pd.read_csv(SST2 / "dev.tsv", sep="\t", quoting=3)
    dev.iloc[:200].to_csv(tmp / "dev200.tsv", sep="\t", index=False)
    dev.iloc[200:230][["sentence"]].to_csv(tmp / "unlabelled.csv", index=False)
    out = tmp / "run"
    code = main([
        "train", "--model", "minilm", "--train", str(SST2 / "train.tsv"), "--max-train-samples", "1280",
        "--validation", str(tmp / "dev200.tsv"), "--text-column", "sentence", "--output-dir", str(out), "--quiet",
    ])
    assert code == 0
    return tmp, out


def test_training_learns_and_writes_the_run_directory(trained):
    tmp, out = trained
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "model/config.json", "model/model.safetensors"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "eval.json").read_text())
    assert metrics["validation"]["accuracy"] > 0.65  # chance is ~0.5 on SST-2 dev
    assert metrics["train"]["global_step"] == 40
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_accuracy" in r for r in log)


def test_evaluate_matches_training_eval(trained, capsys):
    tmp, out = trained
    m = deltatune.evaluate(out, str(tmp / "dev200.tsv"))
    assert m["accuracy"] == pytest.approx(json.loads((out / "eval.json").read_text())["validation"]["accuracy"])
    assert main(["evaluate", str(out), "--data", str(tmp / "dev200.tsv"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["accuracy"] == pytest.approx(m["accuracy"])


def test_predict_cli_and_api_agree_with_plain_transformers(trained, capsys):
    tmp, out = trained
    assert main(["predict", str(out), "--input", str(tmp / "unlabelled.csv"), "--output", str(tmp / "pred.csv")]) == 0
    pred = pd.read_csv(tmp / "pred.csv")
    assert len(pred) == 30 and {"sentence", "label", "prob_0", "prob_1"} <= set(pred.columns)
    np.testing.assert_allclose(pred["prob_0"] + pred["prob_1"], 1.0, atol=1e-6)

    texts = pd.read_csv(tmp / "unlabelled.csv")["sentence"].tolist()
    api = deltatune.load(out).predict(texts)
    assert [r["label"] for r in api] == [str(x) for x in pred["label"]]

    # the ecosystem contract: plain transformers loads the model and gives the same probabilities
    tok = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    with torch.no_grad():
        logits = model(**tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")).logits
    probs = torch.softmax(logits, -1)[:, 1].numpy()
    np.testing.assert_allclose(probs, pred["prob_1"].to_numpy(), atol=1e-4)
    assert model.config.id2label == {0: "0", 1: "1"}

    assert main(["predict", str(out), "--text", "a wonderful, moving film", "--text", "dull and lifeless"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [r["label"] for r in lines] == ["1", "0"]
