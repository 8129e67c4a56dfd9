"""Per-task data options: one pydantic model per task (or task family), torch-free.

Each model declares the ``data.*`` keys that only its task(s) read, every field documented with
``Field(description=...)``. :class:`deltatune.config.DataConfig` inherits them all, so the YAML
stays flat (``data.doc_stride``) and code reads ``cfg.data.doc_stride`` as before; each entry of
:mod:`deltatune.tasks.registry` names the option models of its task (``TaskSpec.options``), and
:class:`deltatune.config.RunConfig` refuses a key of another task (``data.doc_stride applies to
question-answering, not text-classification``).

The modules here also hold each task's ``columns(data, with_labels)``: the columns it reads,
so that the CLI can check a local file's header before importing torch
(:func:`deltatune.data.paths.check_columns`).

Layer 0 (:mod:`deltatune.layers`): imports pydantic only.
"""

from __future__ import annotations

from deltatune.tasks.options.classification import ClassificationOptions
from deltatune.tasks.options.extractive_qa import QuestionAnsweringOptions
from deltatune.tasks.options.extractive_summarization import ExtractiveSummarizationOptions
from deltatune.tasks.options.masked_lm import MaskedLMOptions
from deltatune.tasks.options.regression import RegressionOptions
from deltatune.tasks.options.preference import DPOOptions, GRPOOptions, KTOOptions, PairOptions, PreferenceOptions, SimPOOptions
from deltatune.tasks.options.text_to_text import ChatOptions, TargetOptions, TemplateOptions, TextToTextOptions
from deltatune.tasks.options.token_classification import TokenClassificationOptions
from deltatune.tasks.options.audio import AudioOptions
from deltatune.tasks.options.image import ImageOptions
from deltatune.tasks.options.media import MediaOptions
from deltatune.tasks.options.vision_language import VisionLanguageOptions
from deltatune.tasks.options.augmentation import AugmentationOptions

# every option model, in the order of DataConfig's YAML
OPTION_MODELS = (
    ClassificationOptions,
    ChatOptions,
    TargetOptions,
    TextToTextOptions,
    TokenClassificationOptions,
    QuestionAnsweringOptions,
    ExtractiveSummarizationOptions,
    MaskedLMOptions,
    TemplateOptions,
    PreferenceOptions,
    PairOptions,
    DPOOptions,
    SimPOOptions,
    KTOOptions,
    GRPOOptions,
    RegressionOptions,
    ImageOptions,
    AudioOptions,
    MediaOptions,
    VisionLanguageOptions,
    AugmentationOptions,
)

__all__ = [
    "OPTION_MODELS",
    "AugmentationOptions",
    "AudioOptions",
    "ImageOptions",
    "MediaOptions",
    "VisionLanguageOptions",
    "ChatOptions",
    "DPOOptions",
    "GRPOOptions",
    "KTOOptions",
    "PairOptions",
    "PreferenceOptions",
    "SimPOOptions",
    "TemplateOptions",
    "ClassificationOptions",
    "ExtractiveSummarizationOptions",
    "MaskedLMOptions",
    "QuestionAnsweringOptions",
    "RegressionOptions",
    "TargetOptions",
    "TextToTextOptions",
    "TokenClassificationOptions",
]
