"""Rows → chat messages → token ids with a trained-token mask, for decoder SFT.

Formats (``data.format``, detected from the columns when ``auto``):
- ``alpaca``: ``instruction``, optional ``input``, ``output`` (optional ``system``);
- ``messages``: a ``messages`` column of ``{"role", "content"}`` lists, or ShareGPT's
  ``conversations`` of ``{"from", "value"}`` (human/gpt/system);
- ``prompt_completion``: ``prompt`` and ``completion``.

Encoding renders the conversation with the model's chat template (``tokenizer.chat_template``),
or a named template when the model has none, and trains exactly the assistant turns: each
assistant turn's tokens up to and including its end-of-turn/EOS token have labels; every other
token (system, user, template markup, the generation prompt) is -100. If an assistant turn's
rendering has no EOS, one is appended and trained. A single BOS starts the sequence when the
tokenizer uses one and the template does not already emit it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import jinja2

from deltatune.errors import DeltatuneError

IGNORE_INDEX = -100

# ChatML, used when a model has no chat template of its own (as in many base models)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Stanford Alpaca's prompt format (Taori et al. 2023), as a chat template
ALPACA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)
NAMED_TEMPLATES = {"chatml": CHATML_TEMPLATE, "alpaca": ALPACA_TEMPLATE}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system", "model": "assistant"}


def detect_format(columns: Sequence[str], with_answer: bool = True) -> str:
    """The SFT format implied by the column names.

    Args:
        columns: the data's column names.
        with_answer: False for prediction inputs, which may lack the answer column
            (``instruction`` alone is Alpaca, ``prompt`` alone is prompt/completion).

    Raises:
        DeltatuneError: no known combination of columns.
    """
    cols = set(columns)
    if {"instruction", "output"} <= cols or (not with_answer and "instruction" in cols):
        return "alpaca"
    if "messages" in cols or "conversations" in cols:
        return "messages"
    if {"prompt", "completion"} <= cols or (not with_answer and "prompt" in cols):
        return "prompt_completion"
    raise DeltatuneError(
        f"cannot tell the instruction format from columns {sorted(cols)}: expected instruction/input/output (Alpaca), "
        "messages or conversations (chat), or prompt/completion; set data.format"
    )


def message_text(value: Any, where: str) -> str:
    """A message's content as text.

    Strings are kept; numbers become their text; OpenAI-style content parts
    (``[{"type": "text", "text": ...}, ...]``) are concatenated, as chat templates render them.

    Raises:
        DeltatuneError: any other value (a list of non-text parts, an object), naming ``where``.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return str(value)
    if isinstance(value, (list, tuple)) and value and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value
    ):
        return "".join(p["text"] for p in value)
    raise DeltatuneError(f"{where} must be text, got {type(value).__name__} {str(value)[:60]!r}; give a string")


def parse_messages(value: Any, where: str) -> list[dict[str, str]]:
    """A list of ``{role, content}`` (or ShareGPT ``{from, value}``) messages, normalised to
    ``{"role": system|user|assistant, "content": str}``.

    Raises:
        DeltatuneError: not a non-empty list of message objects, an unknown role, missing or
            non-text content, naming ``where`` and the message (from 1).
    """
    if not isinstance(value, (list, tuple)) or not value:
        raise DeltatuneError(f"{where}: messages must be a non-empty list of {{role, content}}")
    out = []
    for k, m in enumerate(value, start=1):
        if not isinstance(m, dict):
            raise DeltatuneError(f"{where}: message {k} must be an object with role and content")
        raw_role = m.get("role", m.get("from"))
        role = SHAREGPT_ROLES.get(str(raw_role).lower()) if raw_role is not None else None
        if role is None:
            raise DeltatuneError(f"{where}: message {k} has role {raw_role!r}; use system/user/assistant (ShareGPT: system/human/gpt)")
        content = m.get("content", m.get("value"))
        if content is None:
            raise DeltatuneError(f"{where}: message {k} ({raw_role}) has no content")
        out.append({"role": role, "content": message_text(content, f"{where}: message {k} content")})
    return out


