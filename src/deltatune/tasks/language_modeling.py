"""Decoder (causal LM) tasks: continued pretraining, instruction SFT, and text-to-text by prompting.

- ``causal-lm``: rows of raw text (``data.text_column``; a .txt file gives one row per
  paragraph) are tokenized, joined with EOS between documents and cut into blocks of
  ``data.max_seq_length`` tokens; every token is trained. Metric: perplexity.
- ``instruction``: Alpaca / messages / prompt-completion rows, chat-templated, loss on the
  assistant turns only (see :mod:`deltatune.tasks.chat_format`).
- ``summarization``, ``translation``, ``generative-qa``: each row becomes a user prompt (a
  ``data.prompt_template`` filled from the row's columns) and the target as the assistant
  answer; trained like instruction SFT and evaluated by generating and scoring (ROUGE,
  BLEU/chrF, exact match/F1).

Loss: summed token cross-entropy of next-token prediction over trained tokens (labels != -100,
shifted by one), with the number of trained tokens as the normalizer (DESIGN.md).
"""

from __future__ import annotations

from typing import Any

import datasets
import torch
from transformers import AutoModelForCausalLM

from deltatune.config import RunConfig
from deltatune.data.columns import check_text_column, require_columns
from deltatune.errors import DeltatuneError
from deltatune.models.loading import load_pretrained
from deltatune.tasks.base import Features, GenerativeTask, Task
from deltatune.tasks.chat_format import IGNORE_INDEX, ChatEncoder, EncodeStats, detect_format, row_to_messages
from deltatune.tasks.collate import pad_batch
from deltatune.tasks.generation import GenerationSettings, generate
from deltatune.tasks.prompting import SCORERS, GenerationMetrics, PromptedColumns
from deltatune.tasks.token_loss import LabelTokenLoss, next_token_losses, resolve_chunk_size, unwrap


class LanguageModelTask(LabelTokenLoss, GenerativeTask, Task):
    """What all decoder tasks share: the model class, padding, the token loss, perplexity, generation."""

    auto_model_class = AutoModelForCausalLM
    peft_task_type = "CAUSAL_LM"
    default_metric = "loss"
    greater_is_better = False
    contiguous_split = False
    vocab_logits = True

    def set_tokenizer(self, tokenizer) -> None:
        super().set_tokenizer(tokenizer)
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            self.pad_token_id = tokenizer.eos_token_id  # padding is masked out, any id works

    def build_model(self, model_path: str, config_overrides: dict[str, Any]) -> torch.nn.Module:
        """``AutoModelForCausalLM`` in float32 (mixed precision is applied by autocast)."""
        model = load_pretrained(
            AutoModelForCausalLM,
            model_path,
            trust_remote_code=self.config.model.trust_remote_code,
            allow_pickle_weights=self.config.model.allow_pickle_weights,
            dtype=torch.float32,
            **config_overrides,
        )
        self.new_parameter_names = set()
        return model

    supports_packing = True  # train.packing: see deltatune.training.packing

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Right padding for training: pad ids, attention 0, labels -100.

        Packed rows (``position_ids``, no ``attention_mask``) give ``position_ids`` padded with 0
        and no attention mask: the model then masks attention block-diagonally per example.
        """
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX, "position_ids": 0}
        return pad_batch(features, pads)

    def token_losses(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token next-token cross-entropy (B, T-1) in fp32 and the trained-token mask (B, T-1).

        The LM head and loss run in chunks as ``train.loss_chunk_size`` says (see
        :mod:`deltatune.tasks.token_loss`).
        """
        vocab = getattr(getattr(unwrap(model), "config", None), "vocab_size", 0) or 0
        return next_token_losses(model, batch, resolve_chunk_size(self.config.train.loss_chunk_size, vocab))

    def num_targets(self, batch) -> int:
        """Trained tokens: labels not -100 after the first position (each predicts the next token)."""
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    @classmethod
    def from_pretrained_config(cls, config: RunConfig, model_config) -> "LanguageModelTask":
        return cls(config)

    def check(self, ds: datasets.Dataset, source: str, with_labels: bool = True) -> None:
        self.fit_columns(ds, source, with_labels)

    def fit(self, train: datasets.Dataset, source: str) -> None:
        self.fit_columns(train, source)

    def fit_columns(self, ds: datasets.Dataset, source: str, with_labels: bool = True) -> None:
        """Check the columns this task reads (and detect the data format)."""
        raise NotImplementedError

    def generation_settings(self) -> GenerationSettings:
        """Decoding settings from the ``eval`` config section."""
        return GenerationSettings.from_config(self.config.eval)

    chat = True

    def chat_prompt_ids(self, tokenizer, messages: list[dict[str, str]]) -> list[int]:
        """The conversation as the run's chat template renders it, with ``data.system_prompt`` first
        when the messages bring no system message (see :meth:`GenerativeTask.chat_prompt_ids`)."""
        msgs = [dict(m) for m in messages]
        if self.config.data.system_prompt and (not msgs or msgs[0]["role"] != "system"):
            msgs.insert(0, {"role": "system", "content": self.config.data.system_prompt})
        return ChatEncoder(tokenizer, self.config.data.chat_template, self.config.data.max_seq_length).prompt_ids(msgs)

    def rows_from_texts(self, texts: list[str]) -> datasets.Dataset:
        """Rows for :meth:`generate_rows` from plain input texts (``predict --text``)."""
        return datasets.Dataset.from_dict({self.config.data.text_column: list(texts)})


