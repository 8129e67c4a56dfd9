"""Options of ``extractive-summarization`` (torch-free)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ExtractiveSummarizationOptions(BaseModel):
    """``data.*`` keys read by ``extractive-summarization`` only; the document is in
    ``data.text_column`` (a list of sentences or a text to split), the reference summary in
    ``data.target_column`` (default ``target``)."""

    summary_sentences: int = Field(default=1, gt=0, description="number of sentences extracted as the summary")


def extractive_summarization_columns(data: Any, with_labels: bool) -> list[str]:
    """The columns ``extractive-summarization`` reads: the document, and the summary when labelled."""
    return [data.text_column] + ([data.target_column or "target"] if with_labels else [])