def row_to_messages(
    row: dict[str, Any], fmt: str, row_number: int, source: str, with_answer: bool = True
) -> list[dict[str, str]]:
    """One row as a list of ``{"role", "content"}`` messages.

    Args:
        with_answer: False for prediction inputs: the answer field (``output``,
            ``completion``) may be absent and is not returned; a conversation may end
            without an assistant turn.

    Raises:
        DeltatuneError: missing or empty fields, non-text content, unknown roles, or a
            conversation without a user turn before its first assistant turn, naming file and row.
    """
    at = f"{source}: row {row_number}"

    def need(key: str) -> str:
        v = row.get(key)
        if v is None or (isinstance(v, float) and v != v):
            raise DeltatuneError(f"{at} has no '{key}'")
        text = message_text(v, f"{at}: '{key}'")
        if not text.strip():
            raise DeltatuneError(f"{at} has an empty '{key}'; fill it or drop the row")
        return text

    if fmt == "alpaca":
        user = need("instruction")
        extra = row.get("input")
        if extra is not None and not (isinstance(extra, float) and extra != extra):
            extra = message_text(extra, f"{at}: 'input'")
            if extra.strip():
                user = f"{user}\n\n{extra}"
        msgs = [{"role": "user", "content": user}]
        if with_answer:
            msgs.append({"role": "assistant", "content": need("output")})
        if isinstance(row.get("system"), str) and row["system"].strip():
            msgs.insert(0, {"role": "system", "content": row["system"]})
        return msgs
    if fmt == "prompt_completion":
        msgs = [{"role": "user", "content": need("prompt")}]
        if with_answer:
            msgs.append({"role": "assistant", "content": need("completion")})
        return msgs
    if fmt == "messages":
        raw = row.get("messages") if row.get("messages") is not None else row.get("conversations")
        msgs = parse_messages(raw, at)
        for k, m in enumerate(msgs, start=1):
            if m["role"] == "assistant" and with_answer and not m["content"].strip():
                raise DeltatuneError(f"{at}: message {k} is an empty assistant turn; fill it or drop the row")
        first_assistant = next((k for k, m in enumerate(msgs) if m["role"] == "assistant"), None)
        if first_assistant is not None and not any(m["role"] == "user" for m in msgs[:first_assistant]):
            raise DeltatuneError(f"{at}: the conversation has an assistant turn before any user turn; start it with a user message")
        if with_answer and first_assistant is None:
            raise DeltatuneError(f"{at}: the conversation has no assistant turn, so nothing would be trained; add one or drop the row")
        return msgs
    raise DeltatuneError(f"unknown data.format '{fmt}'; use alpaca, messages or prompt_completion")


@dataclass
class EncodeStats:
    """Counts from encoding a split, for the pre-flight report."""

    examples: int = 0
    truncated: int = 0
    dropped_no_trained_tokens: int = 0
    eos_appended: int = 0
    double_bos: int = 0
    trained_tokens: int = 0
    total_tokens: int = 0
    dropped_rows: list = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        d = dict(self.__dict__)
        d["dropped_rows"] = d["dropped_rows"][:20]
        return d

    def summary(self) -> str:
        """The counts as one line of ``deltatune check``; the counts a subclass adds (preference
        pairs: ``dropped_identical`` ...) follow by name, then the first dropped row numbers."""
        line = (
            f"examples {self.examples} | truncated {self.truncated} | dropped (no trained token) {self.dropped_no_trained_tokens}"
            f" | EOS appended {self.eos_appended} | double BOS {self.double_bos} | trained tokens {self.trained_tokens}"
            f" of {self.total_tokens} ({100 * self.trained_tokens / max(self.total_tokens, 1):.1f}%)"
        )
        return " | ".join([line, *self.extra_counts()])

    def extra_counts(self) -> list[str]:
        """``"name value"`` of the integer counts a subclass adds, and the first dropped row numbers."""
        base = set(EncodeStats.__dataclass_fields__)
        extra = [f"{k.replace('_', ' ')} {v}" for k, v in self.__dict__.items() if k not in base and isinstance(v, int)]
        if self.dropped_rows:
            more = f", ... ({len(self.dropped_rows) - 20} more)" if len(self.dropped_rows) > 20 else ""
            extra.append(f"dropped rows {', '.join(map(str, self.dropped_rows[:20]))}{more}")
        return extra


