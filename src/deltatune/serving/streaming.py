"""Text generation for the OpenAI-compatible routes: batched (non-streamed) and streamed.

One core, :func:`generate_texts`, runs ``model.generate`` on a left-padded batch of prompts
(decoders only; padding as :mod:`deltatune.tasks.generation`) with two hooks of our own,
both public transformers interfaces:

- :class:`Sampler` (a ``LogitsProcessor``) chooses every row's next token itself: greedy
  (argmax) for rows with temperature 0, else temperature + nucleus (top-p) sampling
  (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration") drawn from the
  request's own ``torch.Generator`` (seeded by ``seed``), and hands ``generate`` scores that
  are ``-inf`` everywhere but at that token, which ``generate``'s greedy step then picks. So
  rows of one batch may have different temperatures and ``top_p``, and a seed never touches
  the global RNG other threads use.
- :class:`Controller` (a ``StoppingCriteria``) ends each row on its own: at EOS, when the
  text generated so far contains one of the row's stop sequences, or at its own
  ``max_tokens``; it records where and why each row ended (OpenAI's ``finish_reason``:
  ``stop`` for EOS or a stop sequence, ``length`` for ``max_tokens``), reports every step to
  a streaming consumer, and stops everything when the client went away.

Returned text is decoded without special tokens and without clean-up of tokenization spaces
(so that the text of a prefix of the tokens is a prefix of the text), cut before the first
stop sequence. ``completion_tokens`` counts the tokens generated for the choice, the one
that ended it (EOS or the end of a stop sequence) included.

Non-streamed requests go through :class:`CompletionBatcher` (a
:class:`deltatune.serving.batcher.DynamicBatcher` per served model): concurrent requests are
generated in one batch. Streamed requests run alone in a thread of their own
(:func:`stream_choices`).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Callable, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from deltatune.serving.batcher import DynamicBatcher
from deltatune.tasks.collate import pad_batch
from deltatune.tasks.generation import eos_token_ids

if TYPE_CHECKING:
    from deltatune.serving.pool import ServedModel
    from deltatune.serving.settings import ServeSettings


@dataclass(frozen=True)
class SamplingParams:
    """How one choice is generated.

    Attributes:
        max_tokens: most tokens to generate (>= 1).
        temperature: 0 = greedy decoding; > 0 divides the logits before sampling.
        top_p: nucleus mass in (0, 1]; 1 = no cut.
        stop: sequences that end the choice (cut from its text).
        seed: seeds the request's ``torch.Generator``; ``None``: a random seed.
    """

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Choice:
    """One generated choice: its text, OpenAI's ``finish_reason`` (``stop``/``length``) and the number of tokens generated."""

    text: str
    finish_reason: str
    completion_tokens: int


@dataclass
class StreamEvent:
    """What :func:`stream_choices` yields: new text of choice ``index`` (``delta``), and with
    ``finish_reason`` set, the last event of that choice with its ``completion_tokens``."""

    index: int
    delta: str
    finish_reason: str | None = None
    completion_tokens: int = 0


MIN_TEMPERATURE = 1e-4  # temperatures at or below it decode greedily


class Sampler(LogitsProcessor):
    """Chooses each row's next token (greedy or temperature/top-p sampling) with its own generator.

    Args:
        temperatures: (B,) float; 0 = greedy for that row.
        top_ps: (B,) float in (0, 1].
        generator: the ``torch.Generator`` samples are drawn from (on the scores' device).

    ``__call__(input_ids (B, T) int64, scores (B, V) float) -> (B, V)``: 0 at the chosen token,
    ``-inf`` elsewhere. Top-p keeps the smallest set of most probable tokens whose probability
    mass reaches ``top_p`` (as transformers' ``TopPLogitsWarper``).
    """

    def __init__(self, temperatures: torch.Tensor, top_ps: torch.Tensor, generator: torch.Generator):
        self.temperatures, self.top_ps, self.generator = temperatures, top_ps, generator

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        choice = scores.argmax(-1)
        rows = self.temperatures > MIN_TEMPERATURE  # below it, as at 0: greedy (a tiny float32 temperature overflows the softmax)
        if bool(rows.any()):
            probs = torch.softmax(scores[rows] / self.temperatures[rows, None], dim=-1)
            top_p = self.top_ps[rows, None]
            sorted_p, order = probs.sort(dim=-1, descending=True)
            before = sorted_p.cumsum(-1) - sorted_p  # mass of the more probable tokens
            drop = (before >= top_p) & (top_p < 1)
            drop[:, 0] = False  # the most probable token always stays (a top_p that rounds to 0 in float32)
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
            choice[rows] = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, choice[:, None], 0.0)


