"""Knowledge distillation (deltatune.tasks.distill): the loss formulas against hand-computed values,
then teacher -> student runs on tiny random models (classification, NER across tokenizers, decoder),
the teacher-output cache on resume, and the refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import deltatune
from deltatune.errors import DeltatuneError
from deltatune.tasks.distill.losses import mix, sigmoid_kl, softmax_kl
from deltatune.tasks.distill.teacher import CACHE_NAME, load_targets, response_positions, save_targets
from tests.helpers import make_easy_rows, tiny_config, write_csv

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- formulas --------------------------------------------------------------------------------
def test_softmax_kl_with_temperature_is_the_hand_computed_value():
    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    T = 2.0
    p = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()  # softmax(t / T)
    q = np.exp([0.5, 0.0]) / np.exp([0.5, 0.0]).sum()  # softmax(s / T)
    expected = float((p * np.log(p / q)).sum())
    assert softmax_kl(s, t, T).item() == pytest.approx(expected, rel=1e-6)
    assert softmax_kl(t, t, T).item() == pytest.approx(0.0, abs=1e-7)
    assert softmax_kl(s, t, 1.0).item() != pytest.approx(expected, rel=1e-3)  # the temperature matters


def test_sigmoid_kl_is_the_bernoulli_kl_averaged_over_labels():
    s, t, T = torch.tensor([[0.0, 3.0]]), torch.tensor([[2.0, -1.0]]), 2.0
    a, b = 1 / (1 + np.exp(-np.array([1.0, -0.5]))), 1 / (1 + np.exp(-np.array([0.0, 1.5])))
    kl = a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))
    assert sigmoid_kl(s, t, T).item() == pytest.approx(float(kl.mean()), rel=1e-5)


def test_mix_scales_the_kl_by_t_squared_and_weighs_by_alpha():
    assert mix(torch.tensor(2.0), torch.tensor(0.5), 0.25, 3.0).item() == pytest.approx(0.25 * 9 * 0.5 + 0.75 * 2.0)
    assert mix(torch.tensor(2.0), torch.tensor(0.5), 0.0, 3.0).item() == pytest.approx(2.0)  # hard loss only
    assert mix(torch.tensor(2.0), torch.tensor(0.5), 1.0, 1.0).item() == pytest.approx(0.5)  # KL only


def test_response_positions_are_the_positions_predicting_trained_tokens():
    # labels: prompt (-100) x3, response 7, 8, then padding -100; logits at t predict token t+1
    assert response_positions([-100, -100, -100, 7, 8, -100]) == [2, 3]


def test_token_distillation_masks_the_prompt_tokens(tiny_llama_dir, tmp_path):
    from deltatune.config import build_config
    from deltatune.tasks import create_task
    from deltatune.tasks.distill.task import distilled_task

    cfg = build_config({"task": "instruction", "model": {"name_or_path": tiny_llama_dir}, "distill": {"teacher": str(tmp_path / "t")},
                        "output_dir": str(tmp_path / "s")})
    task = distilled_task(create_task(cfg), lambda root: None)
    vocab = 11
    logits = torch.randn(1, 5, vocab)
    labels = torch.tensor([[-100, -100, 3, 4, -100]])  # trained: tokens 2 and 3, predicted at positions 1 and 2
    teacher = torch.randn(2, vocab)

    class Model(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return type("Out", (), {"logits": logits})()

    batch = {"input_ids": torch.zeros(1, 5, dtype=torch.long), "attention_mask": torch.ones(1, 5, dtype=torch.long),
             "labels": labels, "teacher_logits": teacher}
    total, n = task.loss(Model(), batch)
    T, a = cfg.distill.temperature, cfg.distill.alpha
    kl = softmax_kl(logits[0, 1:3], teacher, T).sum()
    ce = torch.nn.functional.cross_entropy(logits[0, 1:3], labels[0, 2:4], reduction="sum")
    assert int(n) == 2 and total.item() == pytest.approx((a * T * T * kl + (1 - a) * ce).item(), rel=1e-5)


class _Logits(torch.nn.Module):
    """A model whose forward returns fixed logits."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return type("Out", (), {"logits": self.logits})()


