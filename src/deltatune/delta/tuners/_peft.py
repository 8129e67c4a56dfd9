"""What the PEFT-adapter builders share: target modules, wrapping with ``peft``, its warning filter."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import torch

from deltatune.config import DeltaConfig
from deltatune.errors import DeltatuneError


def target_modules(cfg: DeltaConfig) -> Any:
    """``cfg.target_modules`` as peft takes it: ``"all-linear"`` or a list of module names."""
    if cfg.target_modules in (None, "all-linear", ["all-linear"]):
        return "all-linear"
    return cfg.target_modules


@contextlib.contextmanager
def peft_checkpointing_probe_quiet() -> Iterator[None]:
    """Inside the block, ignore the one ``FutureWarning`` transformers 5 raises when peft's
    ``PeftModel`` constructor reads the deprecated ``model.is_gradient_checkpointing`` (peft has
    no argument to avoid it; deltatune itself calls ``activation_checkpointing_enable``). Other
    warnings are untouched."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def wrap(model: torch.nn.Module, peft_cfg: Any, method: str) -> torch.nn.Module:
    """``peft.get_peft_model(model, peft_cfg)``, with peft's refusals as one-line errors.

    Raises:
        DeltatuneError: peft cannot apply ``method`` to this model (its first message line).
    """
    import peft

    try:
        with peft_checkpointing_probe_quiet():
            return peft.get_peft_model(model, peft_cfg)
    except (ValueError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeltatuneError(f"delta.method {method} cannot be applied to this model: {msg}") from None
