"""``prefix`` (Li & Liang 2021, arXiv:2101.00190): peft prefix tuning, ``delta.num_virtual_tokens``
trained key/value vectors prepended at every layer. Decoders only: outside causal LM, peft needs a
forward that takes ``past_key_values``, which transformers 5 models no longer have."""

from __future__ import annotations

import inspect

import torch

from deltatune.config import DeltaConfig
from deltatune.delta.registry import METHODS
from deltatune.delta.tuners._peft import wrap
from deltatune.errors import DeltatuneError


def build(
    model: torch.nn.Module, cfg: DeltaConfig, task_type: str | None = None, modules_to_save: list[str] | None = None
) -> torch.nn.Module:
    """Wrap ``model`` with a prefix-tuning adapter; returns the ``peft.PeftModel``.

    Raises:
        DeltatuneError: the task is not causal LM and the model's forward takes no
            ``past_key_values`` (the message names the methods to use instead), or peft
            cannot apply it.
    """
    import peft

    if task_type != "CAUSAL_LM":
        base = getattr(model, "base_model", model)
        if not any("past_key_values" in inspect.signature(m.forward).parameters for m in (model, base)):
            others = [n for n, m in METHODS.items() if m.peft and n != "prefix"]
            raise DeltatuneError(
                f"delta.method prefix: peft {peft.__version__} runs prefix tuning for this task only on models whose "
                f"forward takes past_key_values, and {type(model).__name__} does not (transformers renamed it to "
                f"'cache'); use {', '.join(others[:-1])} or {others[-1]}"
            )
    return wrap(model, peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=cfg.num_virtual_tokens), "prefix")
