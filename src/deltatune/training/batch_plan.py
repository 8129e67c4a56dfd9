"""The micro-batch plan: how many examples go through one forward pass, so that training fits.

The *batch* (examples per optimizer step and process) is what the config asks for:
``train.per_device_train_batch_size`` examples, ``train.gradient_accumulation_steps`` times.
The *micro-batch* is how many of them go through one forward/backward pass. Each batch is
split into consecutive micro-batches of at most ``micro_batch_size`` examples; the loop
normalizes the loss over all targets of the optimizer step (see ``training/loop.py``), so the
gradient, the loss curve, the number of steps and the checkpoints are the same for every
micro-batch size, and a run may resume with another one.

Before training the planner compares the memory the step needs with the memory available:

- *needed*: the gradient and optimizer parts of :func:`deltatune.training.memory.estimate_run_memory`
  plus the activation and logits parts times :func:`activation_factor` (the estimate
  undercounts: allocator caching, temporaries of the backward pass, and with adapters the
  dropped-out copy of every adapted layer's input), plus :data:`RESERVE_BYTES` for the
  framework, the collated batch and evaluation;
  the parameters are not counted, the process holds them already;
- *available*: :func:`available_memory_bytes` -- free device memory on a GPU, or on CPU the RAM
  the kernel can still give (``psutil``'s ``available``, capped by a cgroup memory limit).

If the requested batch does not fit, the micro-batch is lowered to the largest divisor of the
batch that fits (so every micro-batch of a full batch has the same size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import psutil
import torch

from deltatune.errors import DeltatuneError
from deltatune.training.memory import MemoryEstimate

GiB = 2**30

# Measured (peak RSS - RSS before training - gradients - optimizer state) over the estimate's
# activation + logits parts, SmolLM2-135M at 384 tokens, CPU fp32 (benchmarks/README.md,
# "Memory-aware batching"): full fine-tuning x1.43 / x1.50 / x1.41 at batch 1 / 2 / 4 (two
# AdamW steps, benchmarks/memory_calibration.py) and x1.65 for a whole run in micro-batches of
# 16 (allocator fragmentation grows with the run); LoRA (r 16: dropout copies of the inputs of
# all adapted layers, which the estimate does not count) x2.45 at batch 4. Planned with a margin.
FULL_ACTIVATION_FACTOR = 1.8
ADAPTER_ACTIVATION_FACTOR = 2.8
# the framework's own buffers, the collated batch, evaluation and generation passes
RESERVE_BYTES = 1 * GiB


def _cgroup_free_bytes() -> Optional[int]:
    """Memory left under this process's cgroup limit (v2 ``memory.max`` or v1), or None if unlimited."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            return max(0, int(limit) - usage)
    return None


def available_memory_bytes(device: torch.device) -> int:
    """Memory this process can still allocate on ``device``, bytes.

    CUDA: the device's free memory (``torch.cuda.mem_get_info``). CPU (and other devices,
    whose memory is host RAM here): ``psutil.virtual_memory().available``, capped by the
    cgroup limit when the process runs under one (containers), as the kernel's OOM killer is.
    """
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    free = int(psutil.virtual_memory().available)
    cgroup = _cgroup_free_bytes()
    return min(free, cgroup) if cgroup is not None else free


def activation_factor(delta_method: str) -> float:
    """Measured peak over estimated activations: full/freeze fine-tuning, or an adapter method."""
    return FULL_ACTIVATION_FACTOR if delta_method in ("full", "freeze") else ADAPTER_ACTIVATION_FACTOR


def needed_bytes(estimate: MemoryEstimate, factor: float) -> int:
    """Bytes one training step needs on top of the parameters already loaded (module doc).

    ``factor``: :func:`activation_factor` of the run's Δθ method.
    """
    transient = (estimate.activations or 0) + estimate.logits
    return int(estimate.gradients + estimate.optimizer + factor * transient + RESERVE_BYTES)


def divisors_descending(n: int) -> list[int]:
    """Every divisor of ``n``, largest first (``32 -> [32, 16, 8, 4, 2, 1]``)."""
    return [d for d in range(n, 0, -1) if n % d == 0]