@pytest.mark.parametrize("multi_label", [False, True])
def test_sequence_distillation_mixes_the_terms_and_gives_unlabelled_rows_the_kl_only(tiny_model_dir, tmp_path, multi_label):
    from deltatune.config import build_config
    from deltatune.tasks import create_task
    from deltatune.tasks.distill.task import distilled_task

    cfg = build_config({"model": {"name_or_path": tiny_model_dir}, "output_dir": str(tmp_path / "s"),
                        "distill": {"teacher": str(tmp_path / "t"), "temperature": 3.0, "alpha": 0.25}})
    task = distilled_task(create_task(cfg), lambda root: None)
    task.labels, task.multi_label = ["a", "b", "c"], multi_label
    student, teacher = torch.randn(2, 3), torch.randn(2, 3)
    hard_labels = [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]] if multi_label else [2, 0]
    rows = [{"input_ids": [1, 5, 2], "attention_mask": [1, 1, 1], "labels": hard_labels[0], "distill_labelled": 1, "teacher_logits": teacher[0].numpy()},
            {"input_ids": [1, 6, 7, 2], "attention_mask": [1, 1, 1, 1], "distill_labelled": 0, "teacher_logits": teacher[1].numpy()}]
    total, n = task.loss(_Logits(student), task.collate(rows))
    if multi_label:
        kl = sigmoid_kl(student, teacher, 3.0)
        hard0 = torch.nn.functional.binary_cross_entropy_with_logits(student[0], torch.tensor(hard_labels[0]))
    else:
        kl = softmax_kl(student, teacher, 3.0)
        hard0 = torch.nn.functional.cross_entropy(student[:1], torch.tensor([2]))
    expected = 0.25 * 9 * kl.sum() + 0.75 * hard0  # the unlabelled second row: KL only
    assert int(n) == 2 and total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert task.pop_train_metrics()["distill_kl"] == pytest.approx(kl.mean().item(), rel=1e-5)


def test_targets_cache_round_trips_and_refuses_another_fingerprint(tmp_path):
    targets = [np.arange(6, dtype=np.float32).reshape(3, 2), np.zeros((0, 2), np.float32), np.ones((1, 2), np.float32)]
    save_targets(tmp_path / CACHE_NAME, targets, "abc")
    back = load_targets(tmp_path / CACHE_NAME, "abc")
    assert [b.shape for b in back] == [(3, 2), (0,), (1, 2)] and np.array_equal(back[0], targets[0])
    assert load_targets(tmp_path / CACHE_NAME, "other") is None
    vectors = [np.array([1.0, 2.0], np.float32), np.array([3.0, 4.0], np.float32)]
    save_targets(tmp_path / "v.safetensors", vectors, "k")
    assert [b.tolist() for b in load_targets(tmp_path / "v.safetensors", "k")] == [[1.0, 2.0], [3.0, 4.0]]


