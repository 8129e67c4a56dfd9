"""Packing: first-fit decreasing, boundaries, and no attention across packed examples."""

import json
import random

import pytest
import torch

from deltatune import finetune
from deltatune.config import RunConfig
from deltatune.errors import DeltatuneError
from deltatune.tasks import create_task
from deltatune.tasks.base import Features
from deltatune.training.packing import first_fit_decreasing, pack_features, pack_rows, pack_training_features


def _naive_ffd(lengths, capacity):
    bins, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, f in enumerate(free):
            if lengths[i] <= f:
                bins[b].append(i)
                free[b] -= lengths[i]
                break
        else:
            bins.append([i])
            free.append(max(capacity - lengths[i], 0))
    return bins


def test_first_fit_decreasing_matches_the_definition():
    rng = random.Random(0)
    for n, cap in ((0, 8), (1, 8), (37, 16), (500, 64), (200, 1024)):
        lengths = [rng.randint(1, cap) for _ in range(n)]
        bins = first_fit_decreasing(lengths, cap)
        assert bins == _naive_ffd(lengths, cap)
        assert sorted(i for b in bins for i in b) == list(range(n))
        assert all(sum(lengths[i] for i in b) <= cap for b in bins)
    # the textbook example: sizes 5,4,3,3,2,2,1 into bins of 7 -> {5,2}, {4,3}, {3,2,1}
    assert first_fit_decreasing([5, 4, 3, 3, 2, 2, 1], 7) == [[0, 4], [1, 2], [3, 5, 6]]


def test_oversized_item_gets_its_own_bin():
    assert first_fit_decreasing([10, 3, 2], 4) == [[0], [1], [2]]


def test_packed_row_restarts_positions_and_masks_each_first_token():
    rows = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4, 5], "labels": [-100, 5]}]
    (p,) = pack_rows(rows, [[0, 1]])
    assert p == {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, 2, 3, -100, 5], "position_ids": [0, 1, 2, 0, 1]}


def test_pack_features_needs_decoder_rows():
    with pytest.raises(DeltatuneError, match="input_ids and labels"):
        pack_features(Features([{"input_ids": [1, 2]}], [2]), 8)


def test_encoder_task_refuses_packing():
    task = create_task(RunConfig(task="text-classification"))
    with pytest.raises(DeltatuneError, match="train.packing applies to decoder tasks"):
        pack_training_features(task, Features([{"input_ids": [1], "labels": 0}], [1]), 8)


def _examples(n, seed, vocab):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        length = 5 + (7 * k) % 11
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        labels = [-100] * (length // 3) + ids[length // 3 :]  # a masked prompt, then the trained answer
        out.append({"input_ids": ids, "attention_mask": [1] * length, "labels": labels})
    return out


def _task(max_len, chunk=0):
    task = create_task(RunConfig(task="instruction", data={"max_seq_length": max_len}, train={"loss_chunk_size": chunk}))
    task.pad_token_id = 0
    return task


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)


def test_packed_logits_equal_logits_alone(tiny_llama):
    model = tiny_llama.eval()
    rows = _examples(7, 0, model.config.vocab_size)
    packed = pack_features(Features(rows, [len(r["input_ids"]) for r in rows]), 32)
    assert len(packed) < len(rows)  # several examples really share a sequence
    batch = _task(32).collate(packed.rows)  # packs of different lengths: padded, no attention mask
    assert "attention_mask" not in batch and "position_ids" in batch
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        for k, members in enumerate(packed.members):
            start = 0
            for i in members:
                ids = torch.tensor([rows[i]["input_ids"]])
                alone = model(input_ids=ids).logits[0]
                torch.testing.assert_close(logits[k, start : start + ids.shape[1]], alone, atol=1e-5, rtol=0)
                start += ids.shape[1]


@pytest.mark.parametrize("chunk", [0, 16])
def test_packed_loss_and_gradient_equal_unpacked(tiny_llama, chunk):
    model = tiny_llama.train()
    task = _task(40, chunk)
    rows = _examples(9, 1, model.config.vocab_size)
    # first tokens trained too (causal-lm style): packing must not train them as continuations
    rows[0]["labels"] = list(rows[0]["input_ids"])
    packed = pack_features(Features(rows, [len(r["input_ids"]) for r in rows]), 40)

    def loss_and_grads(batch):
        model.zero_grad()
        total, n = task.loss(model, batch)
        (total / n).backward()
        return total.detach(), int(n), {k: p.grad.clone() for k, p in model.named_parameters()}

    ref_loss, ref_n, ref_g = loss_and_grads(task.collate(rows))
    loss, n, g = loss_and_grads(task.collate(packed.rows))
    assert n == ref_n == task.num_targets(task.collate(packed.rows))
    torch.testing.assert_close(loss, ref_loss, atol=1e-4, rtol=1e-6)
    for k in ref_g:
        torch.testing.assert_close(g[k], ref_g[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.slow
def test_packed_logits_equal_alone_on_smollm2(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    texts = ["The capital of France is Paris.", "Two plus two equals four, said the teacher.", "Hello!"]
    rows = [{"input_ids": tok(t)["input_ids"], "labels": tok(t)["input_ids"]} for t in texts]
    (p,) = pack_rows(rows, [[0, 1, 2]])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p["input_ids"]]), position_ids=torch.tensor([p["position_ids"]]), use_cache=False).logits[0]
        start = 0
        for r in rows:
            n = len(r["input_ids"])
            alone = model(input_ids=torch.tensor([r["input_ids"]])).logits[0]
            torch.testing.assert_close(logits[start : start + n], alone, atol=2e-4, rtol=1e-5)
            start += n


def test_instruction_run_with_packing(tiny_llama_dir, tmp_path):
    rows = [{"instruction": f"Repeat the word number {i}.", "input": "", "output": f"word {i} " * (1 + i % 5)} for i in range(40)]
    train = tmp_path / "train.json"
    train.write_text(json.dumps(rows))
    cfg = {
        "task": "instruction",
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": tiny_llama_dir},
        "data": {"train_file": str(train), "max_seq_length": 128},
        "train": {"packing": True, "per_device_train_batch_size": 2, "max_steps": 3, "progress_bar": False, "logging_steps": 1},
        "eval": {"eval_strategy": "no", "generation_max_samples": 0},
        "delta": {"method": "lora"},
    }
    run = finetune(cfg, verbose=False)
    report = run.metrics["data"]["packing"]
    assert report["examples"] == run.metrics["data"]["train"]["examples"] == 36
    assert report["packs"] < report["examples"] and 0.5 < report["fill"] <= 1.0
    assert run.result.global_step == 3 and run.result.final_loss > 0
    assert run.metrics["validation"]["tokens"] > 0
