"""Options of ``token-classification`` (torch-free)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class TokenClassificationOptions(BaseModel):
    """``data.*`` keys read by ``token-classification`` only (CoNLL files give both columns)."""

    tokens_column: str = Field(default="tokens", description="column holding each sentence as a list of words")
    tags_column: str = Field(default="tags", description="column holding one BIO/IOB2 tag per word")
    label_all_subwords: bool = Field(
        default=False, description="label every subword of a word with its tag (else only the first; the rest are ignored)"
    )


def token_classification_columns(data: Any, with_labels: bool) -> list[str]:
    """The columns ``token-classification`` reads: words, and tags when labelled."""
    return [data.tokens_column] + ([data.tags_column] if with_labels else [])
