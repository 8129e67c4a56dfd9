"""The preference and GRPO ``data.*`` options refuse bad values at config time, before torch:
GRPO's rewards and their weights, answer column and format pattern, and IPO with label smoothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from deltatune.config import build_config
from deltatune.errors import DeltatuneError
from deltatune.tasks.options.preference import (
    BUILTIN_REWARDS,
    GRPOOptions,
    completion_room_problem,
    is_user_reward,
    reward_spec_problem,
)

ROOT = Path(__file__).resolve().parents[3]


def grpo(**data):
    return build_config({"task": "grpo", "data": data})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"rewards": ["bogus"]}, r"'data.rewards': 'bogus' is neither a built-in \(exact_match, numeric_match, format, length_penalty\) nor 'module:function'"),
        ({"rewards": ["numeric_match", "mod:"]}, r"'mod:' is neither a built-in"),
        ({"rewards": []}, r"'data.rewards': empty; name at least one reward"),
        ({"rewards": ["format"], "reward_weights": [1.0, 2.0]}, r"data.reward_weights has 2 weights for 1 rewards in data.rewards"),
        ({"reward_weights": [float("nan")]}, r"data.reward_weights"),
        ({"rewards": ["format"], "format_pattern": "("}, r"'data.format_pattern': '\(' is not a regular expression"),
        ({"answer_column": None}, r"numeric_match in data.rewards compare completions with a reference answer: set data.answer_column"),
        ({"rewards": ["format", "exact_match"], "answer_column": ""}, r"exact_match in data.rewards .* set data.answer_column"),
    ],
)
def test_grpo_reward_options_are_refused_at_config_time(data, message):
    with pytest.raises(DeltatuneError, match=message) as e:
        grpo(**data)
    assert "\n" not in str(e.value)


def test_good_grpo_reward_options_pass():
    cfg = grpo(rewards=["format", "mine.sub:score"], reward_weights=[0.5, 2.0], answer_column=None, reward_path="/x")
    assert cfg.data.rewards == ["format", "mine.sub:score"]
    assert grpo().data.rewards == ["numeric_match"]
    # the defaults of the grpo keys are valid for every task (other tasks' configs hold them)
    build_config({"task": "dpo", "data": {"max_seq_length": 32}})


def test_the_options_model_checks_itself_too():
    with pytest.raises(ValueError, match="neither a built-in"):
        GRPOOptions(rewards=["nope"])
    with pytest.raises(ValueError, match="2 weights for 3 rewards"):
        GRPOOptions(rewards=list(BUILTIN_REWARDS[1:]), reward_weights=[1, 2])
    assert is_user_reward("a.b:c") and not is_user_reward("a-b:c") and not is_user_reward("abc")
    assert reward_spec_problem("format") is None and reward_spec_problem("my-rewards:f") is not None


def test_completion_room_helper():
    assert completion_room_problem(SimpleNamespace(max_completion_length=64, max_seq_length=128)) is None
    msg = completion_room_problem(SimpleNamespace(max_completion_length=64, max_seq_length=64))
    assert "data.max_completion_length 64 must be smaller than data.max_seq_length 64: it leaves no room for a prompt" in msg


def test_ipo_refuses_label_smoothing():
    with pytest.raises(DeltatuneError, match="data.label_smoothing applies to loss_type sigmoid; IPO has none"):
        build_config({"task": "dpo", "data": {"loss_type": "ipo", "label_smoothing": 0.1}})
    assert build_config({"task": "dpo", "data": {"loss_type": "ipo"}}).data.loss_type == "ipo"
    assert build_config({"task": "dpo", "data": {"label_smoothing": 0.1}}).data.label_smoothing == 0.1


def test_check_refuses_an_unknown_reward_fast_and_before_torch():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    code = (
        "import sys\n"
        "from deltatune.cli import main\n"
        "try:\n"
        "    rc = main(['check', '--task', 'grpo', '--model', 'smollm2', '--train', 'examples/grpo/arithmetic_train.jsonl',"
        " 'data.rewards=[bogus]'])\n"
        "except SystemExit as e:\n"
        "    rc = e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(rc)\n"
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert "data.rewards" in proc.stderr and "'bogus' is neither a built-in" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert took < 10  # no torch: well under 2 s on an idle machine
