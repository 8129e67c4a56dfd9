"""Sentences for extractive summarization: splitting a text, and the greedy ROUGE oracle.

- Splitting: pySBD (Sadvilkar & Neumann 2020, "PySBD: Pragmatic Sentence Boundary
  Disambiguation", NLP-OSS), a rule-based splitter that needs no model or data download and
  handles abbreviations ("e.g.", "Fig. 3", "et al."), decimals and initials.
- Oracle: the greedy selection used to label sentences for extractive training by
  SummaRuNNer (Nallapati et al. 2017, AAAI, sec. "Extractive training") and BertSum (Liu &
  Lapata 2019, "Text Summarization with Pretrained Encoders", EMNLP, sec. 4.1): starting from
  nothing, repeatedly add the sentence that most increases ROUGE-1 F + ROUGE-2 F of the
  selection (in document order) against the reference, and stop when no sentence increases it
  or the selection is full. Scores come from Google's ``rouge-score`` package with Porter
  stemming, the scorer of :func:`deltatune.metrics.text.rouge`. With several references, a
  selection's gain is its best score over the references (the same "best reference counts" rule
  as the evaluation metric).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence


@lru_cache(maxsize=1)
def _segmenter():
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences (pySBD, English rules), stripped, empty ones dropped.

    Args:
        text: any string; newlines inside a sentence are kept as they are.

    Returns:
        The sentences in order; ``[]`` for an empty or whitespace-only text.
    """
    if not text or not text.strip():
        return []
    return [s.strip() for s in _segmenter().segment(text) if s.strip()]


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2"], use_stemmer=True)


def oracle_score(selection: str, references: Sequence[str]) -> float:
    """ROUGE-1 F + ROUGE-2 F (fractions, so in [0, 2]) of ``selection``, best over ``references``."""
    scorer = _scorer()
    best = 0.0
    for ref in references:
        s = scorer.score(ref, selection)
        best = max(best, s["rouge1"].fmeasure + s["rouge2"].fmeasure)
    return best


def greedy_oracle(sentences: Sequence[str], references: Sequence[str], max_sentences: int) -> list[int]:
    """Indices of the sentences the greedy ROUGE oracle selects, in document order.

    Args:
        sentences: the document's sentences (empty strings are never selected).
        references: one or more reference summaries.
        max_sentences: the most sentences to select (> 0).

    Returns:
        Sorted sentence indices; at most ``max_sentences``, fewer when no further sentence
        raises ROUGE-1 F + ROUGE-2 F; ``[]`` when no sentence shares a unigram with any reference.
    """
    selected: list[int] = []
    best = 0.0
    candidates = [i for i, s in enumerate(sentences) if s.strip()]
    while len(selected) < max_sentences:
        gain_idx, gain_score = -1, best
        for i in candidates:
            if i in selected:
                continue
            trial = sorted(selected + [i])
            score = oracle_score(" ".join(sentences[j] for j in trial), references)
            if score > gain_score:
                gain_idx, gain_score = i, score
        if gain_idx < 0:
            break
        selected = sorted(selected + [gain_idx])
        best = gain_score
    return selected
