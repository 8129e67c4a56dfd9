"""Exported PEFT adapters name their base portably."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from deltatune.cli import main
from deltatune.models import PACKAGED_MODELS, resolve_model
from deltatune.models.resolve import portable_reference
from tests.helpers import make_sentiment_rows, write_csv
from tests.serving.runs import train_tiny_run


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("export_data")
    return write_csv(d / "train.csv", make_sentiment_rows(16, 1)), write_csv(d / "validation.csv", make_sentiment_rows(8, 2))


def test_portable_reference_keeps_packaged_names_and_hub_ids(tmp_path, monkeypatch):
    assert portable_reference("minilm", resolve_model("minilm")) == "minilm"
    assert portable_reference("org/some-model", "org/some-model") == "org/some-model"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "base").mkdir(parents=True)
    # a local folder has no portable name: its absolute path is the fallback
    assert portable_reference("models/base", "models/base") == str(tmp_path / "models" / "base")
    assert PACKAGED_MODELS["minilm"].hub_id == "sentence-transformers/all-MiniLM-L6-v2"


def _export(run: Path, out: Path) -> dict:
    assert main(["export", str(run), "--format", "adapter", "--out", str(out)]) == 0
    return json.loads((out / "adapter_config.json").read_text())


def test_adapter_of_a_packaged_base_names_it_by_its_packaged_name(files, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    import deltatune

    run = train_tiny_run("minilm", files, tmp_path / "run", delta={"method": "lora"}, model={"dropout": 0.0})
    out = tmp_path / "adapter"
    cfg = _export(run, out)
    assert cfg["base_model_name_or_path"] == "minilm"
    card = (out / "README.md").read_text()
    assert "base_model: minilm" in card and "site-packages" not in card
    assert "site-packages" not in (out / "adapter_config.json").read_text()
    # another machine: deltatune resolves the packaged name to the folder; peft loads the adapter on it
    base = AutoModelForSequenceClassification.from_pretrained(resolve_model(cfg["base_model_name_or_path"]), num_labels=2)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    predictor = deltatune.load(run, device="cpu")
    batch = predictor.tokenizer(["a good film"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, predictor.model(**batch).logits)


def test_adapter_of_a_local_base_falls_back_to_its_absolute_path(tiny_model_dir, files, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    run = train_tiny_run("base", files, tmp_path / "run", delta={"method": "lora"})  # relative, as a user types it
    cfg = _export(run, tmp_path / "adapter")
    assert cfg["base_model_name_or_path"] == str(tmp_path / "base")


def test_export_refuses_before_writing(files, tiny_model_dir, tmp_path, capsys):
    run = train_tiny_run(tiny_model_dir, files, tmp_path / "run")
    assert main(["export", str(run), "--format", "adapter", "--out", str(tmp_path / "adapter")]) == 2
    assert "has no adapter" in capsys.readouterr().err
    assert not (tmp_path / "adapter").exists() and not (tmp_path / ".tmp-adapter").exists()


def test_export_never_replaces_the_runs_own_files(files, tiny_model_dir, tmp_path, capsys):
    run = train_tiny_run(tiny_model_dir, files, tmp_path / "run")
    before = sorted(p.name for p in (run / "model").iterdir())
    for out in (run / "model", run, run / "checkpoints" / "x"):
        assert main(["export", str(run), "--out", str(out), "--overwrite"]) == 2
        assert "own files" in capsys.readouterr().err
    assert sorted(p.name for p in (run / "model").iterdir()) == before


def test_adapter_export_of_a_classification_run_keeps_the_label_names(files, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from deltatune.delta.export import HEAD_CONFIG_FILE

    run = train_tiny_run(tiny_model_dir, files, tmp_path / "run", delta={"method": "lora"})
    out = tmp_path / "adapter"
    old_umask = os.umask(0o022)
    try:
        cfg = _export(run, out)
    finally:
        os.umask(old_umask)
    # every exported file gets the user's umask (issue 20), not the 0600 of a temporary file
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {p.name: 0o644 for p in out.iterdir()}
    assert not (out / "config.json").exists()  # transformers would take the folder for a full model
    head = json.loads((out / HEAD_CONFIG_FILE).read_text())
    assert head["num_labels"] == 2 and sorted(head["id2label"].values()) == ["neg", "pos"]
    assert {head["id2label"][str(i)]: i for i in range(2)} == head["label2id"]
    assert HEAD_CONFIG_FILE in (out / "README.md").read_text()
    # as the model card says: pass the head configuration when loading the base, then the adapter
    head["id2label"] = {int(i): name for i, name in head["id2label"].items()}
    config = AutoConfig.from_pretrained(cfg["base_model_name_or_path"])
    config.update(head)
    base = AutoModelForSequenceClassification.from_pretrained(cfg["base_model_name_or_path"], config=config)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    import deltatune

    predictor = deltatune.load(run, device="cpu")
    assert model.config.id2label == predictor.model.config.id2label
    batch = predictor.tokenizer(["a good film"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, predictor.model(**batch).logits)
