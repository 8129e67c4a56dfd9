"""Batched completions for GRPO: ``G`` samples per prompt in one ``generate`` call, cut at their first EOS.

Prompts come left-padded (:meth:`deltatune.tasks.grpo.task.GRPOTask.collate`), so every prompt
ends at the same position and the completions start together; the model generates with its KV
cache, in eval mode and without gradients, and goes back to the mode it was in.
"""

from __future__ import annotations

from typing import Sequence

import torch

from deltatune.tasks.token_loss import unwrap


def completion_mask(ids: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """Which completion tokens count: everything through the first EOS (included), nothing after.

    Args:
        ids: (N, L) int64 generated token ids (after the prompt).
        eos_ids: the ids that end a generation; empty: every token counts.

    Returns:
        (N, L) bool mask.
    """
    if not len(eos_ids) or ids.shape[1] == 0:
        return torch.ones_like(ids, dtype=torch.bool)
    is_eos = torch.isin(ids, torch.tensor(list(eos_ids), device=ids.device))
    # EOS tokens strictly before each position: 0 through the first EOS
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return before == 0


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_generations: int,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    do_sample: bool,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``num_generations`` completions for each of B left-padded prompts.

    Args:
        model: a causal LM (peft-, DDP- or compile-wrapped: :func:`unwrap` is used).
        input_ids, attention_mask: (B, P) int64, left-padded prompts.
        num_generations: completions per prompt (G); completion ``i`` belongs to prompt ``i // G``.
        max_new_tokens: tokens generated at most.
        eos_ids, pad_id: end and padding ids.
        do_sample: sample (``temperature``, nucleus ``top_p``; no top-k, no repetition penalty,
            whatever the model's generation config says) or decode greedily.

    Returns:
        ``(completion_ids, mask)``: (B*G, L) int64 ids generated after the prompt (L <=
        ``max_new_tokens``; padded after an early end) and the (B*G, L) bool mask of the tokens
        that count (:func:`completion_mask`).
    """
    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    ids = input_ids.repeat_interleave(num_generations, dim=0)
    mask = attention_mask.repeat_interleave(num_generations, dim=0)
    kwargs = dict(
        max_new_tokens=max_new_tokens, num_beams=1, do_sample=do_sample, pad_token_id=pad_id,
        eos_token_id=list(eos_ids) or None, repetition_penalty=1.0, use_cache=True,
    )
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    try:
        seqs = inner.generate(input_ids=ids, attention_mask=mask, **kwargs)
    finally:
        inner.train(was_training)
    completion = seqs[:, ids.shape[1] :]
    return completion, completion_mask(completion, eos_ids)
