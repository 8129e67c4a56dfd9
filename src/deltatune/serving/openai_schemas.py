"""Request and response bodies of the OpenAI-compatible routes (``/v1/chat/completions``,
``/v1/completions``, ``/v1/models``).

The shapes follow OpenAI's API reference (https://platform.openai.com/docs/api-reference/chat,
``/completions``, ``/models``) so that the official ``openai`` client works unchanged. Requests
allow and ignore fields we do not implement (clients send ``presence_penalty``, ``user``,
``logit_bias``, ...); the fields we read carry their ranges as constraints, so FastAPI rejects a
bad value with the field's path before a route runs. Limits that depend on the server
(``max_tokens`` and ``n`` caps, the prompt length) are checked by the routes
(:mod:`deltatune.serving.openai_api`).
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_serializer


class _Request(BaseModel):
    """Fields not declared here are accepted and ignored (OpenAI clients send many)."""

    model_config = ConfigDict(extra="allow")


class TextPart(BaseModel):
    """One part of a message's content given as a list (only ``type: "text"`` parts are taken)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    """One message of the conversation: ``developer`` is OpenAI's newer name for ``system``.

    ``content`` is text, or a list of text parts (joined without separator), or ``null`` (an
    empty assistant turn).
    """

    role: Literal["system", "developer", "user", "assistant"]
    content: Optional[Union[str, list[TextPart]]] = None

    def text(self) -> str:
        """The content as one string."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Request):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage and no choices."""

    include_usage: bool = False


class _SamplingFields(_Request):
    """What chat and text completions share.

    ``temperature``/``top_p``/``max_tokens`` left out keep the run's ``eval`` settings
    (greedy unless the run set ``eval.do_sample``; ``eval.max_new_tokens``).
    """

    model: Optional[str] = Field(default=None, description="the served model id (GET /v1/models)")
    max_tokens: Optional[int] = Field(default=None, ge=1, description="most tokens to generate per choice")
    temperature: Optional[float] = Field(default=None, ge=0, le=2, description="0: greedy decoding")
    top_p: Optional[float] = Field(default=None, gt=0, le=1, description="nucleus sampling mass (Holtzman et al. 2020)")
    n: int = Field(default=1, ge=1, description="choices per prompt")
    stop: Optional[Union[str, list[str]]] = Field(
        default=None, description="up to 4 non-empty sequences that end a choice (not returned); checked by the route"
    )
    seed: Optional[int] = Field(default=None, ge=0, le=2**63 - 1, description="same seed and request: same samples (0 to 2**63-1)")
    stream: bool = False
    stream_options: Optional[StreamOptions] = None

    def stop_list(self) -> tuple[str, ...]:
        """``stop`` as a tuple (empty when unset)."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1, description="OpenAI's newer name of max_tokens; wins when both are given")


class CompletionRequest(_SamplingFields):
    """``POST /v1/completions``: ``prompt`` is a text, a list of texts, token ids, or a list of token id lists."""

    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = False


class Usage(BaseModel):
    """Token counts of a request: the prompt(s) once each, the completion tokens of every choice."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class ResponseMessage(BaseModel):
    """The assistant's answer."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    """The body of a non-streamed chat completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: Optional[str] = None


class ChunkDelta(BaseModel):
    """What a chunk adds to a choice: the role in the first chunk, then text."""

    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler):
        """Only the fields a chunk carries (``{}`` in a choice's last chunk), as OpenAI sends them."""
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: Optional[FinishReason] = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Optional[Usage] = None
    system_fingerprint: Optional[str] = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Optional[FinishReason] = None
    logprobs: None = None


class Completion(BaseModel):
    """The body of a text completion, and (with ``finish_reason`` null until the end) of each streamed chunk."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None
    system_fingerprint: Optional[str] = None


class Model(BaseModel):
    """A served model, as ``GET /v1/models`` lists it; ``task`` is deltatune's (an extra field)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "deltatune"
    task: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
