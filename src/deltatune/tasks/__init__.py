"""Task families, all with the interface of :class:`deltatune.tasks.base.Task`.

Task classes are imported lazily (``name -> "module:Class"``) so that importing one task does
not import every model head. The text-to-text tasks (summarization, translation,
generative-qa) have two implementations: by prompting a decoder
(:mod:`deltatune.tasks.language_modeling`) or with an encoder-decoder
(:mod:`deltatune.tasks.seq2seq`); which one is decided by the model (see
:func:`is_encoder_decoder`).
"""

from __future__ import annotations

import importlib

from deltatune.config import ModelConfig, RunConfig
from deltatune.errors import DeltatuneError
from deltatune.tasks.base import Features, Task

TASK_CLASSES: dict[str, str] = {
    "text-classification": "classification:ClassificationTask",
    "token-classification": "token_classification:TokenClassificationTask",
    "question-answering": "extractive_qa:ExtractiveQATask",
    "extractive-summarization": "extractive_summarization:ExtractiveSummarizationTask",
    "masked-lm": "masked_lm:MaskedLMTask",
    "causal-lm": "language_modeling:CausalLMTask",
    "instruction": "language_modeling:InstructionTask",
    "summarization": "language_modeling:SummarizationTask",
    "translation": "language_modeling:TranslationTask",
    "generative-qa": "language_modeling:GenerativeQATask",
}

# the same text-to-text tasks on an encoder-decoder model
SEQ2SEQ_CLASSES: dict[str, str] = {
    "summarization": "seq2seq:Seq2SeqSummarizationTask",
    "translation": "seq2seq:Seq2SeqTranslationTask",
    "generative-qa": "seq2seq:Seq2SeqGenerativeQATask",
}


def _import(ref: str) -> type[Task]:
    module, cls = ref.split(":")
    return getattr(importlib.import_module(f"deltatune.tasks.{module}"), cls)


def get_task_class(name: str, encoder_decoder: bool = False) -> type[Task]:
    """The task class registered under ``name`` (its encoder-decoder variant when asked and one exists).

    Raises:
        DeltatuneError: unknown task name (lists the known ones); an encoder-decoder model for
            a task that has no encoder-decoder variant.
    """
    if name not in TASK_CLASSES:
        raise DeltatuneError(f"unknown task '{name}'; known tasks: {', '.join(TASK_CLASSES)}")
    if encoder_decoder:
        if name not in SEQ2SEQ_CLASSES:
            raise DeltatuneError(
                f"task '{name}' does not run on an encoder-decoder model; use one of {', '.join(SEQ2SEQ_CLASSES)}"
            )
        return _import(SEQ2SEQ_CLASSES[name])
    return _import(TASK_CLASSES[name])


def is_encoder_decoder(model: ModelConfig, model_config=None) -> bool:
    """True when the run's model is an encoder-decoder (T5, BART, Marian, ``EncoderDecoderModel``).

    Args:
        model: the run's model section (``decoder_name_or_path`` set means an encoder-decoder
            built from two models).
        model_config: the loaded ``PretrainedConfig`` when already known; otherwise the model
            reference is resolved and its config read (no weights are loaded).
    """
    if model.decoder_name_or_path:
        return True
    if model_config is None:
        from deltatune.models import resolve_model
        from deltatune.models.loading import load_config

        model_config = load_config(resolve_model(model.name_or_path), model.trust_remote_code)
    return bool(getattr(model_config, "is_encoder_decoder", False))


def create_task(config: RunConfig, model_config=None) -> Task:
    """A fresh, unfitted task for ``config.task`` on ``config.model``."""
    enc_dec = config.task in SEQ2SEQ_CLASSES and is_encoder_decoder(config.model, model_config)
    return get_task_class(config.task, enc_dec)(config)


def __getattr__(name: str):  # ClassificationTask etc. stay importable from deltatune.tasks
    for ref in list(TASK_CLASSES.values()) + list(SEQ2SEQ_CLASSES.values()):
        if ref.endswith(f":{name}"):
            return _import(ref)
    raise AttributeError(name)


__all__ = ["Features", "Task", "TASK_CLASSES", "create_task", "get_task_class", "is_encoder_decoder"]
