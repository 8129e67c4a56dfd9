"""Run configuration: pydantic models, YAML loading and ``key=value`` overrides.

A run is fully described by one :class:`RunConfig`. It is read from YAML, overridden from the
command line with dotted keys (``train.learning_rate=1e-4``), validated (unknown keys and
wrong types are errors naming the key) and written back, resolved, to ``<run>/config.yaml`` so
that the run can be reproduced from that file and its seed alone.

Numbers are checked to be finite (no ``inf``/``nan``) and in range, naming the key. YAML is read
with YAML 1.2 booleans (only ``true``/``false``): ``eval_strategy: no`` is the word ``no``, as in
the README; ``yes``/``no``/``on``/``off`` still set boolean keys. An unknown key gets the closest
known one (``did you mean train.learning_rate?``).

Field names follow Hugging Face ``TrainingArguments`` where one exists (learning_rate,
warmup_ratio, weight_decay, per_device_train_batch_size, gradient_accumulation_steps,
max_grad_norm, metric_for_best_model, ...), so users can carry their settings over.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deltatune.delta.registry import METHOD_NAMES, default_learning_rates
from deltatune.errors import DeltatuneError
from deltatune.tasks.options import (
    OPTION_MODELS,
    ChatOptions,
    ClassificationOptions,
    DPOOptions,
    ExtractiveSummarizationOptions,
    GRPOOptions,
    KTOOptions,
    MaskedLMOptions,
    PairOptions,
    PreferenceOptions,
    SimPOOptions,
    QuestionAnsweringOptions,
    RegressionOptions,
    TargetOptions,
    TextToTextOptions,
    TokenClassificationOptions,
)
from deltatune.tasks.options import AudioOptions, ImageOptions, MediaOptions
from deltatune.tasks.options import VisionLanguageOptions
from deltatune.tasks.options.augmentation import AugmentationOptions, unused_augmentation_keys
from deltatune.tasks.options.preference import completion_room_problem
from deltatune.tasks.registry import REGISTRY, option_fields, task_names, tasks_reading

# [CLS] x [SEP] (BERT) needs 3 positions; the tokenizer-aware check runs before encoding
MIN_SEQ_LENGTH = 3

# the task names, from the one task registry (deltatune.tasks.registry; torch-free)
TASKS = task_names()


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors, no ``inf``/``nan`` in any number,
    and YAML 1.1 booleans given to a text key are read back as the word written."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _booleans_as_words(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in list(data.items()):
                field = cls.model_fields.get(key) if isinstance(key, str) else None
                if field is not None and isinstance(value, str) and value.lower() in _BOOL_WORDS:
                    choices = _text_choices(field.annotation)
                    if choices is not None and not choices[0] and value not in choices[1]:
                        value = value.lower() in _TRUE_WORDS  # "NO", "Off" for a Literal: its own word for no
                if isinstance(value, bool) and field is not None:
                    word = bool_as_word(value, field.annotation)
                    if word is None and _takes_numbers(field.annotation):
                        word = str(value).lower()  # pydantic would read true as 1: refused as "not a number"
                    if word is not None:
                        data = {**data, key: word}
        return data


def _takes_numbers(annotation: Any) -> bool:
    """Whether a field type accepts int or float (and not bool): ``float``, ``Optional[int]``, ``Literal[1, 2, 3]``
    (pydantic would take ``True`` as the choice 1), ..."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    numbers = [a for a in args if a in (int, float) or (typing.get_origin(a) is Literal and any(
        isinstance(c, (int, float)) and not isinstance(c, bool) for c in typing.get_args(a)))]
    return bool.__name__ not in {getattr(a, "__name__", "") for a in args} and bool(numbers)


# YAML 1.1 reads these words as booleans; a text (or Literal) key gets them back as text
_FALSE_WORDS = ("no", "off", "false", "n")
_TRUE_WORDS = ("yes", "on", "true", "y")
_BOOL_WORDS = ("yes", "no", "on", "off", "true", "false")  # YAML 1.1's, in any case


def _text_choices(annotation: Any) -> tuple[bool, tuple[str, ...]] | None:
    """(accepts any str, the Literal words) of a field type, or None when it accepts booleans or no text."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return None
    if annotation is str:
        return True, ()
    if origin is Literal:
        return False, tuple(a for a in args if isinstance(a, str))
    if origin in (Union, types.UnionType):
        if bool in args:
            return None
        any_text, words = False, ()
        for a in args:
            got = _text_choices(a)
            if got is not None:
                any_text, words = any_text or got[0], words + got[1]
        return (any_text, words) if any_text or words else None
    return None


def bool_as_word(value: bool, annotation: Any) -> str | None:
    """The word a YAML 1.1 boolean stood for, when the field of type ``annotation`` takes text.

    ``eval_strategy: no`` is read by YAML 1.1 as ``False``; for a Literal field the Literal's own
    word (``"no"``, ``"off"``, ...) is returned, for a plain text field ``"true"``/``"false"``.
    Returns None when the field takes booleans (or no text): the value is then left alone.
    """
    choices = _text_choices(annotation)
    if choices is None:
        return None
    any_text, words = choices
    for w in _TRUE_WORDS if value else _FALSE_WORDS:
        match = next((x for x in words if x.lower() == w), None)
        if match is not None:
            return match
    return ("true" if value else "false") if any_text else None


class _YAML12Loader(yaml.SafeLoader):
    """YAML loader whose booleans are only ``true``/``false`` (YAML 1.2): ``no``, ``on``, ``yes``
    ... stay the text written (pydantic still reads them as booleans for boolean keys). A key
    given twice in one mapping is an error (PyYAML would keep the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice in one mapping; keep one", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YAML12Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"] for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YAML12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    """Parse YAML text with YAML 1.2 booleans (only true/false): see :class:`_YAML12Loader`.

    Raises:
        yaml.YAMLError: the text is not YAML.
    """
    return yaml.load(text, Loader=_YAML12Loader)  # noqa: S506 - a SafeLoader subclass


