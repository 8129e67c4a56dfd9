"""Encoder-decoder (seq2seq) tasks: summarization, translation and generative QA.

Runs on any ``AutoModelForSeq2SeqLM`` (T5, BART, Marian, mBART, ...) or on an
``EncoderDecoderModel`` warm-started from two pretrained checkpoints
(``model.name_or_path`` as encoder, ``model.decoder_name_or_path`` as decoder; Rothe et al.
2020, "Leveraging Pre-trained Checkpoints for Sequence Generation Tasks", TACL). The task
registry (:func:`deltatune.tasks.create_task`) picks these classes for an encoder-decoder model;
the same tasks on a decoder are :mod:`deltatune.tasks.language_modeling`'s prompted tasks.

Rows (shared with the prompted tasks, :class:`deltatune.tasks.prompting.PromptedColumns`):
the encoder input is ``data.source_prefix`` (T5's ``"summarize: "``,
``"translate English to German: "``) + ``data.prompt_template`` filled from the row, by
default plainly ``{source}`` (summarization, translation) or
``question: {question} context: {context}`` (generative QA); it is cut to
``data.max_seq_length`` tokens. The target (``data.target_column``; ``target``, or ``answers``
for generative QA) is tokenized as a target (``text_target=``) and cut to
``data.max_target_length`` tokens; the tokenizer's special tokens are kept (the end token
survives truncation). A leading token equal to the decoder start token (the [CLS] a BERT
tokenizer puts first, when [CLS] also starts the decoder) is dropped: the decoder would only
learn to repeat its start token. An end token is appended when the tokenizer adds none.

Loss: the decoder inputs are made by the model from the labels (shifted right after the
decoder start token, ``prepare_decoder_input_ids_from_labels``); the loss is the summed fp32
token cross-entropy over label tokens, padding (-100) never trained, with the number of label
tokens as the normalizer (DESIGN.md), so accumulation is exact on variable-length targets.
Evaluation reports loss and perplexity over label tokens and, at the end of a run, generation
metrics (ROUGE / BLEU and chrF / SQuAD EM and F1) on up to ``eval.generation_max_samples``
rows. Generation uses ``eval.num_beams`` as configured (default 1, greedy; set e.g. 4 for the
beam search T5/BART papers report), ``eval.max_new_tokens``, and sampling settings.

Δθ methods: ``AutoModelForSeq2SeqLM`` models take every method (peft task type
``SEQ_2_SEQ_LM``). An ``EncoderDecoderModel`` built from two checkpoints has new
cross-attention (and, for an encoder-only decoder checkpoint, a new LM-head transform); those
must be trained and saved whole, so it takes ``delta.method: full`` only (``delta.save: delta``
stores it compactly); a saved run's model can then be tuned further with any method. Encoder
and decoder must share one vocabulary (the run's tokenizer tokenizes both sides).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import datasets
import torch
from transformers import AutoModelForSeq2SeqLM

from deltatune.config import RunConfig
from deltatune.data.columns import check_text_column
from deltatune.errors import DeltatuneError
from deltatune.models import resolve_model
from deltatune.models.loading import dropout_overrides, load_config, load_pretrained, load_tokenizer, quiet_transformers
from deltatune.tasks.base import Features, GenerativeTask, Task
from deltatune.tasks.chat_format import IGNORE_INDEX, EncodeStats
from deltatune.tasks.collate import pad_batch
from deltatune.tasks.generation import GenerationSettings, generate
from deltatune.tasks.prompting import GenerationMetrics, PromptedColumns
from deltatune.tasks.token_loss import LabelTokenLoss, masked_cross_entropy, unwrap

SEQ2SEQ_PROMPTS = {
    "summarization": "{source}",
    "translation": "{source}",
    "generative-qa": "question: {question} context: {context}",
}


@dataclass
class Seq2SeqEncodeStats(EncodeStats):
    """Encoding counts: ``truncated`` counts cut sources, ``targets_truncated`` cut targets;
    ``trained_tokens`` are label tokens, ``total_tokens`` source plus label tokens."""

    targets_truncated: int = 0


class DecoderTokenIds(NamedTuple):
    """The decoder's special token ids: ``start`` (first decoder input), ``eos`` (ends a target), ``pad``."""

    start: int | None
    eos: int | None
    pad: int | None


