"""Every Δθ method trains, stores only its delta, reloads, merges and resumes."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import deltatune
from deltatune.delta import parameter_summary
from deltatune.serving.export import export_run
from deltatune.errors import DeltatuneError
from tests.helpers import make_easy_rows, tiny_config, write_csv

METHOD_LR = {"full": 1e-3, "freeze": 1e-3, "lora": 1e-2, "dora": 1e-2, "ia3": 3e-2}


@pytest.fixture
def easy_csv(tmp_path):
    return write_csv(tmp_path / "easy_train.csv", make_easy_rows(96, 1)), write_csv(tmp_path / "easy_val.csv", make_easy_rows(32, 2))


def _run(tiny_model_dir, csvs, out, method, **delta):
    train, val = csvs
    cfg = tiny_config(tiny_model_dir, train, val, out, num_train_epochs=4, learning_rate=METHOD_LR[method])
    cfg["delta"] = {"method": method, **delta}
    return deltatune.finetune(cfg, verbose=False)


def _losses(run):
    return [r["loss"] for r in map(json.loads, (run.path / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("method", ["full", "freeze", "lora", "dora", "ia3"])
def test_each_method_trains_and_reloads(tiny_model_dir, easy_csv, tmp_path, method):
    sentiment_csv = easy_csv
    run = _run(tiny_model_dir, easy_csv, tmp_path / method, method, **({"train_layers": 1} if method == "freeze" else {}))
    losses = _losses(run)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.7 * first, (method, first, last)
    t = run.metrics["train"]
    if method == "full":
        assert t["trainable_parameters"] == t["total_parameters"]
    else:
        assert t["trainable_parameters"] < 0.5 * t["total_parameters"]
        assert (run.path / "model" / "deltatune_delta.json").is_file()
    # what was saved reloads to the same predictions as the trained model
    predictor = deltatune.load(run.path)
    again = deltatune.evaluate(run.path, str(sentiment_csv[1]))
    assert again["loss"] == pytest.approx(run.metrics["validation"]["loss"], abs=1e-5)
    assert predictor.predict(["a great film"])[0]["label"] in ("neg", "pos")


def test_prefix_tuning_on_an_encoder_classifier_is_refused_clearly(tiny_model_dir, easy_csv, tmp_path):
    with pytest.raises(DeltatuneError, match="use lora, dora or ia3"):
        deltatune.finetune(
            {**tiny_config(tiny_model_dir, *easy_csv, tmp_path / "p"), "delta": {"method": "prefix"}}, verbose=False
        )
    assert not (tmp_path / "p").exists()


def test_freeze_trains_only_top_layers_and_head(tiny_model_dir, sentiment_csv, tmp_path):
    from deltatune.config import DeltaConfig
    from deltatune.delta import apply_delta

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    apply_delta(model, DeltaConfig(method="freeze", train_layers=1), "SEQ_CLS")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("bert.encoder.layer.1.", "bert.pooler.", "classifier.")) for n in trainable)
    assert "classifier.weight" in trainable and "bert.encoder.layer.1.output.dense.weight" in trainable
    assert parameter_summary(model)["trainable"] < parameter_summary(model)["total"]


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    base = tmp / "base"
    shutil.copytree(tiny_model_dir, base)  # a private base copy the hash test may alter
    csvs = (write_csv(tmp / "train.csv", make_easy_rows(96, 1)), write_csv(tmp / "val.csv", make_easy_rows(32, 2)))
    run = _run(str(base), csvs, tmp / "run", "lora", lora_r=4)
    return run, base, tmp


def test_merged_export_equals_adapter_on_base(lora_run):
    run, base, tmp = lora_run
    texts = ["a great and lovely film", "the plot was dull", "really bad"]
    predictor = deltatune.load(run.path)
    tok = AutoTokenizer.from_pretrained(run.path / "model")
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        adapter_logits = predictor.model(**batch).logits
    out = export_run(run.path, tmp / "merged", merge=True)
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        merged_logits = merged(**batch).logits
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-4, rtol=0)
    assert not torch.allclose(adapter_logits[:, 0], adapter_logits[:, 1])  # a real, non-trivial head


def test_adapter_export_loads_with_plain_peft(lora_run):
    from peft import PeftModel

    run, base, tmp = lora_run
    out = export_run(run.path, tmp / "adapter", fmt="adapter")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    predictor = deltatune.load(run.path)
    labels = predictor.task.labels
    base_model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)}
    )
    peft_model = PeftModel.from_pretrained(base_model, out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    batch = tok(["a great film"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, predictor.model(**batch).logits, atol=1e-5, rtol=0)
    # the saved delta is tiny next to the model
    adapter_bytes = (out / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes < 0.1 * (base / "model.safetensors").stat().st_size
    with pytest.raises(DeltatuneError, match="already exists"):
        export_run(run.path, out, fmt="adapter")


def test_base_hash_check_refuses_a_different_base(lora_run):
    run, base, tmp = lora_run
    weights = base / "model.safetensors"
    original = weights.read_bytes()
    state = load_file(str(weights))
    key = next(iter(state))
    state[key] = state[key] + 0.01
    save_file(state, str(weights), metadata={"format": "pt"})
    try:
        with pytest.raises(DeltatuneError, match="not the one this delta was trained on"):
            deltatune.load(run.path)
    finally:
        weights.write_bytes(original)
    deltatune.load(run.path)  # the original base loads again


def test_adapter_run_resumes_to_the_same_final_loss(tiny_model_dir, sentiment_csv, tmp_path):
    def cfg(out):
        train, val = sentiment_csv
        c = tiny_config(tiny_model_dir, train, val, out, num_train_epochs=3, save_steps=2, learning_rate=1e-2)
        c["delta"] = {"method": "lora", "lora_r": 4, "lora_dropout": 0.1}
        return c

    full = deltatune.finetune(cfg(tmp_path / "full"), verbose=False)

    def stop(trainer, state):
        if state.global_step == 5:
            raise KeyboardInterrupt

    cut = deltatune.finetune(cfg(tmp_path / "cut"), callbacks=(stop,), verbose=False)
    assert cut.result.interrupted
    resumed = deltatune.finetune(tmp_path / "cut", resume=True, verbose=False)
    assert _losses(full)[-1] == pytest.approx(_losses(resumed)[-1], abs=1e-6)
    a = load_file(str(full.path / "model" / "adapter_model.safetensors"))
    b = load_file(str(resumed.path / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any("lora_A" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
