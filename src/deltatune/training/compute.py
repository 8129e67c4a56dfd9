"""Compute options of the training loop: activation checkpointing and ``torch.compile``.

- ``train.gradient_checkpointing``: the model's own (transformers) activation checkpointing of
  each transformer block, non-reentrant (``torch.utils.checkpoint`` with
  ``use_reentrant=False``, which needs no input that requires grad and works with frozen
  embeddings); with a peft adapter the input embeddings are also made to require grad
  (``enable_input_require_grads``), as peft recommends. Stores one hidden state per block
  instead of all its activations (Chen et al. 2016, "Training Deep Nets with Sublinear Memory
  Cost"), at the cost of one more forward pass of every block.
- ``train.torch_compile``: each transformer block is compiled in place (``nn.Module.compile``,
  as torchtune does), not the whole model: parameter names and ``state_dict`` keys stay the
  same (saving, peft and checkpoints are unaffected), forward hooks outside the blocks (the
  chunked loss) cause no recompilation, and the model's Python glue (mask construction,
  packed-sequence detection) stays eager.
"""

from __future__ import annotations

import torch

from deltatune.config import TrainConfig
from deltatune.errors import DeltatuneError

# torch.compile backend; tests use "aot_eager" (same graph capture, no code generation: fast)
COMPILE_BACKEND = "inductor"


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The model's stack of transformer blocks: the ``ModuleList`` of same-type modules holding
    the most parameters (``model.layers``, ``encoder.layer``, ``h``...), or ``None``."""
    best, best_n = None, 0
    for m in model.modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) > 1 and all(type(c) is type(m[0]) for c in m):
            n = sum(p.numel() for p in m.parameters())
            if n > best_n:
                best, best_n = m, n
    return best


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Turn on the model's non-reentrant activation checkpointing (works through a peft wrapper).

    Raises:
        DeltatuneError: the model class does not support gradient checkpointing.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise DeltatuneError(
            f"{type(model).__name__} does not support gradient checkpointing; set train.gradient_checkpointing false"
        )
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name is deprecated
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "peft_config"):
        model.enable_input_require_grads()


def compile_blocks(model: torch.nn.Module) -> int:
    """Compile each transformer block in place with ``torch.compile``; returns how many.

    Falls back to compiling the whole model in place when no block stack is found.
    """
    blocks = transformer_blocks(model)
    if blocks is None:
        model.compile(backend=COMPILE_BACKEND)
        return 1
    for block in blocks:
        block.compile(backend=COMPILE_BACKEND)
    return len(blocks)


def apply_compute_options(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """Apply ``cfg.gradient_checkpointing`` and ``cfg.torch_compile`` to ``model`` (in place); returns it."""
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if cfg.torch_compile:
        compile_blocks(model)
    return model
