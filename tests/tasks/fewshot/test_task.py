"""Few-shot classification (train.method contrastive, SetFit): loss, head fitting, runs on the tiny BERT."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from deltatune.config import build_config
from deltatune.tasks import create_task, get_task_class
from deltatune.tasks.classification import ClassificationTask
from deltatune.tasks.fewshot.task import ContrastiveClassificationTask, cosine_similarity_loss, fit_logistic_head
from tests.helpers import make_easy_rows, tiny_config, write_csv

pytestmark = pytest.mark.usefixtures("one_thread")


def test_contrastive_method_selects_the_few_shot_task():
    cfg = build_config(None, {"train.method": "contrastive", "model.name_or_path": "minilm"})
    assert type(create_task(cfg)) is ContrastiveClassificationTask
    assert get_task_class("text-classification", method="contrastive") is ContrastiveClassificationTask
    assert get_task_class("text-classification") is ClassificationTask


def test_cosine_similarity_loss_matches_a_hand_computed_case():
    first = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    second = torch.tensor([[0.0, 2.0], [2.0, 2.0], [4.0, 3.0]])
    targets = torch.tensor([0.0, 1.0, 0.0])
    # cosines 0, 1, 24/25: squared errors 0, 0, (24/25)**2
    assert cosine_similarity_loss(first, second, targets).item() == pytest.approx((24 / 25) ** 2, rel=1e-6)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("classes", [2, 3])
def test_logistic_head_reproduces_predict_proba(classes):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = rng.integers(0, classes, size=60)
    weight, bias = fit_logistic_head(x, y, classes, multi_label=False, seed=0)
    reference = LogisticRegression(max_iter=1000, random_state=0).fit(x, y)
    probs = _softmax(x @ weight.T.astype(np.float64) + bias)
    np.testing.assert_allclose(probs, reference.predict_proba(x), atol=1e-5)
    # and through the task's own probabilities (what decode and the metrics use)
    task = ContrastiveClassificationTask(build_config(None, {"train.method": "contrastive"}), [str(i) for i in range(classes)], False)
    np.testing.assert_allclose(task.probabilities(x @ weight.T + bias), reference.predict_proba(x), atol=1e-5)


def test_logistic_head_absent_class_and_multi_label():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 4))
    y = rng.integers(0, 2, size=40) * 2  # classes 0 and 2 of 3: class 1 never seen
    weight, bias = fit_logistic_head(x, y, 3, multi_label=False, seed=0)
    probs = _softmax(x @ weight.T.astype(np.float64) + bias)
    np.testing.assert_allclose(probs[:, [0, 2]], LogisticRegression(max_iter=1000, random_state=0).fit(x, y).predict_proba(x), atol=1e-5)
    assert probs[:, 1].max() == 0.0
    hot = np.stack([rng.integers(0, 2, size=40), np.ones(40)], axis=1)  # the second label always on
    weight, bias = fit_logistic_head(x, hot, 2, multi_label=True, seed=0)
    sig = 1 / (1 + np.exp(-(x @ weight.T.astype(np.float64) + bias)))
    expected = LogisticRegression(max_iter=1000, random_state=0).fit(x, hot[:, 0]).predict_proba(x)[:, 1]
    np.testing.assert_allclose(sig[:, 0], expected, atol=1e-5)
    assert sig[:, 1].min() == 1.0


def _few_shot_run(tiny_model_dir, tmp_path, **extra):
    from deltatune import api

    train = write_csv(tmp_path / "train.csv", make_easy_rows(16, 0))
    validation = write_csv(tmp_path / "validation.csv", make_easy_rows(16, 5))
    cfg = tiny_config(tiny_model_dir, train, validation, tmp_path / "run", num_train_epochs=1, learning_rate=1e-3)
    cfg["train"].update(method="contrastive", contrastive_iterations=2)
    for key, value in extra.items():
        section, name = key.split(".")
        cfg.setdefault(section, {})[name] = value
    return api.finetune(cfg, verbose=False), validation


@pytest.mark.parametrize("method", ["full", "lora"])
def test_few_shot_run_trains_evaluates_and_predicts_from_its_folder(tiny_model_dir, tmp_path, method):
    from deltatune import api
    from deltatune.data import load_table

    run, validation = _few_shot_run(tiny_model_dir, tmp_path, **{"delta.method": method})
    metrics = json.loads((run.path / "eval.json").read_text())["validation"]
    assert metrics["accuracy"] == run.metrics["validation"]["accuracy"]
    assert math.isfinite(metrics["loss"])
    records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r and "event" not in r and "eval_loss" not in r]
    assert losses and all(math.isfinite(v) for v in losses)
    # the evaluation during training (end of the epoch) scored a fitted head, not the zero one (loss ln 2)
    evals = [r for r in records if "eval_loss" in r]
    assert evals and abs(evals[-1]["eval_loss"] - math.log(2)) > 1e-4
    assert evals[-1]["eval_loss"] == pytest.approx(metrics["loss"], abs=1e-4)
    # 16 rows x 2 iterations x 2 pairs = 64 pairs, batch 8: 8 steps
    assert run.metrics["train"]["global_step"] == 8
    predictor = api.load(run.path, device="cpu")
    assert type(predictor.task) is ContrastiveClassificationTask
    rows = load_table(str(validation), split="validation")
    predicted = predictor.predict(list(rows["text"]))
    accuracy = np.mean([p["label"] == gold for p, gold in zip(predicted, rows["label"])])
    assert accuracy == pytest.approx(metrics["accuracy"])
    assert predicted[0]["probabilities"].keys() == {"neg", "pos"}
    # the saved head is the logistic regression of the saved encoder's embeddings of the training texts
    from sklearn.linear_model import LogisticRegression

    task, model = predictor.task, predictor.model
    train_rows = load_table(str(tmp_path / "train.csv"), split="train")
    x_train = task.embed(model, task.encode(train_rows, predictor.tokenizer))
    reference = LogisticRegression(max_iter=1000, random_state=7).fit(x_train, [task.label2id[v] for v in train_rows["label"]])
    x_val = task.embed(model, task.encode(rows, predictor.tokenizer, with_labels=False))
    got = np.array([[p["probabilities"][name] for name in task.labels] for p in predicted])
    np.testing.assert_allclose(got, reference.predict_proba(x_val), atol=1e-4)
    # the evaluation of the saved run agrees with the run's own final metrics
    again = api.evaluate(run.path, str(validation))
    assert again["accuracy"] == pytest.approx(metrics["accuracy"])
    if method == "full":
        saved = run.path / "model"
        assert (saved / "deltatune_sentence_classifier.json").is_file() and (saved / "sentence_classifier_head.safetensors").is_file()
        config = json.loads((saved / "config.json").read_text())
        assert config["id2label"] == {"0": "neg", "1": "pos"}
    else:
        assert (run.path / "model" / "adapter_config.json").is_file()


def test_few_shot_export_loads_back(tiny_model_dir, tmp_path):
    from deltatune import api
    from deltatune.tasks.fewshot.model import SentenceClassifier

    run, _ = _few_shot_run(tiny_model_dir, tmp_path, **{"delta.method": "lora"})
    out = api.export(run.path, tmp_path / "export", merge=True)
    model = SentenceClassifier.from_pretrained(out).eval()
    predictor = api.load(run.path, device="cpu")
    enc = predictor.tokenizer(["good good", "bad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = predictor.model(**enc).logits
        got = model(**enc).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_few_shot_onnx_export_serves_the_same_probabilities(tiny_model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from deltatune import api
    from deltatune.serving.onnx_backend import load_onnx

    run, _ = _few_shot_run(tiny_model_dir, tmp_path)
    out = api.export(run.path, tmp_path / "onnx", fmt="onnx")
    texts = ["good good good", "bad", "a boring film"]
    got = [r["probabilities"] for r in load_onnx(out).predict(texts)]
    want = [r["probabilities"] for r in api.load(run.path, device="cpu").predict(texts)]
    for g, w in zip(got, want):
        assert g.keys() == w.keys() and all(abs(g[k] - w[k]) < 1e-5 for k in g)
