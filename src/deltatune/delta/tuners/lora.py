"""``lora`` (Hu et al. 2021, arXiv:2106.09685): a peft LoRA adapter of rank ``delta.lora_r``, scale
``lora_alpha / lora_r``, on ``delta.target_modules``."""

from __future__ import annotations

import torch

from deltatune.config import DeltaConfig
from deltatune.delta.tuners._peft import target_modules, wrap


def lora_config(cfg: DeltaConfig, task_type: str | None, modules_to_save: list[str] | None, use_dora: bool = False):
    """The ``peft.LoraConfig`` of ``cfg`` (``use_dora``: DoRA's magnitude vectors on top)."""
    import peft

    return peft.LoraConfig(
        task_type=task_type,
        modules_to_save=modules_to_save,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target_modules(cfg),
        use_dora=use_dora,
    )


def build(
    model: torch.nn.Module, cfg: DeltaConfig, task_type: str | None = None, modules_to_save: list[str] | None = None
) -> torch.nn.Module:
    """Wrap ``model`` with a LoRA adapter; returns the ``peft.PeftModel``.

    Raises:
        DeltatuneError: peft cannot apply it (e.g. no matching target modules).
    """
    return wrap(model, lora_config(cfg, task_type, modules_to_save), "lora")
