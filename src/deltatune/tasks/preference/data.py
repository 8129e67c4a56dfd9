"""Preference rows → prompt messages and responses → token ids, for dpo, orpo, simpo and kto.

Formats (:func:`detect_preference_format`):

- ``pairs``: a prompt column and a chosen and a rejected response (``data.prompt_column``,
  ``data.chosen_column``, ``data.rejected_column``). The prompt is a string (HH-RLHF
  ``"\\n\\nHuman: ...\\n\\nAssistant:"`` markup is split into turns, :func:`hh_messages`; plain text
  is one user turn) or a list of ``{"role", "content"}`` / ShareGPT ``{"from", "value"}``
  messages. A response is a string, or a list of messages whose last one is the response.
- ``dialogues``: only chosen and rejected, each a full dialogue (HH-RLHF's own files); the
  shared beginning is the prompt (:func:`split_dialogues`).
- ``unpaired`` (kto): ``prompt``, ``completion`` and ``label`` (true = desirable).

Encoding (:class:`PreferenceEncoder`) renders the prompt with the chat template and its
generation prompt, exactly as :class:`deltatune.tasks.chat_format.ChatEncoder` does for
generation (one BOS), and appends the assistant turn as the template renders it, through its
EOS. Chosen and rejected share the same prompt ids; labels are -100 over the prompt. A pair
too long for ``data.max_seq_length`` keeps its whole responses and loses prompt tokens from
the left (as TRL's ``truncation_mode="keep_end"``); a pair whose longer response leaves no
room for a prompt token is dropped and counted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from deltatune.errors import DeltatuneError
from deltatune.tasks.chat_format import IGNORE_INDEX, ChatEncoder, EncodeStats, message_text, parse_messages

HH_ASSISTANT = "\n\nAssistant:"
_HH_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_TRUE = {"true": True, "false": False}


@dataclass
class PreferenceStats(EncodeStats):
    """Counts from reading and encoding a preference split, for the pre-flight report.

    Inherited fields: ``examples`` (rows read, counted by :func:`read_example`, dropped rows
    included), ``truncated`` (pairs or completions whose prompt was cut from the left to fit),
    ``trained_tokens`` (tokens with labels, chosen and rejected together), ``total_tokens``
    (all tokens of chosen and rejected sequences), ``eos_appended`` (responses whose template
    rendering had no EOS), ``double_bos`` (prompts whose template already emitted the BOS the
    tokenizer adds), ``dropped_rows`` (1-based row numbers of every dropped row).
    """

    dropped_identical: int = 0
    dropped_empty: int = 0
    dropped_too_long: int = 0


@dataclass
class PreferenceExample:
    """One preference row, read.

    Attributes:
        prompt: ``{"role", "content"}`` messages ending with a user turn.
        chosen: paired formats: the preferred response text (stripped).
        rejected: paired formats: the dispreferred response text (stripped).
        completion: unpaired (kto): the response text (stripped).
        label: unpaired: True when the completion is desirable.
    """

    prompt: list[dict[str, str]]
    chosen: Optional[str] = None
    rejected: Optional[str] = None
    completion: Optional[str] = None
    label: Optional[bool] = None


def detect_preference_format(
    columns: Iterable[str],
    paired: bool,
    prompt_column: str = "prompt",
    chosen_column: str = "chosen",
    rejected_column: str = "rejected",
    source: Optional[str] = None,
) -> str:
    """The preference format implied by the column names.

    Args:
        columns: the data's column names.
        paired: True for dpo/orpo/simpo (chosen and rejected), False for kto.
        prompt_column, chosen_column, rejected_column: the configured names
            (``data.prompt_column`` etc.); kto reads ``prompt_column`` (``prompt``: kto has no
            column options), ``completion`` and ``label``.
        source: the file, named at the start of the error message.

    Returns:
        ``"pairs"`` (prompt, chosen, rejected), ``"dialogues"`` (chosen and rejected only: full
        dialogues whose shared beginning is the prompt) or ``"unpaired"`` (prompt, completion, label).

    Raises:
        DeltatuneError: no such combination, naming ``source``, the columns found and those
            expected (kto: the columns to rename, its names being fixed).
    """
    cols = set(columns)
    at = f"{source}: " if source else ""
    if paired:
        if {prompt_column, chosen_column, rejected_column} <= cols:
            return "pairs"
        if {chosen_column, rejected_column} <= cols:
            return "dialogues"
        raise DeltatuneError(
            f"{at}cannot read preference pairs from columns {sorted(cols)}: expected '{prompt_column}', '{chosen_column}' "
            f"and '{rejected_column}' (or only '{chosen_column}' and '{rejected_column}' holding full dialogues); "
            "set data.prompt_column, data.chosen_column and data.rejected_column to your column names"
        )
    if {prompt_column, "completion", "label"} <= cols:
        return "unpaired"
    missing = [c for c in (prompt_column, "completion", "label") if c not in cols]
    raise DeltatuneError(
        f"{at}cannot read KTO rows from columns {sorted(cols)}: no {', '.join(repr(c) for c in missing)}; KTO reads the "
        f"columns '{prompt_column}', 'completion' and 'label' (true = desirable), names that are fixed: rename your "
        f"columns to {prompt_column}, completion and label"
    )


def hh_messages(text: str, where: str) -> list[dict[str, str]]:
    """An HH-RLHF dialogue string as chat messages.

    ``"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:"`` gives
    ``[user a, assistant b, user c]``: turns split at ``"\\n\\nHuman:"`` / ``"\\n\\nAssistant:"``
    (or either marker at the very start), contents stripped, a trailing empty ``Assistant:``
    (the generation prompt) dropped. Text without any ``Human:`` marker is one user turn.

    Raises:
        DeltatuneError: text before the first marker, naming ``where``.
    """
    marks = list(_HH_MARKER.finditer(text))
    if not any(m.group(1) == "Human" for m in marks):
        return [{"role": "user", "content": text.strip()}]
    if text[: marks[0].start()].strip():
        raise DeltatuneError(
            f"{where}: text before the first 'Human:'/'Assistant:' turn ({text[:40]!r}); an HH-style dialogue must start "
            "with '\\n\\nHuman:'"
        )
    msgs = []
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        msgs.append({"role": _HH_ROLES[m.group(1)], "content": text[m.end() : end].strip()})
    if msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
        msgs.pop()
    return msgs


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    """A list of messages, normalised (:func:`deltatune.tasks.chat_format.parse_messages`); a
    value that is not a list asks for text or messages."""
    if not isinstance(value, (list, tuple)) or not value:
        raise DeltatuneError(f"{where} must be text or a non-empty list of {{role, content}} messages")
    return parse_messages(value, where)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _dialogue(value: Any, where: str) -> str | list[dict[str, str]]:
    if _is_missing(value):
        raise DeltatuneError(f"{where} is missing; fill it or drop the row")
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) and m.get("type") != "text" for m in value):
        return _messages(value, where)
    return message_text(value, where)


def split_dialogues(
    chosen: str | Sequence[dict], rejected: str | Sequence[dict], where: str
) -> tuple[list[dict[str, str]], str, str]:
    """The shared prompt of two full dialogues that differ only in their final assistant turn.

    Strings (HH-RLHF): the longest common prefix, cut back to its last ``"\\n\\nAssistant:"``, is
    the prompt (parsed with :func:`hh_messages`); the responses are the rest, stripped, and must
    not start another ``Human:`` turn. Message lists (``{role, content}`` or ShareGPT): the
    shared leading messages are the prompt; each side's rest must be exactly one assistant
    message. Identical dialogues give identical responses (the caller drops them).

    Returns:
        ``(prompt messages, chosen text, rejected text)``.

    Raises:
        DeltatuneError: ``f"{where}: chosen and rejected share no prompt ..."`` when there is no
            shared beginning ending at an assistant marker (strings), or the dialogues differ
            before their final assistant turn.
    """
    refuse = DeltatuneError(
        f"{where}: chosen and rejected share no prompt (they must be full dialogues that differ only in their final "
        "assistant turn); give a prompt column (data.prompt_column) or fix the row"
    )
    if isinstance(chosen, str) and isinstance(rejected, str):
        common = os.path.commonprefix([chosen, rejected])
        cut = common.rfind(HH_ASSISTANT)
        if cut < 0:
            raise refuse
        prefix = common[: cut + len(HH_ASSISTANT)]
        rest_c, rest_r = chosen[len(prefix) :], rejected[len(prefix) :]
        if "\n\nHuman:" in rest_c or "\n\nHuman:" in rest_r:
            raise refuse
        prompt = hh_messages(prefix, where)
        if prompt[-1]["role"] != "user":
            raise refuse
        return prompt, rest_c.strip(), rest_r.strip()
    c = chosen if not isinstance(chosen, str) else hh_messages(chosen, where)
    r = rejected if not isinstance(rejected, str) else hh_messages(rejected, where)
    c, r = _messages(c, f"{where}: chosen"), _messages(r, f"{where}: rejected")
    shared = 0
    while shared < min(len(c), len(r)) - 1 and c[shared] == r[shared]:
        shared += 1
    last_ok = all(len(side) == shared + 1 and side[-1]["role"] == "assistant" for side in (c, r))
    if shared == 0 or not last_ok or c[shared - 1]["role"] != "user":
        raise refuse
    return c[:shared], c[-1]["content"].strip(), r[-1]["content"].strip()


def _prompt(value: Any, where: str) -> list[dict[str, str]]:
    """The prompt column's value as messages ending with a user turn."""
    if _is_missing(value):
        raise DeltatuneError(f"{where} is missing; fill it or drop the row")
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) and m.get("type") != "text" for m in value):
        msgs = _messages(value, where)
    else:
        msgs = hh_messages(message_text(value, where), where)
    if not any(m["content"].strip() for m in msgs):
        raise DeltatuneError(f"{where} is empty; fill it or drop the row")
    if msgs[-1]["role"] != "user":
        raise DeltatuneError(f"{where} must end with a user turn (it ends with a {msgs[-1]['role']} turn); the response goes in its own column")
    return msgs


