"""``ia3`` (Liu et al. 2022, arXiv:2205.05638): a peft IA3 adapter, learned scaling vectors on
keys, values and feed-forward layers (peft's defaults for the model type, or ``delta.target_modules``)."""

from __future__ import annotations

import torch

from deltatune.config import DeltaConfig
from deltatune.delta.tuners._peft import wrap
from deltatune.errors import DeltatuneError


def ia3_config(cfg: DeltaConfig, task_type: str | None, model: torch.nn.Module, modules_to_save: list[str] | None):
    """The ``peft.IA3Config`` of ``cfg`` for ``model``.

    Raises:
        DeltatuneError: peft knows no default target modules for the model type and
            ``delta.target_modules`` is not set.
    """
    import peft
    from peft.utils import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF,
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TM,
    )

    mtype = getattr(getattr(model, "config", None), "model_type", None)
    targets = cfg.target_modules if cfg.target_modules not in (None, "all-linear") else TM.get(mtype)
    if targets is None:
        raise DeltatuneError(f"ia3 has no default target modules for model type '{mtype}'; set delta.target_modules")
    ff = FF.get(mtype, []) if targets == TM.get(mtype) else []
    return peft.IA3Config(task_type=task_type, target_modules=targets, feedforward_modules=ff, modules_to_save=modules_to_save)


def build(
    model: torch.nn.Module, cfg: DeltaConfig, task_type: str | None = None, modules_to_save: list[str] | None = None
) -> torch.nn.Module:
    """Wrap ``model`` with an IA3 adapter; returns the ``peft.PeftModel``.

    Raises:
        DeltatuneError: no target modules (see :func:`ia3_config`), or peft cannot apply it.
    """
    return wrap(model, ia3_config(cfg, task_type, model, modules_to_save), "ia3")
