"""The task registry: every task name, its implementation(s), its model family and its scorer.

This table is the one place a task is declared. ``deltatune.config.TASKS`` (the ``task`` key's
choices and the CLI help), :data:`deltatune.auto.infer.ENCODER_TASKS`,
:data:`deltatune.auto.candidates.ENCODER_DECODER_TASKS`, :data:`deltatune.tasks.prompting.SCORERS`
and :func:`deltatune.tasks.get_task_class` all read it.

It imports neither torch nor any task module (only the torch-free :mod:`deltatune.tasks.options`): implementations are named as
``"module:Class"`` (relative to :mod:`deltatune.tasks`, or a full dotted module path) and
imported when a task is created, so reading the config stays fast and torch-free.

Each entry also names the task's ``data.*`` option models and a torch-free
``columns(data, with_labels)`` (both in :mod:`deltatune.tasks.options`).

Adding a task: write its module (a :class:`deltatune.tasks.base.Task` subclass with
``demo_rows``) and add one :class:`TaskSpec` line to :data:`TASK_SPECS` (docs/extending.md);
new ``data.*`` keys go in a model of :mod:`deltatune.tasks.options` listed in ``OPTION_MODELS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from pydantic import BaseModel

from deltatune.tasks.options import (
    ChatOptions,
    ClassificationOptions,
    DPOOptions,
    GRPOOptions,
    KTOOptions,
    PairOptions,
    PreferenceOptions,
    SimPOOptions,
    TemplateOptions,
    ExtractiveSummarizationOptions,
    MaskedLMOptions,
    QuestionAnsweringOptions,
    RegressionOptions,
    TargetOptions,
    TextToTextOptions,
    TokenClassificationOptions,
)
from deltatune.tasks.options.classification import classification_columns, text_columns
from deltatune.tasks.options.extractive_qa import question_answering_columns
from deltatune.tasks.options.extractive_summarization import extractive_summarization_columns
from deltatune.tasks.options.regression import regression_columns
from deltatune.tasks.options.token_classification import token_classification_columns
from deltatune.tasks.options.audio import AudioOptions, audio_columns
from deltatune.tasks.options.image import ImageOptions, image_columns
from deltatune.tasks.options.media import MediaOptions
from deltatune.tasks.options.speech import speech_recognition_columns
from deltatune.tasks.options.vision_language import VisionLanguageOptions
from deltatune.tasks.options.augmentation import AugmentationOptions

# columns(data_config, with_labels) -> the columns the task reads from a table, in the order it checks them
ColumnsFn = Callable[[Any, bool], list]

# "vision" and "audio": image and audio encoders (AutoModelForImageClassification / ...AudioClassification);
# "vision-language": image-text-to-text models (AutoModelForImageTextToText: SmolVLM, Qwen2-VL, LLaVA, ...);
# "speech-seq2seq": audio encoder + text decoder models (AutoModelForSpeechSeq2Seq: Whisper, Speech2Text)
FAMILIES = ("encoder", "decoder", "encoder-decoder", "vision", "audio", "vision-language", "speech-seq2seq")
# families whose models are encoder-decoders (config.is_encoder_decoder) with the task's default implementation
ENCODER_DECODER_FAMILIES = ("speech-seq2seq",)


@dataclass(frozen=True)
class TaskSpec:
    """One registered task.

    Attributes:
        name: the task name (``task:`` in the config, ``--task``); the class's ``name``.
        implementation: ``"module:Class"`` of its implementation on the default family.
        family: the model family it runs on by default, ``"encoder"`` or ``"decoder"`` (packaged
            image and audio tasks: ``"vision"``, ``"audio"``); the
            default model kind of ``deltatune auto`` (:data:`deltatune.auto.candidates.DEFAULT_MODELS`).
        encoder_decoder: ``"module:Class"`` of its implementation on an encoder-decoder model
            (T5, BART, two checkpoints), or ``None`` when it has none.
        scorer: name of the generation metric in :mod:`deltatune.metrics.text` (``rouge``,
            ``bleu_chrf``, ``squad_em_f1``) for generative tasks scored against references,
            else ``None``.
        options: the pydantic models (:mod:`deltatune.tasks.options`) of the ``data.*`` keys
            this task reads besides the common ones; a key of a model not listed here is an
            error for this task. Every model must be one of
            :data:`deltatune.tasks.options.OPTION_MODELS` (``DataConfig`` inherits those).
        columns: ``columns(data_config, with_labels) -> list[str]``, torch-free: the columns
            the task reads from a table, checked in a local file's header before torch is
            imported (:func:`deltatune.data.paths.check_columns`); ``None`` when they depend
            on the data or the model (prompt templates, detected formats): checked on loading.
    """

    name: str
    implementation: str
    family: str
    encoder_decoder: Optional[str] = None
    scorer: Optional[str] = None
    options: tuple[type[BaseModel], ...] = ()
    columns: Optional[ColumnsFn] = None

    @property
    def families(self) -> tuple[str, ...]:
        """Every model family the task runs on, the default first."""
        return (self.family,) + (("encoder-decoder",) if self.encoder_decoder else ())


_TEXT_TO_TEXT = (ChatOptions, TextToTextOptions, TargetOptions)

TASK_SPECS: tuple[TaskSpec, ...] = (
    TaskSpec("text-classification", "classification:ClassificationTask", "encoder",
             options=(ClassificationOptions, AugmentationOptions), columns=classification_columns),
    TaskSpec("token-classification", "token_classification:TokenClassificationTask", "encoder",
             options=(TokenClassificationOptions,), columns=token_classification_columns),
    TaskSpec("question-answering", "extractive_qa:ExtractiveQATask", "encoder",
             options=(QuestionAnsweringOptions,), columns=question_answering_columns),
    TaskSpec("extractive-summarization", "extractive_summarization:ExtractiveSummarizationTask", "encoder",
             options=(ExtractiveSummarizationOptions, TargetOptions), columns=extractive_summarization_columns),
    TaskSpec("masked-lm", "masked_lm:MaskedLMTask", "encoder", options=(MaskedLMOptions,), columns=text_columns),
    TaskSpec("text-regression", "regression:TextRegressionTask", "encoder",
             options=(ClassificationOptions, RegressionOptions, AugmentationOptions), columns=regression_columns),
    TaskSpec("causal-lm", "language_modeling:CausalLMTask", "decoder", columns=text_columns),
    TaskSpec("instruction", "language_modeling:InstructionTask", "decoder", scorer="rouge", options=(ChatOptions,)),
    TaskSpec("summarization", "language_modeling:SummarizationTask", "decoder", "seq2seq:Seq2SeqSummarizationTask", "rouge",
             options=_TEXT_TO_TEXT),
    TaskSpec("translation", "language_modeling:TranslationTask", "decoder", "seq2seq:Seq2SeqTranslationTask", "bleu_chrf",
             options=_TEXT_TO_TEXT),
    TaskSpec("generative-qa", "language_modeling:GenerativeQATask", "decoder", "seq2seq:Seq2SeqGenerativeQATask",
             "squad_em_f1", options=_TEXT_TO_TEXT),
    # preference tuning and reinforcement fine-tuning (docs/preference.md); columns detected from the data
    TaskSpec("dpo", "deltatune.tasks.preference.dpo:DPOTask", "decoder", scorer="rouge",
             options=(TemplateOptions, PreferenceOptions, PairOptions, DPOOptions)),
    TaskSpec("orpo", "deltatune.tasks.preference.orpo:ORPOTask", "decoder", scorer="rouge",
             options=(TemplateOptions, PreferenceOptions, PairOptions)),
    TaskSpec("simpo", "deltatune.tasks.preference.simpo:SimPOTask", "decoder", scorer="rouge",
             options=(TemplateOptions, PreferenceOptions, PairOptions, SimPOOptions)),
    TaskSpec("kto", "deltatune.tasks.preference.kto:KTOTask", "decoder", scorer="rouge",
             options=(TemplateOptions, PreferenceOptions, KTOOptions)),
    TaskSpec("grpo", "deltatune.tasks.grpo.task:GRPOTask", "decoder",
             options=(TemplateOptions, PreferenceOptions, GRPOOptions)),
    # rows name image / audio files (docs/vision_audio.md); labels as text-classification's
    TaskSpec("image-classification", "image_classification:ImageClassificationTask", "vision",
             options=(ClassificationOptions, ImageOptions, MediaOptions), columns=image_columns),
    TaskSpec("audio-classification", "audio_classification:AudioClassificationTask", "audio",
             options=(ClassificationOptions, AudioOptions, MediaOptions), columns=audio_columns),
    # chat rows whose user turns hold images, on an image-text-to-text model (docs/vision_language.md)
    TaskSpec("vision-language", "deltatune.tasks.vision_language.task:VisionLanguageTask", "vision-language", scorer="rouge",
             options=(TemplateOptions, VisionLanguageOptions)),
    # rows name audio files and hold their transcripts, on an audio encoder-decoder (docs/vision_audio.md)
    TaskSpec("speech-recognition", "speech_recognition:SpeechRecognitionTask", "speech-seq2seq", scorer="wer_cer",
             options=(AudioOptions, MediaOptions, TextToTextOptions), columns=speech_recognition_columns),
)

# name -> spec, in registration order; register() adds to it (test-only tasks)
REGISTRY: dict[str, TaskSpec] = {s.name: s for s in TASK_SPECS}


def task_names() -> tuple[str, ...]:
    """Every registered task name, in registration order."""
    return tuple(REGISTRY)


def tasks_of_family(family: str) -> tuple[str, ...]:
    """Names of the tasks that run on a model ``family`` (``encoder``, ``decoder``, ``encoder-decoder``).

    Tasks whose default family is ``encoder`` run on encoders only; ``decoder`` tasks on
    decoders, and on encoder-decoders when they have an ``encoder_decoder`` implementation.
    """
    return tuple(s.name for s in REGISTRY.values() if family in s.families)


def option_fields(name: str) -> frozenset[str]:
    """The task-specific ``data.*`` keys (fields of its option models) the task ``name`` reads."""
    return frozenset(f for model in REGISTRY[name].options for f in model.model_fields)


def tasks_reading(model: type[BaseModel]) -> tuple[str, ...]:
    """Names of the registered tasks that declare the option model ``model``, in registration order."""
    return tuple(s.name for s in REGISTRY.values() if model in s.options)


def register(spec: TaskSpec) -> TaskSpec:
    """Add (or replace a task added this way) to the live registry, e.g. a task defined outside the package.

    ``deltatune.config.TASKS`` is fixed when the config module is imported; validation of the
    ``task`` key reads the live registry, so a task registered later is accepted.

    Raises:
        ValueError: ``spec.family`` is not ``encoder`` or ``decoder``, an implementation is
            not ``"module:Class"``, or an option model is not in ``OPTION_MODELS`` (``DataConfig``
            has only those keys); ``spec.name`` is a packaged task (a packaged task is never
            replaced silently: choose another name).
    """
    from deltatune.tasks.options import OPTION_MODELS

    if any(packaged.name == spec.name for packaged in TASK_SPECS):
        raise ValueError(f"task {spec.name!r} is a packaged task; register yours under another name")

    for model in spec.options:
        if model not in OPTION_MODELS:
            raise ValueError(f"task {spec.name!r}: option model {model.__name__} is not in deltatune.tasks.options.OPTION_MODELS")
    if spec.family not in FAMILIES[:2]:
        raise ValueError(f"task {spec.name!r}: family must be 'encoder' or 'decoder', got {spec.family!r}")
    for ref in (spec.implementation, spec.encoder_decoder):
        if ref is not None and ref.count(":") != 1:
            raise ValueError(f"task {spec.name!r}: implementation {ref!r} is not 'module:Class'")
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a task added with :func:`register` (tests); the packaged tasks stay."""
    if name in {s.name for s in TASK_SPECS}:
        raise ValueError(f"task {name!r} is a packaged task and cannot be removed")
    REGISTRY.pop(name, None)
