"""An estimate of training memory, printed before training starts.

Parts (bytes, per process):

- parameters: every parameter's ``numel x element_size`` (trainable and frozen);
- gradients: the trainable parameters' ``numel x element_size``;
- optimizer state: AdamW keeps two moments per trainable parameter in the parameter's dtype
  plus a 4-byte step count per tensor; SGD with momentum one buffer (none without momentum);
  Adafactor (Shazeer & Stern 2018, no first moment as configured here) a factored second
  moment for matrices, one row and one column vector (``prod(shape[:-1]) + prod(shape[:-2]) *
  shape[-1]`` entries), and a full one for vectors, in fp32, plus a 4-byte RMS per tensor;
- activations saved for the backward pass at ``batch x seq_len`` tokens, per transformer layer
  after Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models" (arXiv:2205.05198), eq. 1 without parallelism: ``s*b*h*(34 + 5*a*s/h)`` bytes with
  16-bit activations, where 34 = 11 (attention) + 19 (MLP with a 4h intermediate) + 4 (two
  layer norms). Adjusted here: the MLP's 19 scales with the intermediate size ``i`` as
  ``19 * i / (4h)``, times 1.5 for gated MLPs (SwiGLU: gate, up and their product);
  the ``5*a*s/h`` term (attention scores, softmax, dropout mask) is dropped for fused attention
  (``sdpa``, flash), which keeps O(s) statistics instead; fp32 training (no mixed precision)
  doubles every term; with activation checkpointing each layer keeps only its input
  (``2*s*b*h`` bytes in 16-bit) and one layer's full activations exist during recomputation;
  outside the layers, ``4*s*b*h`` bytes (16-bit) for the embedding output and the final norm;
- logits: the fp32 logits ``b x s x V`` and their gradient (``8 * b*s*V`` bytes) for language
  models, or one chunk's (``8 * chunk * V``) with the chunked loss. Other heads' outputs are
  negligible and not counted.

Sharded training (``distributed.strategy: fsdp`` over ``P`` processes, FSDP2/ZeRO-3, Rajbhandari
et al. 2020, "ZeRO", arXiv:1910.02054): parameters, gradients and optimizer state are split
over the processes, each part ``ceil(dim0 / P) x rest`` of every tensor (FSDP2 shards dim 0,
padding the last shard), and the parameters of the blocks being computed are gathered whole:
two blocks' worth (the one running and the one prefetched), counted as ``gathered``.
Activations and logits are per process as without sharding. Under DDP every process holds
everything: the figures are per process either way.

The activation figure is an upper bound for dynamic padding (every batch at the full
``data.max_seq_length``) and an estimate: allocator caching, temporary buffers and the
framework itself come on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import PretrainedConfig

GiB = 2**30


@dataclass
class MemoryEstimate:
    """Estimated training memory by part, in bytes (``activations``/``logits`` ``None`` when unknown)."""

    parameters: int
    gradients: int
    optimizer: int
    activations: Optional[int]
    logits: int
    gathered: int = 0  # sharded training: the whole parameters of the blocks in flight
    shards: int = 1  # processes the parameters, gradients and optimizer state are split over

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + (self.activations or 0) + self.logits + self.gathered

    def format(self) -> str:
        """One line: each part and the total in GiB."""
        def g(x: Optional[int]) -> str:
            return "?" if x is None else f"{x / GiB:.2f}"

        if self.shards > 1:
            return (
                f"memory estimate per process {g(self.total)} GiB (fsdp over {self.shards} processes) = parameter shards "
                f"{g(self.parameters)} + gathered blocks {g(self.gathered)} + gradient shards {g(self.gradients)} + optimizer shards "
                f"{g(self.optimizer)} + activations {g(self.activations)} + logits {g(self.logits)}"
            )
        return (
            f"memory estimate {g(self.total)} GiB = parameters {g(self.parameters)} + gradients {g(self.gradients)} "
            f"+ optimizer {g(self.optimizer)} + activations {g(self.activations)} + logits {g(self.logits)}"
        )


def shard_numel(p: torch.Tensor, shards: int = 1) -> int:
    """Elements of one process's shard of ``p`` split on dimension 0 over ``shards`` processes
    (``ceil(dim0 / shards) x rest``, FSDP2's padded shard); ``p.numel()`` for 1."""
    shape = getattr(p, "ds_shape", None) or p.shape  # ds_shape: a DeepSpeed ZeRO-3 parameter's whole shape (its data is a shard)
    if shards <= 1 or len(shape) == 0:
        return math.prod(shape)
    return math.ceil(shape[0] / shards) * math.prod(shape[1:])


def optimizer_state_bytes(params: list[torch.nn.Parameter], optimizer: str, momentum: float = 0.9, shards: int = 1) -> int:
    """Bytes of optimizer state for the trainable ``params`` (see module doc), per process when
    the state is sharded over ``shards`` processes (FSDP)."""
    total = 0
    for p in params:
        n = shard_numel(p, shards)
        if optimizer == "adamw":
            total += 2 * n * p.element_size() + 4
        elif optimizer == "sgd":
            total += n * p.element_size() if momentum > 0 else 0
        elif optimizer == "adafactor":
            shape = (math.ceil(p.shape[0] / shards), *p.shape[1:]) if shards > 1 and p.ndim else p.shape
            if p.ndim >= 2:
                total += 4 * (math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]) + 4
            else:
                total += 4 * n + 4
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}")
    return total


