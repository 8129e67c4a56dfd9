"""The OpenAI-compatible routes against a real server, with the official ``openai`` client.

A tiny random Llama trained 1 step as an ``instruction`` run (mechanics: shapes, usage counts,
streaming == non-streamed, stop, n, seed, every 4xx), and a text classifier next to it (a run
that cannot chat). The slow test does the same on the packaged SmolLM2 trained 1 step on
alpaca rows. The server runs in this process (uvicorn in a thread, the app of ``deltatune
serve``), so tests can compare with the served model's own tokenizer.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from tests.tasks.demo_runs import demo_config

# ModelPool.load sets the process-wide torch thread count (as a server should): restored after the module
pytestmark = pytest.mark.usefixtures("one_thread")

API_KEY = "test-key"
CHAT = "tiny-chat"
MSGS = [{"role": "user", "content": "What is 3 plus one?"}]


@contextmanager
def running_server(runs: list[tuple[str, Path]], **limits):
    """(base URL, pool) of a server of ``runs`` listening on a free port of 127.0.0.1."""
    import uvicorn

    from deltatune.serving.app import create_app
    from deltatune.serving.pool import ModelPool
    from deltatune.serving.settings import ServeSettings

    settings = ServeSettings(device="cpu", api_key=API_KEY, max_wait_ms=20, **limits)
    pool = ModelPool(runs, settings)
    pool.load()
    app = create_app(pool, settings, [m.task_name for m in pool.models()])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", pool
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def chat_run(tiny_llama_dir, tmp_path_factory) -> Path:
    """A 1-step instruction run of the tiny Llama on its demo rows."""
    import deltatune
    from deltatune.tasks.language_modeling import InstructionTask

    cfg, _ = demo_config("instruction", InstructionTask, tiny_llama_dir, tmp_path_factory.mktemp("openai"), max_steps=1)
    cfg["eval"]["max_new_tokens"] = 6
    return deltatune.finetune(cfg, verbose=False).path


@pytest.fixture(scope="module")
def server(chat_run, classifier_run):
    """(base URL, pool): the chat run and a classifier, with small limits to test them."""
    with running_server([(CHAT, chat_run), ("classifier", classifier_run)], max_new_tokens_limit=64, max_n=4, max_input_tokens=240) as s:
        yield s


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def prompt_ids(pool, messages) -> list[int]:
    served = pool.get(CHAT)
    return served.predictor.task.chat_prompt_ids(served.predictor.tokenizer, messages)


def greedy(client, messages=MSGS, **kw):
    return client.chat.completions.create(model=CHAT, messages=messages, temperature=0, **kw)


def stream_text(client, **kw) -> tuple[dict[int, str], dict[int, str], list]:
    """(text per choice, finish_reason per choice, chunks) of a streamed chat completion."""
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    chunks = list(client.chat.completions.create(**{"model": CHAT, **kw}, stream=True))
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                reasons[ch.index] = ch.finish_reason
    return texts, reasons, chunks


def test_models_are_listed_and_retrieved(client):
    ids = [m.id for m in client.models.list()]
    assert ids == [CHAT, "classifier"]
    m = client.models.retrieve(CHAT)
    assert m.id == CHAT and m.object == "model" and m.owned_by == "deltatune" and m.created > 0
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("nope")
    assert e.value.body["param"] == "model"


def test_chat_completion_counts_tokens_as_the_run_renders_the_prompt(client, server):
    r = greedy(client, max_tokens=5)
    assert r.object == "chat.completion" and r.model == CHAT and r.id.startswith("chatcmpl-")
    (choice,) = r.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert r.usage.prompt_tokens == len(prompt_ids(server[1], MSGS))
    if choice.finish_reason == "length":
        assert r.usage.completion_tokens == 5
    else:
        assert choice.finish_reason == "stop" and 1 <= r.usage.completion_tokens <= 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # defaults: the run's eval settings (greedy, eval.max_new_tokens = 6)
    d = client.chat.completions.create(model=CHAT, messages=MSGS)
    assert d.usage.completion_tokens <= 6 and d.choices[0].message.content == greedy(client, max_tokens=6).choices[0].message.content


def test_streamed_deltas_join_to_the_non_streamed_text_and_usage_comes_last(client):
    want = greedy(client, max_tokens=12)
    texts, reasons, chunks = stream_text(client, messages=MSGS, temperature=0, max_tokens=12, stream_options={"include_usage": True})
    assert texts == {0: want.choices[0].message.content} and reasons == {0: want.choices[0].finish_reason}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == want.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


def test_the_stream_is_server_sent_events_ending_with_done(server):
    body = {"model": CHAT, "messages": MSGS, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server[0] + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    last = json.loads(events[-2][6:])
    assert last["choices"][0]["finish_reason"] in ("stop", "length") and last["choices"][0]["delta"] == {}


def test_stop_sequences_end_the_text_before_them(client):
    full = greedy(client, max_tokens=12).choices[0].message.content
    assert len(full) > 6, full
    stop = full[3:6]
    cut = full[: full.index(stop)]
    r = greedy(client, max_tokens=12, stop=[stop, "never-appears"])
    assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 12
    texts, reasons, _ = stream_text(client, messages=MSGS, temperature=0, max_tokens=12, stop=stop)
    assert texts == {0: cut} and reasons == {0: "stop"}


def test_n_choices_greedy_are_identical_and_seeded_samples_repeat(client):
    r = greedy(client, max_tokens=4, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2] and len({c.message.content for c in r.choices}) == 1
    assert r.usage.completion_tokens % 3 == 0 and 3 <= r.usage.completion_tokens <= 12  # 3 identical choices
    kw = dict(model=CHAT, messages=MSGS, temperature=1.0, top_p=0.95, max_tokens=8, n=2, seed=11)
    a = [c.message.content for c in client.chat.completions.create(**kw).choices]
    b = [c.message.content for c in client.chat.completions.create(**kw).choices]
    assert a == b and a[0] != a[1]  # 8 tokens of a random 49k-vocabulary model: two samples differ
    texts, _, _ = stream_text(client, **kw)
    assert [texts[0], texts[1]] == a


def test_completions_take_texts_and_token_ids(client, server):
    tok = server[1].get(CHAT).predictor.tokenizer
    prompt = "The cat sat on"
    r = client.completions.create(model=CHAT, prompt=prompt, max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.usage.prompt_tokens == len(tok(prompt)["input_ids"])
    text = r.choices[0].text
    same = client.completions.create(model=CHAT, prompt=tok(prompt)["input_ids"], max_tokens=5, temperature=0)
    assert same.choices[0].text == text
    echo = client.completions.create(model=CHAT, prompt=prompt, max_tokens=5, temperature=0, echo=True)
    assert echo.choices[0].text == prompt + text
    two = client.completions.create(model=CHAT, prompt=[prompt, "Once upon"], max_tokens=3, temperature=0, n=2)
    assert [c.index for c in two.choices] == [0, 1, 2, 3] and two.choices[0].text == two.choices[1].text == text[: len(two.choices[0].text)]
    assert two.usage.prompt_tokens == len(tok(prompt)["input_ids"]) + len(tok("Once upon")["input_ids"])
    streamed: dict[int, str] = {}
    for c in client.completions.create(model=CHAT, prompt=prompt, max_tokens=5, temperature=0, stream=True):
        for ch in c.choices:
            streamed[ch.index] = streamed.get(ch.index, "") + ch.text
    assert streamed == {0: text}


def test_concurrent_requests_are_answered_like_single_ones(client):
    want = greedy(client, max_tokens=6).choices[0].message.content
    stop_want = greedy(client, max_tokens=6, stop=want[2:4]).choices[0].message.content
    with ThreadPoolExecutor(6) as ex:
        same = [ex.submit(greedy, client, max_tokens=6) for _ in range(4)]
        other = ex.submit(greedy, client, max_tokens=6, stop=want[2:4])
        sampled = ex.submit(client.chat.completions.create, model=CHAT, messages=MSGS, temperature=1.0, max_tokens=3)
        assert [f.result().choices[0].message.content for f in same] == [want] * 4
        assert other.result().choices[0].message.content == stop_want
        assert sampled.result().usage.completion_tokens <= 3


def test_a_client_leaving_a_stream_frees_the_model(client):
    stream = client.chat.completions.create(model=CHAT, messages=MSGS, max_tokens=60, temperature=0, stream=True)
    next(iter(stream))
    stream.close()
    t = time.perf_counter()
    assert greedy(client, max_tokens=2).choices[0].message.content is not None
    assert time.perf_counter() - t < 30


@pytest.mark.parametrize(
    "kw, status, param",
    [
        ({"model": "nope"}, 404, "model"),
        ({"model": "classifier"}, 400, "model"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role"),
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"max_tokens": 65}, 400, "max_tokens"),
        ({"max_completion_tokens": 1000}, 400, "max_completion_tokens"),
        ({"temperature": 2.5}, 400, "temperature"),
        ({"temperature": -1}, 400, "temperature"),
        ({"top_p": 0}, 400, "top_p"),
        ({"top_p": 1.5}, 400, "top_p"),
        ({"n": 0}, 400, "n"),
        ({"seed": 10**30, "temperature": 1}, 400, "seed"),
        ({"n": 5}, 400, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"stop": ""}, 400, "stop"),
        ({"messages": [{"role": "user", "content": "word " * 250}]}, 400, "messages"),  # > max_input_tokens 240
        ({"messages": [{"role": "user", "content": "word " * 170}], "max_tokens": 60}, 400, "messages"),  # 201 + 60 > context 256
    ],
)
def test_bad_chat_requests_are_4xx_naming_the_field(client, kw, status, param):
    body = {"model": CHAT, "messages": MSGS, **kw}
    errors = {400: openai.BadRequestError, 404: openai.NotFoundError, 422: openai.UnprocessableEntityError}
    with pytest.raises(errors[status]) as e:
        client.chat.completions.create(**body)
    assert e.value.status_code == status and e.value.body["param"] == param, e.value.body
    assert e.value.body["message"] and e.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": CHAT, "messages": MSGS, "max_tokens": "many"}, 422, "max_tokens"),
        ({"model": CHAT, "messages": "hello"}, 422, "messages"),
        ({"model": CHAT, "messages": MSGS, "stream": "sometimes"}, 422, "stream"),
        ({"model": CHAT, "messages": [{"role": "user"}], "n": 1, "user": "extra fields are ignored"}, 200, None),
    ],
)
def test_wrong_types_are_422_and_extra_fields_are_ignored(server, body, status, param):
    r = httpx.post(server[0] + "/v1/chat/completions", json={**body, "max_tokens": body.get("max_tokens", 2)} if status == 200 else body,
                   headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert r.status_code == status, r.text
    if param is not None:
        assert r.json()["error"]["param"] == param


@pytest.mark.parametrize(
    "kw, param",
    [({"prompt": ""}, "prompt"), ({"prompt": []}, "prompt"), ({"prompt": [10**9]}, "prompt"), ({"prompt": ["a", ""]}, "prompt[1]"),
     ({"prompt": "word " * 300}, "prompt"), ({"model": "classifier"}, "model")],
)
def test_bad_completion_requests_are_400(client, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**{"model": CHAT, "prompt": "hi", "max_tokens": 2, **kw})
    assert e.value.body["param"] == param, e.value.body


def test_a_wrong_api_key_is_401(server):
    bad = openai.OpenAI(base_url=server[0] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


ALPACA = Path(__file__).resolve().parents[3] / "shared" / "data" / "text_generation" / "alpaca_en_demo" / "alpaca_en_demo.json"


@pytest.mark.slow
def test_a_smollm2_instruction_run_with_the_openai_client(smollm2_dir, tmp_path):
    """SmolLM2-135M-Instruct trained 1 LoRA step on 4 short alpaca rows answers through the official client."""
    import deltatune

    if not ALPACA.is_file():
        pytest.skip(f"{ALPACA} not available")
    rows = [r for r in json.loads(ALPACA.read_text()) if len(r["output"]) < 300][:4]
    train = tmp_path / "train.json"
    train.write_text(json.dumps(rows))
    cfg = {
        "task": "instruction",
        "output_dir": str(tmp_path / "run"),
        "seed": 7,
        "model": {"name_or_path": smollm2_dir},
        "data": {"train_file": str(train), "max_seq_length": 256},
        "delta": {"method": "lora"},
        "train": {"per_device_train_batch_size": 2, "max_steps": 1, "progress_bar": False},
        "eval": {"eval_strategy": "no"},
    }
    run = deltatune.finetune(cfg, verbose=False).path
    with running_server([("smol", run)]) as (url, pool):
        client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
        assert [m.id for m in client.models.list()] == ["smol"]
        msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
        r = client.chat.completions.create(model="smol", messages=msgs, temperature=0, max_tokens=16)
        answer = r.choices[0].message.content
        assert "paris" in answer.lower(), answer
        served = pool.get("smol")
        assert r.usage.prompt_tokens == len(served.predictor.task.chat_prompt_ids(served.predictor.tokenizer, msgs))
        assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens < 16  # ends with <|im_end|>
        texts, reasons, chunks = stream_text(client, model="smol", messages=msgs, temperature=0, max_tokens=16, stream_options={"include_usage": True})
        texts_model = {0: answer}
        assert texts == texts_model and reasons == {0: "stop"} and chunks[-1].usage.model_dump() == r.usage.model_dump()
        two = client.chat.completions.create(model="smol", messages=msgs, temperature=0.8, max_tokens=8, n=2, seed=1)
        assert len(two.choices) == 2 and all(c.message.content for c in two.choices)
        words = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
                                               temperature=0, max_tokens=40, stop=["5"])
        assert "5" not in words.choices[0].message.content and words.choices[0].finish_reason == "stop"
        c = client.completions.create(model="smol", prompt="The capital of France is", max_tokens=4, temperature=0)
        assert c.usage.prompt_tokens == len(served.predictor.tokenizer("The capital of France is")["input_ids"]) and c.choices[0].text
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="smol", messages=msgs, max_tokens=10**6)


def test_the_sampler_is_greedy_at_temperature_0_and_keeps_the_top_p_mass():
    import torch

    from deltatune.serving.streaming import Sampler

    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]] * 3))
    gen = torch.Generator().manual_seed(0)
    sampler = Sampler(torch.tensor([0.0, 1.0, 1.0]), torch.tensor([1.0, 0.5, 1.0]), gen)
    seen: list[set[int]] = [set(), set(), set()]
    for _ in range(300):
        out = sampler(torch.zeros(3, 1, dtype=torch.long), logits)
        assert ((out == 0).sum(-1) == 1).all() and torch.isinf(out).sum() == 9
        for b in range(3):
            seen[b].add(int(out[b].argmax()))
    assert seen == [{0}, {0, 1}, {0, 1, 2, 3}]  # greedy; the smallest set with mass >= 0.5; everything
    a = Sampler(torch.tensor([1.0]), torch.tensor([1.0]), torch.Generator().manual_seed(5))
    b = Sampler(torch.tensor([1.0]), torch.tensor([1.0]), torch.Generator().manual_seed(5))
    assert [int(a(None, logits[:1]).argmax()) for _ in range(20)] == [int(b(None, logits[:1]).argmax()) for _ in range(20)]


def test_streamed_text_holds_back_partial_characters_and_stop_prefixes():
    from deltatune.serving.streaming import cut_at_stop, settled_text

    assert settled_text("caf\ufffd", ()) == "caf"
    assert settled_text("hello wor", ("world", "x")) == "hello "
    assert settled_text("hello", ("world",)) == "hello"
    assert cut_at_stop("one, two. three. four", (". ", "four")) == ("one, two", True)
    assert cut_at_stop("abc", ("z",)) == ("abc", False)


def test_generation_stops_at_the_next_step_when_cancelled(server):
    from deltatune.serving.streaming import SamplingParams, generate_texts

    served = server[1].get(CHAT)
    cancel, steps = threading.Event(), []

    def on_step(tokens, ended):
        steps.append(tokens)
        if len(steps) == 2:
            cancel.set()

    generate_texts(served, [[1, 2, 3]], [SamplingParams(max_tokens=50)], cancel=cancel, on_step=on_step)
    assert len(steps) == 2


def test_concurrent_completions_are_generated_in_one_batch(server):
    import asyncio

    from deltatune.serving.settings import ServeSettings
    from deltatune.serving.streaming import CompletionBatcher, SamplingParams

    served, sizes = server[1].get(CHAT), []
    batcher = CompletionBatcher(served, ServeSettings(max_batch_size=8, max_wait_ms=200), sizes.append)
    greedy_params, stop_params = SamplingParams(max_tokens=4), SamplingParams(max_tokens=3, stop=("zzz",))

    async def main():
        return await asyncio.gather(
            batcher.generate([[5, 6, 7]], greedy_params, 2),
            batcher.generate([[8, 9]], stop_params, 1),
            batcher.generate([[5, 6, 7], [1]], SamplingParams(max_tokens=2, temperature=1.0), 1),
        )

    try:
        a, b, c = asyncio.run(main())
    finally:
        batcher.close()
    assert sizes == [5]  # 2 + 1 + 2 rows of three requests, whatever their settings
    assert a[0][0] == a[0][1] and a[0][0].completion_tokens <= 4 and b[0][0].completion_tokens <= 3
    assert [len(x) for x in c] == [1, 1] and all(x[0].completion_tokens <= 2 for x in c)


@pytest.mark.parametrize(
    "raw, param",
    [
        (b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "a lone \\ud800 surrogate"}]}', "messages[0].content"),
        (b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "stop": "\\udfff"}', "stop"),
        (b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "stream": true, "seed": 100000000000000000000000}', "seed"),
    ],
)
def test_lone_surrogates_and_huge_seeds_are_400_before_any_stream(server, raw, param):
    r = httpx.post(server[0] + "/v1/chat/completions", content=raw, timeout=60,
                   headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_a_top_p_or_temperature_that_rounds_to_zero_still_samples(server):
    for body in ({"top_p": 1e-320, "temperature": 1}, {"temperature": 1e-30}):
        r = httpx.post(server[0] + "/v1/chat/completions", timeout=60, headers={"Authorization": f"Bearer {API_KEY}"},
                       json={"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **body})
        assert r.status_code == 200, r.text