class CausalLMTask(LanguageModelTask):
    """Continued pretraining on raw text, packed into blocks of ``data.max_seq_length`` tokens."""

    name = "causal-lm"
    contiguous_split = True
    long_inputs_truncated = False  # documents are packed into blocks: nothing is cut off
    chat = False  # trained on raw text, never on a chat template: it continues text (/v1/completions)

    def fit_columns(self, ds, source, with_labels=True):
        require_columns(ds, [self.config.data.text_column], source)
        check_text_column(ds[self.config.data.text_column], self.config.data.text_column, source)

    def encode(self, ds, tokenizer, with_labels: bool = True, source: str = "data") -> Features:
        """Concatenate documents (EOS after each) and cut into full blocks; a last partial block is kept."""
        texts = [str(t) for t in ds[self.config.data.text_column]]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        stream: list[int] = []
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            stream.extend(ids + eos)
        block = self.config.data.max_seq_length
        rows = []
        for i in range(0, len(stream), block):
            chunk = stream[i : i + block]
            if len(chunk) < 2:
                continue
            rows.append({"input_ids": chunk, "attention_mask": [1] * len(chunk), "labels": list(chunk)})
        if not rows:
            raise DeltatuneError("the text is too short to make one training block; give more text")
        stats = EncodeStats(examples=len(rows), trained_tokens=len(stream), total_tokens=len(stream))
        return Features(rows, [len(r["input_ids"]) for r in rows], stats=stats)

    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        """Eight short ``text`` rows; see :meth:`Task.demo_rows`."""
        return {"rows": [{"text": f"The cat number {i} sat on the warm mat and slept all day."} for i in range(8)], "config": {}}

    def generate_rows(self, model, tokenizer, ds, device="cpu", source: str = "data") -> tuple[list[str], list[bool]]:
        """Continue each row's text."""
        prompts = tokenizer([str(t) for t in ds[self.config.data.text_column]])["input_ids"]
        return generate(model, tokenizer, prompts, self.generation_settings(), device)

    def final_metrics(self, model, tokenizer, ds, device="cpu") -> dict:
        """Nothing to score a continuation against: causal-lm is measured by its perplexity."""
        return {}


