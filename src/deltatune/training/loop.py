"""The training loop, on Accelerate.

One loop for every task; it knows a task only through :class:`deltatune.tasks.base.Task`
(``collate``, ``num_targets``, ``loss``, ``eval_step``, ``compute_metrics``).

Gradient accumulation normalization: the micro-batches of one optimizer step are collated
first, their targets counted (and summed over processes), and every micro-batch's *summed*
loss is divided by that total. The accumulated gradient is then exactly the gradient of the
mean loss over all targets of the step, whatever the split into micro-batches or processes
(the bug reported for HF Trainer in transformers#34191 is the per-micro-batch mean).
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list, gather_object, parse_flag_from_env, set_seed

from deltatune.config import RunConfig
from deltatune.errors import DeltatuneError
from deltatune.files import InterruptedAgain, interrupts_deferred
from deltatune.rundir import RunDir
from deltatune.tasks.base import Features, Task
from deltatune.training import batch_plan as planning
from deltatune.training import deepspeed_engine, distributed
from deltatune.training.batch_plan import BatchPlan, activation_factor, is_out_of_memory, needed_bytes, plan_by_trial, plan_batch
from deltatune.training.batching import epoch_batches, shard_batch, split_batch, steps_per_epoch
from deltatune.training.checkpoint import (
    CheckpointError,
    apply_checkpoint,
    capture_rng_state,
    clear_staging,
    list_checkpoints,
    load_best_state,
    read_best_state,
    read_checkpoint,
    replace_dir_atomically,
    restore_rng_state,
    save_best_state,
    save_checkpoint,
    save_sharded,
    staging_folder,
    write_tensors,
)
from deltatune.training.compute import apply_compute_options
from deltatune.training.early_stopping import EarlyStopping
from deltatune.training.inference import batched_outputs, merge_outputs
from deltatune.training.memory import estimate_run_memory
from deltatune.training.optim import add_l1_gradient, build_optimizer, build_scheduler, regularized_parameters
from deltatune.training.progress import Progress, counts_tokens
from deltatune.training.tracking import Trackers

# the batch of ``train.per_device_train_batch_size: auto`` (its micro-batch is planned)
AUTO_BATCH_SIZE = 32


def resolve_mixed_precision(requested: str) -> str:
    """Map ``auto`` to what the device supports: bf16 on GPUs that have it, fp16 on older GPUs, none on CPU.

    Raises:
        DeltatuneError: fp16 requested without a GPU.
    """
    cuda = torch.cuda.is_available()
    if requested == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"
    if requested == "fp16" and not cuda:
        raise DeltatuneError("train.mixed_precision fp16 needs a GPU; use bf16 or no on CPU")
    return requested


def cpu_processes() -> bool:
    """Whether the processes of this launch share the CPU (gloo backend) rather than GPUs.

    True when ``ACCELERATE_USE_CPU`` says so (``accelerate launch --cpu``) or when a launcher
    (``torchrun``, ``accelerate launch``) started several processes on a machine without a GPU;
    Accelerate only forms a CPU process group when asked (``cpu=True``).
    """
    if parse_flag_from_env("ACCELERATE_USE_CPU"):
        return True
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def check_launch(config: Optional[RunConfig] = None, launch: bool = True) -> bool:
    """Refuse launch modes that would not run as asked (before anything is written); whether the
    run shards the model (``distributed.strategy: fsdp``, :mod:`deltatune.training.distributed`).
    Without ``launch`` (``deltatune check``, usually run without a launcher) the number of processes
    is not known: the refusals that depend on it are not made.

    Raises:
        DeltatuneError: an ``accelerate launch`` with an FSDP or DeepSpeed config (set
            ``distributed.strategy`` instead); ``fsdp`` in a single process or with settings it does
            not compose with; ``deepspeed`` (see :func:`deltatune.training.distributed.check_strategy`).
    """
    config = config or RunConfig()
    device = "cuda" if torch.cuda.is_available() and not cpu_processes() else "cpu"
    precision = resolve_mixed_precision(config.train.mixed_precision)
    world = distributed.world_size() if launch else None
    return distributed.check_strategy(config.distributed, world, device, precision, config.train.torch_compile,
                                      config.train.l1_lambda)


def process_state() -> PartialState:
    """Accelerate's process state (rank, world size, barriers) for this launch, made once per process."""
    return PartialState(cpu=cpu_processes())


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux ``ru_maxrss`` is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class TrainState:
    """Where training is; saved in every checkpoint's trainer_state.json."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    examples_seen: int = 0
    train_seconds_before: float = 0.0  # training time of the launches before this one (up to the resumed checkpoint)
    interrupted: bool = False
    early_stopped: bool = False
    last_eval_step: int = -1
    last_eval_metrics: dict = field(default_factory=dict)  # scalar metrics of that evaluation (for callbacks)


@dataclass
class _LoopState:
    """The counters of one call of :meth:`Trainer.train` (a resumed run starts them afresh).

    Attributes:
        progress: the progress bar/lines.
        start: ``time.perf_counter()`` at the start, seconds.
        examples_at_start: ``TrainState.examples_seen`` at the start.
        micro_size: examples per micro-batch over all processes.
        tokens_seen: tokens trained in this call (padding excluded).
        mid_step: between the start of a step and its counters' update.
        window_loss: summed loss since the last logged loss (0-d float32 tensor on the device).
        window_targets: targets behind ``window_loss`` (this process).
        last_loss: the latest logged mean loss (``None`` before the first).
        rng_for_state: generator states matching ``TrainState`` (the last completed step), for
            an interrupt checkpoint.
    """

    progress: Progress
    start: float
    examples_at_start: int
    micro_size: int
    window_loss: torch.Tensor
    rng_for_state: dict[str, Any]
    tokens_seen: int = 0
    mid_step: bool = False
    window_targets: int = 0
    last_loss: Optional[float] = None


@dataclass
class TrainResult:
    """Summary returned by :meth:`Trainer.train`."""

    global_step: int
    best_step: Optional[int]
    best_metric: Optional[float]
    metric_name: str
    train_seconds: float
    examples_per_second: float
    final_loss: Optional[float]
    peak_rss_mib: float
    interrupted: bool
    early_stopped: bool
    tokens_per_second: float = 0.0


class Trainer:
    """Runs optimisation, evaluation, early stopping and checkpointing for one run.

    Args:
        model: the model with its task head (trainable parameters have ``requires_grad``).
        task: the fitted task.
        train_features, eval_features: encoded splits (``eval_features`` may be ``None``).
        config: the run config (``train`` and ``eval`` sections are read).
        run_dir: where checkpoints, metrics.jsonl and the best model go.
        save_model: ``save_model(folder)`` writes the deployable model (or its Δθ) into ``folder``;
            called once, at the end, with the best evaluated weights in place.
        callbacks: ``callback(trainer, state)`` called after every optimizer step; raise
            ``KeyboardInterrupt`` in one to simulate a user interrupt.
        reference_features: further splits (the test split) that the task's reference pass
            (:attr:`Task.needs_reference_pass`) covers besides the training and validation features.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        task: Task,
        train_features: Features,
        eval_features: Optional[Features],
        config: RunConfig,
        run_dir: RunDir,
        save_model: Callable[[Path], None],
        callbacks: tuple[Callable[["Trainer", TrainState], None], ...] = (),
        reference_features: tuple[Features, ...] = (),
    ):
        self.cfg = config
        self.task = task
        self.train_features = train_features
        self.eval_features = eval_features
        self.run_dir = run_dir
        self.save_model = save_model
        self.callbacks = callbacks
        self.mixed_precision = resolve_mixed_precision(config.train.mixed_precision)
        # fp16 needs accelerate's gradient scaler; bf16 needs none, so it is a plain autocast and
        # several runs with different precisions can share one process (accelerate's state is global)
        self.fsdp = check_launch(config)  # distributed.strategy fsdp: the model is sharded (_prepare)
        self.deepspeed = config.distributed.strategy == "deepspeed"  # DeepSpeed ZeRO: training/deepspeed_engine.py
        self.zero3 = self.deepspeed and config.distributed.zero_stage == 3  # parameters partitioned: gathered to save/evaluate
        if self.deepspeed:
            self.accelerator = deepspeed_engine.make_accelerator(config)
        else:
            self.accelerator = Accelerator(mixed_precision="fp16" if self.mixed_precision == "fp16" else None, cpu=cpu_processes())
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        tc = config.train
        # the batch (examples per optimizer step) is the config's; the micro-batch (examples per
        # forward pass) is planned for the memory available and changes neither steps nor results
        self.batch_size = tc.per_device_train_batch_size if isinstance(tc.per_device_train_batch_size, int) else AUTO_BATCH_SIZE
        self.global_batch = self.batch_size * self.world
        self.steps_per_epoch = steps_per_epoch(len(train_features), self.global_batch, tc.gradient_accumulation_steps)
        self.total_steps = tc.max_steps or max(1, math.ceil(tc.num_train_epochs * self.steps_per_epoch))
        model = apply_compute_options(model.to(self.accelerator.device), tc)  # checkpointing, torch.compile
        self.reference_seconds: Optional[float] = None
        self._reference_pass(model, (train_features, eval_features, *reference_features))
        self.plan: BatchPlan = self._plan_batch(model)
        self.model, self.optimizer = self._prepare(model)
        self.scheduler = build_scheduler(self.optimizer, tc, self.total_steps)
        ec = config.eval
        metric = ec.metric_for_best_model or task.default_metric
        greater = ec.greater_is_better if ec.greater_is_better is not None else (
            task.greater_is_better if metric == task.default_metric else metric != "loss"
        )
        self.stopper = EarlyStopping(metric, greater, ec.early_stopping_patience, ec.early_stopping_threshold)
        self.l1_params = regularized_parameters(self.model) if tc.l1_lambda > 0 else []
        self.state = TrainState()
        self._call_start: Optional[float] = None  # perf_counter() when this launch's training loop began
        self._checkpointed_step: Optional[int] = None  # the step of the last checkpoint this launch saved
        # train.report_to (main process); Trainer.train starts it, the API finishes a finished run
        self.trackers = Trackers(config, run_dir, active=self.is_main)

    # ---- helpers ------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """The mixed-precision context for forward passes."""
        if self.mixed_precision == "bf16":
            return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16)
        return self.accelerator.autocast()

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _prepare(self, model: torch.nn.Module) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The model for training and its optimizer: Accelerate's DDP (or nothing, one process), or
        FSDP2 (:func:`deltatune.training.distributed.shard_model`, the optimizer made over the shards;
        the main process keeps a CPU copy of the unsharded model to save the gathered weights into),
        or DeepSpeed's engine and ZeRO optimizer (:func:`deltatune.training.deepspeed_engine.prepare`)."""
        if self.deepspeed:  # ZeRO-3: the main process keeps a CPU copy to save the gathered weights into
            self._plain = distributed.plain_copy(model) if self.is_main and self.zero3 else None
            return deepspeed_engine.prepare(self.accelerator, model, build_optimizer(model, self.cfg.train), self.plan.micro_batch_size)
        if not self.fsdp:
            return self.accelerator.prepare(model, build_optimizer(model, self.cfg.train))
        self._plain = distributed.plain_copy(model) if self.is_main else None
        model = distributed.shard_model(model, self.cfg.distributed, self.mixed_precision, self.accelerator.device)
        return model, build_optimizer(model, self.cfg.train)

    @property
    def shards(self) -> int:
        """Processes the parameters, gradients and optimizer state are split over (1 unless FSDP or ZeRO-3)."""
        return self.world if self.fsdp or self.zero3 else 1

    @property
    def strategy(self) -> str:
        """What runs: ``single process``, ``ddp over N processes``, ``fsdp over N processes`` or ``deepspeed ZeRO-S ...``."""
        if self.deepspeed:
            return f"deepspeed ZeRO-{self.cfg.distributed.zero_stage} " + ("in one process" if self.world == 1 else f"over {self.world} processes")
        return "single process" if self.world == 1 else f"{'fsdp' if self.fsdp else 'ddp'} over {self.world} processes"

    def _no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        """Backward passes without gradient synchronization (micro-batches before a step's last)."""
        if self.deepspeed:  # the engine accumulates until the boundary (deepspeed_engine.backward)
            return contextlib.nullcontext()
        return distributed.no_gradient_sync(model) if self.fsdp else self.accelerator.no_sync(model)

    def _clip_gradients(self) -> torch.Tensor:
        """Clip the gradients to ``train.max_grad_norm`` (over every process's shards under FSDP); the norm before."""
        if self.fsdp:
            return distributed.clip_grad_norm(list(self.model.parameters()), self.cfg.train.max_grad_norm)
        return self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.train.max_grad_norm)

    def _save_best(self) -> None:
        """Keep the trainable weights of the best evaluation (main process writes; gathered first under FSDP)."""
        if self.fsdp or self.zero3:
            if self.zero3:
                tensors = deepspeed_engine.trainable_state(self.model)
            else:
                tensors = distributed.gather_full_state(self.model, trainable_only=True)
            if self.is_main:
                replace_dir_atomically(lambda d: write_tensors(tensors, d / "trainable.safetensors"), self.run_dir.checkpoints / "best")
        elif self.is_main:
            save_best_state(self.run_dir.checkpoints, self.accelerator.unwrap_model(self.model))

    def _load_best(self) -> None:
        """Put the best evaluation's trainable weights back (every process reads them)."""
        if self.zero3:
            deepspeed_engine.load_trainable_state(self.model, read_best_state(self.run_dir.checkpoints))
            return
        if not self.fsdp:
            load_best_state(self.run_dir.checkpoints, self.accelerator.unwrap_model(self.model))
            return
        distributed.load_full_state(self.model, read_best_state(self.run_dir.checkpoints))

    def _save_final_model(self) -> None:
        """``save_model`` into model/ (main process); under FSDP and ZeRO-3 the weights are gathered into
        the unsharded CPU copy first, which stands in for ``self.model`` while it is saved."""
        if not self.fsdp and not self.zero3:
            if self.is_main:
                self.save_model(self.run_dir.model)
            return
        tensors = deepspeed_engine.full_state(self.accelerator, self.model) if self.zero3 else distributed.gather_full_state(self.model)
        if not self.is_main:
            return
        sharded, self.model = self.model, distributed.load_into_copy(self._plain, tensors)
        try:
            self.save_model(self.run_dir.model)
        finally:
            self.model = sharded

    def _stage_shards(self) -> Optional[Path]:
        """Under FSDP (DeepSpeed), every process writes its shards (its ZeRO partitions) of the current
        step (the main process puts them in the checkpoint); ``None`` otherwise. A failed write is
        reported on every process.

        Raises:
            DeltatuneError: the shards could not be written.
        """
        if not self.fsdp and not self.deepspeed:
            return None
        folder = staging_folder(self.run_dir.checkpoints, self.state.global_step)
        if self.is_main:
            self.run_dir.checkpoints.mkdir(parents=True, exist_ok=True)
            clear_staging(self.run_dir.checkpoints)
        self.accelerator.wait_for_everyone()
        try:
            if self.deepspeed:  # every process writes its partitions (moved in as deepspeed/)
                deepspeed_engine.save(self.model, folder)
                return folder
            distributed.reshard(self.model)
            save_sharded(folder, self.model, self.optimizer)
        except OSError as e:
            raise DeltatuneError(f"checkpoint of step {self.state.global_step} not written to {folder}: {e}") from e
        return folder

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.accelerator.device, non_blocking=True) for k, v in batch.items()}

    def _reference_pass(self, model: torch.nn.Module, splits: tuple[Optional[Features], ...]) -> None:
        """Before anything is trained (and before a resume loads its checkpoint): the task's
        :meth:`Task.prepare_model`, then, for tasks with :attr:`Task.needs_reference_pass`, one
        pass of :meth:`Task.reference_step` over every split given, its outputs attached to the
        features (:meth:`Task.attach_reference`); its time goes to ``self.reference_seconds``
        (logged to metrics.jsonl as ``{"event": "reference"}``)."""
        self.task.prepare_model(model)
        if not self.task.needs_reference_pass:
            return
        start = time.perf_counter()
        count = sum(len(f) for f in splits if f is not None)
        if self.is_main:  # minutes on a CPU before the first step: say what is happening
            print(f"deltatune: reference pass over {count} examples (the reference model's log-probabilities, once, "
                  "before training; data.precompute_reference)", file=sys.stderr, flush=True)
        was_training = model.training
        model.eval()
        for features in splits:
            if features is None or len(features) == 0:
                continue
            parts = batched_outputs(
                model, self.task, features, self.cfg.eval.per_device_eval_batch_size, self.accelerator.device,
                self.autocast, self.rank, self.world, step=self.task.reference_step,
            )
            if self.world > 1:
                parts = gather_object(parts)
            self.task.attach_reference(features, merge_outputs(parts, len(features)))
        model.train(was_training)
        self.reference_seconds = time.perf_counter() - start
        if self.is_main:
            print(f"deltatune: reference pass done in {self.reference_seconds:.0f} s", file=sys.stderr, flush=True)

    def _plan_batch(self, model: torch.nn.Module) -> BatchPlan:
        """The micro-batch for this machine (:mod:`deltatune.training.batch_plan`), the same on every process.

        Raises:
            DeltatuneError: not even one example per forward pass fits.
        """
        tc = self.cfg.train
        lengths = self.train_features.lengths
        seq_len = self.task.planned_length(lengths)
        device = self.accelerator.device
        if tc.micro_batch_size is None and tc.per_device_train_batch_size == "auto" and device.type == "cuda":
            plan = plan_by_trial(
                self.batch_size, tc.gradient_accumulation_steps, seq_len,
                lambda m: self._trial_step(model, m), torch.cuda.empty_cache,
            )
        else:
            factor = activation_factor(self.cfg.delta.method)

            def need_of(m: int) -> int:
                return needed_bytes(estimate_run_memory(model, self.task, self.cfg, self.mixed_precision, m, seq_len, self.shards), factor)

            available = planning.available_memory_bytes(device)
            if self.world > 1:  # every process runs the same micro-batches: plan for the tightest
                available = min(gather_object([available]))
            plan = plan_batch(self.batch_size, tc.gradient_accumulation_steps, seq_len, need_of, available, tc.micro_batch_size)
        if self.world > 1 and plan.source == "trial":
            smallest = min(gather_object([plan.micro_batch_size]))
            plan = BatchPlan(self.batch_size, smallest, plan.accumulation, seq_len, source="trial")
        return plan

    def _trial_step(self, model: torch.nn.Module, m: int) -> None:
        """A forward and backward pass of the ``m`` longest training examples (gradients dropped after)."""
        lengths = self.train_features.lengths
        longest = sorted(range(len(lengths)), key=lambda i: -lengths[i])[:m]
        batch = self._to_device(self.task.collate([self.train_features[i] for i in longest]))
        try:
            with self.autocast():
                loss_sum, _ = self.task.loss(model, batch)
            loss_sum.backward()
        finally:
            for p in model.parameters():
                p.grad = None

    def _eval_due(self, end_of_epoch: bool) -> bool:
        ec = self.cfg.eval
        if self.eval_features is None or ec.eval_strategy == "no":
            return False
        if ec.eval_strategy == "epoch":
            return end_of_epoch
        return self.state.global_step % ec.eval_steps == 0

    def _save_due(self, end_of_epoch: bool, evaluated: bool) -> bool:
        if self.cfg.train.save_steps:
            return self.state.global_step % self.cfg.train.save_steps == 0
        return evaluated or (end_of_epoch and (self.eval_features is None or self.cfg.eval.eval_strategy == "no"))

    def _trainer_state(self) -> dict[str, Any]:
        s = self.state
        return {
            "global_step": s.global_step,
            "epoch": s.epoch,
            "batch_in_epoch": s.batch_in_epoch,
            "examples_seen": s.examples_seen,
            "train_seconds": round(s.train_seconds_before + self._seconds_this_call(), 3),
            "total_steps": self.total_steps,
            "processes": self.world,
            "early_stopping": self.stopper.state_dict(),
        }

    def _seconds_this_call(self) -> float:
        """Seconds since this launch's training loop began (0 before it)."""
        return time.perf_counter() - self._call_start if self._call_start is not None else 0.0

    def _checkpoint(self, rng_state: dict[str, Any]) -> None:
        """Save a checkpoint of the current step (main process), ``rng_state`` being its generators.

        Raises:
            DeltatuneError: on every process, when the main one could not write it (the older
                checkpoints are intact).
        """
        if self.world > 1:  # each process's generators (dropout draws differ between processes)
            rng_state = {"per_process": gather_object([rng_state])}
        shards = self._stage_shards()
        failure = None
        if self.is_main:
            try:
                save_checkpoint(
                    self.run_dir.checkpoints,
                    self.state.global_step,
                    self.accelerator.unwrap_model(self.model),
                    self.optimizer,
                    self.scheduler,
                    self._trainer_state(),
                    rng_state,
                    self.cfg.train.save_total_limit,
                    sharded=shards,
                    sharded_as="deepspeed" if self.deepspeed else "sharded",
                )
            except DeltatuneError as e:
                failure = str(e)
        if self.world > 1:  # the others would wait for the main process forever
            failure = broadcast_object_list([failure])[0]
        if failure:
            raise DeltatuneError(failure)
        self._checkpointed_step = self.state.global_step

    def _resume(self, trust_checkpoint: bool = False) -> None:
        """Continue from the newest usable checkpoint; a damaged one is skipped with a warning.

        Raises:
            DeltatuneError: no usable checkpoint; a format-1 checkpoint without ``trust_checkpoint``;
                one made by another number of processes or for another number of steps.
        """
        ckpts = list_checkpoints(self.run_dir.checkpoints)
        if not ckpts:
            raise DeltatuneError(f"cannot resume: {self.run_dir.checkpoints} holds no complete checkpoint; start again with --overwrite")
        model = self.accelerator.unwrap_model(self.model)
        problems: list[str] = []
        for path in reversed(ckpts):
            try:  # every file is read and checked before anything is applied
                contents = read_checkpoint(path, trust=trust_checkpoint)
                state, rng = contents.trainer_state, contents.rng
                self._check_resumable(path, state)
                apply_checkpoint(contents, self.model if self.deepspeed else model, self.optimizer, self.scheduler)
                break
            except CheckpointError as e:
                problems.append(str(e))
                if self.is_main:
                    print(f"warning: skipping checkpoint {path.name}: {e}", file=sys.stderr, flush=True)
        else:
            raise DeltatuneError(
                f"cannot resume: no usable checkpoint in {self.run_dir.checkpoints} (newest: {problems[0]}); "
                f"start again with --overwrite"
            )
        if problems and self.is_main:
            print(f"warning: resuming from {path.name}, an older checkpoint: the steps after it are trained again", file=sys.stderr, flush=True)
        self.state.global_step = state["global_step"]
        self.state.epoch = state["epoch"]
        self.state.batch_in_epoch = state["batch_in_epoch"]
        self.state.examples_seen = state["examples_seen"]
        seconds = state.get("train_seconds", 0.0)  # absent in checkpoints of older versions
        finite = isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds)
        self.state.train_seconds_before = float(seconds) if finite and seconds >= 0 else 0.0
        self.stopper.load_state_dict(state["early_stopping"])
        restore_rng_state(rng["per_process"][self.rank] if "per_process" in rng else rng)
        if self.is_main:
            self.run_dir.truncate_log(self.state.global_step)
            print(f"resuming from checkpoint {path.name}: step {self.state.global_step} of {self.total_steps}", flush=True)

    def _check_resumable(self, path: Path, state: dict[str, Any]) -> None:
        """Refuse a checkpoint made by another launch size or for another schedule length.

        Raises:
            CheckpointError: its position in the epoch lies past this data's batches (a damaged
                or edited trainer_state.json; resume falls back to an older checkpoint).
            DeltatuneError: another number of processes or of total steps.
        """
        if state["batch_in_epoch"] > self._batches_per_epoch():
            raise CheckpointError(
                f"{path / 'trainer_state.json'} is inconsistent: batch_in_epoch {state['batch_in_epoch']} is past the "
                f"{self._batches_per_epoch()} batches of an epoch"
            )
        if state.get("processes", 1) != self.world:
            raise DeltatuneError(
                f"cannot resume from {path}: it was made by {state.get('processes', 1)} process(es), this launch has "
                f"{self.world}; resume with the same number: {distributed.resume_command(self.run_dir.root, state.get('processes', 1), self.deepspeed)}"
            )
        if state["total_steps"] != self.total_steps:
            raise DeltatuneError(
                f"cannot resume from {path}: it was made for {state['total_steps']} steps, this config gives "
                f"{self.total_steps}; resume with the run's own config.yaml"
            )

    # ---- evaluation ---------------------------------------------------------------------
    def evaluate(self, features: Features) -> dict[str, Any]:
        """Metrics of the current model on ``features`` (every example exactly once, over all processes)."""
        outputs = self.predict_outputs(features)
        return self.task.compute_metrics(outputs, features)

    @torch.no_grad()
    def predict_outputs(self, features: Features) -> dict[str, np.ndarray]:
        """Concatenated :meth:`Task.eval_step` outputs in the original example order."""
        was_training = self.model.training
        self.model.eval()
        # the bare module: a DDP forward may broadcast buffers (a collective), which would hang when
        # the processes run different numbers of evaluation batches (one may get none)
        run = distributed.sharded_outputs if self.fsdp or self.zero3 else batched_outputs
        parts = run(
            self.accelerator.unwrap_model(self.model),
            self.task,
            features,
            self.cfg.eval.per_device_eval_batch_size,
            self.accelerator.device,
            self.autocast,
            self.rank,
            self.world,
        )
        if self.world > 1:
            parts = gather_object(parts)
        if was_training:
            self.model.train()
        return merge_outputs(parts, len(features))

    # ---- training -----------------------------------------------------------------------
    def train(self, resume: bool = False, trust_checkpoint: bool = False) -> TrainResult:
        """Train until ``total_steps``, early stopping, or an interrupt (Ctrl-C saves a checkpoint).

        ``trust_checkpoint``: with ``resume``, accept a format-1 checkpoint (older deltatune) whose
        RNG file must be unpickled (see :mod:`deltatune.training.checkpoint`).

        Each batch runs in micro-batches of ``self.plan.micro_batch_size`` examples (the loss is
        normalized over the targets of the whole optimizer step, so the gradient is the same).

        The steps: resume (:meth:`_resume`), start the ``train.report_to`` trackers
        (:class:`deltatune.training.tracking.Trackers`, ``self.trackers``), then
        :meth:`_train_epochs` (each optimizer step: :meth:`_collect_window`,
        :meth:`_forward_backward`, :meth:`_optimizer_step`, :meth:`_after_step`), then the last
        evaluation and the model (:meth:`_wrap_up`). The trackers are ended KILLED after an
        interrupt and FAILED when an error goes up; after a normal finish the caller logs the
        final metrics and ends them (``trackers.log_final``, ``trackers.finish``).

        Returns:
            :class:`TrainResult`; ``interrupted`` is True when stopped by KeyboardInterrupt.

        Raises:
            DeltatuneError: out of memory during training (one line naming the settings to change
                and the ``--resume`` command), after a checkpoint of the last completed step; a
                tracker of ``train.report_to`` cannot start.
        """
        set_seed(self.cfg.seed)
        if resume:
            self._resume(trust_checkpoint)
        self._log_start()
        self._start_trackers()
        try:
            result = self._train_tracked()
        except KeyboardInterrupt:
            self.trackers.finish([], "KILLED")
            raise
        except BaseException:
            self.trackers.finish([], "FAILED")
            raise
        if result.interrupted:
            self.trackers.finish([], "KILLED")
        return result

    def _log_start(self) -> None:
        """A new run's first metrics.jsonl line (main process), so that readers of a run still training
        (report.html, the web UI) know its length and how its best step is chosen:
        ``{"step": 0, "event": "start", "total_steps", "metric_for_best_model", "greater_is_better"}``,
        with ``"task_settings"`` (:meth:`deltatune.tasks.base.Task.settings`) for tasks that have any."""
        if self.state.global_step == 0 and self.is_main:
            record = {
                "step": 0, "event": "start", "total_steps": self.total_steps,
                "metric_for_best_model": self.stopper.metric, "greater_is_better": self.stopper.greater_is_better,
            }
            settings = self.task.settings()
            if settings:
                record["task_settings"] = settings
            self.run_dir.log(record)
            if self.reference_seconds is not None:  # the reference pass, timed
                self.run_dir.log({"step": 0, "event": "reference", "seconds": round(self.reference_seconds, 3)})

    def _start_trackers(self) -> None:
        """Start the ``train.report_to`` trackers (main process), continuing from the resumed step.

        Raises:
            DeltatuneError: on every process, when a tracker could not start on the main one (the
                others would wait for it forever).
        """
        failure = None
        try:
            self.trackers.start(self.state.global_step)
        except DeltatuneError as e:
            failure = str(e)
        if self.world > 1:
            failure = broadcast_object_list([failure])[0]
        if failure:
            raise DeltatuneError(failure)

    def _train_tracked(self) -> TrainResult:
        """The body of :meth:`train` after the resume: train, handle an interrupt or out-of-memory, wrap up.

        Raises:
            DeltatuneError: out of memory (see :meth:`train`).
        """
        self.model.train()
        self.task.pop_train_metrics()  # what the batch planner's trial steps counted is not training
        loop = self._start_loop()
        out_of_memory: Optional[str] = None
        try:
            self._train_epochs(loop)
        except InterruptedAgain:  # a step abandoned half-way may have changed the weights: no checkpoint of it
            self.optimizer.zero_grad(set_to_none=True)
            if self.is_main:
                kept = list_checkpoints(self.run_dir.checkpoints)
                print("interrupted again: the step in progress was abandoned; "
                      + (f"continue from {kept[-1].name} with: {distributed.resume_command(self.run_dir.root, self.world, self.deepspeed)}" if kept
                         else "no checkpoint was saved yet; start again with --overwrite"), file=sys.stderr, flush=True)
            raise
        except KeyboardInterrupt:
            self.optimizer.zero_grad(set_to_none=True)
            self.state.interrupted = True
            if self._checkpointed_step != self.state.global_step:  # not when it came during this step's save
                self._checkpoint(loop.rng_for_state if loop.mid_step else capture_rng_state())
        except (MemoryError, RuntimeError) as e:
            if not is_out_of_memory(e):
                raise
            # only the message is kept: the traceback holds the failed step's tensors
            out_of_memory = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        finally:
            loop.progress.close()
        if out_of_memory is not None:
            self._out_of_memory(out_of_memory, loop.rng_for_state if loop.mid_step else capture_rng_state())
        elapsed = time.perf_counter() - loop.start
        if not self.state.interrupted:
            self._wrap_up()
        return self._result(loop, elapsed)

    def _start_loop(self) -> _LoopState:
        """The counters of this call of :meth:`train`, started now (after any resume)."""
        tc = self.cfg.train
        self._call_start = time.perf_counter()
        return _LoopState(
            progress=Progress(self.total_steps, self.state.global_step, self.is_main, tc.progress_bar, tc.log_interval_seconds,
                              tokens=counts_tokens(self.task.input_kind)),
            start=time.perf_counter(),
            examples_at_start=self.state.examples_seen,
            micro_size=self.plan.micro_batch_size * self.world,
            window_loss=torch.zeros((), device=self.accelerator.device),
            rng_for_state=capture_rng_state(),
        )

    def _train_epochs(self, loop: _LoopState) -> None:
        """Run optimizer steps epoch after epoch until ``total_steps`` or early stopping."""
        while self.state.global_step < self.total_steps and not self.state.early_stopped:
            batches = epoch_batches(
                self.train_features.lengths, self.global_batch, self.cfg.seed, self.state.epoch, self.cfg.train.group_by_length
            )
            while self.state.batch_in_epoch < len(batches) and self.state.global_step < self.total_steps:
                self._train_step(loop, batches)
                if self.state.early_stopped:
                    break
            if self.state.batch_in_epoch >= len(batches):
                self.state.epoch += 1
                self.state.batch_in_epoch = 0

    def _train_step(self, loop: _LoopState, batches: list[list[int]]) -> None:
        """One optimizer step over the next ``gradient_accumulation_steps`` batches of the epoch, then its
        logging, evaluation, checkpoint and callbacks."""
        loop.mid_step = True
        window = batches[self.state.batch_in_epoch : self.state.batch_in_epoch + self.cfg.train.gradient_accumulation_steps]
        micro, weights, local_targets, total_targets = self._collect_window(window, loop.micro_size)
        step_loss = self._forward_backward(loop, micro, weights, total_targets)
        loop.window_targets += local_targets
        with interrupts_deferred("the optimizer step"):  # the weights and the counters change together
            self._optimizer_step(step_loss)
            self.state.global_step += 1
            self.state.batch_in_epoch += len(window)
            # packs hold several examples
            self.state.examples_seen += sum(self.train_features.examples_in(b) for b in window)
            loop.tokens_seen += sum(self.train_features.lengths[i] for b in window for i in b)
            loop.mid_step = False
        self._after_step(loop, end_of_epoch=self.state.batch_in_epoch >= len(batches))

    def _collect_window(
        self, window: list[list[int]], micro_size: int
    ) -> tuple[list[dict[str, torch.Tensor]], list[float], int, int]:
        """Collate this process's micro-batches of one optimizer step and count their targets.

        Args:
            window: the step's batches (lists of example indices over all processes).
            micro_size: examples per micro-batch over all processes.

        Returns:
            ``(micro, weights, local_targets, total_targets)``: the collated micro-batches (CPU
            tensors), their loss weights (0.0 for a stand-in example on a process the batch left
            empty), the targets on this process and summed over all processes.
        """
        pieces = [piece for b in window for piece in split_batch(b, micro_size)]
        shards = [shard_batch(piece, self.world, self.rank) for piece in pieces]
        # a global batch smaller than the world leaves some processes nothing: they run one
        # example with weight 0, as DDP needs every process in every backward pass
        weights = [1.0 if part else 0.0 for part in shards]
        micro = [self.task.collate([self.train_features[i] for i in (part or b[:1])]) for part, b in zip(shards, pieces)]
        local_targets = sum(self.task.num_targets(m) for m, w in zip(micro, weights) if w)
        total_targets = local_targets
        if self.world > 1:
            t = torch.tensor(local_targets, device=self.accelerator.device)
            total_targets = int(self.accelerator.reduce(t, reduction="sum").item())
        return micro, weights, local_targets, total_targets

    def _forward_backward(
        self, loop: _LoopState, micro: list[dict[str, torch.Tensor]], weights: list[float], total_targets: int
    ) -> torch.Tensor:
        """Forward and backward each micro-batch, the summed loss divided by the step's ``total_targets``;
        gradients are synchronized across processes on the last one only.

        Returns:
            This process's summed loss of the step (a float scalar tensor, detached).
        """
        model = self.model
        step_loss = torch.zeros((), device=self.accelerator.device)
        for j, mb in enumerate(micro):
            mb = self._to_device(mb)
            sync = j == len(micro) - 1
            ctx = contextlib.nullcontext() if sync or self.world == 1 else self._no_sync(model)
            with ctx:
                with self.autocast():
                    loss_sum, _ = self.task.loss(model, mb)
                    loss_sum = loss_sum * weights[j]
                # DDP averages gradients over processes: multiply back by world size.
                if self.deepspeed:  # the engine's backward; it steps in _optimizer_step
                    deepspeed_engine.backward(model, loss_sum * (self.world / max(total_targets, 1)), boundary=sync)
                else:
                    self.accelerator.backward(loss_sum * (self.world / max(total_targets, 1)))
            loop.window_loss += loss_sum.detach().float()
            step_loss += loss_sum.detach().float()
        return step_loss

    def _optimizer_step(self, step_loss: torch.Tensor) -> None:
        """L1 gradient, gradient clipping, the optimizer and scheduler steps, and gradients cleared.

        Raises:
            DeltatuneError: the step's loss or gradient norm is NaN or infinite (nothing is updated).
        """
        tc = self.cfg.train
        self._check_finite("loss", step_loss)
        if self.deepspeed:  # the engine clips and steps; a non-finite norm still stops the run before any save
            norm = deepspeed_engine.step(self.model)
            self.optimizer.step()  # Accelerate's wrapper: a no-op under DeepSpeed; tells the scheduler a step was made
            if norm is not None and tc.max_grad_norm:
                self._check_finite("gradient norm", norm)
            self.scheduler.step()
            return
        if self.l1_params:
            add_l1_gradient(self.l1_params, tc.l1_lambda)
        if tc.max_grad_norm:
            norm = self._clip_gradients()
            if self.mixed_precision != "fp16":  # fp16: the gradient scaler skips such steps itself
                self._check_finite("gradient norm", torch.as_tensor(norm, dtype=torch.float32))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _check_finite(self, what: str, value: torch.Tensor, step: Optional[int] = None) -> None:
        """Stop training when ``value`` (the step's loss or gradient norm) is NaN or infinite on any process.

        A diverged run is never saved as a result: the error names the learning rate to lower.
        The model folder is not written; checkpoints of earlier steps stay as they were.

        Raises:
            DeltatuneError: ``value`` is not finite.
        """
        bad = (~torch.isfinite(value.detach().float())).float().reshape(1)
        if self.world > 1:
            bad = self.accelerator.reduce(bad.to(self.accelerator.device), reduction="sum")
        if bad.item() > 0:
            self.optimizer.zero_grad(set_to_none=True)
            tc = self.cfg.train
            raise DeltatuneError(
                f"training diverged at step {self.state.global_step + 1 if step is None else step}: the {what} is {float(value):.4g}; no model was saved. "
                f"Lower train.learning_rate (now {tc.learning_rate:g}), keep train.max_grad_norm set "
                f"(now {tc.max_grad_norm}) and use warmup (train.warmup_ratio), then start again with --overwrite"
            )

    def _after_step(self, loop: _LoopState, end_of_epoch: bool) -> None:
        """After an optimizer step: log the loss, evaluate, checkpoint, update the progress bar, run callbacks."""
        step = self.state.global_step
        if step % self.cfg.train.logging_steps == 0 or step == self.total_steps or end_of_epoch:
            loop.last_loss = self._log_train(loop.window_loss, loop.window_targets, loop.start, loop.examples_at_start)
            loop.window_loss.zero_()
            loop.window_targets = 0
        evaluated = False
        if self._eval_due(end_of_epoch):
            metrics = self.evaluate(self.eval_features)
            evaluated = True
            loop.progress.set_metric(self._record_eval(metrics))
        if self._save_due(end_of_epoch, evaluated) and step < self.total_steps and not self.state.early_stopped:
            self._checkpoint(capture_rng_state())
        loop.progress.update(
            step,
            self.state.examples_seen - loop.examples_at_start,
            loop.tokens_seen,
            loss=loop.last_loss,
            # the local mean since the last logged loss (no sync unless a line is printed)
            recent_loss=lambda: float(loop.window_loss) / loop.window_targets if loop.window_targets else loop.last_loss,
        )
        loop.rng_for_state = capture_rng_state()
        for cb in self.callbacks:
            cb(self, self.state)

    def _wrap_up(self) -> None:
        """After training that was not interrupted: evaluate the last steps if they were not, then
        put the best weights back and save the model (:meth:`_finish`)."""
        evaluating = self.eval_features is not None and self.cfg.eval.eval_strategy != "no"
        if evaluating and self.state.last_eval_step != self.state.global_step and not self.state.early_stopped:
            self._record_eval(self.evaluate(self.eval_features))  # the last steps were not evaluated yet
        self._finish()

    def _result(self, loop: _LoopState, elapsed: float) -> TrainResult:
        """The :class:`TrainResult` of this call: ``train_seconds`` counts the launches before a resume
        too (up to the checkpoint resumed from), the rates are over ``elapsed`` seconds of this call."""
        seen = self.state.examples_seen - loop.examples_at_start
        return TrainResult(
            global_step=self.state.global_step,
            best_step=self.stopper.best_step,
            best_metric=self.stopper.best_value,
            metric_name=self.stopper.metric,
            train_seconds=self.state.train_seconds_before + elapsed,
            examples_per_second=seen / elapsed if elapsed > 0 else 0.0,
            final_loss=loop.last_loss,
            peak_rss_mib=peak_rss_mib(),
            interrupted=self.state.interrupted,
            early_stopped=self.state.early_stopped,
            tokens_per_second=loop.tokens_seen / elapsed if elapsed > 0 else 0.0,
        )

    def _out_of_memory(self, what: str, rng_state: dict[str, Any]) -> None:
        """After an out-of-memory error: keep a checkpoint of the last completed step, then raise.

        Raises:
            DeltatuneError: always; one line naming the settings to change and how to resume.
        """
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        step = self.state.global_step
        m = self.plan.micro_batch_size
        seq = self.plan.seq_len
        if step > 0:
            self._checkpoint(rng_state)
            kept = f"kept a checkpoint of step {step} in {self.run_dir.checkpoints}"
            again = f"continue with: deltatune train --resume {self.run_dir.root} train.micro_batch_size={max(1, m // 2)}"
        else:
            kept = "no step was completed"
            again = f"start again with --overwrite and train.micro_batch_size={max(1, m // 2)}"
        raise DeltatuneError(
            f"out of memory at step {step + 1} of {self.total_steps} (micro-batch {m} x up to {seq} tokens: {what}); {kept}; "
            f"lower train.micro_batch_size (same results) or train.per_device_train_batch_size, lower data.max_seq_length, "
            f"or set train.gradient_checkpointing true; {again}"
        )

    def _log_train(self, window_loss: torch.Tensor, window_targets: int, start: float, examples_at_start: int) -> float:
        total = window_loss.clone()
        targets = torch.tensor(float(window_targets), device=total.device)
        if self.world > 1:
            total = self.accelerator.reduce(total, reduction="sum")
            targets = self.accelerator.reduce(targets, reduction="sum")
        loss = float(total / targets.clamp(min=1))
        elapsed = time.perf_counter() - start
        rec = {
            "step": self.state.global_step,
            "epoch": self._epoch_progress(),
            "loss": loss,
            "learning_rate": self.scheduler.get_last_lr()[0],
            "examples_per_second": (self.state.examples_seen - examples_at_start) / elapsed if elapsed > 0 else 0.0,
        }
        rec.update(self._task_train_metrics())
        self._log(rec)
        return loss

    def _task_train_metrics(self) -> dict[str, float]:
        """The task's own training statistics since the last log (:meth:`Task.pop_train_metrics`),
        averaged over processes (each process's mean weighs the same)."""
        mine = self.task.pop_train_metrics()
        if self.world == 1:
            return mine
        everyone = gather_object([mine])
        keys = sorted({k for d in everyone for k in d})
        return {k: float(np.mean([d[k] for d in everyone if k in d])) for k in keys}

    def _log(self, record: dict[str, Any]) -> None:
        """One record to metrics.jsonl and to the trackers of ``train.report_to`` (main process only).

        Raises:
            DeltatuneError: metrics.jsonl cannot be written (:meth:`RunDir.log`).
        """
        if self.is_main:
            self.run_dir.log(record)
            self.trackers.log(record)

    def _epoch_progress(self) -> float:
        """Epochs done so far as a fraction (2.5: half-way through the third epoch)."""
        return round(self.state.epoch + self.state.batch_in_epoch / max(1, self._batches_per_epoch()), 4)

    def _batches_per_epoch(self) -> int:
        return math.ceil(len(self.train_features) / self.global_batch)

    def _record_eval(self, metrics: dict[str, Any]) -> str:
        name = self.stopper.metric
        if name not in metrics:
            numeric = [k for k, v in metrics.items() if isinstance(v, (int, float))]
            close = difflib.get_close_matches(name, numeric, n=1)
            raise DeltatuneError(
                f"eval.metric_for_best_model '{name}' is not a metric of this task; choose one of "
                f"{', '.join(numeric)}{f' (did you mean {close[0]}?)' if close else ''}"
            )
        if "loss" in metrics:  # weights that give a NaN loss are neither kept as the best nor checkpointed
            self._check_finite("validation loss", torch.tensor(float(metrics["loss"])), step=self.state.global_step)
        step = self.state.global_step
        self.state.last_eval_step = step
        improved = self.stopper.update(float(metrics[name]), step)
        scalars = {f"eval_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        self.state.last_eval_metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        self._log({"step": step, "epoch": self._epoch_progress(), **scalars})
        if improved:
            self._save_best()
        self.accelerator.wait_for_everyone()
        if self.stopper.should_stop:
            self.state.early_stopped = True
            self._log({"step": step, "event": "early_stopping", "best_step": self.stopper.best_step})
        return f"{name}={metrics[name]:.4f}"

    def _finish(self) -> None:
        """Put the best evaluated weights back (if any) and write the deployable model once."""
        if self.stopper.best_step is not None and self.stopper.best_step != self.state.global_step:
            self._load_best()
        self._save_final_model()
        self.accelerator.wait_for_everyone()
