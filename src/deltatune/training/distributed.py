"""The ``distributed.strategy`` of a launch, and sharded data parallelism (FSDP2) for the loop.

Strategies (``distributed.strategy`` in the config; docs/distributed.md):

- ``ddp``: every process holds the whole model; gradients are averaged (Accelerate's DDP).
  One process is plain single-process training.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``; Zhao et al. 2023, "PyTorch FSDP",
  arXiv:2304.11277, and the per-parameter sharding of torch's FSDP2 RFC, pytorch#114299).
  Every transformer block is one FSDP unit (the classes named by the transformers model's
  ``_no_split_modules``, what Accelerate's FSDP plugin wraps; else the stack found by
  :func:`deltatune.training.compute.transformer_blocks`), then the root module takes the rest
  (embeddings, head). Parameters become DTensors sharded on dimension 0 over a 1-D device mesh
  of all processes (``init_device_mesh``, CPU/gloo or CUDA/NCCL); each forward all-gathers a
  block's parameters, each backward reduce-scatters its gradients (averaged over processes, as
  DDP). On GPUs ``train.mixed_precision: bf16`` becomes a ``MixedPrecisionPolicy`` (bf16
  parameters for compute, fp32 gradient reduction, fp32 masters); ``fsdp_cpu_offload`` keeps the
  shards, their gradients and the optimizer step on the CPU (``CPUOffloadPolicy``). The loop's
  own thin layer, not Accelerate's FSDP plugin: Accelerate ignores that plugin on CPU (it forms
  DDP without a word), and a requested FSDP must never silently become DDP.
- ``deepspeed``: DeepSpeed ZeRO-1/2/3 through Accelerate's DeepSpeed plugin, in its own module
  (:mod:`deltatune.training.deepspeed_engine`); only its refusals are made here.

Everything here is a collective call: every process calls it, in the same order.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from deltatune.config import DistributedConfig
from deltatune.errors import DeltatuneError
from deltatune.tasks.base import Features, Task
from deltatune.training.batching import eval_batches
from deltatune.training.compute import transformer_blocks
from deltatune.training.strategy import check_requested_strategy, world_size  # noqa: F401 - world_size: this module's name for it


def check_strategy(
    cfg: DistributedConfig, world: Optional[int], device_type: str, mixed_precision: str, torch_compile: bool = False, l1_lambda: float = 0.0
) -> bool:
    """Check that ``cfg.strategy`` can run as asked in this launch; whether it is FSDP.

    Args:
        cfg: the ``distributed`` config section.
        world: the number of processes of this launch (``None``: not known, see :func:`check_requested_strategy`).
        device_type: ``"cpu"`` or ``"cuda"``: the processes' device.
        mixed_precision: the resolved ``train.mixed_precision`` (``no``, ``bf16``, ``fp16``).
        torch_compile: ``train.torch_compile``.
        l1_lambda: ``train.l1_lambda``.

    Returns:
        True for ``fsdp`` (the caller shards the model with :func:`shard_model`), False for ``ddp``
        and ``deepspeed`` (:mod:`deltatune.training.deepspeed_engine`).

    Raises:
        DeltatuneError: one line, for a request that would run as something else: ``fsdp`` in a
            single process, or an ``accelerate launch`` FSDP/DeepSpeed config (Accelerate would form
            DDP on CPU without a word); ``deepspeed`` not installed or with settings it does not
            compose with (:func:`check_requested_strategy`); ``fsdp`` with fp16,
            ``train.torch_compile``, or ``fsdp_cpu_offload`` on CPU processes.
    """
    check_requested_strategy(cfg, world, mixed_precision, torch_compile, device_type, l1_lambda)  # the checks the CLI makes before torch
    if cfg.strategy != "fsdp":
        return False
    if cfg.fsdp_cpu_offload and device_type == "cpu":
        raise DeltatuneError(
            "distributed.fsdp_cpu_offload moves GPU shards to the CPU, and these processes run on the CPU already; "
            "set distributed.fsdp_cpu_offload false"
        )
    return True


def block_modules(model: torch.nn.Module, names: Optional[list[str]] = None) -> list[torch.nn.Module]:
    """The modules that become one FSDP unit each, innermost first (the order ``fully_shard`` needs).

    Args:
        names: class names to wrap; ``None``: every transformers model's ``_no_split_modules``
            inside ``model`` (through a peft wrapper), else the stack of blocks of
            :func:`deltatune.training.compute.transformer_blocks`.

    Returns:
        the modules (the root is never among them); empty when nothing matches (given ``names``
        are never replaced by the stack of blocks).
    """
    given = names is not None
    if names is None:
        names = sorted({n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])})
    found = [m for m in model.modules() if m is not model and type(m).__name__ in set(names)]
    if not found and not given and (stack := transformer_blocks(model)) is not None:
        found = list(stack)
    ids = {id(m) for m in found}
    order = [m for m in reversed(list(model.modules())) if id(m) in ids]  # children before their parents
    return order


def wrapped_models(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost transformers models inside ``model`` when ``model`` is a wrapper (a peft model):
    each becomes one FSDP unit (embeddings, head and anything outside the blocks, tied weights
    together), so that calling it directly (``generate``) gathers its parameters. Empty when
    ``model`` is itself a transformers model."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return []
    found: list[torch.nn.Module] = []

    def visit(m: torch.nn.Module) -> None:
        for child in m.children():
            if isinstance(child, PreTrainedModel):
                found.append(child)
            else:
                visit(child)

    visit(model)
    return found


def shard_model(model: torch.nn.Module, cfg: DistributedConfig, mixed_precision: str, device: torch.device) -> torch.nn.Module:
    """Apply FSDP2 in place: ``fully_shard`` on every block (:func:`block_modules`), then on the root.

    Args:
        model: the whole model on ``device`` (a peft model included: its adapters are sharded with the
            block that holds them; frozen and trainable parameters may share a unit).
        cfg: ``fsdp_reshard_after_forward`` (free the gathered parameters after each forward: less
            memory, one more all-gather per block in the backward), ``fsdp_cpu_offload``,
            ``fsdp_blocks`` (class names; unset: ``_no_split_modules``).
        mixed_precision: the resolved ``train.mixed_precision``; ``bf16`` on CUDA gives the policy
            (bf16 parameters in compute, fp32 gradient reduction).
        device: this process's device (the mesh's device type).

    Units, innermost first: each block; under a wrapper (peft) the transformers model inside
    (:func:`wrapped_models`); the root. The units above the blocks keep their parameters gathered
    from the forward to the end of the backward (FSDP2's default for a root): the chunked loss
    calls the output head after the model's forward, a different number of times per process.

    Returns:
        ``model`` itself, now an ``FSDPModule`` whose parameters are DTensor shards; build the
        optimizer after this.

    Raises:
        DeltatuneError: ``fsdp_blocks`` names no module of the model.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size(),))
    policy = MixedPrecisionPolicy()
    if mixed_precision == "bf16" and device.type == "cuda":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cfg.fsdp_cpu_offload else OffloadPolicy()
    blocks = block_modules(model, cfg.fsdp_blocks)
    if cfg.fsdp_blocks and not blocks:
        raise DeltatuneError(
            f"distributed.fsdp_blocks {cfg.fsdp_blocks} names no module of {type(model).__name__}; "
            "give the class names of its transformer blocks, or leave it unset"
        )
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=cfg.fsdp_reshard_after_forward, mp_policy=policy, offload_policy=offload)
    for inner in wrapped_models(model):  # under peft: generate() calls the transformers model, not the root
        fully_shard(inner, mesh=mesh, reshard_after_forward=False, mp_policy=policy, offload_policy=offload)
    fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=policy, offload_policy=offload)
    return model


