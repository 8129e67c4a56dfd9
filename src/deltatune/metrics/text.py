"""Metrics for generated text: ROUGE, BLEU/chrF, SQuAD exact match and F1, perplexity.

- ROUGE-1/2/L/Lsum: Lin 2004, via Google's ``rouge-score`` package with Porter stemming; with
  several references per example, the best-scoring reference counts (as ``score_multi``);
  reported as the mean F-measure ×100.
- BLEU (Papineni et al. 2002) and chrF (Popović 2015): corpus-level, via ``sacrebleu`` with
  its default tokenization (13a) — the scores people report (Post 2018, arXiv:1804.08771).
- Exact match and token F1: the official SQuAD evaluation script's definitions
  (Rajpurkar et al. 2016, 2018), implemented in :mod:`deltatune.metrics.squad`: lower-case,
  strip punctuation and the articles a/an/the, collapse whitespace; F1 over bag-of-token
  overlap; the maximum over the gold answers; ×100.
- Perplexity: exp(mean token cross-entropy in nats).
"""

from __future__ import annotations

import math
from typing import Sequence

from deltatune.metrics.squad import exact_match, normalize_answer, squad_metrics, token_f1

__all__ = ["bleu_chrf", "exact_match_score", "f1_score", "normalize_answer", "perplexity", "rouge", "squad_em_f1"]


def perplexity(mean_token_loss: float) -> float:
    """exp(loss), capped to avoid overflow for diverged models."""
    return float(math.exp(min(mean_token_loss, 50.0)))


def rouge(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measure ×100 (best reference per example).

    Args:
        predictions: N generated texts.
        references: N lists of one or more reference texts.
    """
    from rouge_score import rouge_scorer

    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(keys, use_stemmer=True)
    totals = dict.fromkeys(keys, 0.0)
    for pred, refs in zip(predictions, references):
        # rougeLsum splits summaries into sentences on newlines
        scores = scorer.score_multi(list(refs), pred.replace(". ", ".\n"))
        for k in keys:
            totals[k] += scores[k].fmeasure
    n = max(len(predictions), 1)
    return {k: 100.0 * v / n for k, v in totals.items()}


def bleu_chrf(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu defaults). Examples may have different numbers of references."""
    import sacrebleu

    n_refs = max(len(r) for r in references) if references else 1
    streams = [[r[i] if i < len(r) else None for r in references] for i in range(n_refs)]
    bleu = sacrebleu.corpus_bleu(list(predictions), streams)
    chrf = sacrebleu.corpus_chrf(list(predictions), streams)
    return {"bleu": float(bleu.score), "chrf": float(chrf.score)}


def exact_match_score(prediction: str, ground_truth: str) -> float:
    """1.0 if the normalized strings are equal, else 0.0 (see :mod:`deltatune.metrics.squad`)."""
    return float(exact_match(ground_truth, prediction))


def f1_score(prediction: str, ground_truth: str) -> float:
    """SQuAD token F1 in [0, 1] between prediction and answer (see :mod:`deltatune.metrics.squad`)."""
    return token_f1(ground_truth, prediction)


def squad_em_f1(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean exact match and F1 ×100, each the maximum over an example's gold answers.

    The official SQuAD definitions of :func:`deltatune.metrics.squad.squad_metrics` (an
    example with no gold answer is scored against ``""``); only the two corpus means are returned.
    """
    m = squad_metrics(predictions, references)
    return {"exact_match": float(m["exact_match"]), "f1": float(m["f1"])}
