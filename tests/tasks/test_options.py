"""Each task's registry entry declares its data options and the columns it reads; both match
what the task's code does."""

from __future__ import annotations

import pytest
from datasets import Dataset
from pydantic import BaseModel

from deltatune.config import build_config
from deltatune.data.paths import COLUMN_REMEDIES, missing_column_message
from deltatune.errors import DeltatuneError
from deltatune.tasks import create_task, get_task_class
from deltatune.tasks.registry import TASK_SPECS, TaskSpec, option_fields, register

WITH_COLUMNS = [s for s in TASK_SPECS if s.columns is not None]


def _demo(spec: TaskSpec) -> tuple[list[dict], dict]:
    """The task's demo rows and its demo config (nested, as in the contract tests)."""
    demo = get_task_class(spec.name).demo_rows()
    cfg = {"task": spec.name, **demo["config"]}
    cfg["data"] = {"max_seq_length": 128, **demo["config"].get("data", {})}
    return demo["rows"], cfg


def test_text_to_text_and_instruction_tasks_check_their_columns_on_loading():
    # their columns come from a prompt template or a detected format (preference pairs: prompt/chosen/
    # rejected, HH dialogues or KTO's unpaired rows): no header check before torch
    assert {s.name for s in TASK_SPECS if s.columns is None} == {
        "instruction", "summarization", "translation", "generative-qa", "dpo", "orpo", "simpo", "kto", "grpo",
        "vision-language"}  # messages or conversations, image paths inside them


@pytest.mark.parametrize("spec", WITH_COLUMNS, ids=lambda s: s.name)
def test_declared_columns_are_the_ones_the_task_checks_in_that_order(spec):
    rows, cfg_dict = _demo(spec)
    cfg = build_config(cfg_dict)
    columns = spec.columns(cfg.data, True)
    assert columns and set(columns) <= set(rows[0]), (columns, list(rows[0]))
    for missing in [columns, *([c] for c in columns)]:  # all of them (the first is named), then each alone
        kept = [{"other": 0, **{k: v for k, v in r.items() if k not in missing}} for r in rows]
        task = create_task(cfg)
        with pytest.raises(DeltatuneError) as e:
            task.fit(Dataset.from_list(kept), "train.jsonl")
        remedy = COLUMN_REMEDIES.get(task.input_kind)  # image/audio tasks name their own column keys
        assert str(e.value) == missing_column_message("train.jsonl", missing[0], list(kept[0]), remedy=remedy)


def test_declared_columns_follow_the_config():
    by_name = {s.name: s for s in TASK_SPECS}
    qa = build_config({"task": "question-answering", "data": {"question_column": "q", "context_column": "c"}}).data
    assert by_name["question-answering"].columns(qa, True) == ["q", "c", "answers"]
    assert by_name["question-answering"].columns(qa, False) == ["q", "c"]
    pair = build_config({"data": {"text_pair_column": "hypothesis", "label_column": "y"}}).data
    assert by_name["text-classification"].columns(pair, True) == ["text", "hypothesis", "y"]


def test_each_task_reads_the_option_models_it_declares():
    assert "doc_stride" in option_fields("question-answering") and "doc_stride" not in option_fields("text-classification")
    assert "target_column" in option_fields("extractive-summarization") and "target_column" in option_fields("translation")
    assert option_fields("causal-lm") == frozenset()


def test_registering_a_task_with_an_option_model_config_does_not_know_is_refused():
    class Stray(BaseModel):
        stray: int = 1

    with pytest.raises(ValueError, match="OPTION_MODELS"):
        register(TaskSpec("stray", "m:C", "encoder", options=(Stray,)))
