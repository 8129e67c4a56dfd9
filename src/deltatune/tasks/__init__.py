"""Task families, all with the interface of :class:`deltatune.tasks.base.Task`.

Every task is declared once in :mod:`deltatune.tasks.registry` (name, implementation
``"module:Class"``, model family, scorer); classes are imported lazily so that importing this
package imports neither torch nor every model head. The text-to-text tasks (summarization, translation,
generative-qa) have two implementations: by prompting a decoder
(:mod:`deltatune.tasks.language_modeling`) or with an encoder-decoder
(:mod:`deltatune.tasks.seq2seq`); which one is decided by the model (see
:func:`is_encoder_decoder`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from deltatune.errors import DeltatuneError
from deltatune.tasks.registry import ENCODER_DECODER_FAMILIES, REGISTRY, TaskSpec, register, task_names, tasks_of_family

if TYPE_CHECKING:  # importing this package stays torch-free (deltatune.config reads the registry)
    from deltatune.config import ModelConfig, RunConfig
    from deltatune.tasks.base import Features, GenerativeTask, Task


def import_class(ref: str) -> type[Task]:
    """The class named by a registry reference ``"module:Class"`` (module relative to
    :mod:`deltatune.tasks` unless it is a dotted path)."""
    module_name, class_name = ref.split(":")
    module_path = module_name if "." in module_name else f"deltatune.tasks.{module_name}"
    return getattr(importlib.import_module(module_path), class_name)


# train.method contrastive (few-shot text classification, SetFit): the class that trains that way
CONTRASTIVE_CLASS = "deltatune.tasks.fewshot.task:ContrastiveClassificationTask"


def get_task_class(name: str, encoder_decoder: bool = False, method: str = "standard") -> type[Task]:
    """The task class registered under ``name`` (its encoder-decoder variant when asked and one exists).

    ``method`` is the run's ``train.method``: ``"contrastive"`` gives the few-shot classification
    task (:class:`deltatune.tasks.fewshot.task.ContrastiveClassificationTask`; the config allows
    it for ``text-classification`` only).

    Raises:
        DeltatuneError: unknown task name (lists the known ones); an encoder-decoder model for
            a task that has no encoder-decoder variant.
    """
    spec = REGISTRY.get(name)
    if spec is None:
        raise DeltatuneError(f"unknown task '{name}'; known tasks: {', '.join(REGISTRY)}")
    if encoder_decoder and spec.family not in ENCODER_DECODER_FAMILIES:  # speech-recognition: its own class is the one
        if spec.encoder_decoder is None:
            raise DeltatuneError(
                f"task '{name}' does not run on an encoder-decoder model; use one of {', '.join(tasks_of_family('encoder-decoder'))}"
            )
        return import_class(spec.encoder_decoder)
    if method == "contrastive":
        if name != "text-classification":
            raise DeltatuneError(f"train.method contrastive applies to text-classification only, not {name}; remove train.method")
        return import_class(CONTRASTIVE_CLASS)
    return import_class(spec.implementation)


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
    spec = REGISTRY.get(config.task)
    enc_dec = spec is not None and spec.encoder_decoder is not None and is_encoder_decoder(config.model, model_config)
    return get_task_class(config.task, enc_dec, config.train.method)(config)


_BASE_NAMES = ("Features", "GenerativeTask", "Task")
_BASE_MODULE = "deltatune.tasks.base"


def __getattr__(name: str):  # Task, ClassificationTask etc. stay importable from deltatune.tasks, lazily
    if name in _BASE_NAMES:
        return getattr(importlib.import_module(_BASE_MODULE), name)
    for spec in REGISTRY.values():
        for ref in (spec.implementation, spec.encoder_decoder):
            if ref is not None and ref.endswith(f":{name}"):
                return import_class(ref)
    raise AttributeError(name)


__all__ = [
    "Features", "GenerativeTask", "REGISTRY", "Task", "TaskSpec", "create_task", "get_task_class",
    "import_class", "is_encoder_decoder", "register", "task_names", "tasks_of_family",
]
