"""Options of ``text-classification`` (torch-free)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field


class ClassificationOptions(BaseModel):
    """``data.*`` keys read by ``text-classification`` only."""

    text_pair_column: Optional[str] = Field(
        default=None, description="column of the second text of a sentence pair (NLI, paraphrase); None: single texts"
    )
    label_column: str = Field(default="label", description="column holding the label (a name, a number, or a list for multi-label)")
    multi_label: Optional[bool] = Field(
        default=None,
        description="several labels per row (sigmoid per label); None: detected (list labels or data.label_separator set)",
    )
    label_separator: Optional[str] = Field(
        default=None,
        description='splits a string label into several labels for multi-label data stored in CSV ("sports;politics")',
    )


def classification_columns(data: Any, with_labels: bool) -> list[str]:
    """The columns ``text-classification`` reads from ``data`` (a DataConfig): text, pair, label."""
    cols = [data.text_column] + ([data.text_pair_column] if data.text_pair_column else [])
    return cols + ([data.label_column] if with_labels else [])


def text_columns(data: Any, with_labels: bool) -> list[str]:
    """The columns of the tasks that read ``data.text_column`` only (causal-lm, masked-lm)."""
    return [data.text_column]