# the packaged model of a task family whose tasks cannot start from minilm (also deltatune auto's default)
FAMILY_DEFAULT_MODELS = {"vision": "dinov2-small", "audio": "whisper-tiny-en", "speech-seq2seq": "whisper-tiny-en"}


class ModelConfig(_Section):
    """Which pretrained model to start from and how to load it.

    ``name_or_path`` is a local model folder, a Hugging Face hub id (needs network), or a
    packaged default name (``minilm``). ``decoder_name_or_path`` builds an encoder-decoder
    (``EncoderDecoderModel``) from the encoder ``name_or_path`` and this decoder (cross-attention
    initialised fresh), for summarization/translation/generative-qa. ``dropout`` overrides every dropout probability in the
    model config (hidden, attention, classifier) when set; ``None`` keeps the model's own.

    ``trust_remote_code`` (run Python code shipped with the model, ``auto_map``) and
    ``allow_pickle_weights`` (accept ``pytorch_model.bin`` pickles when there are no
    safetensors) are load permissions: honoured for a fresh ``train``, where the config is the
    user's own; when a run folder is loaded (predict, evaluate, export, ``train --resume``)
    the values in its config.yaml are ignored and only the command line / Python call counts.
    """

    name_or_path: str = "minilm"
    decoder_name_or_path: Optional[str] = None
    revision: Optional[str] = None
    dropout: Optional[float] = Field(default=None, ge=0.0, lt=1.0)
    trust_remote_code: bool = False
    allow_pickle_weights: bool = False


class DataFiles(BaseModel):
    """The ``data.*`` keys every task reads: where the rows come from, the text column and sizes."""

    train_file: Optional[str] = Field(default=None, description="training rows: a data file or a hub dataset name")
    validation_file: Optional[str] = Field(
        default=None, description="validation rows; unset: data.validation_split of the training rows are carved out"
    )
    test_file: Optional[str] = Field(default=None, description="test rows, evaluated once after training")
    dataset_config_name: Optional[str] = Field(default=None, description="the hub dataset's configuration, if it has several")
    split_column: Optional[str] = Field(
        default=None,
        description="a column of train_file naming each row's split (train; validation/valid/val/dev/eval; test): "
        "its validation and test rows are used when validation_file / test_file are unset",
    )
    text_column: str = Field(default="text", description="column holding the input text (the document for summarization)")
    validation_split: float = Field(
        default=0.1, gt=0.0, lt=1.0,
        description="fraction of the training rows carved out for validation when no validation_file is given "
        "(stratified by label, seeded)",
    )
    max_train_samples: Optional[int] = Field(default=None, gt=0, description="use only the first N training rows")
    max_eval_samples: Optional[int] = Field(default=None, gt=0, description="use only the first N validation/test rows")
    train_fraction: float = Field(
        default=1.0, gt=0.0, le=1.0,
        description="train on this fraction of the training rows (0 < f <= 1), chosen after the validation split is "
        "fixed: seeded by subset_seed, stratified by label for single-label classification, nested across fractions "
        "(deltatune curve)",
    )
    subset_seed: int = Field(default=0, description="seed of the train_fraction subset (the same seed gives nested subsets)")
    max_seq_length: int = Field(default=128, ge=MIN_SEQ_LENGTH, description="longest input, in tokens (longer inputs are truncated or windowed)")


class DataConfig(
    _Section,
    AugmentationOptions,
    VisionLanguageOptions,
    MediaOptions,
    AudioOptions,
    ImageOptions,
    RegressionOptions,
    GRPOOptions,
    KTOOptions,
    SimPOOptions,
    DPOOptions,
    PairOptions,
    PreferenceOptions,
    MaskedLMOptions,
    ExtractiveSummarizationOptions,
    QuestionAnsweringOptions,
    TokenClassificationOptions,
    TextToTextOptions,
    TargetOptions,
    ChatOptions,
    ClassificationOptions,
    DataFiles,
):
    """Where the rows come from and which columns hold what: the keys every task reads
    (:class:`DataFiles`), plus (inherited) the options of each task, declared and documented
    field by field in :mod:`deltatune.tasks.options` (``data.doc_stride`` in
    ``QuestionAnsweringOptions``). Fields come in the reverse order of the bases (common keys first).

    The YAML stays flat (``data.doc_stride``) and code reads ``cfg.data.doc_stride``; which
    options a task reads is in its registry entry (:mod:`deltatune.tasks.registry`), and
    :class:`RunConfig` refuses another task's option given a value other than its default.
    Files may be CSV, TSV, JSON, JSONL or Parquet (by extension) or a hub dataset name.
    """



