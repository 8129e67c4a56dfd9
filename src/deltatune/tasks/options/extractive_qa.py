"""Options of ``question-answering`` (extractive, SQuAD v1.1/v2.0; torch-free)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field


class QuestionAnsweringOptions(BaseModel):
    """``data.*`` keys read by ``question-answering`` only (SQuAD JSON, or flat columns)."""

    question_column: str = Field(default="question", description="column holding the question")
    context_column: str = Field(default="context", description="column holding the passage the answer is taken from")
    answers_column: str = Field(
        default="answers", description="column holding the gold answers (SQuAD dict, list, or text; empty: no answer)"
    )
    doc_stride: Optional[int] = Field(
        default=None,
        gt=0,
        description="tokens by which the windows of a context longer than data.max_seq_length overlap; unset: a third "
        "of data.max_seq_length (128 of 384 in BERT's SQuAD setup), at most half the room left by the question; "
        "must be smaller than data.max_seq_length",
    )
    max_answer_length: int = Field(default=30, gt=0, description="longest answer span, in tokens")
    n_best_size: int = Field(default=20, gt=0, description="answers are chosen among this many best starts and ends")
    null_score_diff_threshold: float = Field(
        default=0.0, description="SQuAD v2.0: the empty answer wins when its score exceeds the best span's by more than this"
    )
    version_2_with_negative: Optional[bool] = Field(
        default=None, description="questions may have no answer (SQuAD v2.0); None: detected from empty answers"
    )


def question_answering_columns(data: Any, with_labels: bool) -> list[str]:
    """The columns ``question-answering`` reads: question, context, and answers when labelled."""
    return [data.question_column, data.context_column] + ([data.answers_column] if with_labels else [])
