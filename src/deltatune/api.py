"""The public Python API: :func:`finetune`, :func:`evaluate`, :func:`load`.

The CLI is a thin layer over these functions.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import datasets
from accelerate.utils import set_seed

from deltatune.config import RunConfig, build_config, flatten_dict
from deltatune.data import load_table
from deltatune.data.splits import FileRows, split_by_column, split_source, train_validation_indices
from deltatune.data.coverage import check_coverage
from deltatune.delta import apply_delta, parameter_summary, save_trained
from deltatune.errors import DeltatuneError
from deltatune.metrics import format_table
from deltatune.models import resolve_model
from deltatune.models.loading import dropout_overrides, load_processor
from deltatune.output_files import check_output, write_atomically
from deltatune.rundir import RunDir, write_failure
from deltatune.serving.export import export_run as export  # the API's name for it
from deltatune.serving.predictor import Predictor, check_batch_size, load
from deltatune.serving.server import serve  # deltatune serve: the HTTP API
from deltatune.tasks import GenerativeTask, Task, create_task
from deltatune.tasks.base import Features
from deltatune.tasks.examples import compared_generations, worst_examples
from deltatune.tasks.media_classification import MediaClassificationTask
from deltatune.training import Trainer, TrainResult, resolve_mixed_precision
from deltatune.training.checkpoint import list_checkpoints, replace_dir_atomically
from deltatune.training.loop import check_launch, process_state
from deltatune.training import distributed
from deltatune.training.memory import estimate_run_memory
from deltatune.training.progress import counts_tokens, format_rate
from deltatune.training.packing import pack_training_features, packing_report
from deltatune.training.tracking import check_tracking

datasets.disable_progress_bars()


@dataclass
class Run:
    """The outcome of :func:`finetune`.

    Attributes:
        path: the run directory.
        config: the resolved config.
        metrics: final metrics per split (``{"validation": {...}, "test": {...}}``), as in eval.json.
        result: training summary (steps, time, throughput, peak memory, best step).
    """

    path: Path
    config: RunConfig
    metrics: dict[str, Any] = field(default_factory=dict)
    result: Optional[TrainResult] = None

    def predictor(self) -> Predictor:
        """A :class:`Predictor` over this run's model, with the load permissions this run was trained with
        (``config`` is the caller's own, not read back from the folder)."""
        m = self.config.model
        return load(self.path, trust_remote_code=m.trust_remote_code, allow_pickle_weights=m.allow_pickle_weights)


def _read_split(ref: str, task: Task, cfg: RunConfig, with_labels: bool = True) -> datasets.Dataset:
    ds = load_table(ref, split="validation", config_name=cfg.data.dataset_config_name)
    task.check(ds, ref, with_labels=with_labels)
    if cfg.data.max_eval_samples:
        ds = ds.select(range(min(cfg.data.max_eval_samples, len(ds))))
    return ds


def _check_resume_config(cfg: RunConfig, run_dir: RunDir) -> None:
    saved = build_config(run_dir.config)
    a, b = flatten_dict(saved.to_dict()), flatten_dict(cfg.to_dict())
    # load permissions come from the resuming caller, never from the folder (see finetune)
    cosmetic = {"output_dir", "train.progress_bar", "model.trust_remote_code", "model.allow_pickle_weights"}
    cosmetic |= {"train.micro_batch_size", "train.log_interval_seconds"}  # same steps and results
    cosmetic |= {"train.report_to", "train.tracking_uri", "train.tracking_project", "eval.worst_examples", "eval.compare_generations"}
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in cosmetic)
    if diff:
        k = diff[0]
        raise DeltatuneError(
            f"cannot resume {run_dir.root}: the config differs from its config.yaml at {', '.join(diff[:5])} "
            f"({k}: {a.get(k)!r} there, {b.get(k)!r} now); resume with the run's own config"
        )