@dataclass(frozen=True)
class BatchPlan:
    """How one process runs its batches.

    Attributes:
        batch_size: examples per batch and process (``train.per_device_train_batch_size``, resolved).
        micro_batch_size: examples per forward/backward pass (<= ``batch_size``).
        accumulation: batches per optimizer step (``train.gradient_accumulation_steps``).
        seq_len: tokens per example the memory was planned for (the longest training example).
        needed_bytes: memory the requested batch needs (None when not estimated).
        planned_bytes: memory the chosen micro-batch needs (None when not estimated).
        available_bytes: memory available when planned (None when not measured).
        source: ``fits`` (the batch fits as it is), ``lowered`` (memory too small: micro-batch
            lowered), ``config`` (``train.micro_batch_size`` given), ``trial`` (chosen by trial steps).
    """

    batch_size: int
    micro_batch_size: int
    accumulation: int
    seq_len: int
    needed_bytes: Optional[int] = None
    planned_bytes: Optional[int] = None
    available_bytes: Optional[int] = None
    source: str = "fits"

    @property
    def micro_batches_per_step(self) -> int:
        """Forward/backward passes per optimizer step (the effective gradient accumulation)."""
        return self.accumulation * math.ceil(self.batch_size / self.micro_batch_size)

    @property
    def examples_per_step(self) -> int:
        """Examples per optimizer step and process (the same for every micro-batch size)."""
        return self.batch_size * self.accumulation

    def message(self) -> Optional[str]:
        """The one line saying the micro-batch was lowered (None when the batch runs as asked)."""
        if self.micro_batch_size == self.batch_size:
            return None
        how = f"micro-batch {self.micro_batch_size} x gradient accumulation {self.micro_batches_per_step} (same global batch {self.examples_per_step})"
        if self.source == "lowered":
            return (
                f"batch {self.batch_size} x {self.seq_len} tokens needs ~{self.needed_bytes / GiB:.1f} GiB, "
                f"{self.available_bytes / GiB:.1f} GiB available: {how}"
            )
        if self.source == "trial":
            return f"batch {self.batch_size} x {self.seq_len} tokens ran out of memory in a trial step: {how}"
        return f"train.micro_batch_size {self.micro_batch_size}: {how}"

    def as_dict(self) -> dict:
        """The plan for eval.json's ``train`` section."""
        return {
            "per_device_train_batch_size": self.batch_size,
            "micro_batch_size": self.micro_batch_size,
            "micro_batches_per_step": self.micro_batches_per_step,
            "planned_by": self.source,
        }


def plan_batch(
    batch_size: int,
    accumulation: int,
    seq_len: int,
    need_of: Callable[[int], int],
    available: int,
    micro_batch_size: Optional[int] = None,
) -> BatchPlan:
    """Choose the micro-batch: the largest divisor of ``batch_size`` whose need fits ``available``.

    Args:
        batch_size: examples per batch and process.
        accumulation: batches per optimizer step.
        seq_len: tokens per example planned for (only reported).
        need_of: ``need_of(m)`` -> bytes a micro-batch of ``m`` examples needs (:func:`needed_bytes`).
        available: bytes available (:func:`available_memory_bytes`).
        micro_batch_size: the user's ``train.micro_batch_size``; taken as given (capped at ``batch_size``).

    Raises:
        DeltatuneError: even one example per forward pass does not fit.
    """
    if micro_batch_size is not None:
        m = min(micro_batch_size, batch_size)
        return BatchPlan(batch_size, m, accumulation, seq_len, None, None, None, "config")
    needed = need_of(batch_size)
    if needed <= available:
        return BatchPlan(batch_size, batch_size, accumulation, seq_len, needed, needed, available, "fits")
    for m in divisors_descending(batch_size)[1:]:
        need = need_of(m)
        if need <= available:
            return BatchPlan(batch_size, m, accumulation, seq_len, needed, need, available, "lowered")
    raise DeltatuneError(
        f"training needs ~{need_of(1) / GiB:.1f} GiB even one example of {seq_len} tokens at a time, "
        f"{available / GiB:.1f} GiB available: lower data.max_seq_length, set train.gradient_checkpointing true "
        "or use delta.method lora (or set train.micro_batch_size 1 to try anyway)"
    )


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure: ``torch.OutOfMemoryError`` (GPU), ``MemoryError``,
    or a ``RuntimeError`` saying ``out of memory`` / ``can't allocate`` (CPU allocator)."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    if isinstance(error, RuntimeError):
        text = str(error).lower()
        return "out of memory" in text or "can't allocate" in text or "cannot allocate" in text
    return False


def plan_by_trial(
    batch_size: int,
    accumulation: int,
    seq_len: int,
    try_step: Callable[[int], None],
    after_failure: Callable[[], None] = lambda: None,
) -> BatchPlan:
    """``per_device_train_batch_size: auto`` on a GPU: the largest divisor of ``batch_size`` for
    which ``try_step(m)`` (a forward and backward pass of the ``m`` longest examples) does not
    run out of memory (:func:`is_out_of_memory`); other errors propagate. ``after_failure`` runs
    once the failed attempt's tensors are released (``torch.cuda.empty_cache``).

    Raises:
        DeltatuneError: even one example runs out of memory.
    """
    for m in divisors_descending(batch_size):
        failed = False
        try:
            try_step(m)
        except (MemoryError, RuntimeError) as e:
            if not is_out_of_memory(e):
                raise
            failed = True  # leave the except block first: its traceback holds the attempt's tensors
        if not failed:
            return BatchPlan(batch_size, m, accumulation, seq_len, source="fits" if m == batch_size else "trial")
        after_failure()
    raise DeltatuneError(
        f"one example of {seq_len} tokens runs out of memory in a trial step: lower data.max_seq_length, "
        "set train.gradient_checkpointing true or use delta.method lora"
    )
