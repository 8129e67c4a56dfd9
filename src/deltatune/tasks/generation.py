"""Batched generation with left padding (decoders).

Prompts are sorted by length so that each batch pads little, left-padded so that every
prompt ends at the same position (the next token is generated right after the prompt's last
real token), generated with ``model.generate`` and returned in the input order, decoded
without the prompt and without special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deltatune.tasks.collate import pad_batch


@dataclass
class GenerationSettings:
    """``max_new_tokens`` (tokens), ``num_beams`` (1 = greedy or sampling), ``do_sample``,
    ``temperature`` and ``top_p`` (nucleus sampling, Holtzman et al. 2020), ``batch_size``."""

    max_new_tokens: int = 64
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 16


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[list[int]],
    settings: GenerationSettings,
    device: torch.device | str = "cpu",
) -> tuple[list[str], list[bool]]:
    """Generate a continuation for each prompt (token id lists).

    Returns:
        (decoded texts in input order, whether each generation ended with EOS within
        ``max_new_tokens``).
    """
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    ended: list[bool] = [False] * len(prompts)
    for start in range(0, len(order), settings.batch_size):
        idx = order[start : start + settings.batch_size]
        feats = [{"input_ids": prompts[i], "attention_mask": [1] * len(prompts[i])} for i in idx]
        batch = {k: v.to(device) for k, v in pad_batch(feats, {"input_ids": pad_id, "attention_mask": 0}, side="left").items()}
        kwargs = dict(
            max_new_tokens=settings.max_new_tokens,
            num_beams=settings.num_beams,
            do_sample=settings.do_sample,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        if settings.do_sample:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        seqs = model.generate(**batch, **kwargs)
        new = seqs[:, batch["input_ids"].shape[1] :]
        for j, i in enumerate(idx):
            out[i] = tokenizer.decode(new[j], skip_special_tokens=True).strip()
            ended[i] = bool((new[j] == tokenizer.eos_token_id).any())
    if was_training:
        model.train()
    return out, ended
