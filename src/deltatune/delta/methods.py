"""Choose what is trained: every weight, the top layers, or a PEFT adapter.

:func:`apply_delta` looks ``delta.method`` up in :mod:`deltatune.delta.registry` and calls its
builder, one module per method under :mod:`deltatune.delta.tuners` (``full``, ``freeze``,
``lora``, ``dora``, ``ia3``, ``prefix``). The PEFT adapters are built with the ``peft``
library; the task head is always trained and saved with the adapter (peft's
``modules_to_save``).
"""

from __future__ import annotations

import torch

from deltatune.config import DeltaConfig
from deltatune.delta.registry import PEFT_METHODS, builder
from deltatune.delta.tuners._peft import peft_checkpointing_probe_quiet
from deltatune.delta.tuners.freeze import freeze_lower_layers, transformer_layers

__all__ = [
    "PEFT_METHODS", "apply_delta", "freeze_lower_layers", "parameter_summary", "peft_checkpointing_probe_quiet",
    "transformer_layers",
]


def apply_delta(
    model: torch.nn.Module, cfg: DeltaConfig, task_type: str | None, modules_to_save: list[str] | None = None
) -> torch.nn.Module:
    """Set up ``model`` for ``cfg.method``; returns the (possibly peft-wrapped) model.

    Args:
        model: the backbone with its task head.
        task_type: peft's ``TaskType`` name for the task (SEQ_CLS, TOKEN_CLS, CAUSAL_LM, ...), or
            ``None`` for a task peft has no type for (masked-lm): peft's generic model.
        modules_to_save: head modules trained and saved in full with the adapter, for tasks
            whose head peft's task type does not know (``None``: peft's default for the type).

    Raises:
        DeltatuneError: the method does not fit the model (no layers to freeze, no IA3 targets,
            prefix tuning outside decoders, a refusal by peft).
    """
    return builder(cfg.method)(model, cfg, task_type, modules_to_save)


def parameter_summary(model: torch.nn.Module) -> dict[str, float]:
    """Counts and fp32-equivalent memory of trainable and all parameters.

    Returns:
        ``trainable``, ``total`` (counts) and ``trainable_mib``, ``total_mib`` (MiB at each
        parameter's dtype), plus ``trainable_share`` in [0, 1].
    """
    trainable = total = t_bytes = a_bytes = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", None) or p.numel()  # ds_numel: a DeepSpeed ZeRO-3 parameter's whole count (its data is a shard)
        total += n
        a_bytes += n * p.element_size()
        if p.requires_grad:
            trainable += n
            t_bytes += n * p.element_size()
    return {
        "trainable": trainable,
        "total": total,
        "trainable_mib": t_bytes / 2**20,
        "total_mib": a_bytes / 2**20,
        "trainable_share": trainable / max(total, 1),
    }
