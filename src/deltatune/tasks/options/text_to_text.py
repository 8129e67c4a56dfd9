"""Options of the generative tasks: instruction tuning and the text-to-text tasks
(summarization, translation, generative-qa) on a decoder or an encoder-decoder (torch-free).

Their columns depend on the prompt template (each implementation's default) or on the data
format detected from the rows, so they are checked when the data is loaded, not before torch.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field


class TemplateOptions(BaseModel):
    """``data.*`` keys of every task that renders conversations with a chat template on a decoder
    (instruction, the prompted text-to-text tasks, preference tuning, grpo)."""

    chat_template: Optional[str] = Field(
        default=None, description="None: the model's own (else ChatML); or chatml, alpaca, or a Jinja template"
    )
    system_prompt: Optional[str] = Field(default=None, description="text prepended to every conversation as a system turn")


class ChatOptions(TemplateOptions):
    """``data.*`` keys of the tasks trained as a chat on a decoder by supervised fine-tuning
    (instruction, summarization, translation, generative-qa)."""

    format: Literal["auto", "alpaca", "messages", "prompt_completion"] = Field(
        default="auto", description="layout of instruction data; auto: detected from the columns"
    )


class TargetOptions(BaseModel):
    """``data.target_column``, read by the tasks scored against a reference text
    (summarization, translation, generative-qa, extractive-summarization)."""

    target_column: Optional[str] = Field(
        default=None, description="column holding the reference output; unset: target (answers for generative-qa)"
    )


class TextToTextOptions(BaseModel):
    """``data.*`` keys of summarization, translation and generative-qa."""

    prompt_template: Optional[str] = Field(
        default=None,
        description="the input text, with {column} placeholders (and {source_lang}/{target_lang}); unset: the task's default",
    )
    source_prefix: Optional[str] = Field(
        default=None, description='encoder-decoder models: text prepended to each source (T5\'s "summarize: ")'
    )
    max_target_length: int = Field(default=128, ge=2, description="encoder-decoder models: targets are truncated to this many tokens")
    source_lang: str = Field(default="English", description="fills {source_lang} in the prompt template (translation's default reads it)")
    target_lang: str = Field(default="German", description="fills {target_lang} in the prompt template (translation's default reads it)")

