"""OpenAI-compatible routes for decoder runs: ``/v1/chat/completions``, ``/v1/completions``,
``/v1/models``.

The official ``openai`` client works against them unchanged
(``OpenAI(base_url="http://HOST:PORT/v1", api_key=...)``), streaming included. Shapes follow
OpenAI's API reference (https://platform.openai.com/docs/api-reference); what differs:

- ``temperature``, ``top_p`` and ``max_tokens`` left out keep the run's ``eval`` settings
  (greedy decoding unless the run set ``eval.do_sample``; ``eval.max_new_tokens`` capped by
  the server's limit and the model's context), where OpenAI samples at temperature 1.
- ``n`` > 1 at temperature 0 returns ``n`` identical greedy choices; with a temperature > 0,
  ``n`` independent samples. ``seed`` makes a request's samples reproducible.
- ``logprobs``, ``presence_penalty``, ``frequency_penalty``, ``logit_bias``, tools,
  ``response_format``, ``suffix`` and ``best_of`` are accepted and ignored; beam search
  (``eval.num_beams``) is not used here.
- A chat prompt is rendered as training rendered it (the run's chat template, system prompt
  and BOS: :meth:`deltatune.tasks.GenerativeTask.chat_prompt_ids`); a completion prompt is
  the raw text tokenized as the tokenizer does (BOS as it adds it), or token ids.

Bad requests raise :class:`deltatune.serving.http_errors.ApiError` (a 4xx with OpenAI's error
body naming the field as ``param``). Generation itself is :mod:`deltatune.serving.streaming`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
import threading
from typing import AsyncIterator, Awaitable, Callable, TypeVar, Union

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from deltatune.errors import DeltatuneError
from deltatune.serving.http_errors import ApiError, check_unicode
from deltatune.serving.openai_schemas import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    ChunkDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Model,
    ModelList,
    ResponseMessage,
    Usage,
)
from deltatune.serving.pool import ModelPool, ServedModel
from deltatune.serving.settings import ServeSettings
from deltatune.serving.streaming import Choice, CompletionBatcher, SamplingParams, stream_choices

SSE_MEDIA_TYPE = "text/event-stream"
T = TypeVar("T")


def openai_router(pool: ModelPool, settings: ServeSettings, on_batch: Callable[[str, int], None] | None = None) -> APIRouter:
    """The OpenAI-compatible routes over ``pool``'s models (paths start with ``/v1``).

    Args:
        pool: the served models.
        settings: the limits (``max_new_tokens_limit``, ``max_n``, ``max_input_tokens``,
            ``max_inputs``) and batching (``max_batch_size``, ``max_wait_ms``).
        on_batch: called with (model id, rows) for every batched ``generate`` call of
            non-streamed completions (metrics).

    ``router.close()`` (an attribute set here) stops the batchers' worker threads; the app
    calls it at shutdown.
    """
    api = OpenAIRoutes(pool, settings, on_batch)
    router = APIRouter(tags=["OpenAI-compatible"])

    @router.get("/v1/models", response_model=ModelList, summary="The served models")
    async def list_models() -> ModelList:
        if not pool.ready:
            raise ApiError(503, "the server is still loading its models; retry when GET /health says ready", code="loading")
        return ModelList(data=[api.model_card(s) for s in pool.models()])

    @router.get("/v1/models/{model_id:path}", response_model=Model, summary="One served model")
    async def get_model(model_id: str) -> Model:
        return api.model_card(pool.get(model_id))

    @router.post(
        "/v1/chat/completions",
        response_model=None,
        responses={200: {"model": ChatCompletion, "description": "the completion; with stream: server-sent chat.completion.chunk events"}},
        summary="Answer a conversation (decoder runs)",
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Union[ChatCompletion, StreamingResponse]:
        return await api.chat(body, request)

    @router.post(
        "/v1/completions",
        response_model=None,
        responses={200: {"model": Completion, "description": "the completion; with stream: server-sent text_completion events"}},
        summary="Continue a prompt (decoder runs)",
    )
    async def completions(body: CompletionRequest, request: Request) -> Union[Completion, StreamingResponse]:
        return await api.complete(body, request)

    router.close = api.close  # type: ignore[attr-defined]
    return router


class OpenAIRoutes:
    """What the routes do, with one :class:`CompletionBatcher` per served model (made on first use)."""

    def __init__(self, pool: ModelPool, settings: ServeSettings, on_batch: Callable[[str, int], None] | None = None):
        self.pool, self.settings, self.on_batch = pool, settings, on_batch
        self._batchers: dict[str, CompletionBatcher] = {}

    def model_card(self, served: ServedModel) -> Model:
        """A served model as ``/v1/models`` lists it."""
        return Model(id=served.name, created=served.created, task=served.task_name)

    def close(self) -> None:
        """Stop every batcher's worker thread."""
        for b in self._batchers.values():
            b.close()
        self._batchers.clear()

    def _batcher(self, served: ServedModel) -> CompletionBatcher:
        if served.name not in self._batchers:
            hook = None if self.on_batch is None else (lambda rows, name=served.name: self.on_batch(name, rows))
            self._batchers[served.name] = CompletionBatcher(served, self.settings, hook)
        return self._batchers[served.name]

    async def chat(self, req: ChatCompletionRequest, request: Request | None = None) -> Union[ChatCompletion, StreamingResponse]:
        """``POST /v1/chat/completions``.

        Raises:
            ApiError: unknown model (404); a run that does not take chat messages, a template
                that fails on the messages, limits exceeded (400, naming the field).
        """
        check_unicode(req.model_dump())
        served = self.pool.get(req.model)
        if not served.chat:
            raise ApiError(400, f"model {served.name!r} is a {served.task_name} run{_kind(served)}; it does not answer chat messages: send its inputs to POST /v1/predict", param="model")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        pred = served.predictor
        try:
            prompt = await _tokenizing(served, lambda: pred.task.chat_prompt_ids(pred.tokenizer, messages))
        except DeltatuneError as e:
            raise ApiError(400, f"messages: {e}", param="messages") from None
        max_field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        params = self._params(req, served, [prompt], req.max_completion_tokens or req.max_tokens, max_field, "messages")
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(self._chat_chunks(served, prompt, params, req.n, rid, created, usage))
        choices = (await _unless_gone(request, lambda gone: self._batcher(served).generate([prompt], params, req.n, gone)))[0]
        return ChatCompletion(
            id=rid,
            created=created,
            model=served.name,
            choices=[ChatChoice(index=j, message=ResponseMessage(content=c.text), finish_reason=c.finish_reason) for j, c in enumerate(choices)],
            usage=_usage([prompt], choices),
        )

    async def complete(self, req: CompletionRequest, request: Request | None = None) -> Union[Completion, StreamingResponse]:
        """``POST /v1/completions``.

        Raises:
            ApiError: unknown model (404); not a decoder run, an empty prompt, token ids
                outside the vocabulary, too many prompts, limits exceeded (400, naming the field).
        """
        check_unicode(req.model_dump())
        served = self.pool.get(req.model)
        if not served.decoder:
            raise ApiError(400, f"model {served.name!r} is a {served.task_name} run{_kind(served)}; completions need a decoder run: send its inputs to POST /v1/predict", param="model")
        prompts = await _tokenizing(served, lambda: self._prompt_ids(served, req.prompt))
        params = self._params(req, served, prompts, req.max_tokens, "max_tokens", "prompt")
        tok = served.predictor.tokenizer
        echoes = [tok.decode(p, skip_special_tokens=True, clean_up_tokenization_spaces=False) if req.echo else "" for p in prompts]
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(self._completion_chunks(served, prompts, echoes, params, req.n, rid, created, usage))
        results = await _unless_gone(request, lambda gone: self._batcher(served).generate(prompts, params, req.n, gone))
        choices = [
            CompletionChoice(index=i * req.n + j, text=echoes[i] + c.text, finish_reason=c.finish_reason)
            for i, per_prompt in enumerate(results)
            for j, c in enumerate(per_prompt)
        ]
        return Completion(id=rid, created=created, model=served.name, choices=choices, usage=_usage(prompts, [c for r in results for c in r]))

    def _prompt_ids(self, served: ServedModel, prompt) -> list[list[int]]:
        """The prompts of a completion request as token id lists.

        Raises:
            ApiError: no prompt, an empty prompt, more prompts than ``settings.max_inputs``,
                token ids outside the vocabulary (400, ``param="prompt"``).
        """
        tok = served.predictor.tokenizer
        if isinstance(prompt, str):
            prompts = [tok(prompt)["input_ids"]]
        elif prompt and isinstance(prompt[0], str):
            prompts = [tok(p)["input_ids"] for p in prompt]
        elif prompt and isinstance(prompt[0], int):
            prompts = [list(prompt)]
        else:
            prompts = [list(p) for p in prompt]
        if not prompts:
            raise ApiError(400, "prompt is an empty list; give a text, a list of texts or token ids", param="prompt")
        if len(prompts) > self.settings.max_inputs:
            raise ApiError(400, f"{len(prompts)} prompts in one request; this server takes at most {self.settings.max_inputs}", param="prompt")
        vocab = len(tok)
        for i, p in enumerate(prompts):
            where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            if not p:
                raise ApiError(400, f"{where} is empty (no token); give some text to continue", param=where)
            bad = next((t for t in p if not 0 <= t < vocab), None)
            if bad is not None:
                raise ApiError(400, f"{where} holds token id {bad}, outside the vocabulary (0..{vocab - 1})", param=where)
        return prompts

    def _params(self, req, served: ServedModel, prompts: list[list[int]], asked: int | None, max_field: str, prompt_field: str) -> SamplingParams:
        """The request's sampling settings, the run's ``eval`` settings filling what it leaves out.

        Raises:
            ApiError: ``max_tokens`` over ``settings.max_new_tokens_limit``; ``n`` over
                ``settings.max_n``; more than 4 or empty ``stop`` sequences; a prompt longer than
                ``settings.max_input_tokens``, or prompt + ``max_tokens`` beyond the model's
                context (400, naming the field).
        """
        s, ev = self.settings, served.predictor.config.eval
        if asked is not None and asked > s.max_new_tokens_limit:
            raise ApiError(400, f"{max_field} is {asked}; this server generates at most {s.max_new_tokens_limit} tokens per choice (serve --max-new-tokens-limit)", param=max_field)
        if req.n > s.max_n:
            raise ApiError(400, f"n is {req.n}; this server returns at most {s.max_n} choices per prompt", param="n")
        stop = req.stop_list()
        if len(stop) > 4 or any(not x for x in stop):
            raise ApiError(400, "stop takes 1 to 4 non-empty sequences", param="stop")
        longest = max(len(p) for p in prompts)
        if longest > s.max_input_tokens:
            raise ApiError(400, f"the prompt has {longest} tokens; this server takes at most {s.max_input_tokens} (serve --max-input-tokens): shorten it", param=prompt_field)
        context = context_length(served)
        room = None if context is None else context - longest
        if room is not None and room < 1:
            raise ApiError(400, f"the prompt has {longest} tokens and fills the model's context of {context}: shorten it", param=prompt_field)
        if asked is None:
            max_tokens = min(ev.max_new_tokens, s.max_new_tokens_limit, room if room is not None else ev.max_new_tokens)
        elif room is not None and asked > room:
            raise ApiError(
                400,
                f"the prompt has {longest} tokens and {max_field} asks for {asked} more: beyond the model's context of {context} tokens; shorten the prompt or lower {max_field}",
                param=prompt_field,
            )
        else:
            max_tokens = asked
        sampling = ev.do_sample and ev.num_beams == 1
        temperature = req.temperature if req.temperature is not None else (ev.temperature if sampling else 0.0)
        top_p = req.top_p if req.top_p is not None else (ev.top_p if sampling else 1.0)
        return SamplingParams(max_tokens, float(temperature), float(top_p), stop, req.seed)

    async def _chat_chunks(
        self, served: ServedModel, prompt: list[int], params: SamplingParams, n: int, rid: str, created: int, include_usage: bool
    ) -> AsyncIterator[str]:
        """The events of a streamed chat completion: a role chunk per choice, text chunks, a last
        chunk per choice with its ``finish_reason``, the usage chunk when asked for."""

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
            return _event(ChatCompletionChunk(id=rid, created=created, model=served.name, choices=choices, usage=usage))

        for j in range(n):
            yield chunk([ChunkChoice(index=j, delta=ChunkDelta(role="assistant", content=""))])
        completion = 0
        async with contextlib.aclosing(stream_choices(served, [prompt], params, n, self.settings.max_batch_size)) as events:
            async for ev in events:
                if ev.delta:
                    yield chunk([ChunkChoice(index=ev.index, delta=ChunkDelta(content=ev.delta))])
                if ev.finish_reason is not None:
                    completion += ev.completion_tokens
                    yield chunk([ChunkChoice(index=ev.index, delta=ChunkDelta(), finish_reason=ev.finish_reason)])
        if include_usage:
            yield chunk([], Usage(prompt_tokens=len(prompt), completion_tokens=completion, total_tokens=len(prompt) + completion))

    async def _completion_chunks(
        self, served: ServedModel, prompts: list[list[int]], echoes: list[str], params: SamplingParams, n: int, rid: str, created: int, include_usage: bool
    ) -> AsyncIterator[str]:
        """The events of a streamed text completion: text chunks (the prompt first with
        ``echo``), a last chunk per choice with its ``finish_reason``, the usage chunk when asked for."""

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
            return _event(Completion(id=rid, created=created, model=served.name, choices=choices, usage=usage))

        for i, echo in enumerate(echoes):
            for j in range(n):
                if echo:
                    yield chunk([CompletionChoice(index=i * n + j, text=echo)])
        completion = 0
        async with contextlib.aclosing(stream_choices(served, prompts, params, n, self.settings.max_batch_size)) as events:
            async for ev in events:
                if ev.delta or ev.finish_reason is not None:
                    completion += ev.completion_tokens
                    yield chunk([CompletionChoice(index=ev.index, text=ev.delta, finish_reason=ev.finish_reason)])
        if include_usage:
            prompt_tokens = sum(len(p) for p in prompts)
            yield chunk([], Usage(prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion))


