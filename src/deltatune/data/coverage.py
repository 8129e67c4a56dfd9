"""Does the model's vocabulary cover the data's language, and do the examples fit ``data.max_seq_length``?

Run by ``deltatune check`` and at the start of ``deltatune train`` (after the tokenizer is loaded,
before training) on a sample of the training rows (the first :data:`SAMPLE_ROWS`):

- **unknown tokens**: the share of the sample's tokens (special tokens not counted) that are the
  tokenizer's unknown token (``[UNK]``), or, for byte-fallback SentencePiece tokenizers (Llama,
  Mistral), byte tokens ``<0x..>``. An English WordPiece vocabulary maps most Chinese, Thai or
  Arabic characters to ``[UNK]``: the model then sees almost nothing of the text, and still
  trains and reports a number. Above :data:`UNK_WARN_SHARE` a warning names the share and
  suggests a multilingual model. Byte-level BPE tokenizers (GPT-2, SmolLM2) have no unknown
  token: every text is covered (perhaps poorly), and this check cannot tell.
- **truncation**: the share of inputs longer than ``data.max_seq_length`` tokens (special tokens
  included), cut at encoding. Above :data:`TRUNCATION_WARN_SHARE` a warning names the share and
  ``data.max_seq_length``. Tasks that window or pack long inputs (extractive QA, masked-LM,
  causal-LM) lose nothing and are not counted (``Task.long_inputs_truncated``); for chat-templated
  decoder tasks the count is a lower bound (the template's own tokens are not counted).

The texts come from the task (:meth:`deltatune.tasks.base.Task.input_texts`). With ``strict`` the
warnings are errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from deltatune.errors import DeltatuneError

UNK_WARN_SHARE = 0.05  # of the tokens
TRUNCATION_WARN_SHARE = 0.10  # of the inputs
SAMPLE_ROWS = 2000
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class Coverage:
    """Counts over a sample of inputs.

    Attributes:
        inputs: inputs measured (one per row; one per sentence for extractive summarization).
        tokens: tokens of their texts, special tokens not counted.
        unknown: of those, unknown tokens (or byte-fallback tokens, see ``unknown_name``).
        truncated: inputs longer than ``max_length`` tokens, special tokens included (0 when not measured).
        unknown_name: how the unknown tokens are shown (``[UNK]``, ``byte-fallback tokens <0x..>``).
    """

    inputs: int
    tokens: int
    unknown: int
    truncated: int
    unknown_name: str

    @property
    def unknown_share(self) -> float:
        """Unknown tokens / tokens (0 when there are no tokens)."""
        return self.unknown / self.tokens if self.tokens else 0.0

    @property
    def truncated_share(self) -> float:
        """Truncated inputs / inputs (0 when there are no inputs)."""
        return self.truncated / self.inputs if self.inputs else 0.0


def unknown_token_ids(tokenizer) -> tuple[set[int], str]:
    """The ids that mean "not covered by the vocabulary", and how to name them.

    The unknown token's id, plus the ``<0x..>`` byte tokens of a byte-fallback tokenizer
    (whose unknown token, if any, is then rarely produced).
    """
    ids = {tokenizer.unk_token_id} if tokenizer.unk_token_id is not None else set()
    byte_ids = {i for tok, i in tokenizer.get_vocab().items() if _BYTE_TOKEN.fullmatch(tok)}
    if len(byte_ids) >= 256:  # a full byte table: SentencePiece byte fallback
        return ids | byte_ids, "byte-fallback tokens <0x..>"
    return ids, str(tokenizer.unk_token)


def measure_coverage(inputs: list[tuple[str, ...]], tokenizer, max_length: int | None) -> Coverage:
    """Count tokens, unknown tokens and inputs over ``max_length`` tokens.

    Args:
        inputs: one tuple of texts per input (two texts: a pair, encoded together).
        tokenizer: a Hugging Face tokenizer.
        max_length: the length inputs are cut to (``data.max_seq_length``), in tokens with the
            special tokens; None: truncation is not counted.
    """
    unknown_ids, name = unknown_token_ids(tokenizer)
    if not inputs:  # every row dropped by the task (e.g. identical preference pairs): nothing to measure
        return Coverage(0, 0, 0, 0, name)
    tokens = unknown = truncated = 0
    width = max((len(x) for x in inputs), default=1)
    columns = [[x[k] if k < len(x) else "" for x in inputs] for k in range(width)]
    lengths = [0] * len(inputs)
    for k, texts in enumerate(columns):
        for i, ids in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"]):
            if k < len(inputs[i]):
                tokens += len(ids)
                unknown += sum(1 for t in ids if t in unknown_ids)
                lengths[i] += len(ids)
    if max_length is not None:
        special = {n: tokenizer.num_special_tokens_to_add(pair=n == 2) for n in (1, 2)}
        truncated = sum(1 for x, n in zip(inputs, lengths) if n + special[min(len(x), 2)] > max_length)
    return Coverage(len(inputs), tokens, unknown, truncated, name)


def check_room(tokenizer, max_seq_length: int, pair: bool = False, model: str = "the model") -> None:
    """Raise when ``max_seq_length`` leaves no room for one input token (two for a pair) after the special tokens.

    Raises:
        DeltatuneError: naming data.max_seq_length, the special tokens and the smallest value that works.
    """
    need = tokenizer.num_special_tokens_to_add(pair=pair) + (2 if pair else 1)
    if max_seq_length < need:
        raise DeltatuneError(
            f"data.max_seq_length {max_seq_length} leaves no room for the text: the tokenizer of {model} adds "
            f"{need - (2 if pair else 1)} special tokens{' to a pair' if pair else ''}; set data.max_seq_length to at least {need} "
            "(--max-seq-length)"
        )


def coverage_warnings(cov: Coverage, source: str, model: str, max_seq_length: int, decoder: bool = False) -> list[str]:
    """The warnings (without the ``warning:`` prefix) that ``cov`` calls for, one line each."""
    out = []
    if cov.unknown_share > UNK_WARN_SHARE:
        suggestion = (
            "a multilingual decoder such as Qwen/Qwen2.5-0.5B-Instruct" if decoder
            else "a multilingual model such as xlm-roberta-base or bert-base-multilingual-cased"
        )
        out.append(
            f"{_percent(cov.unknown_share)} of the tokens of {source} are {cov.unknown_name} for model '{model}': "
            f"its vocabulary does not cover this text's language/script; use {suggestion} (--model)"
        )
    if cov.truncated_share > TRUNCATION_WARN_SHARE:
        out.append(
            f"{_percent(cov.truncated_share)} of the examples of {source} ({cov.truncated} of {cov.inputs} checked) are longer "
            f"than data.max_seq_length={max_seq_length} tokens and are cut; raise data.max_seq_length (--max-seq-length) "
            "or shorten the texts"
        )
    return out


def _percent(share: float) -> str:
    return f"{100 * share:.0f}%" if share >= 0.01 else f"{100 * share:.1f}%"


def check_coverage(
    task, ds, tokenizer, source: str, *, strict: bool = False, warn: Callable[[str], None] | None = None
) -> tuple[Coverage, list[str]]:
    """Measure the first :data:`SAMPLE_ROWS` rows of ``ds`` and report what is wrong.

    Args:
        task: the fitted :class:`deltatune.tasks.base.Task` (its ``input_texts``, ``config``,
            ``long_inputs_truncated`` and ``peft_task_type`` are read).
        ds: the training rows (a ``datasets.Dataset``).
        tokenizer: the run's tokenizer.
        source: the file the rows came from, for the messages.
        strict: raise the first warning as an error instead of returning it.
        warn: called with each warning line (``"warning: ..."``), e.g. ``print``.

    Returns:
        (the counts, the warning lines without the ``warning:`` prefix).

    Raises:
        DeltatuneError: ``data.max_seq_length`` leaves no room for the text (see
            :func:`check_room`), or, with ``strict``, the first warning.
    """
    cfg = task.config
    sample = ds.select(range(min(SAMPLE_ROWS, len(ds))))
    inputs = task.input_texts(sample, source)
    pair = any(len(x) == 2 for x in inputs)
    check_room(tokenizer, cfg.data.max_seq_length, pair=pair, model=f"'{cfg.model.name_or_path}'")
    max_length = cfg.data.max_seq_length if task.long_inputs_truncated else None
    cov = measure_coverage(inputs, tokenizer, max_length)
    decoder = task.peft_task_type == "CAUSAL_LM"
    lines = coverage_warnings(cov, source, cfg.model.name_or_path, cfg.data.max_seq_length, decoder=decoder)
    if strict and lines:
        raise DeltatuneError(f"{lines[0]} (--strict makes this an error)")
    for line in lines:
        if warn is not None:
            warn(f"warning: {line}")
    return cov, lines
