"""Next-token cross-entropy for decoder models, with a memory-lean chunked path for large vocabularies.

The plain path runs the model and takes the cross-entropy of its logits: it materializes the
logits of every position, B x T x V, and their fp32 copy and gradient (Qwen2.5's vocabulary of
151,936 at batch 16 x 1,024 tokens: 9.3 GiB per fp32 copy).

The chunked path computes the output projection (LM head) and the cross-entropy in chunks of
``chunk_size`` *trained* tokens, each under activation checkpointing, so only one chunk's
logits exist at a time, in the forward pass and again (recomputed) in the backward pass. It is
the chunked cross-entropy of torchtune's ``CEWithChunkedOutputLoss`` and Liger-Kernel's fused
linear cross-entropy, after Wijmans et al. 2024, "Cut Your Losses in Large-Vocabulary Language
Models" (arXiv:2411.09009). Positions whose label is -100 (prompt tokens in SFT) get no logits
at all, which also saves their LM-head compute. The cost is one extra LM-head forward per
trained token (the recomputation), paid only when a batch has more than ``chunk_size`` trained
tokens: a batch that fits in one chunk is computed directly.

The hidden states are taken at the LM head's input, through the model's own forward (so any
wrapper -- peft, DDP, accelerate -- and any scaling the model applies before the head are
kept): a forward pre-hook on ``model.get_output_embeddings()`` stores its input and hands the
head an empty slice instead, so the model's own full-vocabulary logits are never computed.
This is exact only for models whose logits are ``lm_head(hidden)`` with nothing applied
afterwards (no soft-capping or logit scaling): :data:`CHUNKABLE_MODEL_TYPES` lists them; other
models, and prompt-learning adapters (prefix tuning), take the plain path.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100

# model types whose causal-LM forward is exactly ``logits = lm_head(hidden_states)``
CHUNKABLE_MODEL_TYPES = frozenset(
    {
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi", "phi3", "gemma",
        "gpt2", "gpt_neox", "gptj", "olmo", "olmo2", "stablelm", "starcoder2", "smollm3", "opt", "bloom", "falcon",
    }
)
# vocabulary size from which the automatic setting (train.loss_chunk_size unset) chunks the loss
AUTO_CHUNK_MIN_VOCAB = 32_000
AUTO_CHUNK_TOKENS = 1024


def resolve_chunk_size(setting: Optional[int], vocab_size: int) -> int:
    """Tokens per loss chunk for ``train.loss_chunk_size`` (0 = plain path).

    ``None`` (automatic): :data:`AUTO_CHUNK_TOKENS` when ``vocab_size`` >= :data:`AUTO_CHUNK_MIN_VOCAB`,
    else 0; ``0``: never chunk; ``n > 0``: chunks of ``n`` tokens.
    """
    if setting is None:
        return AUTO_CHUNK_TOKENS if vocab_size >= AUTO_CHUNK_MIN_VOCAB else 0
    return int(setting)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP/DataParallel and ``torch.compile`` wrappers (a peft model stays a peft model)."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def output_head(model: torch.nn.Module) -> Optional[torch.nn.Module]:
    """The LM head to chunk, or ``None`` when the chunked path would not be exact (see module doc)."""
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    if getattr(config, "model_type", None) not in CHUNKABLE_MODEL_TYPES:
        return None
    active = getattr(inner, "active_peft_config", None)
    if active is not None and getattr(active, "is_prompt_learning", False):
        return None
    get = getattr(inner, "get_output_embeddings", None)
    return get() if get is not None else None


def head_inputs(model: torch.nn.Module, head: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run ``model(**inputs)`` and return the hidden states the LM head receives, (B, T, H).

    The head itself is given an empty slice, so the full logits are not computed.
    """
    stash: dict[str, torch.Tensor] = {}

    def take(module, args):
        stash["hidden"] = args[0]
        return (args[0][..., :0, :],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(take)
    try:
        model(**inputs, use_cache=False)
    finally:
        handle.remove()
    return stash["hidden"]


def _chunk_losses(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def chunked_cross_entropy(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Cross-entropy of ``head(hidden)`` against ``targets``, ``chunk_size`` rows at a time.

    Args:
        head: the output projection (hidden size H -> vocabulary V).
        hidden: (N, H) hidden states of the trained positions.
        targets: (N,) int64 target ids (no -100).
        chunk_size: rows per chunk; each chunk's logits are recomputed in the backward pass
            (activation checkpointing) when gradients are enabled. With at most ``chunk_size``
            rows there is one chunk, computed without checkpointing (nothing to save by it).

    Returns:
        (N,) fp32 per-token losses (natural log).
    """
    fn = partial(_chunk_losses, head)
    if hidden.shape[0] <= chunk_size:
        return fn(hidden, targets)
    parts = []
    for s in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[s : s + chunk_size], targets[s : s + chunk_size]
        parts.append(checkpoint(fn, h, t, use_reentrant=False) if torch.is_grad_enabled() else fn(h, t))
    return torch.cat(parts)


def next_token_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor], chunk_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token cross-entropy and the trained-token mask.

    Args:
        model: a causal LM (``AutoModelForCausalLM``, possibly peft-/DDP-wrapped).
        batch: ``input_ids``, ``labels`` (-100 = not trained) and, as present,
            ``attention_mask`` (padded batches) or ``position_ids`` (packed batches), all (B, T).
        chunk_size: tokens per LM-head chunk; 0 runs the plain path. Models the chunked path
            cannot serve exactly (see :func:`output_head`) run the plain path whatever the value.

    Returns:
        (losses, mask): (B, T-1) fp32 cross-entropy of predicting token t+1 at position t, zero
        where not trained; (B, T-1) bool mask of trained targets.
    """
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    head = output_head(model) if chunk_size > 0 else None
    if head is None:
        logits = model(**inputs, use_cache=False).logits
        ce = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1).clamp(min=0),
            reduction="none",
        ).view(targets.shape)
        return ce * mask, mask
    hidden = head_inputs(model, head, inputs)
    per_token = chunked_cross_entropy(head, hidden[:, :-1][mask], targets[mask], chunk_size)
    ce = torch.zeros(targets.shape, dtype=torch.float32, device=per_token.device).masked_scatter(mask, per_token)
    return ce, mask


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy of ``logits`` (B, T, V) against ``labels`` (B, T, int64, -100 = not
    trained), in fp32: ``(ce * mask, mask)``, both (B, T); ``ce`` is 0 where the label is -100."""
    mask = labels != IGNORE_INDEX
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1).clamp(min=0), reduction="none")
    return ce.view(labels.shape) * mask, mask


class LabelTokenLoss:
    """Mixin for tasks trained on label tokens (decoder-only, encoder-decoder and speech tasks): the
    loss, target count, evaluation outputs, loss metrics and per-row losses, from the class's
    ``token_losses(model, batch) -> (ce (B, T), mask (B, T))``.

    Metrics: mean nats per label token, its perplexity and the token count
    (:func:`deltatune.tasks.prompting.token_loss_metrics`).
    """

    def token_losses(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - defined by the task
        raise NotImplementedError

    def loss(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(summed cross-entropy, number of label tokens)`` of the batch."""
        ce, mask = self.token_losses(model, batch)
        return ce.sum(), mask.sum()

    def num_targets(self, batch) -> int:
        """Label tokens in the batch (labels not -100)."""
        return int((batch["labels"] != IGNORE_INDEX).sum())

    @torch.no_grad()
    def eval_step(self, model, batch):
        """Per example: ``loss_sum`` (float64, nats summed over its label tokens) and ``tokens``."""
        ce, mask = self.token_losses(model, batch)
        return {"loss_sum": ce.sum(-1).double().cpu().numpy(), "tokens": mask.sum(-1).cpu().numpy()}

    def compute_metrics(self, outputs, features=None):
        """Loss (mean nats per label token), perplexity and the label-token count."""
        from deltatune.tasks.prompting import token_loss_metrics

        return token_loss_metrics(outputs)

    def decode(self, outputs, features=None):
        """Per row: mean token loss (nats) and label-token count (generated text, where the task has
        any, comes from its ``generate_rows``)."""
        return [{"loss": float(s / max(t, 1)), "tokens": int(t)} for s, t in zip(outputs["loss_sum"], outputs["tokens"])]
