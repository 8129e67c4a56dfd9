"""GRPO's rewards: the built-ins, the weighted sum, user rewards from data.reward_path and their errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deltatune.config import build_config
from deltatune.errors import DeltatuneError
from deltatune.tasks.grpo.rewards import (
    RewardSet,
    exact_match,
    final_answer,
    last_number,
    length_penalty,
    normalize_text,
    numeric_match,
)


def data(**kw):
    return build_config({"task": "grpo", "data": kw}).data


def rewards(tmp_path: Path | None = None, **kw) -> RewardSet:
    return RewardSet(data(**kw), str(tmp_path / "run") if tmp_path else None)


def unchecked(**kw) -> RewardSet:
    """A RewardSet of a data section the config's validators never saw (a config loaded as it was
    written): the runtime checks still guard it."""
    return RewardSet(data().model_copy(update=kw))


def test_numbers_and_final_answers():
    assert last_number("it is 1,234.5 or -7") == -7.0
    assert last_number("Total: 1,234 apples.") == 1234.0
    assert last_number("3, 4") == 4.0 and last_number("none") is None
    assert final_answer("thinking\nAnswer: The Cat.") == "The Cat."
    assert final_answer("so \\boxed{42} is it") == "42"
    assert final_answer("first\n\nlast line \n") == "last line"
    assert normalize_text("  The  Cat!") == "cat"


def test_builtin_values():
    assert numeric_match(["So 7 + 5 = 12.", "It is 12.0001", "no idea"], ["12", "12", "12"]) == [1.0, 0.0, 0.0]
    assert numeric_match(["Answer: 1,000"], ["#### 1000"]) == [1.0]
    assert exact_match(["Answer: Paris.", "Answer: Lyon"], ["paris", "Paris"]) == [1.0, 0.0]
    assert length_penalty([10, 40, 64], limit=32, max_length=64) == [0.0, -8 / 64, -32 / 64]


def test_the_weighted_sum_and_each_reward():
    rs = rewards(rewards=["numeric_match", "format", "length_penalty"], reward_weights=[1.0, 0.5, 2.0], max_completion_length=4)
    total, per = rs.score(["x\nAnswer: 5", "5", "Answer: 6"], [[1, 2], [1, 2, 3, 4], [1]], ["p"] * 3, {"answer": ["5", "5", "5"]})
    assert per == {"numeric_match": [1.0, 1.0, 0.0], "format": [1.0, 0.0, 1.0], "length_penalty": [0.0, -0.5, 0.0]}
    assert total == pytest.approx([1.5, 1.0 - 1.0, 0.5])
    assert rs.keys == ["numeric_match", "format", "length_penalty"]


def test_format_pattern_and_its_error():
    rs = rewards(rewards=["format"], format_pattern=r"\d+")
    assert rs.score(["12 ", "a12"], [[1], [1]], ["p", "p"], {})[0] == [1.0, 0.0]
    with pytest.raises(DeltatuneError, match="data.format_pattern .* is not a regular expression"):
        unchecked(rewards=["format"], format_pattern="(")
    with pytest.raises(DeltatuneError, match="config error .*'data.format_pattern': '\\(' is not a regular expression"):
        rewards(rewards=["format"], format_pattern="(")


def test_configuration_errors():
    # refused by the config already (tests/tasks/preference/test_options.py) and, for a config that
    # skipped validation, again here
    for make in (rewards, unchecked):
        with pytest.raises(DeltatuneError, match="neither a built-in .* nor 'module:function'"):
            make(rewards=["nope"])
        with pytest.raises(DeltatuneError, match="2 weights for 1 rewards"):
            make(rewards=["format"], reward_weights=[1.0, 2.0])
        with pytest.raises(DeltatuneError, match="set data.answer_column"):
            make(rewards=["exact_match"], answer_column=None)
    with pytest.raises(DeltatuneError, match="data.rewards is empty"):
        unchecked(rewards=[])
    with pytest.raises(DeltatuneError, match="must be finite numbers"):
        unchecked(reward_weights=[float("inf")])
    with pytest.raises(DeltatuneError, match="set data.reward_path"):
        rewards(rewards=["mine:score"])


def test_rows_lacking_the_answer_are_named():
    rs = rewards(rewards=["numeric_match"])
    with pytest.raises(DeltatuneError, match="train.jsonl: no column 'answer' \\(data.answer_column\\)"):
        rs.check_rows([{"prompt": "p", "solution": "1"}], "train.jsonl")
    with pytest.raises(DeltatuneError, match="train.jsonl: row 2 has an empty 'answer'"):
        rs.check_rows([{"prompt": "p", "answer": "1"}, {"prompt": "p", "answer": " "}], "train.jsonl")
    with pytest.raises(DeltatuneError, match="row 1's 'answer' 'many' has no number"):
        rs.check_rows([{"prompt": "p", "answer": "many"}], "train.jsonl")
    rewards(rewards=["format"]).check_rows([{"prompt": "p"}], "x")  # no answer needed


USER_MODULE = '''
CALLS = []

def score(completions, prompts, answer):
    CALLS.append(1)
    return [float(c == a) for c, a in zip(completions, answer)]

def with_kwargs(completions, **kw):
    return [float(len(kw["completion_ids"][i])) + (1.0 if kw["hint"][i] else 0.0) for i in range(len(completions))]

def short(completions, **kw):
    return [1.0]

def bad(completions, **kw):
    return [float("nan")] * len(completions)

def text(completions, **kw):
    return ["1"] * len(completions)

def boom(completions, **kw):
    raise KeyError("hint")

NOT_A_FUNCTION = 3
'''


@pytest.fixture
def reward_dir(tmp_path):
    folder = tmp_path / "rewards"
    folder.mkdir()
    (folder / "myrewards.py").write_text(USER_MODULE)
    (folder / "broken.py").write_text("import not_a_module_anywhere_123\n")
    return folder


def test_user_rewards_come_from_reward_path_with_their_columns(reward_dir, tmp_path):
    rs = rewards(tmp_path, rewards=["myrewards:score", "myrewards:with_kwargs"], reward_path=str(reward_dir))
    total, per = rs.score(["a", "b"], [[1], [1, 2]], ["p", "q"], {"answer": ["a", "x"], "hint": [True, False]})
    assert per == {"score": [1.0, 0.0], "with_kwargs": [2.0, 2.0]}
    assert total == [3.0, 2.0]
    assert str(reward_dir) not in sys.path  # only on sys.path while importing


def test_a_single_file_reward_path(reward_dir, tmp_path):
    rs = rewards(tmp_path, rewards=["myrewards:score"], reward_path=str(reward_dir / "myrewards.py"))
    assert rs.score(["a"], [[1]], ["p"], {"answer": ["a"]})[0] == [1.0]
    with pytest.raises(DeltatuneError, match="name its functions 'myrewards:function'"):
        rewards(tmp_path, rewards=["other:score"], reward_path=str(reward_dir / "myrewards.py"))


def test_user_reward_module_shadowing_is_impossible(tmp_path):
    """'json:dumps' is looked for in reward_path only, never in the standard library."""
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(DeltatuneError, match="module 'json' of 'json:dumps' is not in data.reward_path"):
        rewards(tmp_path, rewards=["json:dumps"], reward_path=str(folder))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("myrewards:missing", "has no function 'missing'"),
        ("myrewards:NOT_A_FUNCTION", "is a int, not a function"),
        ("broken:score", "importing .*broken.py for 'broken:score' failed: ModuleNotFoundError"),
    ],
)
def test_user_reward_loading_errors(reward_dir, tmp_path, spec, message):
    with pytest.raises(DeltatuneError, match=message):
        rewards(tmp_path, rewards=[spec], reward_path=str(reward_dir))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("myrewards:short", "reward 'myrewards:short' returned 1 rewards for 2 completions"),
        ("myrewards:bad", "reward 'myrewards:bad' returned nan for completion 0; rewards must be finite"),
        ("myrewards:text", "reward 'myrewards:text' returned '1' for completion 0"),
        ("myrewards:boom", "reward 'myrewards:boom' failed: KeyError: 'hint'"),
    ],
)
def test_user_reward_results_are_checked(reward_dir, tmp_path, spec, message):
    rs = rewards(tmp_path, rewards=[spec], reward_path=str(reward_dir))
    with pytest.raises(DeltatuneError, match=message):
        rs.score(["a", "b"], [[1], [2]], ["p", "q"], {"answer": ["a", "b"]})


def test_reward_path_missing_or_inside_the_run_folder(tmp_path, reward_dir):
    with pytest.raises(DeltatuneError, match="does not exist"):
        rewards(tmp_path, rewards=["m:f"], reward_path=str(tmp_path / "nowhere"))
    inside = tmp_path / "run" / "code"
    inside.mkdir(parents=True)
    (inside / "m.py").write_text("def f(completions, **k):\n    return [1.0] * len(completions)\n")
    with pytest.raises(DeltatuneError, match="inside the run folder"):
        rewards(tmp_path, rewards=["m:f"], reward_path=str(inside))
