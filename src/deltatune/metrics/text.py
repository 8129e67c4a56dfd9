"""Metrics for generated text: ROUGE, BLEU/chrF, SQuAD exact match and F1, perplexity.

- ROUGE-1/2/L/Lsum: Lin 2004, via Google's ``rouge-score`` package with Porter stemming; with
  several references per example, the best-scoring reference counts (as ``score_multi``);
  reported as the mean F-measure ×100. ROUGE-Lsum is rouge-score's ``rougeLsum`` (summary-level
  LCS over sentences), which reads sentences as lines: the prediction and every reference are
  split into sentences the same way, one per line (:func:`sentence_lines`: pySBD, Sadvilkar &
  Neumann 2020; lines already in the text are kept), as rouge-score documents for ``rougeLsum``.
  ROUGE-1/2/L ignore line breaks, so the split changes only ``rougeLsum``.
- BLEU (Papineni et al. 2002) and chrF (Popović 2015): corpus-level, via ``sacrebleu`` with
  its default tokenization (13a) — the scores people report (Post 2018, arXiv:1804.08771).
- Exact match and token F1: the official SQuAD evaluation script's definitions
  (Rajpurkar et al. 2016, 2018), implemented in :mod:`deltatune.metrics.squad`: lower-case,
  strip punctuation and the articles a/an/the, collapse whitespace; F1 over bag-of-token
  overlap; the maximum over the gold answers; ×100.
- Perplexity: exp(mean token cross-entropy in nats).
- WER / CER (speech recognition): :mod:`deltatune.metrics.speech` (jiwer), re-exported here as the
  ``wer_cer`` scorer the task registry names.
"""

from __future__ import annotations

import math
from typing import Sequence

from deltatune.errors import DeltatuneError
from deltatune.metrics.squad import exact_match, normalize_answer, squad_metrics, token_f1
from deltatune.metrics.speech import wer_cer  # the speech-recognition scorer (registry name "wer_cer")

__all__ = ["bleu_chrf", "exact_match_score", "f1_score", "normalize_answer", "perplexity", "rouge", "sentence_lines",
           "squad_em_f1", "wer_cer"]


def _check_examples(metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Raise a one-line :class:`DeltatuneError` when there is nothing to score or the lengths differ."""
    if len(predictions) == 0:
        raise DeltatuneError(
            f"no examples to score: {metric} got 0 predictions; give the evaluation split at least one row "
            "(check the validation/test file and its filters)"
        )
    if isinstance(predictions, str) or isinstance(references, str) or any(isinstance(r, str) for r in references):
        raise DeltatuneError(
            f"{metric}: give a list of predictions and, per prediction, a list of reference strings "
            "(e.g. [[\"the reference\"]]), not a bare string"
        )
    if len(predictions) != len(references):
        raise DeltatuneError(
            f"{metric}: {len(predictions)} predictions for {len(references)} references; "
            "give one list of references per prediction"
        )


def sentence_lines(text: str) -> str:
    """``text`` with one sentence per line, the form rouge-score's ``rougeLsum`` reads.

    Each existing line is split into sentences by pySBD (English rules, no data download; see
    :func:`deltatune.data.sentences.split_sentences`), and all sentences are joined with ``"\\n"``;
    blank lines and surrounding whitespace are dropped. The same function is applied to
    predictions and references, so both sides are split the same way.
    """
    from deltatune.data.sentences import split_sentences

    return "\n".join(s for line in str(text).splitlines() for s in split_sentences(line))


def perplexity(mean_token_loss: float) -> float:
    """exp(loss), capped to avoid overflow for diverged models."""
    return float(math.exp(min(mean_token_loss, 50.0)))


def rouge(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measure ×100 (best reference per example).

    Definitions: Lin 2004, as computed by Google's ``rouge-score`` (Porter stemming) with
    ``score_multi`` (the best reference counts, per key). ``rougeLsum`` is rouge-score's
    summary-level ROUGE-L, whose sentences are lines: prediction and references are first put
    one sentence per line by :func:`sentence_lines` (pySBD sentence splitting).

    Args:
        predictions: N generated texts.
        references: N lists of one or more reference texts (an empty list scores against ``""``).

    Returns:
        ``{"rouge1", "rouge2", "rougeL", "rougeLsum"}``, each the mean over the N examples.

    Raises:
        DeltatuneError: no examples, or N predictions for a different number of reference lists.
    """
    from rouge_score import rouge_scorer

    _check_examples("ROUGE", predictions, references)
    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(keys, use_stemmer=True)
    totals = dict.fromkeys(keys, 0.0)
    for pred, refs in zip(predictions, references):
        scores = scorer.score_multi([sentence_lines(r) for r in refs] or [""], sentence_lines(pred))
        for k in keys:
            totals[k] += scores[k].fmeasure
    return {k: 100.0 * v / len(predictions) for k, v in totals.items()}


def bleu_chrf(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU and chrF ×100 (sacrebleu defaults: 13a tokenization; chrF with character
    n-grams up to 6, beta 2).

    Examples may have different numbers of references: the missing ones of an example are given
    to sacrebleu as ``None`` (no reference), so each example is scored against its own references.

    Args:
        predictions: N generated texts.
        references: N lists of one or more reference texts.

    Returns:
        ``{"bleu", "chrf"}``.

    Raises:
        DeltatuneError: no examples, N predictions for a different number of reference lists, or
            an example without any reference.
    """
    import sacrebleu

    _check_examples("BLEU/chrF", predictions, references)
    empty = [i for i, r in enumerate(references) if len(r) == 0]
    if empty:
        raise DeltatuneError(
            f"BLEU/chrF: example {empty[0]} has no reference translation; give every row a reference"
        )
    n_refs = max(len(r) for r in references)
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

    Raises:
        DeltatuneError: no examples, or N predictions for a different number of gold-answer lists.
    """
    _check_examples("SQuAD exact match/F1", predictions, references)
    m = squad_metrics(predictions, references)
    return {"exact_match": float(m["exact_match"]), "f1": float(m["f1"])}
