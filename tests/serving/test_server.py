"""``deltatune serve`` as a real process over HTTP: every task's ``/v1/predict``, auth, limits, errors, metrics.

One server serves a 1-step run of every registered task (trained on the task's demo rows, on
the tiny random BERT or Llama) under the task's name, with an API key and small limits.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import re
import subprocess
import sys

import httpx
import pytest
from datasets import Dataset

import deltatune
from deltatune.tasks import get_task_class
from deltatune.tasks.registry import TASK_SPECS
from tests.helpers import predictions_close
from tests.serving.server_process import free_port, start_server
from tests.tasks.demo_runs import demo_config

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
# image/audio runs (rows naming files) are served through the same Predictor: tests/tasks/test_image_classification.py
TEXT_SPECS = [s for s in TASK_SPECS if s.family in ("encoder", "decoder")]
TASKS = [s.name for s in TEXT_SPECS]


@pytest.fixture(scope="module")
def task_runs(tiny_model_dir, tiny_llama_dir, tmp_path_factory):
    """{task name: (run folder, demo rows)} for every registered task, 1 training step each."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {}
    for spec in TEXT_SPECS:
        model_dir = tiny_model_dir if spec.family == "encoder" else tiny_llama_dir
        cfg, rows = demo_config(spec.name, get_task_class(spec.name), model_dir, tmp_path_factory.mktemp(spec.name), max_steps=1)
        runs[spec.name] = (deltatune.finetune(cfg, verbose=False).path, rows)
    torch.set_num_threads(n)
    return runs


@pytest.fixture(scope="module")
def server(task_runs, tmp_path_factory):
    args = [f"{name}={path}" for name, (path, _) in task_runs.items()]
    srv = start_server(
        [*args, "--api-key", KEY, "--max-inputs", "8", "--max-input-chars", "2000", "--max-body-bytes", "100000"],
        tmp_path_factory.mktemp("server") / "serve.log",
    )
    yield srv
    srv.stop()


def post(server, body, path="/v1/predict", headers=AUTH, **kw):
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=60, **kw)




@pytest.mark.parametrize("task", TASKS)
def test_every_task_predicts_over_http_as_deltatune_predict_does(server, task_runs, task):
    run, rows = task_runs[task]
    rows = rows[:3]
    r = post(server, {"model": task, "inputs": rows})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == task and body["task"] == task and len(body["predictions"]) == len(rows)
    expected = json.loads(json.dumps(deltatune.load(run, device="cpu").predict_rows(Dataset.from_list(rows), "test"), default=float))
    assert predictions_close(body["predictions"], expected), (body["predictions"], expected)


def test_hugging_face_input_shapes_are_mapped_to_the_runs_columns(server, task_runs):
    qa = task_runs["question-answering"][1][0]
    by_object = post(server, {"model": "question-answering", "inputs": {"question": qa["question"], "context": qa["context"]}})
    by_pair = post(server, {"model": "question-answering", "inputs": [[qa["question"], qa["context"]]]})
    assert by_object.status_code == by_pair.status_code == 200, by_object.text
    assert by_object.json()["predictions"] == by_pair.json()["predictions"]
    assert set(by_object.json()["predictions"][0]) == {"answer", "score", "start", "end"}
    chat = post(server, {"model": "instruction", "inputs": {"messages": [{"role": "user", "content": "What is 2 plus one?"}]}})
    assert chat.status_code == 200 and isinstance(chat.json()["predictions"][0]["generated"], str), chat.text
    text = post(server, {"model": "text-classification", "inputs": "a good film"})
    pred = text.json()["predictions"][0]
    assert set(pred) == {"label", "probabilities"} and math.isclose(sum(pred["probabilities"].values()), 1.0, rel_tol=1e-6)
    summary = post(server, {"model": "extractive-summarization", "inputs": [["One sentence here.", "Another sentence there."]]})
    assert summary.status_code == 200 and set(summary.json()["predictions"][0]) == {"summary", "sentence_indices", "scores"}
    ner = post(server, {"model": "token-classification", "inputs": "Ann lives in Paris"}).json()["predictions"][0]
    assert len(ner["tags"]) == 4 and all({"type", "text", "start", "end", "score"} == set(e) for e in ner["entities"])


def test_generation_parameters_apply_to_generative_runs_only(server):
    long = post(server, {"model": "causal-lm", "inputs": "The cat", "parameters": {"max_new_tokens": 12}})
    short = post(server, {"model": "causal-lm", "inputs": "The cat", "parameters": {"max_new_tokens": 1}})
    assert long.status_code == short.status_code == 200, long.text
    assert len(short.json()["predictions"][0]["generated"]) <= len(long.json()["predictions"][0]["generated"])
    refused = post(server, {"model": "text-classification", "inputs": "x", "parameters": {"max_new_tokens": 3}})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "parameters"
    no_sampling = post(server, {"model": "causal-lm", "inputs": "x", "parameters": {"top_p": 0.5}})
    assert no_sampling.status_code == 400 and "temperature" in no_sampling.json()["error"]["message"]