class TrainConfig(_Section):
    """Optimisation and the training loop.

    Units: ``learning_rate`` is the peak rate after warmup (unset: a default per Δθ method,
    1e-4 for full/freeze, 1e-3 for LoRA/DoRA, 1e-2 for IA3 and prefix tuning, chosen on SST-2,
    see benchmarks/README.md); ``warmup_ratio`` is a fraction of
    the total optimizer steps (``warmup_steps`` wins when set); ``weight_decay`` is the
    decoupled (AdamW) or L2 (SGD) coefficient, never applied to biases or normalization
    weights; ``l1_lambda`` multiplies sum(|w|) over the same weights; batch sizes are in
    examples per process per forward pass.

    Speed and memory (benchmarks/README.md): ``packing`` (decoder tasks) concatenates training
    examples into sequences of at most ``data.max_seq_length`` tokens without attention between
    them; batch sizes then count packed sequences. ``loss_chunk_size`` is the number of trained
    tokens per chunk of the LM head + cross-entropy (decoder tasks; never materializes the full
    B x T x V logits): unset chunks by 1,024 when the vocabulary has at least 32,000 entries,
    0 turns chunking off. ``torch_compile`` compiles each transformer block with
    ``torch.compile``; ``gradient_checkpointing`` recomputes block activations in the backward
    pass (less memory, ~30% more compute).

    Memory (training/batch_plan.py): each batch of ``per_device_train_batch_size`` examples is
    run in micro-batches of ``micro_batch_size`` examples per forward pass (unset: planned
    from the memory estimate and the memory available, lowered only when the batch does not
    fit); the gradient, loss and steps are the same for any micro-batch, which may change on
    ``--resume``. ``per_device_train_batch_size: auto`` keeps the default batch of 32 and
    chooses the largest micro-batch that fits (by the estimate on CPU, by trial steps on GPU).

    Progress: a bar on a terminal; otherwise (output to a file or pipe) one plain line every
    ``log_interval_seconds`` (0: every step); with ``progress_bar: false`` (``--quiet``) one
    line every ``log_interval_seconds`` but at most one per 5 minutes.

    Few-shot text classification (``method: contrastive``, ``deltatune train --few-shot``;
    SetFit, Tunstall et al. 2022, arXiv:2209.11055; :mod:`deltatune.tasks.fewshot`): the
    encoder is trained on pairs of training texts (same label: target cosine 1, different: 0;
    ``contrastive_iterations`` rounds of one positive and one negative pair per training
    example, so ``2 * contrastive_iterations * rows`` pairs), ``num_train_epochs`` passes over
    the pairs; then ``contrastive_head`` (a logistic regression, the only one so far) is fitted
    on the mean-pooled embeddings of the training texts. ``text-classification`` only; with
    ``delta.method: full`` and no ``learning_rate`` the rate is SetFit's 2e-5.
    """

    # how the model is trained: "standard" (the task's own loss) or "contrastive" (few-shot, above)
    method: Literal["standard", "contrastive"] = "standard"
    contrastive_iterations: int = Field(default=20, gt=0, le=1000)
    contrastive_head: Literal["logistic_regression"] = "logistic_regression"
    num_train_epochs: float = Field(default=1.0, gt=0, le=100_000)
    max_steps: Optional[int] = Field(default=None, gt=0, le=10**9)
    per_device_train_batch_size: Union[int, str] = 32  # a positive int or "auto" (validated below)
    micro_batch_size: Optional[int] = Field(default=None, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    learning_rate: Optional[float] = Field(default=None, gt=0)
    optimizer: Literal["adamw", "sgd", "adafactor"] = "adamw"
    adam_beta1: float = Field(default=0.9, ge=0, lt=1)
    adam_beta2: float = Field(default=0.999, ge=0, lt=1)
    adam_epsilon: float = Field(default=1e-8, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    l1_lambda: float = Field(default=0.0, ge=0)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    warmup_steps: Optional[int] = Field(default=None, ge=0)
    max_grad_norm: Optional[float] = Field(default=1.0, gt=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    group_by_length: bool = True
    packing: bool = False
    loss_chunk_size: Optional[int] = Field(default=None, ge=0)
    torch_compile: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = Field(default=20, gt=0)
    save_steps: Optional[int] = Field(default=None, gt=0)
    save_total_limit: int = Field(default=2, ge=1)
    progress_bar: bool = True
    log_interval_seconds: float = Field(default=30.0, ge=0)
    # experiment tracking (deltatune.training.tracking): the scalars of metrics.jsonl, the config as
    # hyperparameters and (MLflow) report.html as an artifact; [] keeps to the run folder's files
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list)
    tracking_uri: Optional[str] = None  # MLflow store; unset: $MLFLOW_TRACKING_URI, else sqlite:///<output_dir's parent>/mlflow.db
    tracking_project: str = "deltatune"  # MLflow experiment / W&B project name

    @field_validator("max_steps", mode="before")
    @classmethod
    def _steps_to_train(cls, v: Any) -> Any:
        if v == 0 and not isinstance(v, bool):
            raise ValueError(
                "0 trains nothing; for the pretrained model's numbers (no training) use "
                "deltatune evaluate --pretrained CONFIG --data FILE"
            )
        return v

    @field_validator("per_device_train_batch_size", mode="before")
    @classmethod
    def _batch_size_or_auto(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError("must be a positive integer or auto")
        if v > 2**20:
            raise ValueError(f"{v} examples per forward pass is more than any machine holds; give at most {2**20} (or auto)")
        return v

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker_or_a_list(cls, v: Any) -> Any:
        """``report_to: tensorboard`` (one name, as HF Trainer accepts) means ``[tensorboard]``; ``none`` means ``[]``."""
        if isinstance(v, str):
            return [] if v.strip().lower() in ("", "none") else [t.strip() for t in v.split(",")]
        return v


class EvalConfig(_Section):
    """When to evaluate, which metric decides the best model, and early stopping.

    ``eval_strategy``: ``epoch`` evaluates at each epoch end, ``steps`` every ``eval_steps``
    optimizer steps, ``no`` only once after training. ``metric_for_best_model`` defaults to
    the task's main metric (``accuracy`` for classification). ``early_stopping_patience`` is
    the number of evaluations without an improvement larger than
    ``early_stopping_threshold`` after which training stops (``None`` disables it).
    Decoder tasks generate for up to ``generation_max_samples`` rows at the final evaluation
    (greedy unless ``do_sample``; beam search with ``num_beams`` > 1), ``max_new_tokens`` each.
    """

    eval_strategy: Literal["epoch", "steps", "no"] = "epoch"
    eval_steps: Optional[int] = Field(default=None, gt=0)
    per_device_eval_batch_size: int = Field(default=64, gt=0)
    metric_for_best_model: Optional[str] = None
    greater_is_better: Optional[bool] = None
    early_stopping_patience: Optional[int] = Field(default=None, gt=0)
    early_stopping_threshold: float = Field(default=0.0, ge=0)
    # generation (decoder tasks): used for the final evaluation and for predict
    max_new_tokens: int = Field(default=64, gt=0)
    num_beams: int = Field(default=1, gt=0)
    do_sample: bool = False
    temperature: float = Field(default=1.0, ge=0)  # used only when do_sample
    top_p: float = Field(default=1.0, gt=0, le=1)
    generation_max_samples: int = Field(default=200, ge=0)
    generation_batch_size: int = Field(default=16, gt=0)
    # report.html (deltatune.report): validation examples with the lowest scores, and validation rows
    # generated by the pretrained model before training and the trained one after (generative tasks)
    worst_examples: int = Field(default=10, ge=0)
    compare_generations: int = Field(default=3, ge=0)

    @model_validator(mode="after")
    def _steps_need_eval_steps(self) -> "EvalConfig":
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("eval_strategy 'steps' needs eval.eval_steps")
        if self.do_sample and self.temperature == 0:
            raise ValueError("eval.temperature 0 cannot sample; set eval.do_sample false for greedy decoding or a temperature > 0")
        return self


class DeltaConfig(_Section):
    """What is trained (``method``) and what is stored (``save``).

    ``full`` trains every weight; ``freeze`` only the top ``train_layers`` layers and the head;
    ``lora``/``dora`` (rank ``lora_r``, scale ``lora_alpha / lora_r``, ``lora_dropout``,
    ``target_modules``: ``all-linear`` or a list of module names), ``ia3`` and ``prefix``
    (``num_virtual_tokens``) train a PEFT adapter. With ``full``, ``save: delta`` stores
    θ_ft − θ_pre as truncated-SVD factors keeping ``delta_energy`` of each matrix's squared
    Frobenius norm (or a fixed ``delta_rank``), optionally int8 (``delta_int8``).
    """

    method: Literal[METHOD_NAMES] = "full"  # type: ignore[valid-type]  # deltatune.delta.registry
    save: Literal["model", "delta"] = "model"
    train_layers: int = Field(default=2, ge=0)
    lora_r: int = Field(default=8, gt=0)
    lora_alpha: float = Field(default=16.0, gt=0)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: Optional[Union[str, list[str]]] = "all-linear"
    num_virtual_tokens: int = Field(default=20, gt=0)
    delta_energy: float = Field(default=0.9, gt=0, le=1)
    delta_rank: Optional[int] = Field(default=None, gt=0)
    delta_int8: bool = False

    @model_validator(mode="after")
    def _save_delta_needs_full(self) -> "DeltaConfig":
        if self.save == "delta" and self.method != "full":
            raise ValueError(f"save: delta applies to method full; {self.method} already stores only its delta")
        return self


class DistributedConfig(_Section):
    """How several processes share the training (docs/distributed.md; ``training/distributed.py``).

    ``strategy``: ``ddp`` (every process holds the whole model, gradients averaged; one process
    is plain training), ``fsdp`` (FSDP2: parameters, gradients and optimizer state sharded over
    the processes, one unit per transformer block; needs at least 2 processes, else refused),
    ``deepspeed`` (DeepSpeed ZeRO through Accelerate's DeepSpeed plugin, ``training/deepspeed_engine.py``:
    ``zero_stage`` 1 shards the optimizer state, 2 also the gradients, 3 also the parameters;
    ``offload_optimizer`` / ``offload_param`` (ZeRO-3) ``cpu`` keep them in CPU memory on GPU
    launches; needs ``pip install deltatune[deepspeed]``). ``fsdp_cpu_offload`` keeps shards,
    gradients and the optimizer step on the CPU (GPU launches). ``fsdp_reshard_after_forward``
    frees each block's gathered parameters after its forward (less memory, one more
    all-gather in the backward; ZeRO-3) or keeps them until the backward (ZeRO-2-like).
    ``fsdp_blocks``: class names of the modules made one FSDP unit each (unset: the model's
    ``_no_split_modules``, as Accelerate does).
    """

    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(default="ddp", description="ddp, fsdp (FSDP2) or deepspeed")
    fsdp_cpu_offload: bool = Field(default=False, description="FSDP: shards, gradients and optimizer step on the CPU")
    fsdp_reshard_after_forward: bool = Field(default=True, description="FSDP: free gathered block parameters after each forward")
    fsdp_blocks: Optional[list[str]] = Field(default=None, description="FSDP: class names wrapped as units (unset: _no_split_modules)")
    zero_stage: Literal[1, 2, 3] = Field(default=2, description="deepspeed: ZeRO stage (1 optimizer state, 2 + gradients, 3 + parameters)")
    offload_optimizer: Literal["none", "cpu"] = Field(default="none", description="deepspeed: optimizer state and step in CPU memory (GPU launches)")
    offload_param: Literal["none", "cpu"] = Field(default="none", description="deepspeed, zero_stage 3: parameter shards in CPU memory (GPU launches)")

    @model_validator(mode="after")
    def _offload_param_needs_zero3(self) -> "DistributedConfig":
        # under ddp/fsdp the DeepSpeed keys are refused by RunConfig._settings_without_their_switch
        if self.strategy == "deepspeed" and self.offload_param != "none" and self.zero_stage != 3:
            raise ValueError(f"distributed.offload_param applies to zero_stage 3 (parameters sharded), not {self.zero_stage}; set zero_stage 3 or offload_param none")
        return self


class DistillConfig(_Section):
    """Knowledge distillation from a finished teacher run (docs/distillation.md; ``deltatune distill``).

    With ``teacher`` set, the teacher labels the training rows (and ``unlabeled_file``'s rows)
    with soft targets once, before training (cached in the run folder, teacher_logits.safetensors),
    and the loss per target is ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * hard loss``
    with ``T = temperature`` (Hinton et al. 2015, arXiv:1503.02531); rows without labels get the
    KL term only. Teachers: text-classification, token-classification, and decoder runs
    (causal-lm, instruction, summarization, translation, generative-qa) with the student's vocabulary.
    """

    teacher: Optional[str] = Field(default=None, description="the teacher: a finished deltatune run folder (unset: no distillation)")
    temperature: float = Field(default=2.0, gt=0, le=100, description="softmax temperature T of teacher and student in the KL term")
    alpha: float = Field(default=0.5, ge=0, le=1, description="weight of the KL term (1 - alpha: the hard-label loss)")
    unlabeled_file: Optional[str] = Field(
        default=None, description="extra training rows without labels (same text column(s)): KL term only; encoder tasks"
    )

    @model_validator(mode="after")
    def _settings_need_a_teacher(self) -> "DistillConfig":
        if self.teacher is None and self.unlabeled_file is not None:
            raise ValueError("distill.unlabeled_file needs distill.teacher (the run that labels its rows)")
        return self


def unused_deepspeed_keys(d: DistributedConfig, resolved: bool) -> list[str]:
    """The DeepSpeed keys (``distributed.zero_stage``, ``offload_optimizer``, ``offload_param``) given
    (``model_fields_set``) although ``distributed.strategy`` is not ``deepspeed``: they would change nothing.

    Args:
        d: the ``distributed`` section.
        resolved: the config is a saved one (every top-level key given): only values other than the
            default count, and none when the section holds every one of its keys (as ``<run>/config.yaml``).

    Returns:
        the dotted keys, in the section's order (empty under ``deepspeed``).
    """
    given, fields = d.model_fields_set, DistributedConfig.model_fields
    if d.strategy == "deepspeed" or set(fields) <= given:
        return []
    return [f"distributed.{k}" for k in ("zero_stage", "offload_optimizer", "offload_param")
            if k in given and (not resolved or getattr(d, k) != fields[k].get_default())]


# task-specific data key -> the option model declaring it (deltatune.tasks.options)
_OPTION_OF: dict[str, type[BaseModel]] = {key: model for model in OPTION_MODELS for key in model.model_fields}

# top-level keys every saved config (<run>/config.yaml, RunConfig.to_yaml) holds
_RESOLVED_KEYS = frozenset({"task", "name", "output_dir", "seed", "model", "data", "train", "eval", "delta"})

# peak learning rates that work for each method when train.learning_rate is not set (from the registry)
DEFAULT_LEARNING_RATES = default_learning_rates()
# train.method contrastive with delta.method full: SetFit's body learning rate (arXiv:2209.11055)
CONTRASTIVE_FULL_LEARNING_RATE = 2e-5


class RunConfig(_Section):
    """The whole run: task, model, data, training, evaluation, and where results go.

    ``output_dir`` defaults to ``runs/<name>``; ``name`` defaults to the task name and is a
    name, not a path (no ``/``, ``\\`` or ``:``, no leading ``.``, not empty): the folder is
    chosen with ``output_dir``. ``seed`` is in [0, 2**32).
    """

    task: str = "text-classification"  # a name of the task registry (checked below)
    name: Optional[str] = None
    output_dir: Optional[str] = None
    seed: int = Field(default=42, ge=0, lt=2**32)  # numpy's seed range
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    delta: DeltaConfig = Field(default_factory=DeltaConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)

    @field_validator("task")
    @classmethod
    def _task_is_registered(cls, task: str) -> str:
        names = task_names()  # the live registry: tasks registered after import count too
        if task not in names:
            raise ValueError(f"Input should be {', '.join(repr(n) for n in names[:-1])} or {names[-1]!r}")
        return task

    @field_validator("name")
    @classmethod
    def _name_is_a_name(cls, name: Optional[str]) -> Optional[str]:
        if name is None:
            return name
        if not name.strip() or name != name.strip() or name.startswith(".") or any(c in name for c in "/\\:\0"):
            raise ValueError(
                f"name {name!r} is not a run name: use letters, digits, '-' or '_' (no path separators, no leading '.', "
                "not empty); to choose the folder set output_dir (--output-dir)"
            )
        return name

    @model_validator(mode="after")
    def _options_of_this_task(self) -> "RunConfig":
        """A ``data.*`` option of another task (:mod:`deltatune.tasks.options`) is an error when it
        was given a value other than its default. A resolved config (``<run>/config.yaml``, every
        ``data`` key present) is exempt, so runs saved before this check still load; defaults of
        other tasks' keys (which every saved config holds) are always accepted."""
        data = self.data
        if self.task not in REGISTRY or data.model_fields_set >= set(DataConfig.model_fields):
            return self
        own = option_fields(self.task)
        for key in DataConfig.model_fields:
            model = _OPTION_OF.get(key)
            if model is None or key in own or key not in data.model_fields_set:
                continue
            if getattr(data, key) != DataConfig.model_fields[key].get_default(call_default_factory=True):
                readers = tasks_reading(model)
                where = ", ".join(readers) if readers else "no registered task"
                raise ValueError(
                    f"data.{key} applies to {where}, not {self.task}; remove it, or set task to the task it belongs to"
                )
        return self

    @model_validator(mode="after")
    def _preference_beta_positive(self) -> "RunConfig":
        """``data.beta`` 0 is allowed for grpo only (no KL penalty); the preference losses divide by it
        or scale by it to nothing."""
        own = option_fields(self.task)
        if "beta" in own and "num_generations" not in own and self.data.beta is not None and self.data.beta <= 0:
            raise ValueError(f"data.beta must be > 0 for {self.task} (0 is allowed for grpo only); e.g. data.beta=0.1")
        return self

    @model_validator(mode="after")
    def _grpo_completion_fits(self) -> "RunConfig":
        """grpo: a sampled completion leaves room for a prompt in ``data.max_seq_length``."""
        if "num_generations" in option_fields(self.task):
            problem = completion_room_problem(self.data)
            if problem:
                raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _stride_fits(self) -> "RunConfig":
        """``data.doc_stride`` below ``data.max_seq_length``, for the tasks that read it (saved configs of
        other tasks may hold any value there: they never used it)."""
        d = self.data
        if "doc_stride" in option_fields(self.task) and d.doc_stride is not None and d.doc_stride >= d.max_seq_length:
            raise ValueError(
                f"data.doc_stride {d.doc_stride} must be smaller than data.max_seq_length {d.max_seq_length} "
                "(windows overlap by doc_stride tokens); lower it or leave it unset"
            )
        return self

    @model_validator(mode="after")
    def _contrastive_fits(self) -> "RunConfig":
        """``train.method: contrastive`` (few-shot, SetFit) is for single-text ``text-classification``;
        ``train.contrastive_iterations`` only means something with it. Its default learning rate
        with ``delta.method: full`` is SetFit's 2e-5 (set here, before the per-method default)."""
        t = self.train
        if t.method == "standard":
            if t.contrastive_iterations != TrainConfig.model_fields["contrastive_iterations"].default:
                raise ValueError(
                    "train.contrastive_iterations applies to train.method contrastive (few-shot); "
                    "remove it, or set train.method: contrastive (deltatune train --few-shot)"
                )
            return self
        if self.task != "text-classification":
            raise ValueError(
                f"train.method contrastive (few-shot, --few-shot) applies to task text-classification only, not {self.task}; "
                "remove train.method (or --few-shot) or set task: text-classification"
            )
        if self.data.text_pair_column:
            raise ValueError(
                f"train.method contrastive embeds single texts, and data.text_pair_column is {self.data.text_pair_column!r}; "
                "remove data.text_pair_column or use train.method standard"
            )
        if t.learning_rate is None and self.delta.method == "full":
            object.__setattr__(t, "learning_rate", CONTRASTIVE_FULL_LEARNING_RATE)
        return self

    @model_validator(mode="after")
    def _distill_fits(self) -> "RunConfig":
        """``distill.teacher`` trains on the task's own rows one by one: not with few-shot pairs or packed blocks."""
        if self.distill.teacher is None:
            return self
        if self.train.method != "standard":
            raise ValueError("distill.teacher trains with the task's own loss; remove train.method contrastive (--few-shot)")
        if self.train.packing:
            raise ValueError("distill.teacher keeps the teacher's outputs per example; remove train.packing")
        return self

    @model_validator(mode="after")
    def _distinct_columns(self) -> "RunConfig":
        """The columns a task reads are different columns (``data.audio_column: path`` with
        ``data.text_column: path`` would train on file names as transcripts)."""
        spec = REGISTRY.get(self.task)
        columns = spec.columns(self.data, True) if spec is not None and spec.columns is not None else []
        seen: set[str] = set()
        for c in (c for c in columns if c):
            if c in seen:
                raise ValueError(f"task {self.task} reads column {c!r} for two different inputs; give each its own column (data.*_column)")
            seen.add(c)
        return self

    @model_validator(mode="after")
    def _settings_without_their_switch(self) -> "RunConfig":
        """``data.augmentation_*`` keys without ``data.augmentation: eda`` (text-classification,
        text-regression), and ``distill.temperature`` / ``distill.alpha`` without ``distill.teacher``, would
        change nothing, and so would ``distributed.zero_stage`` / ``offload_*`` without ``distributed.strategy:
        deepspeed``: an error naming them when they were given (``model_fields_set``). A saved config
        (every top-level key given, as ``<run>/config.yaml``) is refused only for values other than the
        default, and not at all when it holds every key of the group, so that saved runs still load."""
        resolved = _RESOLVED_KEYS <= self.model_fields_set
        unused = [f"data.{k}" for k in unused_augmentation_keys(self.data, resolved)] if "augmentation" in option_fields(self.task) else []
        if unused:
            verb, it = ("is", "it") if len(unused) == 1 else ("are", "them")
            raise ValueError(
                f"{', '.join(unused)} {verb} set but data.augmentation is 'none', so nothing is augmented; "
                f"set data.augmentation: eda or remove {it}"
            )
        d, given = self.distill, self.distill.model_fields_set
        if d.teacher is None and not set(DistillConfig.model_fields) <= given:
            fields = DistillConfig.model_fields
            unused = [f"distill.{k}" for k in ("temperature", "alpha")
                      if k in given and (not resolved or getattr(d, k) != fields[k].get_default())]
            if unused:
                verb, it = ("is", "it") if len(unused) == 1 else ("are", "them")
                raise ValueError(
                    f"{', '.join(unused)} {verb} set but distill.teacher is not, so nothing is distilled; set "
                    f"distill.teacher to a finished run folder (or use deltatune distill --teacher RUN) or remove {it}"
                )
        unused = unused_deepspeed_keys(self.distributed, resolved)
        if unused:
            verb, they, it = ("is", "it applies", "it") if len(unused) == 1 else ("are", "they apply", "them")
            fsdp = (" (FSDP's own CPU offload is distributed.fsdp_cpu_offload: true)"
                    if self.distributed.strategy == "fsdp" and any("offload" in k for k in unused) else "")
            raise ValueError(
                f"{', '.join(unused)} {verb} set but distributed.strategy is {self.distributed.strategy}, and {they} only "
                f"to distributed.strategy: deepspeed{fsdp}; set distributed.strategy: deepspeed or remove {it}"
            )
        return self

    @model_validator(mode="after")
    def _default_model_of_the_task(self) -> "RunConfig":
        """Without ``model.name_or_path``, image/audio tasks start from their family's packaged model
        (:data:`FAMILY_DEFAULT_MODELS`) instead of the text encoder ``minilm``."""
        spec = REGISTRY.get(self.task)
        if spec is not None and spec.family in FAMILY_DEFAULT_MODELS and "name_or_path" not in self.model.model_fields_set:
            object.__setattr__(self.model, "name_or_path", FAMILY_DEFAULT_MODELS[spec.family])
        return self

    @model_validator(mode="after")
    def _fill_names(self) -> "RunConfig":
        if self.name is None:
            object.__setattr__(self, "name", self.task)
        if self.output_dir is None:
            object.__setattr__(self, "output_dir", str(Path("runs") / str(self.name)))
        if self.train.learning_rate is None:
            object.__setattr__(self.train, "learning_rate", DEFAULT_LEARNING_RATES[self.delta.method])
        return self

    @model_validator(mode="after")
    def _student_is_not_its_teacher(self) -> "RunConfig":
        """The student's run folder must not be, contain or lie inside ``distill.teacher``: with
        ``--overwrite`` the student would replace the run it learns from."""
        if self.distill.teacher is None or self.output_dir is None:
            return self
        student, teacher = Path(self.output_dir).resolve(), Path(self.distill.teacher).resolve()
        if student == teacher or teacher in student.parents or student in teacher.parents:
            raise ValueError(
                f"output_dir {self.output_dir} and distill.teacher {self.distill.teacher} overlap: the student would "
                "overwrite its teacher; choose another --output-dir"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-safe) of every field, defaults included."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The resolved config as YAML text (what ``<run>/config.yaml`` holds)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write the resolved config as YAML to ``path``."""
        Path(path).write_text(self.to_yaml())


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        parent = _section_fields(first["loc"][:-1])
        known = f" (known keys: {', '.join(parent)})" if parent else ""
        guess = suggest_key(key)
        hint = f"; did you mean {guess}?" if guess else ""
        msg = f"unknown key '{key}'{hint}{known}"
    else:
        got = first.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        text = first["msg"].removeprefix("Value error, ")
        msg = f"'{key}': {text}{got_s}" if first["loc"] else text  # a check across sections names its keys itself
    more = f" [+{len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    return f"config error in {source}: {msg}{more}"


def config_keys() -> list[str]:
    """Every dotted key of :class:`RunConfig` (``task``, ``train.learning_rate``, ...)."""
    keys = []
    for name, field in RunConfig.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += [f"{name}.{k}" for k in sub.model_fields]
        else:
            keys.append(name)
    return keys


def suggest_key(key: str) -> str | None:
    """The known dotted key closest to an unknown one, or None.

    ``train.lerning_rate`` -> ``train.learning_rate`` (difflib similarity); a right key in the
    wrong section (``data.learning_rate``, ``learning_rate``) -> ``train.learning_rate``.
    """
    sections = [n for n, f in RunConfig.model_fields.items() if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)]
    keys = config_keys() + sections
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    if len(same_leaf) == 1:
        return same_leaf[0]
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
    if close:
        return close[0]
    leaves = {k.rsplit(".", 1)[-1]: k for k in keys}
    close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.8)
    return leaves[close[0]] if close else None


def _section_fields(loc: tuple) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


_YAML_NULLS = ("", "~", "null", "Null", "NULL")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"train.learning_rate=1e-4"`` into (["train", "learning_rate"], 1e-4).

    The value is parsed as YAML, so numbers, booleans, ``null``, ``[lists]`` and ``{mappings}``
    work. Free text stays text: a value that YAML cannot parse, or would turn into a mapping or
    list without starting with ``{`` or ``[`` (``data.prompt_template=Translate: {en}``), into a
    mapping of keys without values (``{en}``: a template), or into ``null`` without being a null
    literal (``#1 rule`` is a YAML comment), is kept as written.

    Raises:
        DeltatuneError: when there is no ``=`` or the key is empty.
    """
    if "=" not in text:
        raise DeltatuneError(f"override '{text}' is not of the form key=value (e.g. train.learning_rate=1e-4)")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise DeltatuneError(f"override '{text}' has an empty key")
    stripped = value.strip()
    try:
        parsed = load_yaml(value) if stripped else None
    except yaml.YAMLError:
        parsed = value
    # free text that YAML would read as a mapping/list ("Q: {q}", "- item") or as nothing ("#1") stays text
    if isinstance(parsed, (list, dict)) and not stripped.startswith(("{", "[")):
        parsed = value
    # "{en}", "{source} -> {target}": a str.format template, not a mapping of keys without values
    elif isinstance(parsed, dict) and parsed and all(v is None for v in parsed.values()) and ":" not in stripped:
        parsed = value
    elif parsed is None and stripped not in _YAML_NULLS:
        parsed = value
    # keep strings that YAML would turn into dates etc. as plain text
    if not isinstance(parsed, (str, int, float, bool, list, dict, type(None))):
        parsed = value
    if isinstance(parsed, str) and not value.strip().startswith(("'", '"')):
        try:
            parsed = float(parsed)  # YAML 1.1 reads "1e-4" as a string
        except ValueError:
            pass
    return parts, parsed


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Return a copy of nested ``data`` with dotted overrides applied.

    ``overrides`` is a list of ``key=value`` strings or a dict of dotted key -> value.
    """
    out = _deep_copy(data)
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        parts = key.split(".") if isinstance(key, str) else key
        node = out
        for part in parts[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[parts[-1]] = value
    return out


def flatten_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping as dotted keys: ``{"train": {"learning_rate": 1e-4}}`` -> ``{"train.learning_rate": 1e-4}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``.

    Raises:
        DeltatuneError: file missing, unreadable, not YAML, or not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise DeltatuneError(f"config file not found: {p} (give a YAML file, or use flags such as --train)")
    try:
        data = load_yaml(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise DeltatuneError(f"config file {p}{line} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DeltatuneError(f"config file {p} must hold a mapping of keys (task:, model:, data:, ...), not a {type(data).__name__}")
    return data


def build_config(
    source: str | Path | dict[str, Any] | RunConfig | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> RunConfig:
    """Build a validated :class:`RunConfig` from a YAML path, a dict or a config, plus overrides.

    Raises:
        DeltatuneError: unknown keys or wrong types, naming the dotted key.
    """
    if isinstance(source, RunConfig):
        data, where = source.to_dict(), "config"
    elif isinstance(source, (str, Path)):
        data, where = read_yaml(source), str(source)
    else:
        data, where = dict(source or {}), "config"
    if overrides:
        data = apply_overrides(data, overrides)
        where = f"{where} + overrides" if where != "config" else "config overrides"
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise DeltatuneError(_format_validation_error(e, where)) from None
