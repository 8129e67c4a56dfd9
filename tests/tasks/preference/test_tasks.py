"""The preference tasks on a tiny random Llama: the reference model, loss normalization, metrics, check."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch

import deltatune
from deltatune import api
from deltatune.config import build_config
from deltatune.errors import DeltatuneError
from deltatune.delta import apply_delta
from deltatune.models.loading import load_tokenizer
from deltatune.tasks import create_task
from deltatune.tasks.preference.losses import dpo_loss
from tests.tasks.demo_runs import demo_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _task(name: str, model_dir: str, **data):
    cfg = build_config({"task": name, "model": {"name_or_path": model_dir}, "data": {"max_seq_length": 64, **data}})
    task = create_task(cfg)
    rows = task.demo_rows()["rows"]
    ds = datasets.Dataset.from_list(rows)
    task.fit(ds, "demo")
    tok = load_tokenizer(model_dir)
    task.set_tokenizer(tok)
    return task, task.encode(ds, tok, source="demo"), cfg


def _lora_model(task, model_dir: str, cfg):
    """The task's model with a LoRA adapter whose B matrices are random (so the adapter changes the outputs)."""
    torch.manual_seed(0)
    delta = cfg.delta.model_copy(update={"method": "lora", "lora_dropout": 0.0})
    model = apply_delta(task.build_model(model_dir, {}), delta, task.peft_task_type, task.modules_to_save)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model.eval()


def test_the_adapter_disabled_reference_equals_an_explicit_frozen_copy_of_the_base(tiny_llama_dir):
    task, features, cfg = _task("dpo", tiny_llama_dir, precompute_reference=False)
    model = _lora_model(task, tiny_llama_dir, cfg)
    batch = task.collate(features.rows[:4])
    loss_adapter, _ = task.loss(model, batch)
    grads_adapter = torch.autograd.grad(loss_adapter, [p for p in model.parameters() if p.requires_grad])

    base = task.build_model(tiny_llama_dir, {}).eval().requires_grad_(False)  # an explicit copy of the base
    with torch.no_grad():
        ref = task.sequence_logps(base, batch)
    policy = task.sequence_logps(model, batch)
    losses, _, _ = dpo_loss(policy["chosen"], policy["rejected"], ref["chosen"], ref["rejected"], task.beta)
    grads_copy = torch.autograd.grad(losses.sum(), [p for p in model.parameters() if p.requires_grad])

    assert float(loss_adapter.detach()) == pytest.approx(float(losses.sum().detach()), abs=1e-5)
    assert abs(float(loss_adapter.detach()) - 4 * 0.6931) > 1e-3  # the adapter moved the policy away from the reference
    for a, b in zip(grads_adapter, grads_copy):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_precomputed_reference_equals_the_reference_computed_at_every_step(tiny_llama_dir):
    task, features, cfg = _task("dpo", tiny_llama_dir)  # precompute_reference: true (default)
    assert task.needs_reference_pass
    model = _lora_model(task, tiny_llama_dir, cfg)
    task.prepare_model(model)
    batch = task.collate(features.rows[:4])
    out = task.reference_step(model, batch)
    task.attach_reference(features, out)
    precomputed = task.collate(features.rows[:4])
    assert "ref_chosen_logps" in precomputed and "ref_chosen_logps" not in batch
    on_the_fly = task.reference_logps(model, batch)
    torch.testing.assert_close(precomputed["ref_chosen_logps"], on_the_fly[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(precomputed["ref_rejected_logps"], on_the_fly[1], atol=1e-5, rtol=1e-5)


def test_full_fine_tuning_without_precompute_keeps_a_frozen_copy_as_reference(tiny_llama_dir):
    task, features, cfg = _task("dpo", tiny_llama_dir, precompute_reference=False)
    model = task.build_model(tiny_llama_dir, {})
    task.prepare_model(model)
    batch = task.collate(features.rows[:2])
    before = task.reference_logps(model, batch)
    with torch.no_grad():  # training moves the policy; the copy stays the reference
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    after = task.reference_logps(model, batch)
    torch.testing.assert_close(before[0], after[0])
    policy = task.sequence_logps(model, batch)["chosen"]
    assert not torch.allclose(policy, after[0])


@pytest.mark.parametrize("name", ["dpo", "orpo", "simpo", "kto"])
def test_the_gradient_does_not_depend_on_the_micro_batch_split(name, tiny_llama_dir, tmp_path):
    """Four pairs in one micro-batch or in four give the same trained weights (loss normalized per pair)."""
    weights = []
    for micro in (4, 1):
        cls = type(create_task(build_config({"task": name})))
        cfg, _ = demo_config(name, cls, tiny_llama_dir, tmp_path / f"m{micro}", max_steps=1)
        cfg["train"].update(per_device_train_batch_size=4, micro_batch_size=micro, learning_rate=1e-2)
        cfg["delta"] = {"method": "full"}
        cfg["eval"].update(generation_max_samples=0, compare_generations=0)
        run = deltatune.finetune(cfg, verbose=False)
        weights.append({k: v.clone() for k, v in deltatune.load(run.path).model.state_dict().items()})
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], atol=2e-5, rtol=1e-4)


