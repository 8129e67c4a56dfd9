"""Batched generation: left padding for decoders, right padding for encoder-decoders.

Prompts are sorted by length so that each batch pads little. For a decoder they are
left-padded so that every prompt ends at the same position (the next token is generated right
after the prompt's last real token); for an encoder-decoder (``config.is_encoder_decoder``)
the prompt is the encoder input, right-padded and masked, and the output is the decoder
sequence after its start token. Outputs are generated with ``model.generate``, returned in
the input order and decoded without the prompt and without special tokens.
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

    @classmethod
    def from_config(cls, eval_config) -> "GenerationSettings":
        """The settings of a run's ``eval`` config section (:class:`deltatune.config.EvalConfig`)."""
        e = eval_config
        return cls(e.max_new_tokens, e.num_beams, e.do_sample, e.temperature, e.top_p, e.generation_batch_size)


def eos_token_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    """The ids that end a generation: the tokenizer's EOS, else the model's generation config's.

    A BERT-style tokenizer has no EOS token; an encoder-decoder built on it ends with [SEP],
    which its (generation) config names.
    """
    if tokenizer.eos_token_id is not None:
        return [tokenizer.eos_token_id]
    for cfg in (getattr(model, "generation_config", None), model.config):
        eos = getattr(cfg, "eos_token_id", None)
        if eos is not None:
            return list(eos) if isinstance(eos, (list, tuple)) else [eos]
    return []


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
    enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
    eos = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else None)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    ended: list[bool] = [False] * len(prompts)
    for start in range(0, len(order), settings.batch_size):
        idx = order[start : start + settings.batch_size]
        feats = [{"input_ids": prompts[i], "attention_mask": [1] * len(prompts[i])} for i in idx]
        padded = pad_batch(feats, {"input_ids": pad_id, "attention_mask": 0}, side="right" if enc_dec else "left")
        batch = {k: v.to(device) for k, v in padded.items()}
        kwargs = dict(
            max_new_tokens=settings.max_new_tokens,
            num_beams=settings.num_beams,
            do_sample=settings.do_sample,
            pad_token_id=pad_id,
            eos_token_id=eos or None,
        )
        if settings.do_sample:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        seqs = model.generate(**batch, **kwargs)
        new = seqs[:, 1:] if enc_dec else seqs[:, batch["input_ids"].shape[1] :]  # after the decoder start / the prompt
        for j, i in enumerate(idx):
            out[i] = tokenizer.decode(new[j], skip_special_tokens=True).strip()
            ended[i] = bool(torch.isin(new[j], torch.tensor(eos, device=new.device)).any()) if eos else False
    if was_training:
        model.train()
    return out, ended