def plain_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy of the unsharded model (before :func:`shard_model`), which the main process fills
    with the gathered weights to save the model in its usual format (:func:`load_into_copy`).

    Each parameter and buffer is copied straight to the CPU (no second copy on the GPU); tied
    parameters stay tied.
    """
    memo: dict[int, torch.Tensor] = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = b.detach().to("cpu", copy=True)
    return copy.deepcopy(model, memo)


def reshard(model: torch.nn.Module) -> None:
    """Free every gathered parameter (the root's stays gathered after a forward without a backward, an
    evaluation): before the parameters are read by name (state dicts, checkpoints). Not a collective."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


@contextlib.contextmanager
def no_gradient_sync(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, backward passes accumulate unsharded gradients without reduce-scattering
    them (the micro-batches before the last of an optimizer step; FSDP2's
    ``set_requires_gradient_sync``)."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def clip_grad_norm(parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale the gradients so that their global L2 norm is at most ``max_norm`` (as
    ``torch.nn.utils.clip_grad_norm_``), the norm taken over every shard of every process.

    Returns:
        the norm before clipping (a 0-d float tensor, the same on every process).
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if isinstance(total, DTensor):  # a partial sum of squares per process: reduced here
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kwargs)


def gather_full_state(model: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict, on the main process's CPU (collective).

    Args:
        trainable_only: only the parameters that require grad (the best-state copy).

    Returns:
        ``{name: CPU tensor}`` with the model's own parameter names on rank 0; ``{}`` elsewhere.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    reshard(model)
    state = get_model_state_dict(model, options=_options(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only))
    if trainable_only:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if k in trainable}
    return state


