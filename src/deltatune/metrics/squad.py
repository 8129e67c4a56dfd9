"""SQuAD exact match and F1, as defined by the official evaluation scripts.

Reference: Rajpurkar et al. 2016 (SQuAD v1.1, "Know What You Don't Know" 2018 for v2.0);
the official ``evaluate-v2.0.py`` script, whose definitions are followed exactly:

- ``normalize_answer``: lower-case, remove ASCII punctuation (``string.punctuation``), remove
  the articles ``a``/``an``/``the`` (whole words), collapse whitespace; in that order.
- exact match of one (gold, prediction) pair: 1 if the normalized strings are equal, else 0.
- F1 of one pair: harmonic mean of token precision and recall over the bag of normalized
  whitespace tokens; when either side has no token (a no-answer), 1 if both have none, else 0.
- per question: the maximum over its gold answers; gold answers that normalize to the empty
  string are dropped, and a question left with no gold answer (unanswerable, SQuAD v2.0) is
  scored against the single gold answer ``""`` (only an empty prediction scores 1).
- corpus scores are the mean over questions in **percent (0-100)**, like the official script;
  ``HasAns_*``/``NoAns_*`` are the same means over answerable / unanswerable questions (a
  question is unanswerable when its gold answer list is empty).

For answerable questions and non-empty predictions these coincide with the v1.1 script.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Official SQuAD normalization: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def answer_tokens(s: str) -> list[str]:
    """Whitespace tokens of the normalized answer (``[]`` for an empty or no-answer string)."""
    return normalize_answer(s).split() if s else []


def exact_match(gold: str, prediction: str) -> int:
    """1 if ``gold`` and ``prediction`` are equal after :func:`normalize_answer`, else 0."""
    return int(normalize_answer(gold) == normalize_answer(prediction))


def token_f1(gold: str, prediction: str) -> float:
    """SQuAD token F1 in [0, 1] of one gold answer and one prediction.

    When either side is empty after normalization (no-answer), 1.0 if both are, else 0.0.
    """
    gold_toks, pred_toks = answer_tokens(gold), answer_tokens(prediction)
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def question_scores(golds: Sequence[str], prediction: str) -> tuple[int, float]:
    """(exact match in {0, 1}, F1 in [0, 1]) of one question: the best over its gold answers.

    Gold answers that normalize to ``""`` are dropped; none left means the only correct
    prediction is the empty answer.
    """
    usable = [g for g in golds if normalize_answer(g)] or [""]
    return max(exact_match(g, prediction) for g in usable), max(token_f1(g, prediction) for g in usable)


def squad_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float | int]:
    """Corpus exact match and F1 in percent (0-100), with the HasAns/NoAns split for SQuAD v2.0.

    Args:
        predictions: N predicted answer texts (``""`` for "no answer").
        references: N lists of gold answer texts (an empty list: the question is unanswerable).

    Returns:
        ``{"exact_match", "f1", "total"}``; when some question is unanswerable also
        ``HasAns_exact``, ``HasAns_f1``, ``HasAns_total``, ``NoAns_exact``, ``NoAns_f1``,
        ``NoAns_total`` (the ``*_exact``/``*_f1`` means are omitted for an empty group).

    Raises:
        ValueError: ``predictions`` and ``references`` differ in length.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    em, f1 = [], []
    for pred, golds in zip(predictions, references):
        e, f = question_scores(list(golds), pred)
        em.append(e)
        f1.append(f)
    out: dict[str, float | int] = {**_means(em, f1, range(len(em)), ""), "total": len(em)}
    has = [i for i, golds in enumerate(references) if len(golds) > 0]
    if len(has) < len(references):
        no = [i for i, golds in enumerate(references) if len(golds) == 0]
        for name, idx in (("HasAns", has), ("NoAns", no)):
            if idx:
                out.update(_means(em, f1, idx, f"{name}_"))
            out[f"{name}_total"] = len(idx)
    return out


def _means(em: list[int], f1: list[float], idx, prefix: str) -> dict[str, float]:
    idx = list(idx)
    n = max(len(idx), 1)
    exact_key = f"{prefix}exact" if prefix else "exact_match"
    f1_key = f"{prefix}f1" if prefix else "f1"
    return {exact_key: 100.0 * sum(em[i] for i in idx) / n, f1_key: 100.0 * sum(f1[i] for i in idx) / n}
