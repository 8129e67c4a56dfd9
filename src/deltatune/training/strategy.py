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


def device_type_before_torch() -> Optional[str]:
    """``"cpu"`` when the environment says, without torch, that this launch's processes run on the CPU, else
    ``None`` (not known before torch). The processes run on the CPU when ``ACCELERATE_USE_CPU`` is set
    (``accelerate launch --cpu``; :func:`deltatune.training.loop.cpu_processes`) or when
    ``CUDA_VISIBLE_DEVICES`` hides every GPU (empty, or its first entry a negative number: CUDA ignores
    the entries from the first invalid one). Device files (``/dev/nvidia*``) or ``nvidia-smi`` are not
    asked: the driver may create the files only when CUDA starts (``nvidia-modprobe``), WSL2 and ROCm GPUs
    have none, and ``nvidia-smi`` can be missing where CUDA works."""
    if os.environ.get("ACCELERATE_USE_CPU", "false").strip().lower() in _TRUE:
        return "cpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and (not visible.strip() or visible.split(",")[0].strip().startswith("-")):
        return "cpu"
    return None


def check_requested_strategy(
    cfg: DistributedConfig, world: Optional[int], mixed_precision: str, torch_compile: bool = False, device_type: Optional[str] = None,
    l1_lambda: float = 0.0,
) -> None:
    """Refuse a ``distributed.strategy`` that cannot run as asked in a launch of ``world`` processes.

    Args:
        cfg: the ``distributed`` config section.
        world: the number of processes of this launch (:func:`world_size`); ``None``: not known
            (``deltatune check``, usually run without a launcher): ``fsdp`` in a single process is not refused.
        mixed_precision: ``train.mixed_precision`` (``auto`` before the device is known: not checked).
        torch_compile: ``train.torch_compile``.
        device_type: ``"cpu"`` or ``"cuda"`` when known (deepspeed's offload refusal needs it).
        l1_lambda: ``train.l1_lambda`` (deepspeed: refused when set).

    Raises:
        DeltatuneError: one line: an ``accelerate launch`` FSDP config; an ``accelerate launch``
            DeepSpeed config without ``deepspeed``, or whose ZeRO stage / offload differ from the
            config's; ``deepspeed`` not installed, or with fp16, ``train.torch_compile``,
            ``train.l1_lambda`` or an offload on CPU processes; ``fsdp`` in a single process, with
            fp16 or with ``train.torch_compile``.
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "false").strip().lower() in _TRUE:
        raise DeltatuneError(
            "an accelerate launch with a FSDP config is not used by deltatune (on CPU Accelerate would run DDP "
            f"instead); set distributed.strategy in the config (fsdp) and launch with {LAUNCH} or "
            "accelerate launch --config_file examples/accelerate/ddp.yaml -m deltatune train CONFIG"
        )
    if cfg.strategy == "deepspeed":  # an accelerate DeepSpeed config is welcome: its settings must agree
        _check_deepspeed(cfg, mixed_precision, torch_compile, device_type, l1_lambda)
    elif os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").strip().lower() in _TRUE:
        raise DeltatuneError(
            f"an accelerate launch with a DeepSpeed config and distributed.strategy {cfg.strategy} (it would not run "
            "DeepSpeed); set distributed.strategy deepspeed (and distributed.zero_stage), or launch with "
            "accelerate launch --config_file examples/accelerate/ddp.yaml"
        )
    if cfg.strategy != "fsdp":
        return
    if world is not None and world < 2:
        raise DeltatuneError(
            "distributed.strategy fsdp shards the model over several processes, and this launch has 1 (it would run "
            f"unsharded); launch with {LAUNCH}, or set distributed.strategy ddp"
        )
    if mixed_precision == "fp16":
        raise DeltatuneError("distributed.strategy fsdp with train.mixed_precision fp16 is not supported (no sharded gradient scaler); use bf16")
    if torch_compile:
        raise DeltatuneError("distributed.strategy fsdp with train.torch_compile is not supported yet; set train.torch_compile false")


# accelerate launch's environment for a DeepSpeed config -> the deltatune key that must agree with it
_ACCELERATE_DEEPSPEED_ENV = (
    ("ACCELERATE_DEEPSPEED_ZERO_STAGE", "zero_stage"),
    ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "offload_optimizer"),
    ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "offload_param"),
)


def _check_deepspeed(cfg: DistributedConfig, mixed_precision: str, torch_compile: bool, device_type: Optional[str], l1_lambda: float) -> None:
    """The refusals of ``distributed.strategy: deepspeed`` (see :func:`check_requested_strategy`)."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise DeltatuneError("distributed.strategy deepspeed needs DeepSpeed: pip install 'deltatune[deepspeed]'")
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        raise DeltatuneError(
            "an accelerate launch with a DeepSpeed JSON file (deepspeed_config_file) is not used by deltatune; give "
            "distributed.zero_stage / offload_optimizer / offload_param in the config and use "
            "examples/accelerate/deepspeed_zero2.yaml or deepspeed_zero3.yaml"
        )
    for env, key in _ACCELERATE_DEEPSPEED_ENV:
        given = os.environ.get(env)
        if given is not None and given.strip().lower() != str(getattr(cfg, key)):
            raise DeltatuneError(
                f"the accelerate DeepSpeed config says {key} {given.strip()} ({env}) and the "
                f"run config distributed.{key} {getattr(cfg, key)}; make them agree (deltatune trains with its own config)"
            )
    if mixed_precision == "fp16":
        raise DeltatuneError("distributed.strategy deepspeed with train.mixed_precision fp16 is not supported by deltatune yet; use bf16")
    if torch_compile:
        raise DeltatuneError("distributed.strategy deepspeed with train.torch_compile is not supported; set train.torch_compile false")
    if l1_lambda:
        raise DeltatuneError(
            "distributed.strategy deepspeed with train.l1_lambda is not supported (the engine owns the gradients); "
            "set train.l1_lambda 0 or use distributed.strategy ddp"
        )
    offload = [f"distributed.{k} cpu" for k in ("offload_optimizer", "offload_param") if getattr(cfg, k) != "none"]
    if offload and device_type == "cpu":
        raise DeltatuneError(f"{' and '.join(offload)} moves GPU state to the CPU, and these processes run on the CPU already; set it to none")
