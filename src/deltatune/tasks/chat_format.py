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
from typing import Any, Sequence

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


def detect_format(columns: Sequence[str]) -> str:
    """The SFT format implied by the column names.

    Raises:
        DeltatuneError: no known combination of columns.
    """
    cols = set(columns)
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if "messages" in cols or "conversations" in cols:
        return "messages"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    raise DeltatuneError(
        f"cannot tell the instruction format from columns {sorted(cols)}: expected instruction/input/output (Alpaca), "
        "messages or conversations (chat), or prompt/completion; set data.format"
    )


def row_to_messages(row: dict[str, Any], fmt: str, row_number: int, source: str) -> list[dict[str, str]]:
    """One row as a list of ``{"role", "content"}`` messages.

    Raises:
        DeltatuneError: missing fields or malformed message lists, naming file and row.
    """
    def need(key: str) -> str:
        v = row.get(key)
        if v is None or (isinstance(v, float) and v != v):
            raise DeltatuneError(f"{source}: row {row_number} has no '{key}'")
        return str(v)

    if fmt == "alpaca":
        user = need("instruction")
        extra = row.get("input")
        if isinstance(extra, str) and extra.strip():
            user = f"{user}\n\n{extra}"
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": need("output")}]
        if isinstance(row.get("system"), str) and row["system"].strip():
            msgs.insert(0, {"role": "system", "content": row["system"]})
        return msgs
    if fmt == "prompt_completion":
        return [{"role": "user", "content": need("prompt")}, {"role": "assistant", "content": need("completion")}]
    if fmt == "messages":
        raw = row.get("messages") if row.get("messages") is not None else row.get("conversations")
        if not isinstance(raw, (list, tuple)) or not raw:
            raise DeltatuneError(f"{source}: row {row_number}: 'messages' must be a non-empty list of {{role, content}}")
        msgs = []
        for m in raw:
            if not isinstance(m, dict):
                raise DeltatuneError(f"{source}: row {row_number}: each message must be an object with role and content")
            role = m.get("role", m.get("from"))
            content = m.get("content", m.get("value"))
            role = SHAREGPT_ROLES.get(str(role).lower()) if role is not None else None
            if role is None or content is None:
                raise DeltatuneError(f"{source}: row {row_number}: a message lacks a known role (system/user/assistant) or content")
            msgs.append({"role": role, "content": str(content)})
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
        else:
            self.template = NAMED_TEMPLATES.get(template, template)
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise DeltatuneError("the tokenizer has no EOS token; generation could never stop. Use a model with an eos_token")
        probe = tokenizer("a")["input_ids"]
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id] else None

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """The chat template applied to ``messages`` as text."""
        return self.tok.apply_chat_template(
            messages, chat_template=self.template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

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
        for i, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], add_generation_prompt=True)
            full = self.render(messages[: i + 1], add_generation_prompt=False)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise DeltatuneError("the chat template does not render conversations incrementally; choose data.chat_template chatml")
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
