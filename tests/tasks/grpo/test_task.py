"""The grpo task on a tiny random Llama: features, the log-probabilities of left-padded
completions, the reference model, the loss and its statistics, evaluation, a short run."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch

import deltatune
from deltatune.config import build_config
from deltatune.delta import apply_delta
from deltatune.errors import DeltatuneError
from deltatune.models.loading import load_tokenizer
from deltatune.tasks import create_task
from deltatune.tasks.grpo.sampling import completion_mask, sample
from deltatune.tasks.token_loss import next_token_losses
from tests.tasks.demo_runs import demo_config

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = [
    {"prompt": [{"role": "user", "content": "What is 2 plus 3?"}], "answer": "5"},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "And 10 minus 4, the result of which is?"}], "answer": "6"},
    {"prompt": [{"role": "user", "content": "7 times 3?"}], "answer": "21"},
]


def _task(model_dir: str, rows=ROWS, **data):
    cfg = build_config({
        "task": "grpo", "model": {"name_or_path": model_dir},
        "data": {"max_seq_length": 64, "num_generations": 3, "max_completion_length": 5, **data},
    })
    task = create_task(cfg)
    ds = datasets.Dataset.from_list(rows)
    task.fit(ds, "train.jsonl")
    tok = load_tokenizer(model_dir)
    task.set_tokenizer(tok)
    return task, task.encode(ds, tok, source="train.jsonl"), tok


def _model(task, model_dir):
    torch.manual_seed(0)
    return task.build_model(model_dir, {}).eval()


def test_features_are_left_padded_prompts_with_their_row(tiny_llama_dir):
    task, features, tok = _task(tiny_llama_dir)
    assert [f["example_id"] for f in features.rows] == [0, 1, 2]
    assert features.lengths == [len(f["input_ids"]) + 5 for f in features.rows]
    assert features.stats.examples == 3 and features.stats.truncated == 0
    text = tok.decode(features.rows[1]["input_ids"])
    assert "Be brief." in text and text.rstrip().endswith("assistant")  # the generation prompt
    batch = task.collate(features.rows)
    lengths = [len(f["input_ids"]) for f in features.rows]
    width = max(lengths)
    assert batch["input_ids"].shape == (3, width) and batch["example_id"].tolist() == [0, 1, 2]
    for i, n in enumerate(lengths):  # left padding: the prompt ends at the last column
        assert batch["attention_mask"][i].tolist() == [0] * (width - n) + [1] * n
    assert task.num_targets(batch) == 9
    assert "3 sampled completions" in task.show_feature(tok, features.rows[0])[0]


def test_long_prompts_are_cut_from_the_left_and_counted(tiny_llama_dir):
    rows = [{"prompt": "word " * 80 + "What is 1 plus 1?", "answer": "2"}, {"prompt": "What is 2 plus 3?", "answer": "5"}]
    task, features, tok = _task(tiny_llama_dir, rows)
    assert features.stats.truncated == 1
    assert len(features.rows[0]["input_ids"]) == 64 - 5
    assert tok.decode(features.rows[0]["input_ids"]).rstrip().endswith("assistant")


def test_bad_rows_are_named(tiny_llama_dir):
    with pytest.raises(DeltatuneError, match="train.jsonl: row 1 has an empty 'prompt'"):
        _task(tiny_llama_dir, [{"prompt": " ", "answer": "1"}])
    with pytest.raises(DeltatuneError, match="row 1: 'prompt' must be a string or a list of \\{role, content\\}"):
        _task(tiny_llama_dir, [{"prompt": 3, "answer": "1"}])
    with pytest.raises(DeltatuneError, match="train.jsonl: no column 'answer' \\(data.answer_column\\)"):
        _task(tiny_llama_dir, [{"prompt": "hi", "solution": "1"}])
    with pytest.raises(DeltatuneError, match="no room for a prompt"):
        _task(tiny_llama_dir, max_completion_length=64)


def test_completion_mask_cuts_after_the_first_eos():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 0, 0, 0]])
    assert completion_mask(ids, [2]).tolist() == [
        [True, True, False, False], [True, True, True, True], [True, False, False, False]
    ]


def test_left_padded_log_probabilities_equal_those_of_each_sequence_alone(tiny_llama_dir):
    """position_ids = cumsum(attention_mask) - 1: a padded completion scores as it would unpadded."""
    task, features, _ = _task(tiny_llama_dir)
    model = _model(task, tiny_llama_dir)
    batch = task.collate(features.rows)
    torch.manual_seed(1)
    completion, mask = sample(model, batch["input_ids"], batch["attention_mask"], 2, 5, task.eos_ids(model), task.pad_token_id, True)
    inputs = task.sequences(batch, completion, mask, 2)
    with torch.no_grad():
        logps = task.completion_logps(model, inputs, completion.shape[1])
    for i in range(completion.shape[0]):
        keep = inputs["attention_mask"][i].bool()
        alone = {k: v[i : i + 1, keep] for k, v in inputs.items() if k != "position_ids"}
        with torch.no_grad():
            ce, m = next_token_losses(model, alone)
        n = int(mask[i].sum())
        assert torch.allclose(-ce[0, -n:], logps[i, : n], atol=1e-5)
        assert (logps[i, n:] == 0).all()


def test_a_step_counts_completions_and_logs_its_statistics(tiny_llama_dir):
    task, features, _ = _task(tiny_llama_dir, rewards=["numeric_match", "length_penalty"], length_penalty_tokens=1)
    model = _model(task, tiny_llama_dir).train()
    batch = task.collate(features.rows)
    torch.manual_seed(0)
    loss, n = task.loss(model, batch)
    assert int(n) == task.num_targets(batch) == 9 and torch.isfinite(loss)
    loss.backward()
    assert model.training  # generation ran in eval mode and the model went back
    stats = task.pop_train_metrics()
    assert set(stats) == {"reward", "reward_std", "reward_numeric_match", "reward_length_penalty", "kl", "completion_length",
                          "zero_std_groups", "clip_ratio"}
    assert 1 <= stats["completion_length"] <= 5 and stats["clip_ratio"] == 0.0
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6)  # the frozen copy is the model before any update
    assert 0.0 <= stats["zero_std_groups"] <= 1.0
    assert task.pop_train_metrics() == {}


def test_beta_zero_runs_no_reference_model(tiny_llama_dir):
    task, features, _ = _task(tiny_llama_dir, beta=0.0)
    model = _model(task, tiny_llama_dir).train()
    task.prepare_model(model)
    assert task._reference is None

    def refuse(model):
        raise AssertionError("the reference model was used")

    task.reference_model = refuse
    loss, _ = task.loss(model, task.collate(features.rows))
    assert torch.isfinite(loss)


def test_the_loss_is_the_policy_gradient_of_the_advantages(tiny_llama_dir):
    """ratio 1, no KL: loss = sum_i -A_i (value), and its gradient is that of sum_i -A_i mean_t log pi."""
    task, features, _ = _task(tiny_llama_dir, beta=0.0, rewards=["length_penalty"], length_penalty_tokens=1)
    model = _model(task, tiny_llama_dir).train()
    batch = task.collate(features.rows)
    torch.manual_seed(3)
    loss, _ = task.loss(model, batch)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    # the same samples again, the surrogate written out
    torch.manual_seed(3)
    completion, mask = sample(model, batch["input_ids"], batch["attention_mask"], 3, 5, task.eos_ids(model), task.pad_token_id, True)
    _, total, _ = task.score_completions(batch["example_id"], completion, mask, 3)
    from deltatune.tasks.grpo.loss import group_advantages

    adv = group_advantages(torch.tensor(total), 3)
    logps = task.completion_logps(model, task.sequences(batch, completion, mask, 3), completion.shape[1])
    surrogate = -(adv * (logps * mask).sum(-1) / mask.sum(-1)).sum()
    assert loss.item() == pytest.approx(-adv.sum().item(), abs=1e-5)
    expected = torch.autograd.grad(surrogate, params)
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, atol=1e-6)


def test_the_adapter_disabled_reference_is_the_base_model(tiny_llama_dir):
    task, features, _ = _task(tiny_llama_dir)
    torch.manual_seed(0)
    base = task.build_model(tiny_llama_dir, {}).eval()
    model = apply_delta(task.build_model(tiny_llama_dir, {}), task.config.delta.model_copy(update={"method": "lora", "lora_dropout": 0.0}),
                        task.peft_task_type, task.modules_to_save)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    task.prepare_model(model)
    assert task._reference is None  # no copy for a peft model
    batch = task.collate(features.rows)
    completion, mask = sample(model, batch["input_ids"], batch["attention_mask"], 2, 5, task.eos_ids(model), task.pad_token_id, True)
    inputs = task.sequences(batch, completion, mask, 2)
    model.train()
    with task.reference_model(model) as ref:
        ref_logps = task.completion_logps(ref, inputs, completion.shape[1])
    assert model.training
    with torch.no_grad():
        base_logps = task.completion_logps(base, inputs, completion.shape[1])
        policy = task.completion_logps(model.eval(), inputs, completion.shape[1])
    assert torch.allclose(ref_logps, base_logps, atol=1e-5)
    assert not torch.allclose(policy, base_logps, atol=1e-3)  # the adapter matters


def test_evaluation_is_greedy_and_scored(tiny_llama_dir):
    task, features, _ = _task(tiny_llama_dir, rewards=["numeric_match", "format"], reward_weights=[1.0, 0.5])
    model = _model(task, tiny_llama_dir)
    batch = task.collate(features.rows)
    first = task.eval_step(model, batch)
    again = task.eval_step(model, batch)
    assert set(first) == {"reward", "reward_numeric_match", "reward_format", "completion_length"}
    for k in first:
        assert first[k].shape == (3,) and (first[k] == again[k]).all()
    assert (first["reward"] == first["reward_numeric_match"] + 0.5 * first["reward_format"]).all()
    metrics = task.compute_metrics(first)
    assert metrics["reward"] == pytest.approx(first["reward"].mean()) and metrics["examples"] == 3
    scored = task.scored_generations(model, load_tokenizer(tiny_llama_dir), datasets.Dataset.from_list(ROWS), "cpu", "dev.jsonl")
    assert [r["row"] for r in scored.rows] == [0, 1, 2] and scored.rows[0]["reference"] == "5"
    assert scored.rows[1]["input"] == "system: Be brief.\nuser: And 10 minus 4, the result of which is?"
    assert set(scored.metrics) >= {"generated_reward", "generation_eos_share", "generated_examples", "samples"}
    assert "reward" not in scored.metrics  # the split's reward is eval_step's, over every row


def test_a_run_logs_the_train_reward_and_evaluates_it(tiny_llama_dir, tmp_path):
    from deltatune.tasks.grpo.task import GRPOTask

    cfg, _ = demo_config("grpo", GRPOTask, tiny_llama_dir, tmp_path, max_steps=2)
    cfg["train"].update(logging_steps=1)
    cfg["eval"].update(eval_strategy="steps", eval_steps=1)
    cfg["delta"] = {"method": "lora"}
    run = deltatune.finetune(cfg, verbose=False)
    records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r and "reward" in r]
    evals = [r for r in records if "eval_reward" in r]
    assert [r["step"] for r in train] == [1, 2] and [r["step"] for r in evals] == [1, 2]
    assert {"reward_std", "kl", "completion_length", "zero_std_groups", "reward_numeric_match"} <= set(train[0])
    assert run.metrics["validation"]["reward"] == pytest.approx(evals[-1]["eval_reward"])


def test_a_received_run_imports_its_reward_code_only_with_trust_remote_code(tiny_llama_dir, tmp_path):
    from deltatune.tasks.grpo.task import GRPOTask

    rewards = tmp_path / "rewards"
    rewards.mkdir()
    marker = tmp_path / "imported.txt"
    (rewards / "mine.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n\n"
        "def short(completions, **kw):\n    return [-float(len(c)) for c in completions]\n"
    )
    cfg, rows = demo_config("grpo", GRPOTask, tiny_llama_dir, tmp_path, max_steps=1)
    cfg["data"].update(rewards=["numeric_match", "mine:short"], reward_path=str(rewards))
    cfg["eval"].update(compare_generations=0)
    run = deltatune.finetune(cfg, verbose=False)
    assert marker.read_text() == "ran" and "reward_short" in run.metrics["validation"]
    marker.unlink()

    data = tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    with pytest.raises(DeltatuneError, match="used only when you load it with --trust-remote-code"):
        deltatune.evaluate(run.path, str(data))
    assert not marker.exists()  # nothing of the run's reward code ran
    predictor = deltatune.load(run.path)  # prediction needs no reward: it loads
    assert predictor.config.data.reward_path is None and not marker.exists()
    metrics = deltatune.evaluate(run.path, str(data), trust_remote_code=True)
    assert marker.read_text() == "ran" and "reward_short" in metrics


def test_a_user_reward_that_raises_names_it_and_says_how_to_run_again(tiny_llama_dir, tmp_path):
    from deltatune.tasks.grpo.task import GRPOTask

    rewards = tmp_path / "rewards"
    rewards.mkdir()
    (rewards / "bad.py").write_text("def boom(completions, **kw):\n    raise ValueError('no reward today')\n")
    cfg, _ = demo_config("grpo", GRPOTask, tiny_llama_dir, tmp_path, max_steps=1)
    cfg["data"].update(rewards=["bad:boom"], reward_path=str(rewards))
    with pytest.raises(DeltatuneError) as info:
        deltatune.finetune(cfg, verbose=False)
    message = str(info.value)
    assert "reward 'bad:boom' failed: ValueError: no reward today" in message
    assert f"the run folder {cfg['output_dir']} is kept" in message and "start again with --overwrite" in message
    assert "\n" not in message
    start = json.loads((Path(cfg["output_dir"]) / "metrics.jsonl").read_text().splitlines()[0])
    assert start["task_settings"]["data.beta"] == 0.04 and start["task_settings"]["data.rewards"] == ["bad:boom"]


def test_check_shows_the_prompts_and_what_is_sampled_for_them(tiny_llama_dir, tmp_path):
    from deltatune import api

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    report = api.check({"task": "grpo", "model": {"name_or_path": tiny_llama_dir},
                        "data": {"train_file": str(train), "max_seq_length": 64, "num_generations": 3, "max_completion_length": 5}})
    assert "[[3 sampled completions, <= 5 tokens]]" in report
    assert "prompts 3 | cut from the left to fit 0 | prompt tokens " in report
    assert "| trained: 3 sampled completions per prompt, <= 5 tokens each" in report and "trained tokens 0" not in report
