"""Choose what is trained: every weight, the top layers, or a PEFT adapter.

Methods (config ``delta.method``):
- ``full``: every parameter is trained.
- ``freeze``: embeddings and all but the top ``delta.train_layers`` transformer layers are
  frozen; the top layers, the pooler/final norm and the task head are trained.
- ``lora`` (Hu et al. 2021, arXiv:2106.09685), ``dora`` (Liu et al. 2024, arXiv:2402.09353),
  ``ia3`` (Liu et al. 2022, arXiv:2205.05638), ``prefix`` (Li & Liang 2021, arXiv:2101.00190):
  built with the ``peft`` library. The task head is always trained and saved with the adapter
  (peft's ``modules_to_save``).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import torch

from deltatune.config import DeltaConfig
from deltatune.errors import DeltatuneError

PEFT_METHODS = ("lora", "dora", "ia3", "prefix")


def transformer_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of transformer blocks: the longest ``ModuleList`` of identical block types.

    Raises:
        DeltatuneError: the model has no such list.
    """
    best = None
    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0 and len({type(m) for m in mod}) == 1:
            if best is None or len(mod) > len(best):
                best = mod
    if best is None:
        raise DeltatuneError(f"{type(model).__name__}: found no stack of transformer layers to freeze; use delta.method full")
    return best


def freeze_lower_layers(model: torch.nn.Module, train_layers: int) -> None:
    """Freeze embeddings and every transformer layer except the top ``train_layers``.

    Parameters outside the layer stack and the embeddings (pooler, final norm, task head) stay
    trainable.
    """
    layers = transformer_layers(model)
    if train_layers > len(layers):
        raise DeltatuneError(f"delta.train_layers is {train_layers} but the model has {len(layers)} layers")
    frozen = {id(p) for layer in list(layers)[: len(layers) - train_layers] for p in layer.parameters()}
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    base = getattr(model, "base_model", model)
    emb_module = getattr(base, "embeddings", None)
    for mod in (embeddings, emb_module):
        if mod is not None:
            frozen.update(id(p) for p in mod.parameters())
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)


def _target_modules(cfg: DeltaConfig) -> Any:
    if cfg.target_modules in (None, "all-linear", ["all-linear"]):
        return "all-linear"
    return cfg.target_modules


def peft_config(cfg: DeltaConfig, task_type: str | None, model: torch.nn.Module, modules_to_save: list[str] | None = None):
    """The ``peft`` config object for ``cfg.method``.

    Args:
        task_type: peft's ``TaskType`` name for the task (SEQ_CLS, TOKEN_CLS, CAUSAL_LM, ...), or
            ``None`` for a task peft has no type for (masked-lm): peft's generic model.
        modules_to_save: head modules trained and saved in full with the adapter, for tasks
            whose head peft's task type does not know (``None``: peft's default for the type).
    """
    import peft

    if cfg.method in ("lora", "dora"):
        return peft.LoraConfig(
            task_type=task_type,
            modules_to_save=modules_to_save,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=_target_modules(cfg),
            use_dora=cfg.method == "dora",
        )
    if cfg.method == "ia3":
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
    if cfg.method == "prefix":
        return peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=cfg.num_virtual_tokens)
    raise ValueError(cfg.method)


@contextlib.contextmanager
def peft_checkpointing_probe_quiet() -> Iterator[None]:
    """Inside the block, ignore the one ``FutureWarning`` transformers 5 raises when peft's
    ``PeftModel`` constructor reads the deprecated ``model.is_gradient_checkpointing`` (peft has
    no argument to avoid it; deltatune itself calls ``activation_checkpointing_enable``). Other
    warnings are untouched."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def apply_delta(
    model: torch.nn.Module, cfg: DeltaConfig, task_type: str | None, modules_to_save: list[str] | None = None
) -> torch.nn.Module:
    """Set up ``model`` for ``cfg.method``; returns the (possibly peft-wrapped) model.

    ``task_type`` and ``modules_to_save`` are passed to :func:`peft_config`.

    Raises:
        DeltatuneError: the method does not fit the model (no layers to freeze, no IA3 targets).
    """
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if cfg.method == "freeze":
        freeze_lower_layers(model, cfg.train_layers)
        return model
    import peft

    if cfg.method == "prefix" and task_type != "CAUSAL_LM":
        import inspect

        base = getattr(model, "base_model", model)
        if not any("past_key_values" in inspect.signature(m.forward).parameters for m in (model, base)):
            raise DeltatuneError(
                f"delta.method prefix: peft {peft.__version__} runs prefix tuning for this task only on models whose "
                f"forward takes past_key_values, and {type(model).__name__} does not (transformers renamed it to "
                "'cache'); use lora, dora or ia3"
            )
    try:
        with peft_checkpointing_probe_quiet():
            return peft.get_peft_model(model, peft_config(cfg, task_type, model, modules_to_save))
    except DeltatuneError:
        raise
    except (ValueError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeltatuneError(f"delta.method {cfg.method} cannot be applied to this model: {msg}") from None


def parameter_summary(model: torch.nn.Module) -> dict[str, float]:
    """Counts and fp32-equivalent memory of trainable and all parameters.

    Returns:
        ``trainable``, ``total`` (counts) and ``trainable_mib``, ``total_mib`` (MiB at each
        parameter's dtype), plus ``trainable_share`` in [0, 1].
    """
    trainable = total = t_bytes = a_bytes = 0
    for p in model.parameters():
        n = p.numel()
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