# why a row ended: EOS, a stop sequence, max_tokens
EOS, STOP, LENGTH = "eos", "stop", "length"

StepHook = Callable[[list, list], None]


class Controller(StoppingCriteria):
    """Ends each row at EOS, at a stop sequence or at its ``max_tokens``, and records where.

    Args:
        tokenizer: decodes the last tokens of a row to look for its stop sequences.
        prompt_width: T of the left-padded prompt batch (generated tokens start there).
        eos: token ids that end a generation.
        params: one :class:`SamplingParams` per row.
        cancel: when set, every row stops at the next step (client gone).
        on_step: ``on_step(tokens, ended)`` after every step, with per row the token it
            generated (``None`` for a row that had already ended) and why it ended at this step
            (``eos``/``stop``/``length``) or ``None``.

    After generation, ``end[b]`` is the number of tokens row ``b`` generated (the ending one
    included) and ``why[b]`` why it ended.
    """

    def __init__(self, tokenizer, prompt_width: int, eos: list[int], params: Sequence[SamplingParams], cancel=None, on_step: StepHook | None = None):
        self.tok, self.prompt_width, self.eos, self.params = tokenizer, prompt_width, set(eos), list(params)
        self.cancel, self.on_step = cancel, on_step
        self.end: list[int | None] = [None] * len(self.params)
        self.why: list[str | None] = [None] * len(self.params)
        # a stop sequence of k bytes lies within its row's last k + 2 tokens (every token is >= 1 byte)
        self.window = [max((len(s.encode()) for s in p.stop), default=0) + 2 for p in self.params]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        length = input_ids.shape[1] - self.prompt_width
        last = input_ids[:, -1].tolist()
        tokens: list[int | None] = [None] * len(last)
        ended: list[str | None] = [None] * len(last)
        for b, p in enumerate(self.params):
            if self.end[b] is not None:
                continue
            tokens[b] = last[b]
            why = None
            if last[b] in self.eos:
                why = EOS
            elif p.stop and _has_stop(self._tail(input_ids[b], self.window[b]), p.stop):
                why = STOP
            elif length >= p.max_tokens:
                why = LENGTH
            if why is not None:
                self.end[b], self.why[b], ended[b] = length, why, why
        if self.on_step is not None:
            self.on_step(tokens, ended)
        if self.cancel is not None and self.cancel.is_set():
            return torch.ones(len(last), dtype=torch.bool, device=input_ids.device)
        return torch.tensor([e is not None for e in self.end], dtype=torch.bool, device=input_ids.device)

    def _tail(self, row: torch.Tensor, window: int) -> str:
        start = max(self.prompt_width, row.shape[0] - window)
        return decode(self.tok, row[start:].tolist())


