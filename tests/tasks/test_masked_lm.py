"""Masked-LM: masking statistics, whole-word masking, fixed evaluation masks, training, reuse of the encoder."""

from __future__ import annotations

import json
import random

import datasets
import numpy as np
import pytest
import torch

from deltatune.config import build_config
from deltatune.models import resolve_model
from deltatune.tasks.masked_lm import IGNORE_INDEX, MaskedLMTask, continuation_table, mask_tokens, masked_logits

WORDS = (
    "the model learns representations of scientific text with attention layers and we evaluate "
    "hyperparameterization regularization tokenization unbelievably transformers convolutional "
    "embeddings gradient descent converges quickly on benchmarks"
).split()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model("minilm"))


def _texts(n: int, seed: int = 0, length: tuple[int, int] = (20, 60)) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*length))) + "." for _ in range(n)]


def _task(tokenizer, **data) -> MaskedLMTask:
    t = MaskedLMTask(build_config({"task": "masked-lm", "seed": 3, "data": {"max_seq_length": 64, **data}}))
    t.set_tokenizer(tokenizer)
    return t


def _features(task, tokenizer, n=40, seed=0):
    return task.encode(datasets.Dataset.from_dict({"text": _texts(n, seed)}), tokenizer)


def test_blocks_pack_documents_with_cls_and_sep(tokenizer):
    t = _task(tokenizer, max_seq_length=16)
    f = t.encode(datasets.Dataset.from_dict({"text": ["a b c", "d e f g h i j k l m n o p q r s"]}), tokenizer)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert all(r["input_ids"][0] == cls and r["input_ids"][-1] == sep for r in f.rows)
    assert f.lengths[0] == 16 and max(f.lengths) == 16
    # the documents follow each other with [SEP] between them, and every token is kept
    flat = [i for r in f.rows for i in r["input_ids"][1:-1]]
    words = tokenizer.convert_ids_to_tokens([i for i in flat if i != sep])
    assert words == list("abcdefghijklmnopqrs") and flat[3] == sep
    assert len({r["mask_seed"] for r in f.rows}) == len(f)


def test_masking_statistics_follow_bert(tokenizer):
    t = _task(tokenizer, max_seq_length=128)
    f = _features(t, tokenizer, n=400)
    torch.manual_seed(0)
    batch = t.collate(f.rows, fixed_masks=False)
    original = torch.tensor(
        [[r["input_ids"][i] if i < len(r["input_ids"]) else tokenizer.pad_token_id for i in range(batch["input_ids"].shape[1])] for r in f.rows]
    )
    real = batch["attention_mask"].bool()
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids)) | ~real
    selected = batch["labels"] != IGNORE_INDEX
    n_tokens = int((~special).sum())
    assert n_tokens > 20000
    assert not (selected & special).any()  # [CLS], [SEP] and padding are never masked
    assert torch.equal(batch["labels"][selected], original[selected])  # labels hold the original ids...
    assert (batch["labels"][~selected] == IGNORE_INDEX).all()  # ...and -100 elsewhere
    assert torch.equal(batch["input_ids"][~selected], original[~selected])  # unselected tokens untouched
    share = int(selected.sum()) / n_tokens
    assert share == pytest.approx(0.15, abs=0.01)
    n_sel = int(selected.sum())
    to_mask = int((batch["input_ids"][selected] == tokenizer.mask_token_id).sum()) / n_sel
    kept = int((batch["input_ids"][selected] == original[selected]).sum()) / n_sel
    randomised = 1 - to_mask - kept
    assert to_mask == pytest.approx(0.8, abs=0.03)
    assert kept == pytest.approx(0.1, abs=0.02) and randomised == pytest.approx(0.1, abs=0.02)
    assert int(t.num_targets(batch)) == n_sel


