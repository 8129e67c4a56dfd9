"""Trying a finished run in the UI, for every registered task (1-step runs on the tiny models,
each task's own demo rows): the try form's fields, a prediction of the type ``/v1/predict``
documents, and chat for chat runs (as ``/v1/chat/completions`` answers)."""

from __future__ import annotations

import pytest

from deltatune.serving.schemas import task_io
from deltatune.tasks.registry import TASK_SPECS
from tests.tasks.demo_runs import demo_config

# image/audio runs (rows naming files) are served through the same Predictor: tests/tasks/test_image_classification.py
TEXT_SPECS = [s for s in TASK_SPECS if s.family in ("encoder", "decoder")]
TASKS = [s.name for s in TEXT_SPECS]


@pytest.fixture(scope="module")
def client(tiny_model_dir, tiny_llama_dir, tmp_path_factory):
    """The UI over a runs folder holding one finished run per registered task (named after it)."""
    import torch
    from fastapi.testclient import TestClient

    import deltatune
    from deltatune.tasks import get_task_class
    from deltatune.ui.app import create_app

    runs_dir = tmp_path_factory.mktemp("ui_try") / "runs"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = {}
    for spec in TEXT_SPECS:
        model_dir = tiny_model_dir if spec.family == "encoder" else tiny_llama_dir
        cfg, rows[spec.name] = demo_config(spec.name, get_task_class(spec.name), model_dir, tmp_path_factory.mktemp(spec.name), max_steps=1)
        cfg["output_dir"] = str(runs_dir / spec.name)
        deltatune.finetune(cfg, verbose=False)
    torch.set_num_threads(n)
    with TestClient(create_app(runs_dir, device="cpu")) as c:
        c.rows = rows
        yield c


def _value(row: dict, column: str, task: str) -> str:
    if column not in row:  # instruction rows: a conversation; the box takes the user's message
        return "What is 2 plus one?"
    value = row[column]
    text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
    return text.replace(" sat ", " [MASK] ", 1) if task == "masked-lm" else text


@pytest.mark.parametrize("task", TASKS)
def test_every_task_can_be_tried_from_its_form(client, task):
    detail = client.get(f"/api/runs/{task}").json()
    assert detail["status"] == "finished" and detail["has_model"]
    d = detail["config"]["data"]
    columns = {"text": d.get("tokens_column") if task == "token-classification" else d.get("text_column"), "text_pair": d.get("text_pair_column"), "question": d.get("question_column"),
               "context": d.get("context_column")}
    row = client.rows[task][0]
    loaded = client.post(f"/api/runs/{task}/load", json={}).json()
    assert detail["inputs"] in (None, loaded["inputs"])  # None: the task's default prompt template names them
    values = {f: _value(row, columns.get(f) or f, task) for f in loaded["inputs"]}
    r = client.post(f"/api/runs/{task}/predict", json={"inputs": values})
    assert r.status_code == 200, r.text
    (prediction,) = r.json()["predictions"]
    task_io(task).prediction.model_validate(prediction)  # the type /v1/predict documents for the task


def test_a_chat_run_answers_in_the_chat_box_and_others_say_why_not(client):
    assert client.post("/api/runs/instruction/load", json={}).json() == {"task": "instruction", "generative": True, "chat": True, "inputs": ["text"]}
    assert client.post("/api/runs/causal-lm/load", json={}).json()["chat"] is False
    r = client.post("/api/runs/instruction/chat", json={"messages": [{"role": "user", "content": "What is 2 plus one?"}], "max_tokens": 4})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert isinstance(answer["content"], str) and answer["finish_reason"] in ("stop", "length")
    assert answer["usage"]["completion_tokens"] <= 4
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": answer["content"]}, {"role": "user", "content": "and?"}]
    assert client.post("/api/runs/instruction/chat", json={"messages": history, "max_tokens": 2}).status_code == 200
    refused = client.post("/api/runs/causal-lm/chat", json={"messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 400 and "chat" in refused.json()["error"]
    bad_role = client.post("/api/runs/instruction/chat", json={"messages": [{"role": "robot", "content": "hi"}]})
    assert bad_role.status_code == 400 and "messages" in bad_role.json()["error"]