def _config_value(config, *names: str) -> Optional[int]:
    """The first positive int of ``names`` on ``config``, else on its text config (image-text models
    such as Idefics3 or LLaVA keep ``vocab_size``/``hidden_size`` in ``config.get_text_config()``)."""
    if config is None:
        return None
    text_config = config.get_text_config() if isinstance(config, PretrainedConfig) else None
    for source in (config, text_config):
        for n in names:
            v = getattr(source, n, None)
            if isinstance(v, int) and v > 0:
                return v
    return None


def activation_bytes(
    config,
    batch_size: int,
    seq_len: int,
    bits16: bool,
    checkpointing: bool = False,
) -> Optional[int]:
    """Activation memory of the transformer layers (Korthikanti et al. 2022, adjusted; module doc).

    Args:
        config: a transformers model config (``hidden_size``/``n_embd``, ``num_hidden_layers``/
            ``n_layer``, ``num_attention_heads``/``n_head``, ``intermediate_size``/``n_inner``,
            ``hidden_act``, ``_attn_implementation``).
        batch_size, seq_len: tokens per forward pass = ``batch_size * seq_len``.
        bits16: activations in 16 bits (mixed precision); else fp32.
        checkpointing: activation checkpointing of every layer.

    Returns:
        bytes, or ``None`` when the config lacks the sizes.
    """
    h = _config_value(config, "hidden_size", "n_embd", "d_model")
    layers = _config_value(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _config_value(config, "num_attention_heads", "n_head", "num_heads")
    if h is None or layers is None or heads is None:
        return None
    inter = _config_value(config, "intermediate_size", "n_inner", "ffn_dim", "d_ff") or 4 * h
    act = str(getattr(config, "hidden_act", getattr(config, "activation_function", "")) or "")
    gated = act in ("silu", "swish", "swiglu", "geglu") or str(getattr(config, "model_type", "")).startswith("gemma")
    mlp = 19 * inter / (4 * h) * (1.5 if gated else 1.0)
    attn_impl = getattr(config, "_attn_implementation", None) or "eager"
    scores = 5 * heads * seq_len / h if attn_impl == "eager" else 0.0
    s, b = seq_len, batch_size
    per_layer = s * b * h * (11 + mlp + 4 + scores)
    outside = 4 * s * b * h  # the embedding output and the final norm's input
    if checkpointing:
        total = layers * 2 * s * b * h + per_layer + outside
    else:
        total = layers * per_layer + outside
    return int(total * (1 if bits16 else 2))


def logits_bytes(batch_size: int, seq_len: int, vocab_size: int, chunk_size: int = 0) -> int:
    """fp32 logits and their gradient: ``8 * tokens * V`` bytes, tokens = one chunk when chunked."""
    tokens = batch_size * seq_len
    if chunk_size:
        tokens = min(tokens, chunk_size)
    return 8 * tokens * vocab_size


def estimate_memory(
    model: torch.nn.Module,
    optimizer: str,
    batch_size: int,
    seq_len: int,
    bits16: bool,
    momentum: float = 0.9,
    checkpointing: bool = False,
    vocab_logits: bool = False,
    loss_chunk_size: int = 0,
    shards: int = 1,
) -> MemoryEstimate:
    """Estimate the training memory of ``model`` (see module doc for every part).

    Args:
        model: the model as trained (peft-wrapped or not); trainable = ``requires_grad``.
        optimizer: ``adamw``, ``sgd`` or ``adafactor``.
        batch_size: examples (or packed sequences) per forward pass.
        seq_len: tokens per example (``data.max_seq_length``).
        bits16: mixed precision (bf16/fp16) activations.
        momentum: SGD momentum (0: no state).
        checkpointing: activation checkpointing on.
        vocab_logits: a language-model head (count the B x T x V logits).
        loss_chunk_size: tokens per chunk of the chunked loss (0: full logits).
        shards: processes the parameters, gradients and optimizer state are sharded over (FSDP);
            1: whole on every process (one process, DDP).
    """
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    config = getattr(model, "config", None)
    vocab = _config_value(config, "vocab_size") or 0
    return MemoryEstimate(
        parameters=sum(shard_numel(p, shards) * p.element_size() for p in params),
        gradients=sum(shard_numel(p, shards) * p.element_size() for p in trainable),
        optimizer=optimizer_state_bytes(trainable, optimizer, momentum, shards),
        activations=activation_bytes(config, batch_size, seq_len, bits16, checkpointing) if config is not None else None,
        logits=logits_bytes(batch_size, seq_len, vocab, loss_chunk_size) if vocab_logits and vocab else 0,
        gathered=2 * _largest_block_bytes(model) if shards > 1 else 0,
        shards=shards,
    )


def _largest_block_bytes(model: torch.nn.Module) -> int:
    """Bytes of the largest transformer block's whole parameters (0 without a block stack)."""
    from deltatune.training.compute import transformer_blocks

    blocks = transformer_blocks(model)
    if blocks is None:
        return 0
    return max(sum(shard_numel(p) * p.element_size() for p in b.parameters()) for b in blocks)


def estimate_run_memory(
    model: torch.nn.Module,
    task,
    cfg,
    mixed_precision: str,
    batch_size: Optional[int] = None,
    seq_len: Optional[int] = None,
    shards: int = 1,
) -> MemoryEstimate:
    """:func:`estimate_memory` for a run: batch and length from ``cfg`` (a :class:`RunConfig`),
    logits counted for causal and masked language models, chunked as the loss will be.

    ``batch_size`` (examples per forward pass) and ``seq_len`` (tokens) override the config's
    ``train.per_device_train_batch_size`` and ``data.max_seq_length`` (the micro-batch planner
    asks for several sizes); ``per_device_train_batch_size: auto`` counts as the default 32.
    Each example counts as ``task.sequences_per_example`` sequences (a preference pair: 2).
    ``shards``: the number of processes of an FSDP run (1 otherwise; per-process figures).
    """
    from deltatune.tasks.token_loss import output_head, resolve_chunk_size

    tc = cfg.train
    causal = task.peft_task_type == "CAUSAL_LM"
    vocab_logits = task.vocab_logits
    chunk = 0
    if causal and output_head(model) is not None:
        chunk = resolve_chunk_size(tc.loss_chunk_size, _config_value(getattr(model, "config", None), "vocab_size") or 0)
    examples = batch_size or (tc.per_device_train_batch_size if isinstance(tc.per_device_train_batch_size, int) else 32)
    return estimate_memory(
        model,
        tc.optimizer,
        examples * task.sequences_per_example,
        seq_len or cfg.data.max_seq_length,
        bits16=mixed_precision in ("bf16", "fp16"),
        momentum=tc.momentum,
        checkpointing=tc.gradient_checkpointing,
        vocab_logits=vocab_logits,
        loss_chunk_size=chunk,
        shards=shards,
    )