def test_whole_word_masking_masks_all_subwords_together(tokenizer):
    text = "hyperparameterization of unbelievably convolutional tokenization embeddings"
    enc = tokenizer(text)
    ids = torch.tensor(enc["input_ids"])
    word_ids = enc.word_ids()
    pieces = {w: [i for i, x in enumerate(word_ids) if x == w] for w in set(word_ids) if w is not None}
    assert max(len(p) for p in pieces.values()) >= 3  # the test text has multi-subword words
    cont = continuation_table(tokenizer)[ids]
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    partial_seen = whole_seen = 0
    for seed in range(300):
        gen = torch.Generator().manual_seed(seed)
        _, labels = mask_tokens(ids, special, 0.3, tokenizer.mask_token_id, len(tokenizer), cont, gen)
        sel = (labels != IGNORE_INDEX).tolist()
        for positions in pieces.values():
            states = {sel[i] for i in positions}
            assert len(states) == 1, f"word split by masking: {[tokenizer.convert_ids_to_tokens(int(ids[i])) for i in positions]}"
            whole_seen += len(positions) > 1 and sel[positions[0]]
        # without whole-word masking the same words do get split sometimes (so the check above can fail)
        _, labels = mask_tokens(ids, special, 0.3, tokenizer.mask_token_id, len(tokenizer), None, gen)
        sel = (labels != IGNORE_INDEX).tolist()
        partial_seen += any(len({sel[i] for i in p}) > 1 for p in pieces.values())
    assert whole_seen > 50 and partial_seen > 50
    # the selection rate per word is the probability asked for
    t = _task(tokenizer, whole_word_masking=True, max_seq_length=128)
    f = _features(t, tokenizer, n=200)
    torch.manual_seed(1)
    b = t.collate(f.rows, fixed_masks=False)
    real = b["attention_mask"].bool() & ~torch.isin(b["input_ids"], torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id]))
    share = int((b["labels"] != IGNORE_INDEX).sum()) / int(real.sum())
    assert share == pytest.approx(0.15, abs=0.02)


def test_evaluation_masks_are_fixed_and_training_masks_vary(tokenizer):
    t = _task(tokenizer)
    f = _features(t, tokenizer, n=30)
    rows = f.rows[:6]
    with torch.no_grad():  # how the trainer and predictor evaluate
        a = t.collate(rows)
        b = t.collate(rows[::-1])  # another batch composition and order
        c = t.collate(rows[:2])
    assert torch.equal(a["labels"], b["labels"].flip(0)) and torch.equal(a["input_ids"], b["input_ids"].flip(0))
    assert torch.equal(a["labels"][:2, : c["labels"].shape[1]], c["labels"])
    # training collation draws new masks each time, reproducibly from the seeded global generator
    torch.manual_seed(5)
    d = t.collate(rows)
    e = t.collate(rows)
    torch.manual_seed(5)
    d2 = t.collate(rows)
    assert not torch.equal(d["labels"], e["labels"]) and torch.equal(d["labels"], d2["labels"])
    assert not torch.equal(d["labels"], a["labels"])
    # the fixed masks depend on the run seed
    other = MaskedLMTask(build_config({"task": "masked-lm", "seed": 4, "data": {"max_seq_length": 64}}))
    other.set_tokenizer(tokenizer)
    g = other.encode(datasets.Dataset.from_dict({"text": _texts(30, 0)}), tokenizer)
    with torch.no_grad():
        assert not torch.equal(other.collate(g.rows[:6])["labels"], a["labels"])


def test_masked_positions_only_head_equals_full_logits(tokenizer, tiny_model_dir):
    t = _task(tokenizer)
    model = t.build_model(tiny_model_dir, {}).eval()
    assert t.new_parameter_names >= {"cls.predictions.transform.dense.weight", "cls.predictions.bias"}
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight  # tied
    f = _features(t, tokenizer, n=10)
    with torch.no_grad():
        batch = t.collate(f.rows[:4])
        pos = batch["labels"] != IGNORE_INDEX
        fast = masked_logits(model, batch, pos)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[pos]
        assert torch.allclose(fast, full, atol=1e-5)
        out = t.eval_step(model, batch)
        total, n = t.loss(model, batch)
    assert int(out["masked_tokens"].sum()) == int(pos.sum()) == int(n)
    assert out["loss_sum"].sum() == pytest.approx(float(total), rel=1e-5)
    m = t.compute_metrics(out)
    assert m["perplexity"] == pytest.approx(np.exp(m["loss"])) and 0 <= m["accuracy"] <= 1


def _mlm_config(tmp_path, model_dir, name="mlm", **delta):
    train = tmp_path / f"{name}_train.txt"
    dev = tmp_path / f"{name}_dev.txt"
    train.write_text("\n\n".join(_texts(120, 1, (8, 20))))
    dev.write_text("\n\n".join(_texts(20, 2, (8, 20))))
    return {
        "task": "masked-lm",
        "output_dir": str(tmp_path / name),
        "seed": 11,
        "model": {"name_or_path": model_dir, "dropout": 0.0},
        "data": {"train_file": str(train), "validation_file": str(dev), "max_seq_length": 32},
        "train": {"per_device_train_batch_size": 8, "learning_rate": 1e-2, "num_train_epochs": 4, "logging_steps": 5, "progress_bar": False},
        "delta": delta or {"method": "full"},
    }


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory, tiny_model_dir):
    import deltatune

    tmp = tmp_path_factory.mktemp("mlm")
    return deltatune.finetune(_mlm_config(tmp, tiny_model_dir), verbose=False)