class InstructionTask(GenerationMetrics, LanguageModelTask):
    """Supervised fine-tuning on instruction/chat data with the loss on assistant turns only."""

    name = "instruction"

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.format = None if config.data.format == "auto" else config.data.format

    def fit_columns(self, ds, source, with_labels=True):
        """Detect the format of training data (kept for the run); check that inputs have one."""
        if self.format is None:
            fmt = detect_format(ds.column_names, with_answer=with_labels)
            if with_labels:
                self.format = fmt

    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        """Eight prompt/completion rows; see :meth:`Task.demo_rows`."""
        rows = [{"prompt": f"What is {i} plus one?", "completion": f"It is {i + 1}."} for i in range(8)]
        return {"rows": rows, "config": {}}

    def input_format(self, ds: datasets.Dataset) -> str:
        """The format of prediction inputs: the run's, else detected from ``ds``'s columns."""
        return self.format or detect_format(ds.column_names, with_answer=False)

    def messages(
        self, row: dict[str, Any], row_number: int, source: str, with_answer: bool = True, fmt: str | None = None
    ) -> list[dict[str, str]]:
        """The conversation of one row (without the final assistant turn when ``with_answer`` is False).

        ``fmt`` overrides the run's format (prediction inputs of a run whose format was detected).
        """
        msgs = row_to_messages(row, fmt or self.format, row_number, source, with_answer=with_answer)
        if self.config.data.system_prompt and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": self.config.data.system_prompt})
        if not with_answer:
            while msgs and msgs[-1]["role"] == "assistant":
                msgs.pop()
        return msgs

    def encoder(self, tokenizer) -> ChatEncoder:
        return ChatEncoder(tokenizer, self.config.data.chat_template, self.config.data.max_seq_length)

    def encode(self, ds, tokenizer, with_labels: bool = True, source: str = "data") -> Features:
        """Chat-template each row; examples with no trained token left after truncation are dropped and counted."""
        self.fit_columns(ds, source)
        enc = self.encoder(tokenizer)
        st = EncodeStats()
        rows = []
        for i, row in enumerate(ds, start=1):
            out = enc.encode(self.messages(row, i, source), st)
            if out is None:
                st.dropped_rows.append(i)
                continue
            ids, labels = out
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
        if not rows:
            raise DeltatuneError(
                f"{source}: no example has a trained token within data.max_seq_length={self.config.data.max_seq_length}; "
                "raise max_seq_length or shorten the prompts"
            )
        return Features(rows, [len(r["input_ids"]) for r in rows], stats=st)

    def input_texts(self, ds: datasets.Dataset, source: str = "data") -> list[tuple[str, ...]]:
        """The contents of each row's conversation, joined by newlines (the chat template's own
        tokens not counted), one input per row (see :meth:`Task.input_texts`)."""
        self.fit_columns(ds, source)
        return [("\n".join(m["content"] for m in self.messages(row, i, source)),) for i, row in enumerate(ds, start=1)]

    # ---- generation ------------------------------------------------------------------------
    def rows_from_texts(self, texts):
        if self.format == "alpaca":
            return datasets.Dataset.from_dict({"instruction": list(texts), "input": [""] * len(texts), "output": [""] * len(texts)})
        if self.format == "messages":
            return datasets.Dataset.from_list([{"messages": [{"role": "user", "content": t}]} for t in texts])
        return datasets.Dataset.from_dict({"prompt": list(texts), "completion": [""] * len(texts)})

    def references(self, row: dict[str, Any]) -> list[str]:
        """Reference answers of one row (the assistant's last message)."""
        msgs = row_to_messages(row, self.format, 0, "data")
        return [msgs[-1]["content"]] if msgs[-1]["role"] == "assistant" else []

    def example_input(self, row: dict[str, Any], row_number: int, source: str) -> str:
        """The conversation of one row without its answer, as analysis.json shows it: the message
        contents (``role: content`` lines when there are several)."""
        msgs = self.messages(row, row_number, source, with_answer=False)
        if len(msgs) == 1:
            return msgs[0]["content"]
        return "\n".join(f"{m['role']}: {m['content']}" for m in msgs)

    def score(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        """Generation metrics for this task (its registry scorer; instruction: ROUGE against the reference answers)."""
        return SCORERS[self.name](predictions, references)

    def generate_rows(self, model, tokenizer, ds, device="cpu", source: str = "data") -> tuple[list[str], list[bool]]:
        """Generate an answer for each row (prompts from the row without its answer; the answer may be absent)."""
        self.fit_columns(ds, source, with_labels=False)
        fmt = self.input_format(ds)
        enc = self.encoder(tokenizer)
        prompts = [enc.prompt_ids(self.messages(row, i, source, with_answer=False, fmt=fmt)) for i, row in enumerate(ds, start=1)]
        return generate(model, tokenizer, prompts, self.generation_settings(), device)


DEFAULT_PROMPTS = {
    "summarization": "Summarize the following text in one sentence.\n\n{source}",
    "translation": "Translate the following text from {source_lang} to {target_lang}.\n\n{source}",
    "generative-qa": "Answer the question with a short phrase from the context.\n\nContext: {context}\n\nQuestion: {question}",
}


class PromptedTask(PromptedColumns, InstructionTask):
    """Text-to-text tasks done by a decoder: a prompt template per task, the target as the answer.

    Columns, references and scores: :class:`deltatune.tasks.prompting.PromptedColumns`.
    """

    default_prompts = DEFAULT_PROMPTS

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.format = "prompted"

    def messages(self, row, row_number, source, with_answer: bool = True, fmt: str | None = None):
        msgs = [{"role": "user", "content": self.fill_template(row, source, row_number)}]
        if self.config.data.system_prompt:
            msgs.insert(0, {"role": "system", "content": self.config.data.system_prompt})
        if with_answer:
            msgs.append({"role": "assistant", "content": self.target_text(row, row_number, source)})
        return msgs


class SummarizationTask(PromptedTask):
    name = "summarization"


class TranslationTask(PromptedTask):
    name = "translation"


class GenerativeQATask(PromptedTask):
    name = "generative-qa"