# ---- classification ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_bert_dir(tmp_path_factory, tiny_model_dir) -> str:
    """A smaller random BERT (1 layer, 16 wide) with the same tokenizer as ``tiny_model_dir``: the student."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("small_bert")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=128, initializer_range=0.2)
    torch.manual_seed(1)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def sentiment_files(tmp_path_factory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("distill_data")
    unlabeled = [{"text": r["text"]} for r in make_easy_rows(24, 5)]
    return (write_csv(d / "train.csv", make_easy_rows(48, 1)), write_csv(d / "dev.csv", make_easy_rows(16, 2)),
            write_csv(d / "unlabeled.csv", unlabeled))


@pytest.fixture(scope="module")
def teacher_run(tiny_model_dir, sentiment_files, tmp_path_factory) -> Path:
    train, dev, _ = sentiment_files
    out = tmp_path_factory.mktemp("teacher") / "run"
    run = deltatune.finetune(tiny_config(tiny_model_dir, train, dev, out, num_train_epochs=3), verbose=False)
    assert run.metrics["validation"]["accuracy"] >= 0.5
    return run.path


def _student(model_dir, teacher, train, dev, out, **distill) -> dict:
    cfg = tiny_config(model_dir, train, dev, out, num_train_epochs=2)
    cfg["distill"] = {"teacher": str(teacher), **distill}
    return cfg


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_classification_student_learns_from_the_teacher_and_the_cache_is_kept(small_bert_dir, teacher_run, sentiment_files, tmp_path):
    train, dev, unlabeled = sentiment_files
    cfg = _student(small_bert_dir, teacher_run, train, dev, tmp_path / "student", unlabeled_file=str(unlabeled), temperature=3.0)
    run = deltatune.finetune(cfg, verbose=False)
    assert (run.path / "eval.json").is_file() and math.isfinite(run.metrics["validation"]["accuracy"])
    trained = [r for r in _records(run.path) if "distill_kl" in r]
    assert trained and all(r["distill_kl"] >= 0 and r["hard_loss"] > 0 for r in trained)
    # the teacher labelled the 48 - 0 training rows and the 24 unlabelled ones once; the cache holds them
    cached = load_targets(run.path / CACHE_NAME, _fingerprint_of(run.path))
    assert cached is not None and len(cached) == 48 + 24 and cached[0].shape == (2,)
    # the student's soft targets are the teacher's probabilities: the teacher's predictions agree
    teacher = deltatune.load(teacher_run)
    from datasets import Dataset
    import csv

    rows = list(csv.DictReader(open(train)))[:4]
    probs = [p["probabilities"] for p in teacher.predict_rows(Dataset.from_list([{"text": r["text"]} for r in rows]), "t")]
    for p, logits in zip(probs, cached[:4]):
        soft = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert soft == pytest.approx([p[name] for name in teacher.task.labels], abs=1e-4)
    # a distilled run loads and predicts like any other
    assert deltatune.load(run.path).predict(["great great"])[0]["label"] in ("neg", "pos")


def _fingerprint_of(run: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(run / CACHE_NAME), framework="numpy") as f:
        return f.metadata()["fingerprint"]


def test_a_resumed_student_reads_the_teacher_outputs_from_its_run_folder(small_bert_dir, teacher_run, sentiment_files, tmp_path, monkeypatch):
    train, dev, _ = sentiment_files
    cfg = _student(small_bert_dir, teacher_run, train, dev, tmp_path / "student")
    cfg["train"].update(num_train_epochs=1, max_steps=4, save_steps=2)

    def stop_after_two(trainer, state):
        if state.global_step == 2:
            raise KeyboardInterrupt

    first = deltatune.finetune(cfg, verbose=False, callbacks=(stop_after_two,))
    assert first.result.interrupted and (first.path / CACHE_NAME).is_file()
    stamp = (first.path / CACHE_NAME).stat().st_mtime_ns

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded again on resume")

    monkeypatch.setattr(deltatune.api, "load", no_teacher)
    resumed = deltatune.finetune(first.path, resume=True, verbose=False)
    assert resumed.result.global_step == 4 and (first.path / CACHE_NAME).stat().st_mtime_ns == stamp


def test_a_teacher_with_other_labels_or_another_task_is_refused(small_bert_dir, teacher_run, tmp_path):
    rows = [{"text": r["text"], "label": {"neg": "bad", "pos": "good"}[r["label"]]} for r in make_easy_rows(16, 3)]
    train = write_csv(tmp_path / "other.csv", rows)
    with pytest.raises(DeltatuneError, match="label sets must be the same"):
        deltatune.finetune(_student(small_bert_dir, teacher_run, train, None, tmp_path / "s1"), verbose=False)
    assert not (tmp_path / "s1").exists()  # refused before the run folder is made
    reg = write_csv(tmp_path / "reg.csv", [{"text": r["text"], "label": float(i)} for i, r in enumerate(rows)])
    cfg = _student(small_bert_dir, teacher_run, reg, None, tmp_path / "s2")
    cfg["task"] = "text-regression"
    with pytest.raises(DeltatuneError, match="supports the tasks text-classification, token-classification"):
        deltatune.finetune(cfg, verbose=False)
    with pytest.raises(DeltatuneError, match="not a finished deltatune run"):
        deltatune.finetune(_student(small_bert_dir, tmp_path / "nowhere", train, None, tmp_path / "s3"), verbose=False)


# ---- decoder -----------------------------------------------------------------------------------
def _tiny_llama(tmp_path_factory, tokenizer_dir: str, name: str, hidden: int, extra_token: bool = False) -> str:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp(name)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if extra_token:
        tok.add_tokens(["<not-in-the-teacher>"])
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                      intermediate_size=2 * hidden, max_position_embeddings=256, initializer_range=0.2,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(2)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_a_decoder_student_distils_the_response_tokens_and_refuses_another_vocabulary(tiny_llama_dir, tmp_path_factory, tmp_path):
    rows = [{"prompt": f"What is {i} plus one?", "completion": f"It is {i + 1}."} for i in range(12)]
    train = tmp_path / "sft.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"task": "instruction", "seed": 3, "data": {"train_file": str(train), "max_seq_length": 64},
            "train": {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1,
                      "progress_bar": False}, "eval": {"generation_max_samples": 2, "max_new_tokens": 4, "compare_generations": 0}}
    teacher = deltatune.finetune({**base, "model": {"name_or_path": tiny_llama_dir}, "output_dir": str(tmp_path / "teacher")}, verbose=False)
    student_dir = _tiny_llama(tmp_path_factory, tiny_llama_dir, "small_llama", 16)
    run = deltatune.finetune({**base, "model": {"name_or_path": student_dir}, "output_dir": str(tmp_path / "student"),
                              "distill": {"teacher": str(teacher.path), "alpha": 0.7}}, verbose=False)
    trained = [r for r in _records(run.path) if "distill_kl" in r]
    assert trained and all(r["distill_kl"] > 0 for r in trained)
    cached = load_targets(run.path / CACHE_NAME, _fingerprint_of(run.path))
    # one (response tokens, vocabulary) array per training example (one of the 12 rows is the validation split)
    assert len(cached) == len(rows) - 1 and all(c.ndim == 2 and c.shape[1] >= 49152 for c in cached)
    other = _tiny_llama(tmp_path_factory, tiny_llama_dir, "other_vocab_llama", 16, extra_token=True)
    with pytest.raises(DeltatuneError, match="another vocabulary"):
        deltatune.finetune({**base, "model": {"name_or_path": other}, "output_dir": str(tmp_path / "s2"),
                            "distill": {"teacher": str(teacher.path)}}, verbose=False)


# ---- token classification across tokenizers ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_mpnet_dir(tmp_path_factory) -> str:
    """A 1-layer, 16-wide random MPNet with the packaged all-mpnet-base-v2's tokenizer (not MiniLM's)."""
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    from deltatune.models import resolve_model

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model("mpnet"))
    except DeltatuneError as e:
        pytest.skip(f"mpnet not installed: {e}")
    out = tmp_path_factory.mktemp("tiny_mpnet")
    cfg = MPNetConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                      max_position_embeddings=130, initializer_range=0.2, pad_token_id=tok.pad_token_id)
    torch.manual_seed(4)
    MPNetModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_an_ner_student_with_another_tokenizer_is_distilled_word_by_word(tiny_model_dir, tiny_mpnet_dir, tmp_path):
    words = [(["Paris", "is", "nice"], ["B-LOC", "O", "O"]), (["see", "John", "Smithsonian", "today"], ["O", "B-PER", "I-PER", "O"])]
    rows = [{"tokens": w, "tags": t} for w, t in words * 6]
    train = tmp_path / "ner.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    unlabeled = tmp_path / "more.jsonl"
    unlabeled.write_text(json.dumps({"tokens": ["John", "is", "in", "Paris"]}) + "\n")
    base = {"task": "token-classification", "seed": 5, "data": {"train_file": str(train), "max_seq_length": 32},
            "train": {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1, "progress_bar": False}}
    teacher = deltatune.finetune({**base, "model": {"name_or_path": tiny_model_dir}, "output_dir": str(tmp_path / "t")}, verbose=False)
    run = deltatune.finetune({**base, "model": {"name_or_path": tiny_mpnet_dir}, "output_dir": str(tmp_path / "s"),
                              "distill": {"teacher": str(teacher.path), "unlabeled_file": str(unlabeled)}}, verbose=False)
    assert math.isfinite(run.metrics["validation"]["f1"])
    cached = load_targets(run.path / CACHE_NAME, _fingerprint_of(run.path))
    n_labels = len(deltatune.load(teacher.path).task.labels)
    # one (words, labels) array per training row (MiniLM splits "Smithsonian" into several subwords: still one row)
    train_rows = len(rows) - 1  # one row carved out for validation
    assert len(cached) == train_rows + 1 and {c.shape for c in cached} <= {(3, n_labels), (4, n_labels)}
    assert all(r["distill_kl"] >= 0 for r in _records(run.path) if "distill_kl" in r)
