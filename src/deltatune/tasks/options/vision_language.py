"""Options of vision-language supervised fine-tuning (``task: vision-language``), torch-free.

The rows are chat conversations whose user turns hold images (``messages`` with
``{"type": "image", "path": ...}`` parts, docs/vision_language.md); the chat template and the
system prompt are :class:`deltatune.tasks.options.text_to_text.TemplateOptions`' keys.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class VisionLanguageOptions(BaseModel):
    """``data.*`` keys of ``vision-language``: which parts of an image-text-to-text model are trained
    besides its language model (LoRA: adapters on the language model's linear layers; full: the
    language model's weights)."""

    train_vision_tower: bool = Field(
        default=False, description="vision-language: also train the image encoder (LoRA: adapters on its linear layers too)"
    )
    train_connector: bool = Field(
        default=False,
        description="vision-language: also train the projector/connector between image encoder and language model (LoRA: saved whole)",
    )
