"""``freeze``: embeddings and all but the top ``delta.train_layers`` transformer layers are frozen;
the top layers, the pooler/final norm and the task head are trained."""

from __future__ import annotations

import torch

from deltatune.config import DeltaConfig
from deltatune.errors import DeltatuneError


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

    Raises:
        DeltatuneError: no layer stack, or ``train_layers`` exceeds the model's layers.
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


def build(
    model: torch.nn.Module, cfg: DeltaConfig, task_type: str | None = None, modules_to_save: list[str] | None = None
) -> torch.nn.Module:
    """Freeze all but the top ``cfg.train_layers`` layers (:func:`freeze_lower_layers`); returns ``model``."""
    freeze_lower_layers(model, cfg.train_layers)
    return model
