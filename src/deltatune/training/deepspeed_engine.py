"""DeepSpeed ZeRO for the loop (``distributed.strategy: deepspeed``), through Accelerate's DeepSpeed plugin.

ZeRO (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", arXiv:1910.02054) partitions over the ``P`` processes the optimizer state (stage 1),
also the gradients (stage 2), also the parameters (stage 3, each layer's parameters gathered
while it runs). deltatune does not shard anything itself here: it builds an
``accelerate.utils.DeepSpeedPlugin`` from the ``distributed`` config section
(``zero_stage``, ``offload_optimizer``, ``offload_param``), lets ``Accelerator.prepare`` make
the ``deepspeed.DeepSpeedEngine`` around the model and its torch optimizer, and drives the
engine's own calls from the loop (docs/distributed.md, "DeepSpeed"):

- ``engine.backward`` per micro-batch, with ``set_gradient_accumulation_boundary`` true on the
  last micro-batch of an optimizer step only (the loop's accumulation: DeepSpeed's own
  ``gradient_accumulation_steps`` is 1 and the loss is the loop's target-normalized sum, so the
  gradient is the single-process one). ``accelerator.backward`` is not used: under DeepSpeed it
  calls ``engine.step()`` after every backward it is told is a boundary, and the loop checks the
  loss between backward and step.
- ``engine.step()``: gradient clipping (``gradient_clipping`` = ``train.max_grad_norm``), the
  optimizer step over this process's partition, the gradients cleared. The loop's scheduler
  sets the learning rate before it, as without DeepSpeed.
- checkpoints: ``engine.save_checkpoint`` (every process writes its partitions; a collective)
  into the run's ``checkpoints/.shard-step-N/``, moved into the checkpoint as ``deepspeed/``
  (:mod:`deltatune.training.checkpoint`); resumed with ``engine.load_checkpoint``. DeepSpeed
  writes and reads these files with pickle (``torch.load(weights_only=False)``), so resuming
  one needs ``--trust-checkpoint``.
- the model: under ZeRO-1/2 every process holds whole parameters, saved as usual; under ZeRO-3
  they are gathered (``accelerator.get_state_dict``, i.e. DeepSpeed's
  ``_zero3_consolidated_16bit_state_dict`` with ``stage3_gather_16bit_weights_on_model_save``;
  the parameters' own dtype, fp32 here) and loaded by the main process into a CPU copy of the
  model made before ``prepare``, which is saved: a whole Hugging Face folder or a non-empty
  PEFT adapter (peft's ``save_pretrained`` on a ZeRO-3 model would write empty tensors).

On CPU processes (no GPU) DeepSpeed runs with ``DS_ACCELERATOR=cpu`` over gloo; its first start
on a machine compiles DeepSpeed's shared-memory communication op (about 2 minutes, cached in
``~/.cache/torch_extensions``). Accelerate leaves its CPU process group out of the count under
DeepSpeed (``num_processes`` 1 on every process) unless given the backend, hence
``InitProcessGroupKwargs(backend="gloo")``.

Everything here that takes the engine is a collective: every process calls it, in the same order.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Optional

import torch

from deltatune.config import RunConfig
from deltatune.errors import DeltatuneError

TAG = "engine"
"""DeepSpeed's checkpoint tag: the sub-folder of a checkpoint's ``deepspeed/`` holding its files."""


def plugin_options(cfg: RunConfig) -> dict[str, Any]:
    """The ``accelerate.utils.DeepSpeedPlugin`` arguments of this run (each given, so that an
    ``accelerate launch`` DeepSpeed config's environment fills none of them; their agreement with
    it is checked by :func:`deltatune.training.strategy.check_requested_strategy`).

    Args:
        cfg: the run config: ``distributed.zero_stage``, ``offload_optimizer``, ``offload_param``;
            ``train.max_grad_norm`` (``gradient_clipping``; unset: 0, none).

    Returns:
        keyword arguments: DeepSpeed's accumulation is 1 (the loop accumulates), ZeRO-3 gathers
        the whole model for saving (``zero3_save_16bit_model``), no ``zero.Init`` at loading
        (the model exists before the engine).
    """
    d = cfg.distributed
    return {
        "zero_stage": d.zero_stage,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(cfg.train.max_grad_norm or 0.0),
        "offload_optimizer_device": d.offload_optimizer,
        "offload_param_device": d.offload_param,
        "zero3_init_flag": False,
        "zero3_save_16bit_model": d.zero_stage == 3,
    }


def batch_settings(micro_batch: int, world: int) -> dict[str, Any]:
    """The DeepSpeed config entries set just before ``prepare``, when the loop's micro-batch is known:
    ``train_micro_batch_size_per_gpu`` = ``micro_batch`` and ``train_batch_size`` = ``micro_batch *
    world`` (DeepSpeed's consistency check; it loads no data here), and no DeepSpeed logging (the
    loop logs the loss)."""
    return {"train_micro_batch_size_per_gpu": micro_batch, "train_batch_size": micro_batch * world,
            "steps_per_print": 10**9, "wall_clock_breakdown": False}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_up_environment() -> None:
    """Before the first DeepSpeed import of this process: ``DS_ACCELERATOR=cpu`` on a machine without
    a GPU (unless set), and, without a launcher, the variables of a one-process group (DeepSpeed
    would look for MPI otherwise): ``RANK=0``, ``WORLD_SIZE=1``, ``LOCAL_RANK=0``, ``MASTER_ADDR``
    127.0.0.1 and a free ``MASTER_PORT``."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))