def test_loss_falls_on_tiny_model_and_evaluation_is_reproducible(mlm_run, tiny_model_dir):
    import deltatune

    log = [json.loads(x) for x in (mlm_run.path / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in log if "loss" in r and "eval_loss" not in r]
    assert train_losses[-1] < 0.5 * train_losses[0]  # from ~ln(30522) = 10.3 towards the words' unigram entropy
    m = mlm_run.metrics["validation"]
    # random word sequences: the best a model can do is guess frequent subwords of the 27 words
    assert m["masked_tokens"] > 50 and m["loss"] < 5.0 and m["accuracy"] > 0.05
    # reloaded, the same fixed masks give the same numbers
    pred = deltatune.load(mlm_run.path)
    dev = datasets.Dataset.from_dict({"text": (mlm_run.path.parent / "mlm_dev.txt").read_text().split("\n\n")})
    again = pred.metrics(dev)
    assert again["masked_tokens"] == m["masked_tokens"] and again["loss"] == pytest.approx(m["loss"], rel=1e-4)
    # prediction fills the user's [MASK] tokens
    out = pred.predict(["the model learns [MASK] of scientific text"])
    assert len(out[0]["masks"]) == 1 and len(out[0]["masks"][0]["predictions"]) == 5
    assert "[MASK]" not in out[0]["filled"]


def test_text_classification_starts_from_the_adapted_encoder(mlm_run, tiny_model_dir, tmp_path, sentiment_csv):
    import deltatune
    from transformers import AutoModelForMaskedLM

    from deltatune.tasks import ClassificationTask

    adapted = AutoModelForMaskedLM.from_pretrained(resolve_model(str(mlm_run.path)))
    clf_task = ClassificationTask(build_config({"model": {"name_or_path": str(mlm_run.path)}}), ["neg", "pos"], False)
    clf = clf_task.build_model(resolve_model(str(mlm_run.path)), {})
    base = AutoModelForMaskedLM.from_pretrained(tiny_model_dir)
    enc_adapted = {n: p for n, p in adapted.bert.named_parameters()}
    enc_clf = dict(clf.bert.named_parameters())
    enc_base = dict(base.bert.named_parameters())
    assert set(enc_adapted) <= set(enc_clf)
    assert all(torch.equal(enc_clf[n], p) for n, p in enc_adapted.items())
    assert not all(torch.equal(enc_base[n], p) for n, p in enc_adapted.items())  # training changed the encoder
    # only the classifier head (and the pooler, absent from an MLM model) are new
    assert {n.split(".")[0] for n in clf_task.new_parameter_names} <= {"classifier", "bert"}
    assert all(n.startswith(("classifier", "bert.pooler")) for n in clf_task.new_parameter_names)
    # and a run starts from the MLM run directory
    from tests.helpers import tiny_config

    train, dev = sentiment_csv
    run = deltatune.finetune(tiny_config(str(mlm_run.path), train, dev, tmp_path / "clf", num_train_epochs=1), verbose=False)
    assert 0 <= run.metrics["validation"]["accuracy"] <= 1


def test_lora_trains_and_saves_the_fresh_head(tmp_path, tiny_model_dir):
    import deltatune

    run = deltatune.finetune(_mlm_config(tmp_path, tiny_model_dir, name="lora", method="lora"), verbose=False)
    assert (run.path / "model" / "adapter_config.json").is_file()
    cfg = json.loads((run.path / "model" / "adapter_config.json").read_text())
    assert sorted(cfg["modules_to_save"]) == ["cls.predictions.transform.LayerNorm", "cls.predictions.transform.dense"]
    assert cfg["task_type"] is None
    pred = deltatune.load(run.path)
    dev = datasets.Dataset.from_dict({"text": (tmp_path / "lora_dev.txt").read_text().split("\n\n")})
    m = pred.metrics(dev)
    # the reloaded adapter + head reproduce the run's numbers (a fresh random head would not)
    assert m["loss"] == pytest.approx(run.metrics["validation"]["loss"], rel=1e-4)
    assert run.metrics["train"]["trainable_parameters"] < run.metrics["train"]["total_parameters"] / 5