def test_an_untrained_model_scores_one_half_reward_accuracy_and_its_own_log_prob_preference(tiny_llama_dir):
    task, features, cfg = _task("dpo", tiny_llama_dir)
    model = _lora_model(task, tiny_llama_dir, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.zero_()  # LoRA as initialised: the policy is the reference
    task.prepare_model(model)
    batch = task.collate(features.rows)
    task.attach_reference(features, task.reference_step(model, batch))
    outputs = {k: v for k, v in task.eval_step(model, task.collate(features.rows)).items()}
    m = task.compute_metrics(outputs, features)
    assert m["reward_accuracy"] == 0.5 and m["rewards_margin"] == pytest.approx(0.0, abs=1e-6)
    assert m["loss"] == pytest.approx(0.6931, abs=1e-3)  # -log sigmoid(0)
    assert 0.0 <= m["logps_accuracy"] <= 1.0 and m["pairs"] == len(features)
    assert m["sft_loss"] > 0


def test_train_logs_carry_the_preference_statistics(tiny_llama_dir, tmp_path, capsys):
    cls = type(create_task(build_config({"task": "dpo"})))
    cfg, _ = demo_config("dpo", cls, tiny_llama_dir, tmp_path, max_steps=2)
    cfg["delta"] = {"method": "lora"}
    cfg["train"]["logging_steps"] = 1
    run = deltatune.finetune(cfg, verbose=False)
    records = [json.loads(line) for line in (Path(run.path) / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "reference" and r["seconds"] >= 0 for r in records)
    err = capsys.readouterr().err  # the minutes-long pass before the first step is announced and timed
    assert "deltatune: reference pass over " in err and "deltatune: reference pass done in " in err
    train = [r for r in records if "loss" in r and "event" not in r]
    assert train and all({"reward_accuracy", "rewards_margin", "logps_chosen"} <= set(r) for r in train)
    assert {"reward_accuracy", "rewards_margin", "logps_accuracy", "sft_loss"} <= set(run.metrics["validation"])
    # the task's own hyperparameters, defaults resolved, are logged and shown in report.html
    start = next(r for r in records if r.get("event") == "start")
    assert start["task_settings"] == {"data.beta": 0.1, "data.loss_type": "sigmoid", "data.label_smoothing": 0.0,
                                      "data.precompute_reference": True}
    html = (Path(run.path) / "report.html").read_text()
    assert "data.beta" in html and "data.loss_type" in html and "sigmoid" in html


def test_check_shows_the_pair_with_trained_spans_and_counts_dropped_pairs(tiny_llama_dir, tmp_path):
    rows = [
        {"prompt": "Say hi.", "chosen": "Hi there!", "rejected": "Go away."},
        {"prompt": "Say bye.", "chosen": "Bye!", "rejected": "Bye!"},  # identical: dropped
        {"prompt": "Count.", "chosen": "One two three.", "rejected": ""},  # empty: dropped
    ]
    train = tmp_path / "pairs.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = api.check({"task": "dpo", "model": {"name_or_path": tiny_llama_dir}, "data": {"train_file": str(train)}})
    assert "chosen:" in report and "rejected:" in report and "[[Hi there!" in report
    assert "dropped identical 1" in report and "dropped empty 1" in report and "dropped rows 2, 3" in report


def test_evaluate_takes_the_held_out_rows_of_a_split_column_and_counts_what_it_drops(tiny_llama_dir, tmp_path, capsys):
    rows = [{"prompt": f"What is {i} plus one?", "chosen": f"It is {i + 1}.", "rejected": f"Maybe {i + 7}.",
             "split": "eval" if i % 3 == 0 else "train"} for i in range(12)]
    rows[9]["rejected"] = rows[9]["chosen"]  # the 4th held-out row: identical responses, dropped
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cls = type(create_task(build_config({"task": "dpo"})))
    cfg, _ = demo_config("dpo", cls, tiny_llama_dir, tmp_path, max_steps=1)
    cfg["data"].update(train_file=str(data), split_column="split")
    cfg["data"].pop("validation_file", None)
    cfg["eval"].update(compare_generations=0, generation_max_samples=0)
    run = deltatune.finetune(cfg, verbose=False)
    assert run.metrics["validation"]["pairs"] == 3  # 4 eval rows, 1 dropped
    capsys.readouterr()
    metrics = deltatune.evaluate(run.path, str(data))
    err = capsys.readouterr().err
    assert metrics["pairs"] == 3 and metrics["reward_accuracy"] == pytest.approx(run.metrics["validation"]["reward_accuracy"])
    assert "evaluating its 4 rows with split=validation (the run's data.split_column)" in err
    assert "(split=validation rows, numbered among themselves): examples 4 |" in err
    assert "dropped identical 1 | dropped empty 0 | dropped too long 0 | dropped rows 4" in err
    only_train = tmp_path / "train_only.jsonl"
    only_train.write_text("".join(json.dumps(r) + "\n" for r in rows if r["split"] == "train"))
    with pytest.raises(DeltatuneError, match="every row has split=train"):
        deltatune.evaluate(run.path, str(only_train))