def make_accelerator(cfg: RunConfig):
    """The Accelerator of a DeepSpeed run (its plugin from :func:`plugin_options`; the batch sizes
    are set by :func:`prepare`). ``train.mixed_precision: bf16`` stays the loop's autocast over
    fp32 weights, as without DeepSpeed (its config's ``bf16`` section is off), so the weights,
    the saved model and the checkpoints are fp32.

    Raises:
        DeltatuneError: Accelerate was already set up in this process (its state is one per
            process): a DeepSpeed run must be the first training of its process; Accelerate did
            not form DeepSpeed.
    """
    set_up_environment()
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DeepSpeedPlugin, DistributedType, InitProcessGroupKwargs

    if AcceleratorState._shared_state:  # no public way to ask whether Accelerate's state exists
        raise DeltatuneError(
            "distributed.strategy deepspeed must be the first training of its process (Accelerate keeps one state per "
            f"process, here a {AcceleratorState().distributed_type.value} one); start it in a new process"
        )
    plugin = DeepSpeedPlugin(**plugin_options(cfg))
    handlers = [] if torch.cuda.is_available() else [InitProcessGroupKwargs(backend="gloo")]
    # mixed_precision "no": DeepSpeed's fp16/bf16 sections stay off whatever an accelerate config says (train.mixed_precision decides)
    accelerator = Accelerator(deepspeed_plugin=plugin, kwargs_handlers=handlers, mixed_precision="no")
    if accelerator.distributed_type != DistributedType.DEEPSPEED:  # never silently something else
        raise DeltatuneError(
            f"distributed.strategy deepspeed: Accelerate formed {accelerator.distributed_type.value} instead of DeepSpeed "
            "(ACCELERATE_USE_CPU set?); unset it, or use distributed.strategy ddp"
        )
    return accelerator


def prepare(accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batch: int):
    """``accelerator.prepare`` of the model and its optimizer into a DeepSpeed engine.

    Args:
        model: the whole model on the device (its trainable parameters require grad).
        optimizer: the torch optimizer over its trainable parameters
            (:func:`deltatune.training.optim.build_optimizer`); with ``offload_optimizer cpu``
            Accelerate replaces AdamW with DeepSpeed's CPU Adam (compiled on first use).
        micro_batch: the loop's micro-batch per process.

    Returns:
        ``(engine, optimizer)``: the ``DeepSpeedEngine`` (``engine.module`` is ``model``) and
        Accelerate's wrapper of DeepSpeed's ZeRO optimizer (its ``param_groups`` are the torch
        optimizer's, which the loop's scheduler sets).
    """
    from transformers.integrations import unset_hf_deepspeed_config

    accelerator.state.deepspeed_plugin.deepspeed_config.update(batch_settings(micro_batch, accelerator.num_processes))
    engine, wrapped = accelerator.prepare(model, optimizer)
    # the plugin told transformers that ZeRO-3 is on (a process-wide setting): any later from_pretrained
    # of this process (the base weights of a delta, loading the saved model) would be partitioned
    unset_hf_deepspeed_config()
    return engine, wrapped


