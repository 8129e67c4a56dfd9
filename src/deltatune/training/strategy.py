"""The checks of ``distributed.strategy`` against a launch that need no torch (docs/distributed.md).

:func:`deltatune.training.distributed.check_strategy` makes them when training starts, with the
ones that need the device; the CLI makes them before it imports torch, so that a launch that
would be refused (``fsdp`` in a single process) is refused at once.
"""

from __future__ import annotations

import os
from typing import Optional

from deltatune.config import DistributedConfig
from deltatune.errors import DeltatuneError

LAUNCH = "torchrun --nproc_per_node N -m deltatune train CONFIG"

_TRUE = ("1", "true", "yes", "y", "on", "t")  # as accelerate's parse_flag_from_env reads a flag


def world_size() -> int:
    """The number of processes a launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_requested_strategy(
    cfg: DistributedConfig, world: int, mixed_precision: str, torch_compile: bool = False, device_type: Optional[str] = None
) -> None:
    """Refuse a ``distributed.strategy`` that cannot run as asked in a launch of ``world`` processes.

    Args:
        cfg: the ``distributed`` config section.
        world: the number of processes of this launch (:func:`world_size`).
        mixed_precision: ``train.mixed_precision`` (``auto`` before the device is known: not checked).
        torch_compile: ``train.torch_compile``.
        device_type: ``"cpu"`` or ``"cuda"`` when known (only the wording of the deepspeed refusal uses it).

    Raises:
        DeltatuneError: one line: an ``accelerate launch`` FSDP/DeepSpeed config; ``deepspeed``;
            ``fsdp`` in a single process, with fp16 or with ``train.torch_compile``.
    """
    for flag, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(flag, "false").strip().lower() in _TRUE:
            raise DeltatuneError(
                f"an accelerate launch with a {name} config is not used by deltatune (on CPU Accelerate would run DDP "
                f"instead); set distributed.strategy in the config (fsdp) and launch with {LAUNCH} or "
                "accelerate launch --config_file examples/accelerate/ddp.yaml -m deltatune train CONFIG"
            )
    if cfg.strategy == "deepspeed":
        where = "GPU-only (Accelerate's DeepSpeed plugin), and " if device_type == "cpu" else ""
        raise DeltatuneError(
            f"distributed.strategy deepspeed is {where}not wired into deltatune's loop yet; use distributed.strategy fsdp "
            "(ZeRO-3-like sharding) or ddp"
        )
    if cfg.strategy != "fsdp":
        return
    if world < 2:
        raise DeltatuneError(
            "distributed.strategy fsdp shards the model over several processes, and this launch has 1 (it would run "
            f"unsharded); launch with {LAUNCH}, or set distributed.strategy ddp"
        )
    if mixed_precision == "fp16":
        raise DeltatuneError("distributed.strategy fsdp with train.mixed_precision fp16 is not supported (no sharded gradient scaler); use bf16")
    if torch_compile:
        raise DeltatuneError("distributed.strategy fsdp with train.torch_compile is not supported yet; set train.torch_compile false")