def _response(value: Any, prompt: list[dict[str, str]], where: str) -> str:
    """A response column's text: a string, or messages whose last one is the assistant response and
    whose earlier ones, if any, repeat the prompt (all of it, or its end; system turns ignored)."""
    if _is_missing(value):
        raise DeltatuneError(f"{where} is missing; fill it or drop the row")
    if not (isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) and m.get("type") != "text" for m in value)):
        return message_text(value, where).strip()
    msgs = _messages(value, where)
    if msgs[-1]["role"] != "assistant":
        raise DeltatuneError(f"{where}: the last message must be the assistant response (it is a {msgs[-1]['role']} turn)")

    def turns(ms):
        return [(m["role"], m["content"].strip()) for m in ms if m["role"] != "system"]

    earlier, said = turns(msgs[:-1]), turns(prompt)
    if earlier and said[len(said) - len(earlier) :] != earlier:
        raise DeltatuneError(
            f"{where}: the messages before the response differ from the prompt; give only the response, or the prompt's "
            "conversation followed by it"
        )
    return msgs[-1]["content"].strip()


def _label(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE:
        return _TRUE[value.strip().lower()]
    raise DeltatuneError(f"{where} is {value!r}; use true (desirable) or false (undesirable), or 1/0")


def _drop(stats: PreferenceStats, row_number: int, counter: str) -> None:
    setattr(stats, counter, getattr(stats, counter) + 1)
    stats.dropped_rows.append(row_number)


def read_example(
    row: dict,
    fmt: str,
    row_number: int,
    source: str,
    stats: PreferenceStats,
    *,
    prompt_column: str = "prompt",
    chosen_column: str = "chosen",
    rejected_column: str = "rejected",
    system_prompt: Optional[str] = None,
) -> Optional[PreferenceExample]:
    """One row as a :class:`PreferenceExample`, or ``None`` when the row is dropped.

    Counts the row in ``stats.examples``. Dropped (counted, row number appended to
    ``stats.dropped_rows``): an empty response (``dropped_empty``), chosen equal to rejected
    after stripping (``dropped_identical``). ``system_prompt`` is inserted as the first
    message when the prompt has no system turn.

    Args:
        row: the row's values by column.
        fmt: ``"pairs"``, ``"dialogues"`` or ``"unpaired"`` (:func:`detect_preference_format`).
        row_number: 1-based, for messages and ``dropped_rows``.
        source: the file, for messages.

    Raises:
        DeltatuneError: ``f"{source}: row {row_number} ..."``: a missing, empty or non-text
            prompt, a prompt not ending with a user turn, a missing or non-text response,
            response messages that do not end with the assistant turn or do not repeat the
            prompt, dialogues sharing no prompt, or (unpaired) a label that is not
            true/false/1/0.
    """
    at = f"{source}: row {row_number}"
    stats.examples += 1
    if fmt == "pairs":
        prompt = _prompt(row.get(prompt_column), f"{at}: '{prompt_column}'")
        chosen = _response(row.get(chosen_column), prompt, f"{at}: '{chosen_column}'")
        rejected = _response(row.get(rejected_column), prompt, f"{at}: '{rejected_column}'")
    elif fmt == "dialogues":
        prompt, chosen, rejected = split_dialogues(
            _dialogue(row.get(chosen_column), f"{at}: '{chosen_column}'"),
            _dialogue(row.get(rejected_column), f"{at}: '{rejected_column}'"),
            at,
        )
    elif fmt == "unpaired":
        prompt = _prompt(row.get(prompt_column), f"{at}: '{prompt_column}'")
        completion = _response(row.get("completion"), prompt, f"{at}: 'completion'")
        label = _label(row.get("label"), f"{at}: 'label'")
        if not completion:
            _drop(stats, row_number, "dropped_empty")
            return None
        return PreferenceExample(prompt=_with_system(prompt, system_prompt), completion=completion, label=label)
    else:
        raise DeltatuneError(f"unknown preference format '{fmt}'; use pairs, dialogues or unpaired")
    if not chosen or not rejected:
        _drop(stats, row_number, "dropped_empty")
        return None
    if chosen == rejected:
        _drop(stats, row_number, "dropped_identical")
        return None
    return PreferenceExample(prompt=_with_system(prompt, system_prompt), chosen=chosen, rejected=rejected)


def _with_system(prompt: list[dict[str, str]], system_prompt: Optional[str]) -> list[dict[str, str]]:
    if system_prompt is None or any(m["role"] == "system" for m in prompt):
        return prompt
    return [{"role": "system", "content": system_prompt}] + prompt


class PreferenceEncoder:
    """Prompt and response token ids for preference pairs and unpaired completions.

    Args:
        tokenizer: a Hugging Face tokenizer with an EOS token.
        template: as :class:`~deltatune.tasks.chat_format.ChatEncoder` (``None``: the model's
            chat template, else ChatML; ``"chatml"``, ``"alpaca"`` or a Jinja template).
        max_seq_length: prompt + response are at most this many tokens.

    Raises:
        DeltatuneError: as :class:`~deltatune.tasks.chat_format.ChatEncoder` (no EOS, a template
            that does not render the content).
    """

    def __init__(self, tokenizer, template: Optional[str], max_seq_length: int):
        self.chat = ChatEncoder(tokenizer, template, max_seq_length)
        self.tok = tokenizer
        self.max_len = max_seq_length

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` and the assistant generation prompt, with one BOS when the
        tokenizer uses one (:meth:`ChatEncoder.prompt_ids`)."""
        return self.chat.prompt_ids(messages)

    def _response(self, messages: list[dict[str, str]], response: str) -> tuple[list[int], bool]:
        prompt = self.chat.render(messages, add_generation_prompt=True)
        full = self.chat.render(messages + [{"role": "assistant", "content": response}], add_generation_prompt=False)
        if not full.startswith(prompt):
            raise DeltatuneError("the chat template does not render conversations incrementally; choose data.chat_template chatml")
        text = full[len(prompt) :]
        answer = self.tok(text, add_special_tokens=False)["input_ids"] if text else []
        eos = self.chat.eos_id
        if eos in answer:
            return answer[: len(answer) - answer[::-1].index(eos)], False  # through the turn's last EOS
        return answer + [eos], True

    def response_ids(self, messages: list[dict[str, str]], response: str, stats: Optional[EncodeStats] = None) -> list[int]:
        """Token ids of the assistant turn ``response`` as the template renders it after
        :meth:`prompt_ids`' text, through its EOS; tokens after the EOS (e.g. ``"\\n"``) are left
        out. When the template emits no EOS one is appended (``stats.eos_appended`` += 1).

        Raises:
            DeltatuneError: the template does not render the conversation incrementally.
        """
        ids, appended = self._response(messages, response)
        if stats is not None:
            stats.eos_appended += int(appended)
        return ids

    def _fit_prompt(self, prompt: list[int], longest: int) -> tuple[Optional[list[int]], bool]:
        """``prompt`` cut from the left (a leading BOS kept) so that ``longest`` more tokens fit;
        ``(None, True)`` when not even one prompt token besides the BOS would remain."""
        if len(prompt) + longest <= self.max_len:
            return prompt, False
        head = prompt[:1] if self.chat.bos_id is not None and prompt[:1] == [self.chat.bos_id] else []
        room = self.max_len - longest - len(head)
        if room < 1:
            return None, True
        return head + prompt[len(prompt) - room :], True

    def _prompt(self, messages: list[dict[str, str]], stats: EncodeStats) -> list[int]:
        ids = self.prompt_ids(messages)
        if self.chat.bos_id is not None and ids[1:2] == [self.chat.bos_id]:
            stats.double_bos += 1
        return ids

    def encode_pair(self, ex: PreferenceExample, stats: PreferenceStats, row_number: int) -> Optional[dict]:
        """Chosen and rejected sequences of one pair, on the same prompt ids.

        Returns:
            ``{"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}``
            (lists of int; input_ids = prompt ids + response ids; labels = -100 over the prompt,
            the response ids over the response), or ``None`` when even the longer response with
            one prompt token (besides BOS) exceeds ``max_seq_length`` (``stats.dropped_too_long``
            += 1, ``row_number`` appended to ``stats.dropped_rows``). A prompt cut from the left
            to fit counts in ``stats.truncated``; ``trained_tokens`` and ``total_tokens`` add both
            sequences. ``stats.examples`` is counted by :func:`read_example`, not here.
        """
        prompt = self._prompt(ex.prompt, stats)
        chosen, app_c = self._response(ex.prompt, ex.chosen)
        rejected, app_r = self._response(ex.prompt, ex.rejected)
        prompt, cut = self._fit_prompt(prompt, max(len(chosen), len(rejected)))
        if prompt is None:
            _drop(stats, row_number, "dropped_too_long")
            return None
        stats.truncated += int(cut)
        stats.eos_appended += int(app_c) + int(app_r)
        out = {}
        for name, resp in (("chosen", chosen), ("rejected", rejected)):
            out[f"{name}_input_ids"] = prompt + resp
            out[f"{name}_labels"] = [IGNORE_INDEX] * len(prompt) + resp
            stats.trained_tokens += len(resp)
            stats.total_tokens += len(prompt) + len(resp)
        return out

    def encode_single(
        self, ex_prompt: list[dict[str, str]], completion: str, stats: PreferenceStats, row_number: int, count: bool = True
    ) -> Optional[dict]:
        """One completion after its prompt, as :meth:`encode_pair` does for each side (kto, and
        kto's mismatched prompt/completion sequences for its reference point).

        Args:
            count: False for sequences that are not rows (kto's mismatched ones): ``stats`` is
                left as it is and nothing is added to ``dropped_rows``.

        Returns:
            ``{"input_ids", "labels"}`` (lists of int), or ``None`` when the completion leaves no
            room for a prompt token (``dropped_too_long`` += 1 when ``count``).
        """
        scratch = stats if count else PreferenceStats()
        prompt = self._prompt(ex_prompt, scratch)
        resp, appended = self._response(ex_prompt, completion)
        prompt, cut = self._fit_prompt(prompt, len(resp))
        if prompt is None:
            _drop(scratch, row_number, "dropped_too_long")
            return None
        scratch.truncated += int(cut)
        scratch.eos_appended += int(appended)
        scratch.trained_tokens += len(resp)
        scratch.total_tokens += len(prompt) + len(resp)
        return {"input_ids": prompt + resp, "labels": [IGNORE_INDEX] * len(prompt) + resp}


__all__ = [
    "HH_ASSISTANT",
    "PreferenceEncoder",
    "PreferenceExample",
    "PreferenceStats",
    "detect_preference_format",
    "hh_messages",
    "read_example",
    "split_dialogues",
]