def backward(engine, loss: torch.Tensor, boundary: bool) -> None:
    """Backward of one micro-batch; ``boundary``: the last of its optimizer step (gradients are reduced
    over processes and partitioned then; before it they accumulate)."""
    engine.set_gradient_accumulation_boundary(boundary)
    engine.backward(loss)


def step(engine) -> Optional[torch.Tensor]:
    """The optimizer step (clipping, the step over this process's partition, gradients cleared).

    Returns:
        the global gradient norm before clipping (a 0-d float tensor, the same on every
        process) when DeepSpeed computed one (it does when clipping), else ``None``.
    """
    engine.step()
    norm = engine.get_global_grad_norm()
    return None if norm is None else torch.as_tensor(float(norm), dtype=torch.float32)


def is_zero3(engine) -> bool:
    """Whether the engine partitions the parameters (ZeRO stage 3)."""
    return engine.zero_optimization_stage() == 3


def save(engine, folder: Path) -> None:
    """Every process writes its partitions of the model and optimizer state into ``folder/<TAG>/``
    (``engine.save_checkpoint``; collective; frozen parameters are left out: they equal the base model).

    Raises:
        OSError: a process could not write (reported on every process).
    """
    folder.mkdir(parents=True, exist_ok=True)
    try:
        engine.save_checkpoint(str(folder), tag=TAG, exclude_frozen_parameters=True)
    except (OSError, RuntimeError) as e:
        raise OSError(f"DeepSpeed checkpoint not written: {e}") from e


def load(engine, folder: Path) -> None:
    """Read a :func:`save` folder back into the engine: parameters and optimizer partitions
    (collective; the same number of processes and ZeRO stage as the save).

    Raises:
        RuntimeError: the folder is incomplete or does not fit this model/optimizer.
    """
    if not (folder / TAG).is_dir():
        raise RuntimeError(f"{folder / TAG} is missing")
    try:
        path, _ = engine.load_checkpoint(str(folder), tag=TAG, load_module_strict=False, load_optimizer_states=True,
                                         load_lr_scheduler_states=False)
    except (OSError, KeyError, ValueError, AssertionError) as e:
        raise RuntimeError(f"{folder} cannot be read by DeepSpeed ({type(e).__name__}: {e})") from e
    if path is None:
        raise RuntimeError(f"{folder} cannot be read by DeepSpeed (no checkpoint of tag {TAG})")


def full_state(accelerator, engine) -> dict[str, torch.Tensor]:
    """The whole model's state dict on the main process's CPU (collective under ZeRO-3).

    Returns:
        ``{name: CPU tensor}`` with ``engine.module``'s own names on the main process (``{}``
        elsewhere under ZeRO-3; every process's under ZeRO-1/2).
    """
    state = accelerator.get_state_dict(engine)
    return {k: v.detach().to("cpu") for k, v in (state or {}).items()}


def trainable_state(engine) -> dict[str, torch.Tensor]:
    """The trainable parameters, whole, on the main process's CPU (collective under ZeRO-3: each is
    gathered; ``{}`` on the other processes)."""
    import deepspeed

    named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    out: dict[str, torch.Tensor] = {}
    with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
        if engine.global_rank == 0:
            out = {n: p.detach().to("cpu", copy=True) for n, p in named}
    return out


def load_trainable_state(engine, tensors: dict[str, torch.Tensor]) -> None:
    """Put whole trainable tensors (read by every process) into the ZeRO-3 partitions of
    ``engine.module`` (collective: the main process's values are scattered).

    Raises:
        KeyError: a trainable parameter is missing from ``tensors``.
    """
    import deepspeed

    named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    missing = [n for n, _ in named if n not in tensors]
    if missing:
        raise KeyError(f"lacks trainable parameter {missing[0]}")
    with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=0):
        if engine.global_rank == 0:
            with torch.no_grad():
                for n, p in named:
                    p.copy_(tensors[n].to(p.device, p.dtype))