def test_the_api_key_is_required_except_for_health(server):
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.head(f"{server.url}/health").status_code == 200  # load balancers probe with HEAD
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        r = post(server, {"model": "text-classification", "inputs": "x"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", headers
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/v1/models").status_code == 401


BAD_BODIES = [
    # (body or raw bytes, status, param the error names)
    (b'{"inputs": ', 400, "body"),
    (b"not json at all", 400, "body"),
    ([], 422, "body"),
    ({"inputs": "x"}, 400, "model"),  # several models: name one
    ({"model": "text-classification"}, 422, "inputs"),
    ({"model": "text-classification", "inputs": []}, 400, "inputs"),
    ({"model": "text-classification", "inputs": ["ok", 2]}, 422, "inputs[1]"),
    (b'{"model": "text-classification", "inputs": ["ok", "bad \\ud800 text"]}', 400, "inputs[1]"),  # a lone surrogate
    ({"model": "causal-lm", "inputs": "x", "parameters": {"max_new_tokens": 100000}}, 400, "parameters.max_new_tokens"),
    ({"model": "text-classification", "inputs": None}, 422, "inputs"),
    ({"model": "text-classification", "inputs": ["ok", ""]}, 400, "inputs[1]"),
    ({"model": "text-classification", "inputs": ["x"] * 9}, 400, "inputs"),
    ({"model": "text-classification", "inputs": "x" * 2001}, 400, "inputs"),
    ({"model": "text-classification", "inputs": [["a", "b"]]}, 400, "inputs[0]"),
    ({"model": "text-classification", "inputs": {"text": "a", "text_pair": "b"}}, 400, "inputs.text_pair"),
    ({"model": "text-classification", "inputs": [{"wrong_column": "a"}]}, 400, "inputs[0]"),
    ({"model": "text-classification", "inputs": "x", "extra": 1}, 422, "extra"),
    ({"model": "no-such-model", "inputs": "x"}, 404, "model"),
    ({"model": 5, "inputs": "x"}, 422, "model"),
    ({"model": "question-answering", "inputs": "a bare string"}, 400, "inputs"),
    ({"model": "question-answering", "inputs": {"question": "q"}}, 400, "inputs"),
    ({"model": "text-classification", "inputs": {"messages": [{"role": "user", "content": "hi"}]}}, 400, "inputs.messages"),
    ({"model": "causal-lm", "inputs": "x", "parameters": {"max_new_tokens": 0}}, 400, "parameters.max_new_tokens"),
    ({"model": "causal-lm", "inputs": "x", "parameters": {"temperature": "hot"}}, 422, "parameters.temperature"),
    ({"model": "causal-lm", "inputs": "x", "parameters": {"beams": 2}}, 422, "parameters.beams"),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD_BODIES, ids=[str(i) for i in range(len(BAD_BODIES))])
def test_bad_input_is_a_4xx_naming_the_field(server, body, status, param):
    if isinstance(body, bytes):
        r = httpx.post(f"{server.url}/v1/predict", content=body, headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
    else:
        r = post(server, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and "Traceback" not in r.text


def test_body_size_limits_are_413_with_or_without_content_length(server):
    big = json.dumps({"model": "text-classification", "inputs": "x" * 200_000}).encode()
    r = httpx.post(f"{server.url}/v1/predict", content=big, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks():
        yield big[:50_000]
        yield big[50_000:]

    r = httpx.post(f"{server.url}/v1/predict", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413


def test_unknown_paths_and_methods_are_json_4xx(server):
    assert httpx.get(f"{server.url}/nothing", headers=AUTH).json()["error"]["code"] == "not_found"
    assert httpx.get(f"{server.url}/v1/predict", headers=AUTH).status_code == 405


def test_concurrent_requests_are_batched_and_metrics_count_them(server, task_runs):
    rows = task_runs["text-classification"][1]
    n = 24

    def one(i):
        return post(server, {"model": "text-classification", "inputs": rows[i % len(rows)]["text"]})

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(one, range(n)))
    assert all(a.status_code == 200 for a in answers)
    metrics = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    count = float(re.search(r'deltatune_batch_size_count\{model="text-classification"\} (\S+)', metrics).group(1))
    total = float(re.search(r'deltatune_batch_size_sum\{model="text-classification"\} (\S+)', metrics).group(1))
    assert total >= n and count < total, "no request shared a forward pass with another"
    assert re.search(r'deltatune_requests_total\{route="/v1/predict",status="200"\} \d+', metrics)
    assert re.search(r'deltatune_errors_total\{route="/v1/predict",status="4\d\d"\}', metrics)
    assert 'deltatune_request_latency_seconds_bucket{le="0.001",route="/v1/predict"}' in metrics


def test_the_openapi_schema_types_predictions_per_task(server):
    schema = httpx.get(f"{server.url}/openapi.json", headers=AUTH).json()
    names = set(schema["components"]["schemas"])
    assert {"ClassificationPrediction", "QuestionAnsweringPrediction", "TokenClassificationPrediction",
            "ExtractiveSummaryPrediction", "GenerationPrediction", "QuestionContext", "Conversation"} <= names


def test_serve_refuses_bad_arguments_before_loading_anything(tmp_path, task_runs):
    run = task_runs["text-classification"][0]
    cases = [
        ([str(tmp_path / "missing")], "no such run folder"),
        ([str(tmp_path)], "not a deltatune run directory"),
        ([f"a={run}", f"a={run}"], "two runs are served as model 'a'"),
        ([f"={run}"], "model id before '=' is empty"),
        ([str(run), "--port", "70000"], "port number"),
        ([str(run), "--max-batch-size", "0"], "max-batch-size"),
        ([str(run), "--api-key", " "], "--api-key is empty"),
        ([str(run), "--backend", "onnx"], "not an ONNX export"),
        ([str(run), "--device", "tpu"], "--device 'tpu'"),
        ([str(tmp_path / "file.txt")], "is a file"),
    ]
    (tmp_path / "file.txt").write_text("not a run")
    for args, message in cases:
        p = subprocess.run([sys.executable, "-m", "deltatune", "serve", *args], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and message in p.stderr, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_a_port_in_use_is_one_line_error(task_runs):
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen(1)
        p = subprocess.run([sys.executable, "-m", "deltatune", "serve", str(task_runs["text-classification"][0]), "--port", str(port)],
                           capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "cannot listen on 127.0.0.1" in p.stderr and "Traceback" not in p.stderr
