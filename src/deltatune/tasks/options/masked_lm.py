"""Options of ``masked-lm`` pretraining (torch-free)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MaskedLMOptions(BaseModel):
    """``data.*`` keys read by ``masked-lm`` only (the text is in ``data.text_column``)."""

    mlm_probability: float = Field(
        default=0.15, gt=0, lt=1, description="fraction of tokens masked (80% [MASK], 10% random, 10% kept)"
    )
    whole_word_masking: bool = Field(default=False, description="mask all subwords of a word together")