def decode(tokenizer, ids: list[int]) -> str:
    """Text of generated token ids: special tokens dropped, spaces not cleaned up."""
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _has_stop(text: str, stop: Sequence[str]) -> bool:
    return any(s in text for s in stop)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` before the first occurrence of any stop sequence, and whether one occurred."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def settled_text(text: str, stop: Sequence[str]) -> str:
    """The part of a still-growing text that can be streamed: without a trailing incomplete
    character (U+FFFD from a partial UTF-8 byte sequence) and without a tail that may be the
    start of a stop sequence."""
    text = text.rstrip("\ufffd")
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return text[: len(text) - hold]


def choice_text(tokenizer, ids: list[int], why: str | None, stop: Sequence[str]) -> str:
    """The text of a choice from its generated ids (``why``: how it ended, ``None`` if it has not)."""
    if why == EOS:
        ids = ids[:-1]
    text, _ = cut_at_stop(decode(tokenizer, ids), stop)
    return text


def generate_texts(
    served: "ServedModel",
    prompts: list[list[int]],
    params: Sequence[SamplingParams],
    generator: torch.Generator | None = None,
    cancel: threading.Event | None = None,
    on_step: StepHook | None = None,
) -> list[Choice]:
    """Generate one choice per prompt in one ``model.generate`` call (holding ``served.lock``).

    Args:
        served: a decoder run (:attr:`ServedModel.decoder`).
        prompts: token id lists (not empty), left-padded together.
        params: one :class:`SamplingParams` per prompt (rows may differ).
        generator: draws the samples; default: seeded with ``params[0].seed``, else randomly.
        cancel, on_step: see :class:`Controller`.

    Returns:
        one :class:`Choice` per prompt, in order.
    """
    pred = served.predictor
    model, tok, device = pred.model, pred.tokenizer, pred.device
    eos = eos_token_ids(model, tok)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0)
    feats = [{"input_ids": p, "attention_mask": [1] * len(p)} for p in prompts]
    batch = {k: v.to(device) for k, v in pad_batch(feats, {"input_ids": pad_id, "attention_mask": 0}, side="left").items()}
    width = batch["input_ids"].shape[1]
    if generator is None:
        generator = torch.Generator(device=device)
        if params[0].seed is not None:
            generator.manual_seed(params[0].seed)
        else:
            generator.seed()
    sampler = Sampler(
        torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device),
        torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device),
        generator,
    )
    control = Controller(tok, width, eos, params, cancel, on_step)
    with served.lock, torch.inference_mode():
        served.activate()
        seqs = model.generate(
            **batch,
            max_new_tokens=max(p.max_tokens for p in params),
            do_sample=False,
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
            logits_processor=LogitsProcessorList([sampler]),
            stopping_criteria=StoppingCriteriaList([control]),
            pad_token_id=pad_id,
            eos_token_id=eos or None,
        )
    new = seqs[:, width:].tolist()
    out = []
    for b, p in enumerate(params):
        end = control.end[b] if control.end[b] is not None else len(new[b])
        why = control.why[b] or LENGTH
        ids = new[b][:end]
        out.append(Choice(choice_text(tok, ids, why, p.stop), LENGTH if why == LENGTH else "stop", end))
    return out


@dataclass
class _Item:
    prompt: list[int]
    params: SamplingParams
    group: object | None  # seeded requests generate only with their own items
    gone: threading.Event | None = None  # set when the requesting client disconnected


class _AllGone:
    """Cancel flag of a batch: set once every request with rows in it is gone (the others still
    need their rows)."""

    def __init__(self, events: list[threading.Event | None]):
        self.events = events

    def is_set(self) -> bool:
        return all(e is not None and e.is_set() for e in self.events)


class CompletionBatcher:
    """Non-streamed generation of one served model, concurrent requests batched together.

    Requests arriving within ``settings.max_wait_ms`` of each other are generated in one
    ``model.generate`` call of at most ``settings.max_batch_size`` rows, whatever their
    temperature, ``top_p``, ``stop`` and ``max_tokens``. A request with a ``seed`` is generated
    only with its own choices, so the same request and seed give the same samples; greedy
    results may differ in the last floating-point digits with the batch they share (padding).
    ``on_batch(rows)`` is called for every batch the batcher gathers (metrics).
    """

    def __init__(self, served: "ServedModel", settings: "ServeSettings", on_batch: Callable[[int], None] | None = None):
        self.served, self.max_batch_size = served, settings.max_batch_size
        self.batcher = DynamicBatcher(self._run, settings.max_batch_size, settings.max_wait_ms, f"generate-{served.name}", on_batch)

    async def generate(
        self, prompts: list[list[int]], params: SamplingParams, n: int, gone: threading.Event | None = None
    ) -> list[list[Choice]]:
        """``n`` choices for each prompt: result ``[i][j]`` is choice ``j`` of prompt ``i``.

        ``gone``: set it when the client disconnected; generation of a batch stops at its next
        step once every request in it is gone.
        """
        group = object() if params.seed is not None else None
        items = [_Item(p, params, group, gone) for p in prompts for _ in range(n)]
        flat = await self.batcher.submit(items)
        return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _run(self, items: list[_Item]) -> list[Choice]:
        groups: dict[int, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(id(item.group), []).append(i)
        out: list[Choice | None] = [None] * len(items)
        for idx in groups.values():
            idx = sorted(idx, key=lambda i: -len(items[i].prompt))  # stable: a seeded request's rows keep their order
            first = items[idx[0]]
            generator = None
            if first.group is not None:
                generator = torch.Generator(device=self.served.predictor.device).manual_seed(first.params.seed)
            for start in range(0, len(idx), self.max_batch_size):
                chunk = idx[start : start + self.max_batch_size]
                cancel = _AllGone([items[i].gone for i in chunk])
                choices = generate_texts(self.served, [items[i].prompt for i in chunk], [items[i].params for i in chunk], generator, cancel)
                for i, c in zip(chunk, choices):
                    out[i] = c
        return out  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the batcher's worker thread."""
        self.batcher.close()


async def stream_choices(
    served: "ServedModel", prompts: list[list[int]], params: SamplingParams, n: int, max_batch_size: int
) -> AsyncIterator[StreamEvent]:
    """Stream ``n`` choices of every prompt as they are generated (choice ``i * n + j`` is
    choice ``j`` of prompt ``i``).

    Generation runs in a thread of its own, ``max_batch_size`` rows at a time, holding
    ``served.lock``. Text is released once settled (:func:`settled_text`); the deltas of a
    choice joined are exactly the text the non-streamed path returns for the same tokens. When
    the consumer stops iterating (client gone), generation stops at its next step.

    Raises:
        Exception: whatever generation raised.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()
    rows = [p for p in prompts for _ in range(n)]

    def put(msg) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, msg)
        except RuntimeError:  # the loop is closed: nobody is listening
            cancel.set()

    def work() -> None:
        try:
            generator = torch.Generator(device=served.predictor.device)
            generator.manual_seed(params.seed) if params.seed is not None else generator.seed()
            for start in range(0, len(rows), max_batch_size):
                chunk = rows[start : start + max_batch_size]
                hook = lambda tokens, ended, s=start: put(("step", s, tokens, ended))  # noqa: E731
                generate_texts(served, chunk, [params] * len(chunk), generator, cancel, hook)
                if cancel.is_set():
                    break
            put(("done",))
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            put(("error", e))

    ids: list[list[int]] = [[] for _ in rows]
    sent = [""] * len(rows)
    thread = threading.Thread(target=work, name=f"deltatune-stream-{served.name}", daemon=True)
    thread.start()
    tok = served.predictor.tokenizer
    try:
        while True:
            msg = await queue.get()
            if msg[0] == "done":
                return
            if msg[0] == "error":
                raise msg[1]
            _, start, tokens, ended = msg
            for k, (t, why) in enumerate(zip(tokens, ended)):
                if t is None:
                    continue
                i = start + k
                ids[i].append(t)
                text = choice_text(tok, ids[i], why, params.stop)
                if why is None:
                    text = settled_text(text, params.stop)
                delta = text[len(sent[i]) :] if text.startswith(sent[i]) else ""
                sent[i] += delta
                if why is not None:
                    yield StreamEvent(i, delta, LENGTH if why == LENGTH else "stop", len(ids[i]))
                elif delta:
                    yield StreamEvent(i, delta)
    finally:
        cancel.set()