class ChatEncoder:
    """Turns message lists into (input_ids, labels) with assistant-only labels.

    Args:
        tokenizer: a Hugging Face tokenizer; its ``chat_template`` is used unless
            ``template`` names or gives another.
        template: ``None`` (the model's template, else ChatML), ``"chatml"``, ``"alpaca"``, or a
            Jinja chat template string.
        max_seq_length: sequences are cut to this many tokens.
    """

    def __init__(self, tokenizer, template: str | None, max_seq_length: int):
        self.tok = tokenizer
        self.max_len = max_seq_length
        if template is None:
            self.template = tokenizer.chat_template or CHATML_TEMPLATE
        elif template in NAMED_TEMPLATES:
            self.template = NAMED_TEMPLATES[template]
        elif "{{" in template or "{%" in template:
            self.template = template
        else:
            raise DeltatuneError(
                f"data.chat_template {template!r} is neither a template name ({', '.join(NAMED_TEMPLATES)}) nor a Jinja "
                "chat template; leave it unset to use the model's own"
            )
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise DeltatuneError(
                "the tokenizer has no EOS token, so generation could never stop: decoder tasks (instruction, causal-lm, "
                "prompted summarization/translation/generative-qa) need a decoder model (GPT-like) with an eos_token"
            )
        probe = [{"role": "user", "content": "PROBE_USER_7"}, {"role": "assistant", "content": "PROBE_ANSWER_7"}]
        rendered = self.render(probe, add_generation_prompt=False)
        if "PROBE_USER_7" not in rendered or "PROBE_ANSWER_7" not in rendered:
            raise DeltatuneError(
                "the chat template (data.chat_template or the model's) does not write the messages' content into the "
                "text; use a template that renders message['content'] (or chatml / alpaca)"
            )
        probe = tokenizer("a")["input_ids"]
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id] else None

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """The chat template applied to ``messages`` as text.

        Raises:
            DeltatuneError: the template is not valid Jinja or fails on these messages.
        """
        return render_chat(self.tok, messages, self.template, add_generation_prompt)

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` followed by the assistant generation prompt (for generation)."""
        ids = self._ids(self.render(messages, add_generation_prompt=True))
        if self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids = [self.bos_id] + ids
        return ids

    def encode(self, messages: list[dict[str, str]], stats: EncodeStats | None = None) -> tuple[list[int], list[int]] | None:
        """(input_ids, labels) for one conversation, or ``None`` if no trained token survives truncation."""
        st = stats if stats is not None else EncodeStats()
        ids: list[int] = []
        labels: list[int] = []
        done = ""
        eos_added = False
        for prompt, full in assistant_turns(self.render, messages, "choose data.chat_template chatml"):
            masked = self._ids(prompt[len(done) :])
            answer = self._ids(full[len(prompt) :])
            if self.eos_id in answer:
                cut = len(answer) - answer[::-1].index(self.eos_id)  # through the last EOS of the turn
                trained, tail = answer[:cut], answer[cut:]
            else:
                trained, tail = answer + [self.eos_id], []
                eos_added = True
            ids += masked + trained + tail
            labels += [IGNORE_INDEX] * len(masked) + trained + [IGNORE_INDEX] * len(tail)
            done = full
        rest = self._ids(self.render(messages, add_generation_prompt=False)[len(done) :]) if done else []
        ids += rest
        labels += [IGNORE_INDEX] * len(rest)
        if self.bos_id is not None:
            if ids[:1] != [self.bos_id]:
                ids, labels = [self.bos_id] + ids, [IGNORE_INDEX] + labels
            elif ids[1:2] == [self.bos_id]:
                st.double_bos += 1
        st.examples += 1
        st.eos_appended += int(eos_added)
        if len(ids) > self.max_len:
            st.truncated += 1
            ids, labels = ids[: self.max_len], labels[: self.max_len]
        n_trained = sum(1 for x in labels if x != IGNORE_INDEX)
        if n_trained == 0:
            st.dropped_no_trained_tokens += 1
            return None
        st.trained_tokens += n_trained
        st.total_tokens += len(ids)
        return ids, labels


def mark_trained(tokenizer, ids: list[int], labels: Any) -> str:
    """Decode ``ids`` with the trained spans (labels != -100) wrapped in [[ ]]."""
    if not isinstance(labels, list) or len(labels) != len(ids):
        return tokenizer.decode(ids)
    out, span, trained = [], [], None
    for tok, lab in zip(ids, labels):
        t = lab != -100
        if trained is not None and t != trained:
            text = tokenizer.decode(span)
            out.append(f"[[{text}]]" if trained else text)
            span = []
        span.append(tok)
        trained = t
    if span:
        text = tokenizer.decode(span)
        out.append(f"[[{text}]]" if trained else text)
    return "".join(out)


def render_chat(renderer, messages: list[dict[str, Any]], template: str | None, add_generation_prompt: bool) -> str:
    """``renderer.apply_chat_template(messages, tokenize=False)``: the chat as text. ``renderer`` is a
    tokenizer or a multimodal processor (both have the method); ``template`` overrides its own.

    Raises:
        DeltatuneError: the template is not valid Jinja or fails on these messages.
    """
    try:
        return renderer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt)
    except jinja2.TemplateError as e:
        raise DeltatuneError(f"the chat template failed: {type(e).__name__}: {e}; check data.chat_template") from None


def assistant_turns(render, messages: list[dict[str, Any]], remedy: str) -> Iterator[tuple[str, str]]:
    """``(prompt, full)`` per assistant turn: the conversation rendered up to the turn with the
    generation prompt, and through the turn; ``render(messages, add_generation_prompt)`` is the
    chat template. Each turn's texts must extend the previous turn's ``full``, so the assistant
    text is ``full[len(prompt):]``.

    Raises:
        DeltatuneError: the template does not render the conversation incrementally (``remedy`` says what to do).
    """
    done = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = render(messages[:i], add_generation_prompt=True)
        full = render(messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise DeltatuneError(f"the chat template does not render conversations incrementally; {remedy}")
        yield prompt, full
        done = full