def load_full_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Put full (unsharded) tensors, given to every process, into the sharded ``model`` (each process
    keeps its shard); names absent from ``tensors`` are left as they are (collective).

    Raises:
        KeyError: a trainable parameter of ``model`` is missing from ``tensors``.
    """
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    reshard(model)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in tensors]
    if missing:
        raise KeyError(f"lacks trainable parameter {missing[0]}")
    set_model_state_dict(model, tensors, options=_options(full_state_dict=True, strict=False))


def load_into_copy(copy_: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Load :func:`gather_full_state`'s tensors into the :func:`plain_copy` (main process); returns it.

    Raises:
        RuntimeError: a name or shape does not fit (the copy is another model).
    """
    copy_.load_state_dict(tensors, strict=True)
    return copy_


@torch.no_grad()
def sharded_outputs(
    model: torch.nn.Module,
    task: Task,
    features: Features,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    rank: int,
    world: int,
) -> list[tuple[list[int], dict[str, np.ndarray]]]:
    """:func:`deltatune.training.inference.batched_outputs` for a sharded model: every forward is a
    collective, so every process runs the same number of them; a process with one batch fewer runs
    the first batch once more and drops its outputs (nothing is counted twice).

    Returns:
        (example indices, outputs) per batch of this process (batch ``b`` on process ``b % world``).
    """
    batches = eval_batches(features.lengths, batch_size)
    mine = batches[rank::world]
    rounds = math.ceil(len(batches) / world)
    parts = []
    for k in range(rounds):
        idx = mine[k] if k < len(mine) else batches[0]
        batch = {key: v.to(device) for key, v in task.collate([features[i] for i in idx]).items()}
        with autocast():
            out = task.eval_step(model, batch)
        if k < len(mine):
            parts.append((idx, out))
    reshard(model)
    return parts


def describe_launch(cfg: DistributedConfig, world: int) -> str:
    """One line for ``deltatune check``: which strategy will run with ``world`` processes, or why it
    would be refused (nothing is raised: ``check`` is usually run without a launcher)."""
    launch = "torchrun --nproc_per_node N -m deltatune train CONFIG"
    if cfg.strategy == "deepspeed":
        parts = {1: "optimizer state", 2: "gradients and optimizer state", 3: "parameters, gradients and optimizer state"}[cfg.zero_stage]
        offload = [k for k in ("offload_optimizer", "offload_param") if getattr(cfg, k) != "none"]
        cpu = ", " + " and ".join(offload) + " in CPU memory" if offload else ""
        if world < 2:  # nothing to partition over: the one process holds everything
            return (f"distributed: deepspeed ZeRO-{cfg.zero_stage} in one process (Accelerate's DeepSpeed plugin; all of the "
                    f"{parts} in this process{cpu}; with {launch} each process holds about 1/N)")
        return (f"distributed: deepspeed ZeRO-{cfg.zero_stage} over {world} processes (Accelerate's DeepSpeed plugin; {parts} "
                f"about 1/{world} per process{cpu})")
    if cfg.strategy == "fsdp":
        if world < 2:
            return f"distributed: fsdp shards over several processes; launch with {launch} (a single process is refused)"
        return (
            f"distributed: fsdp over {world} processes (FSDP2; parameters, gradients and optimizer state about 1/{world} "
            "per process, each transformer block gathered whole while it runs)"
        )
    if world < 2:
        return f"distributed: single process (with {launch}: ddp, the whole model on every process)"
    return f"distributed: ddp over {world} processes (the whole model and optimizer state on every process)"


def resume_command(run: object, processes: int, deepspeed: bool = False) -> str:
    """The command that continues ``run`` with ``processes`` processes (checkpoints resume only with the
    number of processes that made them): ``deltatune train --resume RUN`` for one; for several, the
    torchrun and Ray launches (the same number under ``accelerate launch`` works too). ``deepspeed``:
    a DeepSpeed run, whose checkpoints need ``--trust-checkpoint`` (DeepSpeed reads them with pickle)."""
    resume = f"--resume {run}" + (" --trust-checkpoint" if deepspeed else "")
    if processes <= 1:
        return f"deltatune train {resume}"
    if deepspeed:
        return f"torchrun --nproc_per_node {processes} -m deltatune train {resume}"
    return (f"torchrun --nproc_per_node {processes} -m deltatune train {resume} "
            f"(or deltatune train {resume} --ray --num-workers {processes})")
