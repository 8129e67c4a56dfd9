"""``dora`` (Liu et al. 2024, arXiv:2402.09353): LoRA with a trained magnitude per output feature
(peft's ``LoraConfig(use_dora=True)``); the same ``delta.lora_*`` settings as LoRA."""

from __future__ import annotations

import torch

from deltatune.config import DeltaConfig
from deltatune.delta.tuners._peft import wrap
from deltatune.delta.tuners.lora import lora_config


def build(
    model: torch.nn.Module, cfg: DeltaConfig, task_type: str | None = None, modules_to_save: list[str] | None = None
) -> torch.nn.Module:
    """Wrap ``model`` with a DoRA adapter; returns the ``peft.PeftModel``.

    Raises:
        DeltatuneError: peft cannot apply it (e.g. no matching target modules).
    """
    return wrap(model, lora_config(cfg, task_type, modules_to_save, use_dora=True), "dora")