def encoder_decoder_token_ids(tokenizer) -> DecoderTokenIds:
    """Special ids for an ``EncoderDecoderModel`` made from two checkpoints, from their shared tokenizer.

    A BERT-style tokenizer ([CLS] ... [SEP]): start [CLS], end [SEP], pad [PAD] (the
    bert2bert setup of Rothe et al. 2020); otherwise BOS, EOS and PAD (EOS when no PAD).

    Raises:
        DeltatuneError: the tokenizer has no start or no end token.
    """
    if tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None:
        start, eos = tokenizer.cls_token_id, tokenizer.sep_token_id
    else:
        start, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if start is None or eos is None:
        raise DeltatuneError(
            "the tokenizer has neither [CLS]/[SEP] nor BOS/EOS tokens; an encoder-decoder needs a decoder start and an end token"
        )
    return DecoderTokenIds(start, eos, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)


class Seq2SeqTask(LabelTokenLoss, GenerationMetrics, PromptedColumns, GenerativeTask, Task):
    """Text-to-text on an encoder-decoder: source -> encoder, target -> decoder labels.

    Features: ``input_ids``/``attention_mask`` (source, at most ``data.max_seq_length``) and
    ``labels`` (target ids, at most ``data.max_target_length``); the collator pads labels
    with -100.
    """

    auto_model_class = AutoModelForSeq2SeqLM
    peft_task_type = "SEQ_2_SEQ_LM"
    default_metric = "loss"
    greater_is_better = False
    default_prompts = SEQ2SEQ_PROMPTS

    def __init__(self, config: RunConfig, model_config=None):
        super().__init__(config)
        self.model_config = model_config  # the (saved) model's config, when known

    @property
    def from_two_checkpoints(self) -> bool:
        """True when the model is an ``EncoderDecoderModel`` built from ``name_or_path`` + ``decoder_name_or_path``."""
        return bool(self.config.model.decoder_name_or_path)

    def decoder_token_ids(self, tokenizer) -> DecoderTokenIds:
        """The decoder's start/end/pad ids: from the tokenizer for a model built from two
        checkpoints (:func:`encoder_decoder_token_ids`), else from the model's config."""
        if self.from_two_checkpoints:
            return encoder_decoder_token_ids(tokenizer)
        if self.model_config is None:
            m = self.config.model
            self.model_config = load_config(resolve_model(m.name_or_path), m.trust_remote_code)
        c = self.model_config
        eos = getattr(c, "eos_token_id", None)
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        return DecoderTokenIds(getattr(c, "decoder_start_token_id", None), eos, getattr(c, "pad_token_id", None))

    # ---- data -> features ---------------------------------------------------------------
    def fit(self, train: datasets.Dataset, source: str) -> None:
        """Check the template's columns and the target column (nothing to learn from the rows)."""
        self.check(train, source)

    def check(self, ds: datasets.Dataset, source: str, with_labels: bool = True) -> None:
        """Check that the template's columns exist and hold text, and the target column exists.

        Raises:
            DeltatuneError: a missing column or an empty source cell (file, row, column).
        """
        self.fit_columns(ds, source, with_labels)
        for col in self.template_columns():
            check_text_column(ds[col], col, source)

    def source_texts(self, ds: datasets.Dataset, source: str) -> list[str]:
        """Encoder input texts: ``data.source_prefix`` + the filled template, one per row."""
        prefix = self.config.data.source_prefix or ""
        return [prefix + self.fill_template(row, source, i) for i, row in enumerate(ds, start=1)]

    def input_texts(self, ds: datasets.Dataset, source: str = "data") -> list[tuple[str, ...]]:
        """``(encoder input,)`` per row: :meth:`source_texts` (see :meth:`Task.input_texts`)."""
        return [(t,) for t in self.source_texts(ds, source)]

    @staticmethod
    def tokenize(tokenizer, texts: list[str], max_length: int, target: bool = False) -> tuple[list[list[int]], int]:
        """Token ids of ``texts`` with special tokens, cut to ``max_length`` by the tokenizer.

        Args:
            target: tokenize as decoder targets (``text_target=``: target language for
                Marian/mBART tokenizers).

        Returns:
            (ids per text, number of texts that were cut).
        """
        key = "text_target" if target else "text"
        with quiet_transformers():  # no "longer than the maximum" warning: long texts are cut below
            ids = tokenizer(**{key: texts})["input_ids"]
        long = [i for i, x in enumerate(ids) if len(x) > max_length]
        if long:
            cut = tokenizer(**{key: [texts[i] for i in long]}, truncation=True, max_length=max_length)["input_ids"]
            for i, c in zip(long, cut):
                ids[i] = c
        return ids, len(long)

    def encode(self, ds: datasets.Dataset, tokenizer, with_labels: bool = True, source: str = "data") -> Features:
        """Tokenize sources (and targets into ``labels``); counts go to the features' ``stats``.

        Raises:
            DeltatuneError: an empty target (file, row, column) or a template column missing.
        """
        d = self.config.data
        sources, cut = self.tokenize(tokenizer, self.source_texts(ds, source), d.max_seq_length)
        rows = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in sources]
        st = Seq2SeqEncodeStats(examples=len(rows), truncated=cut)
        if with_labels:
            targets = [self.target_text(row, i, source) for i, row in enumerate(ds, start=1)]
            labels, st.targets_truncated = self.tokenize(tokenizer, targets, d.max_target_length, target=True)
            ids = self.decoder_token_ids(tokenizer)
            for row, lab in zip(rows, labels):
                if len(lab) > 1 and lab[0] == ids.start:
                    lab = lab[1:]  # the decoder starts with this token; it is not a target
                if ids.eos is not None and ids.eos not in lab:
                    lab = lab[: d.max_target_length - 1] + [ids.eos]
                    st.eos_appended += 1
                row["labels"] = lab
            st.trained_tokens = sum(len(r["labels"]) for r in rows)
        st.total_tokens = st.trained_tokens + sum(len(r["input_ids"]) for r in rows)
        return Features(rows, [len(r["input_ids"]) + len(r.get("labels", ())) for r in rows], stats=st)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Right padding: sources with the pad id (attention 0), labels with -100."""
        return pad_batch(features, {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX})

    # ---- model ----------------------------------------------------------------------------
    def build_model(self, model_path: str, config_overrides: dict[str, Any]) -> torch.nn.Module:
        """``AutoModelForSeq2SeqLM`` in float32, or an ``EncoderDecoderModel`` from two checkpoints.

        Raises:
            DeltatuneError: unloadable weights; ``data.max_seq_length`` / ``data.max_target_length``
                beyond the encoder's / decoder's positions; for two checkpoints, a Δθ method other
                than ``full`` or encoder and decoder vocabularies that differ.
        """
        if self.from_two_checkpoints:
            model = self._build_from_two_checkpoints(model_path, config_overrides)
        else:
            model = self.load_pretrained_float32(AutoModelForSeq2SeqLM, model_path, config_overrides)
        self._check_lengths(model.config)
        return model

    def _build_from_two_checkpoints(self, encoder_path: str, config_overrides: dict[str, Any]) -> torch.nn.Module:
        from transformers import AutoModel, AutoModelForCausalLM, EncoderDecoderModel

        m = self.config.model
        if self.config.delta.method != "full":
            raise DeltatuneError(
                f"delta.method {self.config.delta.method}: an encoder-decoder built from two checkpoints "
                "(model.decoder_name_or_path) has new cross-attention weights that must be trained and saved whole; "
                "use delta.method full (delta.save: delta stores it compactly), then tune the saved run with other methods"
            )
        decoder_path = resolve_model(m.decoder_name_or_path)
        tokenizer = getattr(self, "tokenizer", None) or load_tokenizer(encoder_path, m.trust_remote_code)
        if decoder_path != encoder_path and load_tokenizer(decoder_path, m.trust_remote_code).get_vocab() != tokenizer.get_vocab():
            raise DeltatuneError(
                f"model.decoder_name_or_path '{m.decoder_name_or_path}' has another vocabulary than the encoder "
                f"'{m.name_or_path}'; use a decoder with the encoder's tokenizer"
            )
        trust = m.trust_remote_code
        encoder, enc_info = load_pretrained(
            AutoModel, encoder_path, trust_remote_code=trust, allow_pickle_weights=m.allow_pickle_weights, dtype=torch.float32,
            output_loading_info=True, **config_overrides,
        )
        decoder, dec_info = load_pretrained(
            AutoModelForCausalLM,
            decoder_path,
            trust_remote_code=trust,
            allow_pickle_weights=m.allow_pickle_weights,
            dtype=torch.float32,
            output_loading_info=True,
            is_decoder=True,
            add_cross_attention=True,
            **dropout_overrides(decoder_path, m.dropout, trust),
        )
        with quiet_transformers():
            model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
        ids = encoder_decoder_token_ids(tokenizer)
        for cfg in (model.config, model.generation_config):  # shift-right for training; generate() reads the latter
            cfg.decoder_start_token_id, cfg.eos_token_id, cfg.pad_token_id = ids.start, ids.eos, ids.pad
        model.config.vocab_size = model.config.decoder.vocab_size
        self.new_parameter_names = (
            {f"encoder.{k}" for k in enc_info["missing_keys"]}
            | {f"decoder.{k}" for k in dec_info["missing_keys"]}
            | {n for n, _ in model.named_parameters() if n.startswith("enc_to_dec_proj.")}  # hidden sizes differ
        )
        return model

    def _check_lengths(self, config) -> None:
        d = self.config.data
        enc, dec = (config.encoder, config.decoder) if self.from_two_checkpoints else (config, config)
        for key, length, cfg in (("max_seq_length", d.max_seq_length, enc), ("max_target_length", d.max_target_length, dec)):
            positions = getattr(cfg, "max_position_embeddings", None)
            if positions and length > positions:
                raise DeltatuneError(f"data.{key} {length} exceeds the model's {positions} positions; set it to at most {positions}")

    # ---- loss ----------------------------------------------------------------------------
    @staticmethod
    def token_losses(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token cross-entropy (B, T) in fp32 over the labels, and the label mask (B, T).

        Decoder inputs: the labels shifted right by the model (pad for -100).
        """
        labels = batch["labels"]
        decoder_input_ids = unwrap(model).prepare_decoder_input_ids_from_labels(labels=labels)
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
        ).logits
        return masked_cross_entropy(logits, labels)

    # ---- outputs -> metrics / predictions (loss, num_targets, eval_step, compute_metrics: LabelTokenLoss)
    def generate_rows(self, model, tokenizer, ds, device="cpu", source: str = "data") -> tuple[list[str], list[bool]]:
        """Generate the output of each row from its source (see :func:`deltatune.tasks.generation.generate`).

        Returns:
            (texts, whether each generation ended with the end token within ``eval.max_new_tokens``).
        """
        self.fit_columns(ds, source, with_labels=False)
        prompts, _ = self.tokenize(tokenizer, self.source_texts(ds, source), self.config.data.max_seq_length)
        return generate(model, tokenizer, prompts, GenerationSettings.from_config(self.config.eval), device)

    @classmethod
    def from_pretrained_config(cls, config: RunConfig, model_config) -> "Seq2SeqTask":
        return cls(config, model_config)


class Seq2SeqSummarizationTask(Seq2SeqTask):
    """Abstractive summarization; scored with ROUGE-1/2/L/Lsum."""

    name = "summarization"


class Seq2SeqTranslationTask(Seq2SeqTask):
    """Translation; scored with corpus BLEU and chrF (sacrebleu)."""

    name = "translation"


class Seq2SeqGenerativeQATask(Seq2SeqTask):
    """Generative question answering; scored with SQuAD exact match and F1."""

    name = "generative-qa"
