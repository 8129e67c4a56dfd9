"""Per-example results of a finished run, for its ``analysis.json`` (shown by report.html).

A task scores each validation row on its own (:meth:`deltatune.tasks.base.Task.worst_examples`,
:meth:`deltatune.tasks.base.GenerativeTask.scored_generations`); this module holds what they
share: the row record and the cut of its strings (:func:`example_row`), the ranking
(:func:`worst_examples`), the generations before and after training side by side
(:func:`compared_generations`) and the per-row scores of generated text (:data:`ROW_SCORERS`).

analysis.json (written by :func:`deltatune.api.finetune`, before eval.json)::

    {"split": "validation", "task": "<task name>",
     "worst_examples": {"score": "<what the score is>", "higher_is_better": true,
                        "rows": [{"row", "input", "reference", "prediction", "score"}, ...]},
     "generations": [{"row", "input", "reference", "before", "after"}, ...]}

``row`` is the 0-based index of the row in the validation split the run used; ``rows`` are the
``eval.worst_examples`` lowest-scored rows, worst first (ties: the earlier row first);
``worst_examples`` is absent for a task with no per-row score, ``generations`` for a task that
does not generate text scored against references.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from deltatune.metrics.speech import row_word_accuracy
from deltatune.metrics.squad import question_scores

MAX_CHARS = 2000  # longest string of an analysis.json record, "…" included
ELLIPSIS = "…"


def cut(text: Any, limit: int = MAX_CHARS) -> str:
    """``text`` as a string of at most ``limit`` characters: a longer one keeps its first
    ``limit - 1`` characters and ends with "…"."""
    s = "" if text is None else str(text)
    return s if len(s) <= limit else s[: limit - 1] + ELLIPSIS


def finite_or_none(score: float | None) -> float | None:
    """``score`` as a float, ``None`` for a missing or non-finite one (JSON has no NaN)."""
    if score is None:
        return None
    x = float(score)
    return x if math.isfinite(x) else None


def example_row(row: int, input: Any, reference: Any, prediction: Any, score: float | None) -> dict[str, Any]:
    """One ``worst_examples`` record; strings cut by :func:`cut`, a non-finite score as ``None``.

    Args:
        row: 0-based index in the evaluated split.
        input, reference, prediction: what is shown (any value; turned into text).
        score: the row's score in the unit :func:`worst_examples` names.
    """
    return {"row": int(row), "input": cut(input), "reference": cut(reference), "prediction": cut(prediction), "score": finite_or_none(score)}


def worst_examples(score: str, higher_is_better: bool, rows: Sequence[dict[str, Any]], k: int) -> dict[str, Any] | None:
    """analysis.json's ``worst_examples``: the ``k`` worst of ``rows`` (:func:`example_row` records), worst first.

    Ranking: by score, lowest first when ``higher_is_better`` (else highest first); a missing
    score ranks worst; ties keep the earlier row first.

    Args:
        score: what the score is, short and human-readable (e.g. ``"p(true label)"``).
        higher_is_better: whether a higher score is a better row.
        rows: one record per scored row, any order.
        k: how many to keep (``eval.worst_examples``).

    Returns:
        ``{"score", "higher_is_better", "rows"}``, or ``None`` when ``k`` is 0 or nothing was scored.
    """
    if k <= 0 or not rows:
        return None

    def badness(r: dict[str, Any]) -> tuple[float, int]:
        s = r["score"]
        if s is None:
            return (-math.inf, r["row"])
        return (s if higher_is_better else -s, r["row"])

    ranked = sorted(rows, key=badness)[:k]
    return {"score": score, "higher_is_better": bool(higher_is_better), "rows": [dict(r) for r in ranked]}


def compared_generations(before: Sequence[str], after_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """analysis.json's ``generations``: per row, the pretrained model's output next to the trained one's.

    Args:
        before: generated texts of the first ``len(before)`` rows, by the model before training.
        after_rows: the trained model's scored generations (:func:`example_row` records of
            :meth:`deltatune.tasks.base.GenerativeTask.scored_generations`), row order; the
            first ``len(before)`` are used.

    Returns:
        ``[{"row", "input", "reference", "before", "after"}, ...]`` (strings cut by :func:`cut`).
    """
    return [
        {"row": r["row"], "input": r["input"], "reference": r["reference"], "before": cut(b), "after": r["prediction"]}
        for b, r in zip(before, after_rows)
    ]


# ---- per-row scores of generated text ---------------------------------------------------------
def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """ROUGE-L F-measure ×100 of one prediction, the best over its references.

    As :func:`deltatune.metrics.text.rouge` scores each example (rouge-score, Porter stemming,
    ``score_multi``; Lin 2004), so the mean over rows is the run's ``rougeL``. Plain ROUGE-L
    reads the text as one token sequence (line breaks are whitespace), so no sentence split is
    needed; only ``rougeLsum`` splits sentences (:func:`deltatune.metrics.text.sentence_lines`).
    """
    from rouge_score import rouge_scorer

    refs = [str(r) for r in references] or [""]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return 100.0 * scorer.score_multi(refs, str(prediction))["rougeL"].fmeasure


def sentence_chrf(prediction: str, references: Sequence[str]) -> float:
    """Sentence-level chrF (0-100) of one prediction against its references (sacrebleu's
    ``sentence_chrf`` defaults; Popović 2015)."""
    import sacrebleu

    return float(sacrebleu.sentence_chrf(prediction, [str(r) for r in references] or [""]).score)


def squad_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD token F1 ×100 of one answer, the best over its gold answers (an empty list: the
    question is unanswerable); the official script's definition (:mod:`deltatune.metrics.squad`)."""
    return 100.0 * question_scores([str(r) for r in references], prediction)[1]


# scorer name of the task registry (deltatune.tasks.registry.TaskSpec.scorer) -> (per-row score, its name)
ROW_SCORERS: dict[str, tuple[Callable[[str, Sequence[str]], float], str]] = {
    "rouge": (rouge_l, "ROUGE-L F (0-100)"),
    "bleu_chrf": (sentence_chrf, "sentence chrF (0-100)"),
    "squad_em_f1": (squad_f1, "SQuAD F1 (0-100)"),
    "wer_cer": (row_word_accuracy, "word accuracy 100·max(0, 1 − WER)"),
}


def joined_references(references: Sequence[str], empty: str = "(no answer)") -> str:
    """The reference texts of one row joined by " / " (``empty`` when there is none)."""
    refs = [str(r) for r in references]
    return " / ".join(refs) if refs else empty
