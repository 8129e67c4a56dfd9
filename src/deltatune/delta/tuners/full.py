"""``full``: every parameter is trained."""

from __future__ import annotations

import torch

from deltatune.config import DeltaConfig


def build(
    model: torch.nn.Module, cfg: DeltaConfig, task_type: str | None = None, modules_to_save: list[str] | None = None
) -> torch.nn.Module:
    """Make every parameter of ``model`` trainable; returns ``model`` itself."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model