async def _unless_gone(request: Request | None, start: Callable[[threading.Event], Awaitable[T]]) -> T:
    """``await start(gone)``, setting ``gone`` when the client disconnects first (the generation
    then stops at its next step, once no other client waits for its batch)."""
    gone = threading.Event()
    work = asyncio.ensure_future(start(gone))
    if request is None:
        return await work

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not work.done():
        gone.set()
        work.cancel()
        raise ApiError(499, "the client closed the connection before the answer", code="client_closed_request")  # nobody reads it
    return work.result()


async def _tokenizing(served: ServedModel, fn: Callable[[], T]) -> T:
    """``fn()`` (which tokenizes) in a worker thread holding the model's lock: a fast tokenizer
    changes its truncation state when called, so two threads must not use it at once (the
    batchers' threads encode and decode under the same lock)."""

    def locked() -> T:
        with served.lock:
            return fn()

    return await asyncio.to_thread(locked)


def context_length(served: ServedModel) -> int | None:
    """The model's context in tokens (``max_position_embeddings`` or ``n_positions`` of its
    config), or ``None`` when the config names none."""
    config = served.predictor.model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _kind(served: ServedModel) -> str:
    if served.backend != "torch":
        return f" served with the {served.backend} backend"
    return "" if served.decoder or not served.generative else " on an encoder-decoder model"


def _usage(prompts: list[list[int]], choices: list[Choice]) -> Usage:
    """Each prompt counted once, every choice's generated tokens."""
    prompt = sum(len(p) for p in prompts)
    completion = sum(c.completion_tokens for c in choices)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _event(body) -> str:
    return f"data: {body.model_dump_json()}\n\n"


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    """A server-sent event stream ending with ``data: [DONE]``; an error during generation is
    sent as an ``{"error": ...}`` event (the ``openai`` client raises it) before the end."""

    async def body() -> AsyncIterator[str]:
        try:
            try:
                async for e in events:
                    yield e
            except Exception as e:  # noqa: BLE001 - the status line is sent: report it in the stream
                err = ApiError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error")
                yield f"data: {json.dumps(err.body())}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away: generation stops at its next step
            await events.aclose()

    return StreamingResponse(body(), media_type=SSE_MEDIA_TYPE, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