def _flatten_overrides(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    from deltatune.config import parse_override

    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    return {".".join(k): v for k, v in (parse_override(o) for o in overrides)}



def finetune(
    config: str | Path | dict[str, Any] | RunConfig | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    trust_remote_code: bool | None = None,
    allow_pickle_weights: bool | None = None,
    trust_checkpoint: bool = False,
    callbacks: tuple[Callable, ...] = (),
    verbose: bool = True,
    strict: bool = False,
) -> Run:
    """Fine-tune a pretrained model as ``config`` says and evaluate it.

    Args:
        config: a YAML path, a dict or a :class:`RunConfig`; with ``resume=True`` it may also be
            the run directory itself.
        overrides: dotted ``key=value`` strings or a dict (``{"train.learning_rate": 1e-4}``).
        overwrite: replace an existing run directory.
        resume: continue the run in ``output_dir`` from its newest checkpoint.
        trust_remote_code: allow Python code shipped with the model (``auto_map``) to run; sets
            ``model.trust_remote_code``. With ``resume`` only this argument counts (the run
            folder's config.yaml value is ignored, as a folder may come from anyone); ``None``
            means false there, and the config's own value for a new run.
        allow_pickle_weights: accept pickle weights (``pytorch_model.bin``) when a model has no
            safetensors; sets ``model.allow_pickle_weights``, with ``resume`` as above.
        trust_checkpoint: with ``resume``, accept a checkpoint written by an older deltatune whose
            RNG states hold numpy arrays (read with ``weights_only=True``, numpy arrays allowed).
        callbacks: passed to :class:`deltatune.training.Trainer`.
        verbose: print the evaluation table.
        strict: the data warnings (training tokens unknown to the model's vocabulary, examples
            truncated at ``data.max_seq_length``; :mod:`deltatune.data.coverage`) are errors;
            otherwise they are printed to stderr.

    Returns:
        :class:`Run` with the run directory, resolved config and final metrics. An interrupted
        run (Ctrl-C) returns with ``result.interrupted`` true and a checkpoint to resume from
        (and writes neither analysis.json nor eval.json).

    A finished run's folder holds analysis.json (the worst-scored validation rows and, for
    generative tasks scored against references, generations before and after training; see
    :mod:`deltatune.tasks.examples`) and then eval.json, written last.

    Raises:
        DeltatuneError: any input problem (config, data, model, run directory), before anything
            is written.
    """
    cfg = _build_run_config(config, overrides, resume, trust_remote_code, allow_pickle_weights)
    run_dir = _check_run_dir(cfg, overwrite, resume)
    check_tracking(cfg.train)  # a missing tracker package, an MLflow store URI MLflow cannot open
    task, splits = _load_splits(cfg)
    model_path = resolve_model(cfg.model.name_or_path)
    tokenizer, encoded = _encode(cfg, task, splits, model_path, strict)
    model = _build_model(cfg, task, model_path)
    _prepare_run_dir(cfg, run_dir, overwrite, resume)
    _write_augmented(cfg, run_dir, splits, resume)
    with run_dir.training(main=process_state().is_main_process):  # .training: other processes see it is in use
        try:
            return _train_and_conclude(cfg, run_dir, task, model, tokenizer, splits, encoded, model_path, callbacks, verbose, resume, trust_checkpoint)
        except DeltatuneError as e:  # e.g. a user reward that raises: say how to run again, the folder being kept
            e.args = (_with_rerun_advice(str(e), run_dir),)
            raise


def distill(
    teacher: str | Path,
    student: str,
    config: str | Path | dict[str, Any] | RunConfig | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    output_dir: str | None = None,
    **kwargs: Any,
) -> Run:
    """Knowledge distillation: fine-tune ``student`` on the soft targets of the finished run ``teacher``.

    The teacher's outputs over the training rows (and ``distill.unlabeled_file``'s) are computed
    once and kept in the student's run folder (``teacher_logits.safetensors``); the loss per target
    is ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * hard loss`` (Hinton et al. 2015;
    docs/distillation.md). Resume an interrupted student with ``finetune(run_folder, resume=True)``.

    Args:
        teacher: the teacher's run folder (text-classification, token-classification or a decoder task).
        student: the student model (``model.name_or_path``).
        config: the student's config; ``None``: the teacher's config.yaml, with the run folder
            ``<teacher>-distill-<student name>`` (:func:`deltatune.tasks.distill.setup.distill_config`).
            A :class:`RunConfig` is used as it is (the CLI builds it first).
        overrides: dotted overrides (``{"distill.temperature": 4}``).
        output_dir: the student's run folder.
        kwargs: passed to :func:`finetune` (``overwrite``, ``verbose``, ``strict``, ``callbacks``, ...).

    Raises:
        DeltatuneError: as :func:`finetune`; a teacher that is not a finished run, of another task,
            with other labels or (decoder) another vocabulary; a task distillation does not support.
    """
    from deltatune.tasks.distill.setup import distill_config

    if not isinstance(config, RunConfig):
        config = distill_config(teacher, student, config, overrides, output_dir)
        overrides = None
    return finetune(config, overrides, **kwargs)


def _with_rerun_advice(message: str, run_dir: RunDir) -> str:
    """``message`` of an error raised after the run folder was made, with how to run again (the
    folder is kept, with its log and any checkpoint): ``--resume`` when a checkpoint exists, else
    ``--overwrite``. Messages that already say so are returned as they are."""
    if "--overwrite" in message or "--resume" in message:
        return message
    root = run_dir.root
    if list_checkpoints(run_dir.checkpoints):
        return f"{message} (the run folder {root} is kept: after fixing this, continue with deltatune train --resume {root}, or start again with --overwrite)"
    return f"{message} (the run folder {root} is kept: after fixing this, start again with --overwrite)"


def _train_and_conclude(
    cfg: RunConfig, run_dir: RunDir, task: Task, model, tokenizer, splits: _Splits, encoded: _Encoded, model_path: str | Path,
    callbacks: tuple[Callable, ...], verbose: bool, resume: bool, trust_checkpoint: bool,
) -> Run:
    """Steps 7-11 of :func:`finetune`, while the run folder says it is being trained: the generations
    before training, training, then (not interrupted) :func:`_conclude` and the trackers ended with
    the report and eval.json; an interrupted run gets its report.html too (what it logged so far)."""
    before = _generate_before(cfg, task, model, tokenizer, splits.validation)
    trainer, result, saved = _train(cfg, task, model, encoded, run_dir, tokenizer, model_path, callbacks, verbose, resume, trust_checkpoint)
    run = Run(run_dir.root, cfg, result=result)
    if result.interrupted:
        if trainer.is_main:
            _write_report(run_dir, verbose=False)
        if verbose and trainer.is_main:
            print(f"interrupted at step {result.global_step}; continue with: {distributed.resume_command(run_dir.root, trainer.world, trainer.deepspeed)}")
        return run
    try:
        metrics = _conclude(cfg, run_dir, trainer, task, tokenizer, splits, encoded, before, result, model, saved, verbose)
    except BaseException:
        trainer.trackers.finish([], "FAILED")  # an MLflow/W&B run is not left RUNNING
        raise
    trainer.trackers.log_final(metrics)  # main process only, like the files
    trainer.trackers.finish([run_dir.report, run_dir.eval], "FINISHED")
    run.metrics = metrics
    return run


@dataclass
class _Splits:
    """The raw splits of a run, read and checked (``datasets.Dataset``; ``test`` may be ``None``)."""

    train: datasets.Dataset
    validation: datasets.Dataset
    test: Optional[datasets.Dataset]
    augmented: Any = None  # data.augmentation: the deltatune.data.augment.Augmented rows (train holds them)
    # parts carved out of the training file: {"train"/"validation": the file row (from 0) of each row}
    file_rows: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class _Encoded:
    """The encoded splits (:class:`deltatune.tasks.base.Features`) and the pre-flight counts per split
    (decoder tasks; ``"packing"`` when packed) for eval.json's ``data``."""

    train: Features
    validation: Features
    test: Optional[Features]
    report: dict[str, Any]


def _build_run_config(
    config: str | Path | dict[str, Any] | RunConfig | None,
    overrides: list[str] | dict[str, Any] | None,
    resume: bool,
    trust_remote_code: bool | None,
    allow_pickle_weights: bool | None,
) -> RunConfig:
    """Step 1 of :func:`finetune`: the resolved config (a run directory to resume stands for its
    config.yaml; load permissions from the arguments, as :func:`finetune` documents).

    Raises:
        DeltatuneError: a run directory to resume that does not exist or has no config.yaml; a bad
            config; a mixed precision the device lacks.
    """
    if resume and isinstance(config, (str, Path)) and not Path(config).exists():
        raise DeltatuneError(
            f"cannot resume: {config} does not exist; give the run directory made by deltatune train"
        )
    if resume and isinstance(config, (str, Path)) and Path(config).is_dir():
        run_root = Path(config)
        if not (run_root / "config.yaml").is_file():
            raise DeltatuneError(f"cannot resume: {run_root} has no config.yaml (give the run directory made by deltatune train)")
        # the run lives where the user points, even if it was moved since
        overrides = {**_flatten_overrides(overrides), "output_dir": str(run_root)}
        config = run_root / "config.yaml"
    permissions = {
        key: bool(value)
        for key, value in (("model.trust_remote_code", trust_remote_code), ("model.allow_pickle_weights", allow_pickle_weights))
        if resume or value is not None
    }
    if permissions:
        overrides = {**_flatten_overrides(overrides), **permissions}
    cfg = build_config(config, overrides)
    resolve_mixed_precision(cfg.train.mixed_precision)  # fail before writing anything
    return cfg


def _check_run_dir(cfg: RunConfig, overwrite: bool, resume: bool) -> RunDir:
    """Step 2 of :func:`finetune`: the run directory, checked (nothing written yet).

    Raises:
        DeltatuneError: a file in the way, not a run, a run there without ``overwrite``/``resume``,
            or (``resume``) a config that differs from the run's config.yaml.
    """
    run_dir = RunDir(cfg.output_dir)
    run_dir.check(overwrite=overwrite, resume=resume)  # refusals (a file in the way, not a run) before any work
    if resume:
        _check_resume_config(cfg, run_dir)
    return run_dir


def _load_splits(cfg: RunConfig) -> tuple[Task, _Splits]:
    """Step 3 of :func:`finetune`: read the training data, fit the task on it, and read (or carve
    out of the training data) the validation split and read the test split.

    Raises:
        DeltatuneError: no ``data.train_file``; unreadable or wrong data; fewer than 2 training
            rows to carve a validation split from.
    """
    d = cfg.data
    train, in_file = _training_rows(cfg)
    file_rows: dict[str, list[int]] = {}
    task = create_task(cfg)
    if cfg.distill.teacher:  # knowledge distillation: the teacher's soft targets in the loss (docs/distillation.md)
        from deltatune.tasks.distill.task import distilled_task

        task = distilled_task(task, load)
    task.fit(train, split_source(d.train_file, d.split_column, "train"))
    if d.validation_file:
        validation = _read_split(d.validation_file, task, cfg)
    elif "validation" in in_file:
        validation = _checked_rows(in_file["validation"], task, cfg, "validation")
    else:
        if len(train) < 2:
            raise DeltatuneError(f"{d.train_file}: needs at least 2 rows to carve out a validation split")
        train_rows, val_rows = train_validation_indices(
            len(train), d.validation_split, cfg.seed, task.stratify_keys(train), contiguous=task.contiguous_split
        )
        if cfg.data.max_eval_samples:
            val_rows = val_rows[: cfg.data.max_eval_samples]
        train, validation = train.select(train_rows), train.select(val_rows)
        if not d.split_column:  # the parts are shuffled: messages name the rows of the file (split column: see split_source)
            file_rows = {"train": train_rows, "validation": val_rows}
    test = _read_split(d.test_file, task, cfg) if d.test_file else None
    if test is None and "test" in in_file:
        test = _checked_rows(in_file["test"], task, cfg, "test")
    train, kept = _train_subset(cfg, task, train)
    if kept is not None and "train" in file_rows:
        file_rows["train"] = [file_rows["train"][k] for k in kept]
    return task, _augment(cfg, _Splits(train, validation, test, file_rows=file_rows))


def _augment(cfg: RunConfig, splits: _Splits) -> _Splits:
    """Part of step 3: with ``data.augmentation`` (text-classification, text-regression), the training
    rows with their augmented copies (:mod:`deltatune.data.augment`, EDA), made after the validation
    split is fixed so that no copy of a validation row is trained on; the counts go to stderr.

    Raises:
        DeltatuneError: an operation needs the WordNet corpus and nltk cannot find it.
    """
    d = cfg.data
    if d.augmentation == "none":
        return splits
    from deltatune.data.augment import NEEDS_THESAURUS, augment_rows, wordnet_synonyms
    from deltatune.tasks.registry import REGISTRY

    columns = REGISTRY[cfg.task].columns(d, False)  # the text (and pair) columns, without the label
    extra = {"synonyms": wordnet_synonyms()} if NEEDS_THESAURUS & set(d.augmentation_operations) else {}
    seed = cfg.seed if d.augmentation_seed is None else d.augmentation_seed
    aug = augment_rows(splits.train, columns, d.augmentation_copies, d.augmentation_alpha, d.augmentation_operations, seed, **extra)
    print(
        f"augmentation {d.augmentation}: {aug.original_rows:,} training rows + {aug.added_rows:,} augmented copies "
        f"({d.augmentation_copies} per row, alpha {d.augmentation_alpha:g})", file=sys.stderr, flush=True,
    )
    # the training rows now hold copies: only the validation rows keep their file rows
    rows = {k: v for k, v in splits.file_rows.items() if k != "train"}
    return _Splits(aug.train, splits.validation, splits.test, aug, file_rows=rows)


def _write_augmented(cfg: RunConfig, run_dir: RunDir, splits: _Splits, resume: bool) -> None:
    """Step 6b of :func:`finetune`: with ``data.augmentation``, the rows trained on (originals and
    copies, each naming its original row) to ``<run>/augmented_train.jsonl``, atomically, and the
    counts as metrics.jsonl's ``{"step": 0, "event": "augmentation", ...}`` record (main process; a
    resumed run keeps its own).

    Raises:
        DeltatuneError: the file cannot be written.
    """
    aug = splits.augmented
    if aug is None or resume or not process_state().is_main_process:
        return
    from deltatune.data.augment import AUGMENTED_FILE, write_jsonl

    path = run_dir.root / AUGMENTED_FILE
    try:
        write_jsonl(path, aug.written)
    except OSError as e:
        raise write_failure(path, e, "then start the run again") from None
    run_dir.log({
        "step": 0, "event": "augmentation", "method": cfg.data.augmentation, "file": AUGMENTED_FILE,
        "original_rows": aug.original_rows, "added_rows": aug.added_rows,
    })


def _train_subset(cfg: RunConfig, task: Task, train: datasets.Dataset) -> tuple[datasets.Dataset, Optional[list[int]]]:
    """The ``data.train_fraction`` subset of the training rows, taken after the validation split is
    fixed (every fraction is evaluated on the same rows): seeded by ``data.subset_seed``, nested
    across fractions, stratified by the task's keys (:mod:`deltatune.curve.subsets`); the count
    is printed to stderr. Returns ``(subset, indices of its rows in train)``; a fraction of 1
    returns ``(train, None)``."""
    fraction = cfg.data.train_fraction
    if fraction >= 1.0:
        return train, None
    from deltatune.curve.subsets import subset_indices

    keep = subset_indices(len(train), fraction, cfg.data.subset_seed, task.stratify_keys(train))
    print(f"train_fraction {fraction:g}: {len(keep):,} of {len(train):,} training rows", file=sys.stderr, flush=True)
    return train.select(keep), [int(k) for k in keep]


def _training_rows(cfg: RunConfig) -> tuple[datasets.Dataset, dict[str, datasets.Dataset]]:
    """The training rows of ``data.train_file`` (cut to ``data.max_train_samples``) and, with
    ``data.split_column``, the file's other splits (``{"validation": ..., "test": ...}``, those present).

    Raises:
        DeltatuneError: no ``data.train_file``; an unreadable file; a bad split column.
    """
    d = cfg.data
    if not d.train_file:
        raise DeltatuneError("no training data: set data.train_file in the config or pass --train FILE")
    train = load_table(d.train_file, split="train", config_name=d.dataset_config_name)
    others: dict[str, datasets.Dataset] = {}
    if d.split_column:
        others = split_by_column(train, d.split_column, d.train_file)
        train = others.pop("train")
        for name, own in (("validation", d.validation_file), ("test", d.test_file)):
            if own and name in others:
                raise DeltatuneError(
                    f"{d.train_file} has {len(others[name])} rows with {d.split_column}={name} and data.{name}_file is {own} "
                    f"too; use one: drop data.{name}_file (--{name}), or those rows"
                )
    if d.max_train_samples:
        train = train.select(range(min(d.max_train_samples, len(train))))
    return train, others


def _checked_rows(ds: datasets.Dataset, task: Task, cfg: RunConfig, split: str) -> datasets.Dataset:
    """Validation or test rows taken from the training file by ``data.split_column``, cut to
    ``data.max_eval_samples`` and checked as :func:`_read_split` checks a file's."""
    if cfg.data.max_eval_samples:
        ds = ds.select(range(min(cfg.data.max_eval_samples, len(ds))))
    task.check(ds, split_source(cfg.data.train_file, cfg.data.split_column, split), with_labels=True)
    return ds


def _encode(cfg: RunConfig, task: Task, splits: _Splits, model_path: str | Path, strict: bool) -> tuple[Any, _Encoded]:
    """Step 4 of :func:`finetune`: load the tokenizer, check the training data's coverage (warnings to
    stderr), encode the splits and pack the training split when ``train.packing``.

    Returns:
        ``(tokenizer, encoded)``.

    Raises:
        DeltatuneError: a tokenizer that cannot be loaded; data that cannot be encoded; with
            ``strict``, a data warning.
    """
    tokenizer = load_processor(model_path, task.input_kind, cfg.model.trust_remote_code)  # image/audio: the processor
    task.set_tokenizer(tokenizer)
    if task.input_kind == "text":  # the vocabulary check reads texts
        check_coverage(
            task, splits.train, tokenizer, cfg.data.train_file, strict=strict, warn=lambda line: print(line, file=sys.stderr, flush=True)
        )
    train_f, val_f, test_f, data_report = _encode_splits(
        task, tokenizer, splits.train, splits.validation, splits.test, cfg, splits.file_rows
    )
    train_f = task.training_features(train_f)  # few-shot classification: pairs of training texts
    if cfg.train.packing:  # decoder tasks: several examples per sequence, no attention between them
        train_f = pack_training_features(task, train_f, cfg.data.max_seq_length)
        data_report["packing"] = packing_report(train_f, cfg.data.max_seq_length)
    return tokenizer, _Encoded(train_f, val_f, test_f, data_report)


def _build_model(cfg: RunConfig, task: Task, model_path: str | Path):
    """Step 5 of :func:`finetune`: the task's model with the Δθ method applied (seeded by ``cfg.seed``).

    Raises:
        DeltatuneError: a model that cannot be loaded; ``data.max_seq_length`` beyond the model's
            positions.
    """
    extra = dropout_overrides(model_path, cfg.model.dropout, cfg.model.trust_remote_code)
    set_seed(cfg.seed)
    model = apply_delta(
        task.build_model(model_path, extra), task.delta_config(cfg.delta), task.peft_task_type, task.modules_to_save
    )
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and cfg.data.max_seq_length > positions:
        raise DeltatuneError(
            f"data.max_seq_length {cfg.data.max_seq_length} exceeds the {positions} positions of model "
            f"'{cfg.model.name_or_path}'; set data.max_seq_length to at most {positions}"
        )
    return model


def _prepare_run_dir(cfg: RunConfig, run_dir: RunDir, overwrite: bool, resume: bool) -> None:
    """Step 6 of :func:`finetune`: everything the user gave has been read and checked: only now touch
    the run directory (and write config.yaml for a new run), from the main process alone, once
    every process has checked it (several processes: DDP).

    Raises:
        DeltatuneError: a launch that would not run as ``distributed.strategy`` asks (``check_launch``);
            config.yaml cannot be written.
    """
    check_launch(cfg)
    processes = process_state()
    processes.wait_for_everyone()
    if processes.is_main_process:
        run_dir.prepare(overwrite=overwrite, resume=resume)
        if not resume:
            try:
                write_atomically(run_dir.config, lambda f: f.write(cfg.to_yaml()))
            except OSError as e:
                raise write_failure(run_dir.config, e, "then start the run again") from None
    processes.wait_for_everyone()


def _generate_before(cfg: RunConfig, task: Task, model, tokenizer, validation: datasets.Dataset) -> Optional[list[str]]:
    """Step 7 of :func:`finetune`: the "before" half of analysis.json's ``generations``.

    The model as training starts (the Δθ method applied: LoRA starts as the identity, full
    fine-tuning is the pretrained model) generates, with the run's generation settings, for the
    first ``eval.compare_generations`` validation rows, at most ``eval.generation_max_samples``
    (the rows the final evaluation generates for, the "after" half). Only for generative tasks
    scored against references (:attr:`GenerativeTask.scores_generations`), on the main process;
    the random number generators are restored afterwards, so training is the same with or
    without it.

    Returns:
        The generated texts in row order, or ``None`` when nothing is compared
        (``eval.compare_generations: 0``, another task, another process).
    """
    import torch

    n = min(cfg.eval.compare_generations, cfg.eval.generation_max_samples, len(validation))
    if n == 0 or not isinstance(task, GenerativeTask) or not task.scores_generations:
        return None
    processes = process_state()
    if not processes.is_main_process:
        return None
    device = processes.device
    accelerated = device.type != "cpu"  # the CPU generator is always forked; an accelerator's when used
    with torch.random.fork_rng(devices=[device] if accelerated else [], device_type=device.type if accelerated else None):
        texts, _ = task.generate_rows(model.to(device), tokenizer, validation.select(range(n)), device, _source(cfg, "validation"))
    return texts


def _source(cfg: RunConfig, split: str) -> str:
    """How messages name split ``split``'s rows: its own file, else the training file's rows
    of that split (:func:`split_source`)."""
    d = cfg.data
    own = {"train": d.train_file, "validation": d.validation_file, "test": d.test_file}[split]
    if own and split != "train":
        return own
    return split_source(d.train_file or split, d.split_column, split)


def _train(
    cfg: RunConfig,
    task: Task,
    model,
    encoded: _Encoded,
    run_dir: RunDir,
    tokenizer,
    model_path: str | Path,
    callbacks: tuple[Callable, ...],
    verbose: bool,
    resume: bool,
    trust_checkpoint: bool,
) -> tuple[Trainer, TrainResult, dict[str, Any]]:
    """Step 8 of :func:`finetune`: print the run's summary and train; the trainer saves the model
    (:func:`deltatune.delta.save_trained`) into the run's model/ at the end.

    Returns:
        ``(trainer, result, saved)``: ``saved`` is what saving the model reported
        (``saved_bytes``, ``compression``); empty when interrupted.

    Raises:
        DeltatuneError: as :meth:`deltatune.training.Trainer.train`; the model cannot be written.
    """
    saved: dict[str, Any] = {}

    def base_state() -> dict:
        fresh = task.build_model(model_path, {})
        return {n: p.detach() for n, p in fresh.named_parameters() if n not in task.new_parameter_names}

    def save_model(folder: Path) -> None:  # once, at the end of training, with the kept weights in place
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        task.finish_training(unwrapped, encoded.train)  # e.g. fit the few-shot head, before saving and the final evaluation
        replace_dir_atomically(
            lambda tmp: saved.update(save_trained(unwrapped, tmp, tokenizer, cfg, model_path, base_state)), folder
        )

    extra = (encoded.test,) if encoded.test is not None else ()
    trainer = Trainer(model, task, encoded.train, encoded.validation, cfg, run_dir, save_model, callbacks, reference_features=extra)
    if verbose and trainer.is_main:
        print(_summary(cfg, model, encoded.train.num_examples, len(encoded.validation), trainer), flush=True)
    result = trainer.train(resume=resume, trust_checkpoint=trust_checkpoint)
    return trainer, result, saved


def _final_metrics(
    cfg: RunConfig, trainer: Trainer, task: Task, tokenizer, splits: _Splits, encoded: _Encoded, before: Optional[list[str]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Step 9 of :func:`finetune`: the final model's metrics per split (``{"validation": ..., "test": ...}``),
    with the generation metrics of decoder tasks, and analysis.json's content.

    The validation split is run through the model once: its outputs give both the metrics and
    the worst rows (:meth:`Task.worst_examples`; generative tasks without a row score of their
    own: the worst of their scored generations, :meth:`GenerativeTask.scored_generations`, the
    same generations that give the generation metrics).

    Returns:
        ``(metrics, analysis)``; ``analysis`` is ``{"split", "task"}`` with ``worst_examples``
        and ``generations`` where there are some (see :mod:`deltatune.tasks.examples`).
    """
    outputs = trainer.predict_outputs(encoded.validation)
    metrics: dict[str, Any] = {"validation": task.compute_metrics(outputs, encoded.validation)}
    if encoded.test is not None:
        metrics["test"] = trainer.evaluate(encoded.test)
    k = cfg.eval.worst_examples
    analysis: dict[str, Any] = {"split": "validation", "task": cfg.task}
    worst = task.worst_examples(outputs, encoded.validation, splits.validation, k) if k > 0 else None
    generations = None
    if isinstance(task, GenerativeTask):  # decoder tasks: generate and score
        generated_worst, generations = _final_generations(cfg, trainer, task, tokenizer, splits, metrics, before)
        worst = worst if worst is not None else generated_worst  # a task's own row score (e.g. DPO's margin) wins
    if worst is not None:
        analysis["worst_examples"] = worst
    if generations is not None:
        analysis["generations"] = generations
    return metrics, analysis


def _final_generations(
    cfg: RunConfig, trainer: Trainer, task: GenerativeTask, tokenizer, splits: _Splits, metrics: dict[str, Any], before: Optional[list[str]]
) -> tuple[Optional[dict[str, Any]], Optional[list[dict[str, Any]]]]:
    """Part of step 9: the trained model generates for each split once; the generation metrics go
    into ``metrics``, the validation rows' scores into analysis.json.

    Returns:
        ``(worst_examples or None, generations or None)`` of the validation split.
    """
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    device = trainer.accelerator.device
    with trainer.autocast():
        scored = task.scored_generations(unwrapped, tokenizer, splits.validation, device, _source(cfg, "validation"))
        metrics["validation"].update(scored.metrics)
        if splits.test is not None:
            metrics["test"].update(task.final_metrics(unwrapped, tokenizer, splits.test, device))
    worst = worst_examples(scored.score or "", scored.higher_is_better, scored.rows, cfg.eval.worst_examples)
    generations = compared_generations(before, scored.rows) if before is not None and scored.rows else None
    return worst, generations


def _train_summary(result: TrainResult, trainer: Trainer, model, saved: dict[str, Any]) -> dict[str, Any]:
    """eval.json's ``train`` section: steps, time (s), throughput, batch plan, peak RSS (MiB),
    parameter counts and the saved model's size (bytes)."""
    summary = parameter_summary(model)
    return {
        "global_step": result.global_step,
        "best_step": result.best_step,
        "train_seconds": round(result.train_seconds, 2),
        "examples_per_second": round(result.examples_per_second, 4),
        # tasks without tokens (images, audio) have no tokens/s (what they count are patches or frames)
        **({"tokens_per_second": round(result.tokens_per_second, 2)} if counts_tokens(trainer.task.input_kind) else {}),
        **trainer.plan.as_dict(),
        "peak_rss_mib": round(result.peak_rss_mib, 1),
        "early_stopped": result.early_stopped,
        "trainable_parameters": summary["trainable"],
        "total_parameters": summary["total"],
        "saved_bytes": saved.get("saved_bytes"),
    }


def _compressed_metrics(cfg: RunConfig, run_dir: RunDir, task: Task, validation: datasets.Dataset, saved: dict[str, Any]) -> dict[str, Any]:
    """eval.json's ``compressed_delta``: what was stored is lossy, so the reconstructed model's
    validation metrics are reported next to the exact ones, with the compression settings."""
    compressed = load(run_dir.root, trust_remote_code=cfg.model.trust_remote_code, allow_pickle_weights=cfg.model.allow_pickle_weights)
    return {
        **saved["compression"],
        "validation": task.compute_metrics(*compressed.outputs(validation)),
    }


def _write_analysis(run_dir: RunDir, analysis: dict[str, Any]) -> None:
    """Step 10 of :func:`finetune`: write analysis.json atomically (main process), before eval.json.

    Raises:
        DeltatuneError: it cannot be written (one line with the ``--resume`` command that finishes the run).
    """
    try:
        write_atomically(run_dir.analysis, lambda f: f.write(json.dumps(analysis, indent=2, ensure_ascii=False)))
    except OSError as e:
        raise write_failure(run_dir.analysis, e, f"then finish the run with: deltatune train --resume {run_dir.root}") from None


def _write_eval(run_dir: RunDir, metrics: dict[str, Any]) -> None:
    """Step 11 of :func:`finetune`: write eval.json, last and atomically: its presence marks a finished run.

    Raises:
        DeltatuneError: it cannot be written (one line with the ``--resume`` command that finishes the run).
    """
    try:
        write_atomically(run_dir.eval, lambda f: f.write(json.dumps(metrics, indent=2)))
    except OSError as e:
        raise write_failure(run_dir.eval, e, f"then finish the run with: deltatune train --resume {run_dir.root}") from None


def _print_results(metrics: dict[str, Any], run_dir: RunDir) -> None:
    """Step 12 of :func:`finetune`: print the metric tables and a line on training time, speed and size."""
    for split in ("validation", "test"):
        if split in metrics:
            print(format_table(metrics[split], f"{split} metrics"))
    t = metrics["train"]
    print(
        f"trained {t['global_step']} steps in {t['train_seconds']:.1f} s ({format_rate(t['examples_per_second'])} examples/s, "
        f"micro-batch {t['micro_batch_size']} x {t['micro_batches_per_step']} per step), "
        f"peak RSS {t['peak_rss_mib'] / 1024:.2f} GiB; saved {t['saved_bytes'] / 2**20:.1f} MiB in {run_dir.model}"
    )


def _conclude(
    cfg: RunConfig, run_dir: RunDir, trainer: Trainer, task: Task, tokenizer, splits: _Splits, encoded: _Encoded,
    before: Any, result: TrainResult, model, saved: dict[str, Any], verbose: bool,
) -> dict[str, Any]:
    """Steps after training (not interrupted): the final metrics and the per-row analysis, then
    (main process) analysis.json, eval.json (last: it marks a finished run), the printed tables
    and report.html.

    Returns:
        eval.json's content.

    Raises:
        DeltatuneError: a file that cannot be written (one line with the ``--resume`` command).
    """
    metrics, analysis = _final_metrics(cfg, trainer, task, tokenizer, splits, encoded, before)
    if encoded.report:
        metrics["data"] = encoded.report
    metrics["train"] = {**_train_summary(result, trainer, model, saved), "data_files": _data_files(cfg, splits)}
    if "compression" in saved:
        metrics["compressed_delta"] = _compressed_metrics(cfg, run_dir, task, splits.validation, saved)
    if trainer.is_main:
        _write_analysis(run_dir, analysis)
        _write_eval(run_dir, metrics)
        if verbose:
            _print_results(metrics, run_dir)
        _write_report(run_dir, verbose)
    return metrics


def _data_files(cfg: RunConfig, splits: _Splits) -> dict[str, dict[str, Any]]:
    """eval.json's ``train.data_files``: per split the file as given, its absolute path and size in
    bytes when it is a local file, and the rows used (after ``max_*_samples``; a validation split
    carved out of the training file says so), so that a report made elsewhere later still knows."""
    d = cfg.data
    out: dict[str, dict[str, Any]] = {}
    for name, ref, ds in (("train", d.train_file, splits.train), ("validation", d.validation_file, splits.validation), ("test", d.test_file, splits.test)):
        if ds is None:
            continue
        entry: dict[str, Any] = {"file": ref, "rows": len(ds)}
        if name == "train" and splits.augmented is not None:  # data.augmentation: rows includes the copies
            entry["augmentation"] = {"method": d.augmentation, "original_rows": splits.augmented.original_rows,
                                     "added_rows": splits.augmented.added_rows}
        if ref and Path(ref).expanduser().is_file():
            path = Path(ref).expanduser().resolve()
            entry.update(path=str(path), bytes=path.stat().st_size)
        elif name == "validation" and not ref:
            entry["carved_from"] = d.train_file
        out[name] = entry
    return out


def _write_report(run_dir: RunDir, verbose: bool) -> None:
    """Last step of :func:`finetune`: report.html from the run folder's files (:mod:`deltatune.report`)
    and the overfitting verdict in one line. The run is finished and saved by now, so a report
    that cannot be written is a warning naming the command that writes it later."""
    from deltatune.report import write_report
    from deltatune.report.overfitting import diagnose_run

    try:
        path = write_report([run_dir.root])
    except Exception as e:  # noqa: BLE001 - the run is finished and saved: no report bug may fail it
        what = str(e) if isinstance(e, (DeltatuneError, OSError)) else f"{type(e).__name__}: {e}"
        print(f"warning: report.html not written ({what}); write it later with: deltatune report {run_dir.root}", file=sys.stderr)
        return
    if verbose:
        diagnosis = diagnose_run(run_dir.root)
        if diagnosis is not None:
            print(f"overfitting check: {diagnosis.message}")
        print(f"report: {path}")


def _encode_splits(task: Task, tokenizer, train, validation, test, cfg: RunConfig, file_rows: dict[str, list[int]] | None = None):
    """Encode the splits; for decoder tasks also collect the pre-flight counts per split. A split in
    ``file_rows`` (carved out of the training file) is named with its file rows (:class:`FileRows`)."""
    report: dict[str, Any] = {}
    out = []
    for name, ds in (("train", train), ("validation", validation), ("test", test)):
        src = _source(cfg, name)
        if file_rows and name in file_rows:
            src = FileRows(src, file_rows[name])
        if ds is None:
            out.append(None)
            continue
        features = task.encode(ds, tokenizer, source=src)
        out.append(features)
        if features.stats is not None:
            report[name] = features.stats.as_dict()
    return out[0], out[1], out[2], report


def _summary(cfg: RunConfig, model, n_train: int, n_val: int, trainer: Trainer) -> str:
    ps = parameter_summary(model)
    plan = trainer.plan
    return (
        f"deltatune: {cfg.task} | model {cfg.model.name_or_path} | delta {cfg.delta.method} | "
        f"{ps['trainable'] / 1e6:.2f}M of {ps['total'] / 1e6:.1f}M parameters trainable ({100 * ps['trainable_share']:.2f}%, "
        f"{ps['trainable_mib']:.1f} of {ps['total_mib']:.1f} MiB) | {n_train} train / {n_val} validation examples | "
        f"{trainer.total_steps} steps "
        f"(batch {trainer.global_batch} x accumulation {cfg.train.gradient_accumulation_steps}"
        f"{'' if plan.micro_batch_size == plan.batch_size else f'; micro-batch {plan.micro_batch_size}'}) | "
        f"device {trainer.accelerator.device}, precision {trainer.mixed_precision}, {trainer.strategy} | run {cfg.output_dir}\n"
        f"deltatune: {estimate_run_memory(model, trainer.task, cfg, trainer.mixed_precision, plan.micro_batch_size, plan.seq_len, trainer.shards).format()} "
        f"(batch {plan.micro_batch_size} x {plan.seq_len} {'tokens' if counts_tokens(trainer.task.input_kind) else 'positions'} per forward pass)"
        + (f"\ndeltatune: {plan.message()}" if plan.message() else "")
    )


def evaluate(
    run: str | Path,
    data: str,
    output: str | Path | None = None,
    batch_size: int | None = None,
    *,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    allow_pickle_weights: bool = False,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    num_beams: int | None = None,
) -> dict[str, Any]:
    """Evaluate a trained run on a labelled data file with the task's metrics.

    Question answering: a one-line warning on stderr when ``data`` has unanswerable questions
    (SQuAD v2.0) and the run never learned to abstain (trained without unanswerable questions):
    those score 0 (:func:`deltatune.tasks.extractive_qa.abstention_warning`).

    Args:
        run: the run directory.
        data: a labelled data file with the run's column names.
        output: optional path of a JSON file to write the metrics to (written atomically).
        batch_size: examples per forward pass (default: the run's eval batch size).
        overwrite: replace an existing ``output`` file (never ``data`` itself).
        trust_remote_code, allow_pickle_weights: load permissions, as in :func:`load` (never
            taken from the run folder).
        max_new_tokens, temperature, top_p, num_beams: generation options for the generation
            metrics of generative runs, as in :func:`load`.

    Returns:
        The metrics dict (same keys as eval.json's splits).

    Raises:
        DeltatuneError: not a run directory, bad data, labels unknown to the model, ``output``
            exists (without ``overwrite``) or is the ``data`` file; checked before evaluating;
            ``batch_size`` < 1; a refused or damaged model (see :func:`load`).
    """
    if output is not None:
        check_output(output, overwrite=overwrite, inputs=[data], input_flag="--data", keep=RunDir(run).own_paths())
    check_batch_size(batch_size)
    predictor = load(
        run,
        trust_remote_code=trust_remote_code,
        allow_pickle_weights=allow_pickle_weights,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        num_beams=num_beams,
    )
    ds = _class_folder_rows(load_table(data, split="test", config_name=predictor.config.data.dataset_config_name), data, predictor.task)
    ds, source = _held_out_rows(ds, data, predictor.config.data.split_column)
    predictor.task.check(ds, source, with_labels=True)
    warning = predictor.task.evaluation_warning(ds, source)  # e.g. v2.0 data on a QA run that never abstains
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    metrics, stats = predictor.metrics_and_stats(ds, batch_size=batch_size, source=source)
    if stats is not None:  # what encoding kept of the rows: truncated, dropped by kind, their numbers
        print(f"{source}: {stats.summary()}", file=sys.stderr, flush=True)
    if output is not None:
        check_output(output, overwrite=overwrite, inputs=[data], input_flag="--data", keep=RunDir(run).own_paths())  # made meanwhile?
        write_atomically(output, lambda f: f.write(json.dumps(metrics, indent=2)))
    return metrics


def _held_out_rows(ds: datasets.Dataset, data: str, split_column: Optional[str]) -> tuple[datasets.Dataset, str]:
    """The rows of ``data`` to evaluate: all of them, or, when the run was trained with
    ``data.split_column`` and the file has that column, its test rows (else its validation rows),
    never its training rows; with how messages name them.

    Raises:
        DeltatuneError: the file's rows are all training rows.
    """
    if not split_column or split_column not in ds.column_names:
        return ds, data
    parts = split_by_column(ds, split_column, data)
    for name in ("test", "validation"):
        if name in parts:
            print(f"{data}: evaluating its {len(parts[name])} rows with {split_column}={name} (the run's data.split_column)",
                  file=sys.stderr, flush=True)
            return parts[name], split_source(data, split_column, name)
    raise DeltatuneError(
        f"{data}: every row has {split_column}=train (the run's data.split_column); evaluate on held-out rows "
        f"(test or validation), or a file without a '{split_column}' column"
    )


def _fresh_head_error(cfg: RunConfig) -> DeltatuneError:
    """The refusal of :func:`evaluate_pretrained` for a task whose head the pretrained model lacks."""
    return DeltatuneError(
        f"task {cfg.task}: the pretrained model {cfg.model.name_or_path} has no trained head for this task (a fresh, "
        f"random head would be scored), so there are no 'before' numbers to measure; train first (deltatune train CONFIG) "
        f"and evaluate the run (deltatune evaluate RUN --data FILE)"
    )


def evaluate_pretrained(
    config: str | Path | dict[str, Any] | RunConfig,
    data: str,
    overrides: list[str] | dict[str, Any] | None = None,
    output: str | Path | None = None,
    batch_size: int | None = None,
    *,
    overwrite: bool = False,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    num_beams: int | None = None,
) -> dict[str, Any]:
    """Evaluate the *pretrained* model of ``config`` (no training) on a data file: the "before" numbers.

    Only for tasks whose head exists in the pretrained model (decoder and encoder-decoder tasks).
    Returns the same metrics as a trained run's evaluation (loss, perplexity and generation
    metrics). When ``data`` has the config's ``data.split_column``, only its held-out rows (test,
    else validation) are evaluated, as :func:`evaluate` does. A one-line note on stderr says the
    numbers are the pretrained model's.

    Args:
        config: the run config (YAML path, dict or :class:`RunConfig`), as for :func:`finetune`.
        data: a labelled data file with the config's column names.
        overrides: dotted ``key=value`` overrides of ``config``.
        output: optional path of a JSON file to write the metrics to (written atomically).
        batch_size: examples per forward pass (default: ``eval.per_device_eval_batch_size``).
        overwrite: replace an existing ``output`` file (never ``data`` itself).
        max_new_tokens, temperature, top_p, num_beams: generation options, as in :func:`evaluate`
            (``None`` keeps the config's ``eval`` settings).

    Raises:
        DeltatuneError: bad config/data/model; a task whose head would be untrained (names the
            task; train first); ``output`` exists (without ``overwrite``) or is ``data``;
            ``batch_size`` < 1; ``top_p`` without sampling.
    """
    import torch

    from deltatune.serving.predictor import generation_overrides
    from deltatune.training.inference import batched_outputs, merge_outputs

    if output is not None:
        check_output(output, overwrite=overwrite, inputs=[data], input_flag="--data")
    check_batch_size(batch_size)
    generation = generation_overrides(max_new_tokens, temperature, top_p, num_beams)
    cfg = build_config(config, overrides)
    if generation:
        cfg = build_config(cfg, generation)
    task = create_task(cfg)
    if not isinstance(task, GenerativeTask):  # a generating task's head is the pretrained LM head (speech-recognition too)
        raise _fresh_head_error(cfg)
    if top_p is not None and not cfg.eval.do_sample:
        raise DeltatuneError("--top-p (top_p) applies to sampling, and eval.do_sample is false; add --temperature T with T > 0 to sample")
    ds = load_table(data, split="test", config_name=cfg.data.dataset_config_name)
    ds, source = _held_out_rows(ds, data, cfg.data.split_column)
    task.fit(ds, source)
    if cfg.data.max_eval_samples:
        ds = ds.select(range(min(cfg.data.max_eval_samples, len(ds))))
    model_path = resolve_model(cfg.model.name_or_path)
    tokenizer = load_processor(model_path, task.input_kind, cfg.model.trust_remote_code)  # image/vision-language: the processor
    task.set_tokenizer(tokenizer)
    features = task.encode(ds, tokenizer, source=source)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = task.build_model(model_path, {}).to(device).eval()
    parts = batched_outputs(model, task, features, batch_size or cfg.eval.per_device_eval_batch_size, device)
    metrics = task.compute_metrics(merge_outputs(parts, len(features)), features)
    if isinstance(task, GenerativeTask):
        metrics.update(task.final_metrics(model, tokenizer, ds, device))
    print(f"deltatune: {source}: these are the pretrained model's numbers ({cfg.model.name_or_path}, no training)",
          file=sys.stderr, flush=True)
    if output is not None:
        check_output(output, overwrite=overwrite, inputs=[data], input_flag="--data")  # made meanwhile?
        write_atomically(output, lambda f: f.write(json.dumps(metrics, indent=2)))
    return metrics


def check(
    config: str | Path | dict[str, Any] | RunConfig | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    examples: int = 3,
    *,
    strict: bool = False,
) -> str:
    """Pre-flight report of how the training data is encoded; writes nothing.

    For decoder tasks: a few encoded training examples with trained spans marked ``[[...]]``,
    and counts of examples truncated, dropped (no trained token left), EOS appended, and double
    BOS. For other tasks: the token lengths of a few examples. A ``data.validation_file`` and
    ``data.test_file`` are read, checked and encoded as :func:`finetune` does, with a short
    section of counts each, so their errors surface here rather than in training.

    The report also carries the data warnings of :mod:`deltatune.data.coverage` (training
    tokens unknown to the model's vocabulary, examples truncated at ``data.max_seq_length``).

    Raises:
        DeltatuneError: as :func:`finetune` for bad config/data/model or a refused ``distributed.strategy``
            (those that do not depend on the number of processes), when no training
            example has a trained token, and with ``strict`` on a data warning.
    """
    cfg = build_config(config, overrides)
    check_launch(cfg, launch=False)  # train's refusals of distributed.strategy (a DeepSpeed offload on CPU processes too)
    d = cfg.data
    train, in_file = _training_rows(cfg)
    task = create_task(cfg)
    task.fit(train, split_source(d.train_file, d.split_column, "train"))
    # read (and check) every split before the tokenizer, in finetune's order
    splits = (("validation", d.validation_file), ("test", d.test_file))
    extra = [(name, ref, _read_split(ref, task, cfg)) for name, ref in splits if ref]
    extra += [
        (name, _source(cfg, name), _checked_rows(in_file[name], task, cfg, name))
        for name, ref in splits if not ref and name in in_file
    ]
    tokenizer = load_processor(resolve_model(cfg.model.name_or_path), task.input_kind, cfg.model.trust_remote_code)
    task.set_tokenizer(tokenizer)
    warnings = check_coverage(task, train, tokenizer, d.train_file, strict=strict)[1] if task.input_kind == "text" else []

    def encode(ds, ref):
        feats = task.encode(ds, tokenizer, source=ref)
        return feats, (feats.stats.summary() if feats.stats is not None else None)

    feats, stats_line = encode(train, _source(cfg, "train"))
    tokens = counts_tokens(task.input_kind)  # image and audio rows have positions (patches, frames), not tokens
    lines = [f"{cfg.task}: {len(feats)} encoded training examples from {d.train_file}" + (f" (max_seq_length {d.max_seq_length})" if tokens else "")]
    for i in range(min(examples, len(feats))):
        row = feats[i]
        lines.append(f"--- example {i + 1}: {feats.lengths[i]} {'tokens' if tokens else 'positions'}")
        lines += task.show_feature(tokenizer, row)
    if stats_line is not None:
        lines.append(stats_line)
    lines += [f"warning: {w}" for w in warnings]
    for name, ref, ds in extra:
        split_feats, split_stats = encode(ds, ref)
        lines.append(f"=== {name}: {len(split_feats)} encoded examples from {ref} ({len(ds)} rows)")
        if split_stats is not None:
            lines.append(split_stats)
    lines.append(distributed.describe_launch(cfg.distributed, distributed.world_size()))
    return "\n".join(lines)


def predict(
    run: str | Path,
    *,
    input: str | None = None,
    texts: list[str] | None = None,
    text_pairs: list[str] | None = None,
    files: list[str] | None = None,
    output: str | Path | None = None,
    overwrite: bool = False,
    batch_size: int | None = None,
    trust_remote_code: bool = False,
    allow_pickle_weights: bool = False,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    num_beams: int | None = None,
) -> list[dict[str, Any]]:
    """Predict with a trained run on a data file or on texts; optionally write the rows to a file.

    Args:
        run: the run directory.
        input: a data file with the run's text column(s) (exclusive with ``texts``).
        texts: texts to predict on; with ``text_pairs`` (sentence-pair runs) one pair per text.
        files: image or audio file paths to predict on (image-/audio-classification runs; relative to
            the current folder), exclusive with ``input`` and ``texts``.
        output: a CSV/TSV/JSONL/JSON file to write the rows to (atomically); checked before the
            model is loaded.
        overwrite: replace an existing ``output`` (never ``input`` itself).
        batch_size: examples per forward pass (default: the run's).
        trust_remote_code, allow_pickle_weights, max_new_tokens, temperature, top_p, num_beams:
            as in :func:`load`.

    Returns:
        One dict per input row: the input's fields and the prediction's
        (:func:`deltatune.serving.predictor.merge_record`), in input order.

    Raises:
        DeltatuneError: ``output`` exists (without ``overwrite``), is ``input`` or has another
            suffix; ``text_pairs`` on a run that is not sentence-pair, or not one per text; bad
            data; a refused or damaged model (see :func:`load`).
    """
    from deltatune.serving.predictor import PREDICTION_SUFFIXES, merge_record, write_predictions

    if output is not None:  # before loading the model and predicting
        check_output(output, overwrite=overwrite, inputs=[input], suffixes=PREDICTION_SUFFIXES, keep=RunDir(run).own_paths())
    predictor = load(
        run, trust_remote_code=trust_remote_code, allow_pickle_weights=allow_pickle_weights,
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, num_beams=num_beams,
    )
    texts = list(texts or [])
    file_rows = _file_rows(predictor, run, files) if files else None
    if input is not None or file_rows is not None:
        ds = _class_folder_rows(load_table(input), input, predictor.task) if file_rows is None else file_rows
        records = predictor.predict_rows(ds, input or "--file", batch_size=batch_size)
        inputs = ds.to_list()
    elif text_pairs:
        if not predictor.config.data.text_pair_column:
            raise DeltatuneError(f"--text-pair: {run} is not a sentence-pair run (its config has no data.text_pair_column)")
        if len(text_pairs) != len(texts):
            raise DeltatuneError(f"--text-pair: got {len(text_pairs)} for {len(texts)} --text; give one --text-pair per --text")
        records = predictor.predict(list(zip(texts, text_pairs)))
        inputs = [{"text": t, "text_pair": u} for t, u in zip(texts, text_pairs)]
    else:
        pair_column = predictor.config.data.text_pair_column
        if pair_column:
            raise DeltatuneError(
                f"--text: {run} reads text pairs (data.text_column '{predictor.config.data.text_column}' and "
                f"data.text_pair_column '{pair_column}'); give each --text its --text-pair"
            )
        records = predictor.predict(texts)
        inputs = [{"text": t} for t in texts]
    if output is not None:
        write_predictions(records, inputs, output, overwrite=overwrite, inputs_path=input)
    return [merge_record(inp, rec) for inp, rec in zip(inputs, records)]


def _class_folder_rows(ds: datasets.Dataset, ref: Any, task: Task) -> datasets.Dataset:
    """``ds`` with the file column of a class-folder directory ``ref`` (``image`` / ``audio``,
    :func:`deltatune.data.folders.read_class_folders`) named as the run's (``data.audio_column: path``)."""
    if isinstance(task, MediaClassificationTask) and isinstance(ref, (str, Path)) and Path(ref).expanduser().is_dir():
        if task.input_kind in ds.column_names and task.file_column not in ds.column_names:
            ds = ds.rename_column(task.input_kind, task.file_column)
    return ds


def _file_rows(predictor: Predictor, run: str | Path, files: list[str]) -> datasets.Dataset:
    """The rows of ``predict --file`` paths: the run's image or audio column (relative paths from the current folder).

    Raises:
        DeltatuneError: the run reads texts, or chat rows with images (vision-language).
    """
    if predictor.task.input_kind == "text":
        raise DeltatuneError(f"--file: {run} is a {predictor.config.task} run, which reads texts; give them with --text or --input")
    if predictor.task.input_kind not in ("image", "audio", "audio-text"):
        raise DeltatuneError(
            f"--file: {run} is a {predictor.config.task} run, which reads conversations, not bare files; "
            "give rows with a 'messages' column (images named in the user turns) in a JSONL file via --input"
        )
    return predictor.task.rows_from_texts(files)


def auto(*args: Any, **kwargs: Any):
    """Infer the task, choose the model and search hyperparameters: :func:`deltatune.auto.runner.auto`
    with :func:`finetune` running each trial (unless ``train=`` is given)."""
    from deltatune.auto.runner import auto as run_auto

    if kwargs.get("train") is None:
        kwargs["train"] = finetune
    return run_auto(*args, **kwargs)


__all__ = ["Predictor", "Run", "auto", "check", "evaluate", "evaluate_pretrained", "export", "finetune", "format_table", "load", "predict", "serve"]
