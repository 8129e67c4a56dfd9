"""Speech recognition metrics: word error rate (WER), character error rate (CER) and exact match.

WER is the word-level Levenshtein distance between hypothesis and reference (substitutions S,
deletions D and insertions I of a minimum edit alignment) divided by the number of reference
words N: ``(S + D + I) / N`` (the standard ASR measure; e.g. Morris, Maier & Green 2004, "From
WER and RIL to MER and WIL: improved evaluation measures for connected speech recognition",
Interspeech). CER is the same on characters (spaces included). Both are computed by ``jiwer``
(``jiwer.wer`` / ``jiwer.cer``, https://github.com/jitsi/jiwer) over the whole corpus: the edits
of every row are summed and divided by the summed reference length, so long rows weigh more
than short ones (not a mean of per-row rates). A WER can exceed 100 when the hypotheses hold
more words than the references.

Texts are normalized before scoring (:func:`normalize_transcript`): lowercased, punctuation
removed, whitespace collapsed. So ``" Seven."`` matches ``"seven"``; numbers are *not* spelled
out (``"7"`` does not match ``"seven"``), unlike Whisper's English normalizer. ``wer_raw`` is the
WER of the texts as they are (only surrounding whitespace stripped).

All rates are reported in percent (0-100, like the other text metrics of
:mod:`deltatune.metrics.text`).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

from deltatune.errors import DeltatuneError

_SPACES = re.compile(r"\s+")


def normalize_transcript(text: str) -> str:
    """``text`` lowercased, with every Unicode punctuation character (category ``P*``) removed except an
    apostrophe inside a word (``don't``), and runs of whitespace collapsed to one space, stripped.

    Example: ``" Seven, eight!"`` → ``"seven eight"``.
    """
    text = unicodedata.normalize("NFKC", str(text)).lower()
    chars = []
    for i, ch in enumerate(text):
        if unicodedata.category(ch).startswith("P"):
            inner = ch in "'’" and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
            chars.append(ch if inner else " ")
        else:
            chars.append(ch)
    return _SPACES.sub(" ", "".join(chars)).strip()


def _edit_rate(kind: str, references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER (``kind`` "wer") or CER ("cer") in percent, by jiwer; an empty reference counts its
    hypothesis' words (characters) as insertions over a length of 0 (jiwer's convention)."""
    import jiwer

    refs, hyps = list(references), list(hypotheses)
    if not refs:
        return 0.0
    if all(not r for r in refs):  # no reference word at all: 0 if nothing was said, else 100
        return 0.0 if all(not h for h in hyps) else 100.0
    fn = jiwer.wer if kind == "wer" else jiwer.cer
    # jiwer refuses an empty reference string in a list; score such rows on their own
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    extra = sum(len(h.split()) if kind == "wer" else len(h) for r, h in zip(refs, hyps) if not r)
    n = sum(len(r.split()) if kind == "wer" else len(r) for r, _ in pairs)
    rate = fn([r for r, _ in pairs], [h for _, h in pairs])
    return 100.0 * (rate * n + extra) / n


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str], normalize: bool = True) -> float:
    """Corpus word error rate in percent: total word edits (S + D + I) / total reference words × 100.

    Args:
        references: one reference transcript per row.
        hypotheses: one recognized transcript per row, same order.
        normalize: score :func:`normalize_transcript` of both (default), else the texts stripped.

    Raises:
        DeltatuneError: the two lists differ in length.
    """
    _check(references, hypotheses)
    prep = normalize_transcript if normalize else str.strip
    return _edit_rate("wer", [prep(r) for r in references], [prep(h) for h in hypotheses])


def character_error_rate(references: Sequence[str], hypotheses: Sequence[str], normalize: bool = True) -> float:
    """Corpus character error rate in percent (character edits / reference characters × 100, spaces
    counted); as :func:`word_error_rate`."""
    _check(references, hypotheses)
    prep = normalize_transcript if normalize else str.strip
    return _edit_rate("cer", [prep(r) for r in references], [prep(h) for h in hypotheses])


def _check(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses):
        raise DeltatuneError(f"speech metrics: {len(hypotheses)} transcripts for {len(references)} references")


def wer_cer(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """The ``speech-recognition`` scorer (:data:`deltatune.tasks.prompting.SCORERS`): corpus ``wer`` and
    ``cer`` of the normalized texts, ``exact_match`` (share of rows whose normalized transcript equals the
    normalized reference) and ``wer_raw`` (WER without normalization), all in percent. Each row's first
    reference is scored.

    Args:
        predictions: the recognized transcripts.
        references: per prediction, its reference transcripts (the first one counts).
    """
    refs = [r[0] if r else "" for r in references]
    preds = [str(p) for p in predictions]
    norm_refs, norm_preds = [normalize_transcript(r) for r in refs], [normalize_transcript(p) for p in preds]
    exact = sum(p == r for p, r in zip(norm_preds, norm_refs))
    return {
        "wer": word_error_rate(refs, preds),
        "cer": character_error_rate(refs, preds),
        "exact_match": 100.0 * exact / max(len(refs), 1),
        "wer_raw": word_error_rate(refs, preds, normalize=False),
    }


def row_word_accuracy(prediction: str, references: Sequence[str]) -> float:
    """One row's score for report.html's worst rows: ``100 × max(0, 1 − WER)`` against its first
    reference (0-100, higher is better)."""
    ref = references[0] if references else ""
    return max(0.0, 100.0 - word_error_rate([ref], [prediction]))
