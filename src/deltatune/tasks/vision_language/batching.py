"""Batches of vision-language features, and batched generation.

Token sequences are padded as every decoder task pads them (:func:`deltatune.tasks.collate.pad_batch`;
right for training, left for generation). The images of a batch are decoded from their files and
given to the model's own processor in one call, the images of each row as one list
(``processor(images=[[row 1's images], [row 2's images], ...])``), so that the tensors are laid out
the way the model's forward reads them, whatever the architecture: flattened patches concatenated
along the first axis with their ``image_grid_thw`` (Qwen2-VL), one ``(images, 3, H, W)`` stack
(LLaVA), or ``(rows, images, 3, H, W)`` padded with all-zero images plus ``pixel_attention_mask``
(Idefics3/SmolVLM, whose forward drops all-zero images). Rows without images are left out of that
call (the models place image features on the image tokens in order, over the whole batch); a batch
without images has no image tensors at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from deltatune.data.images import load_image
from deltatune.tasks.chat_format import IGNORE_INDEX
from deltatune.tasks.collate import pad_batch
from deltatune.tasks.generation import GenerationSettings, eos_token_ids


def pad_values(features: Sequence[dict[str, Any]], pad_id: int) -> dict[str, int]:
    """The padding value of every per-token key of ``features``: ``pad_id`` for ``input_ids``, -100 for
    ``labels``, 0 for the rest (``attention_mask``, ``mm_token_type_ids``, ...)."""
    keys = [k for k, v in features[0].items() if isinstance(v, list) and k != "images"]
    return {k: pad_id if k == "input_ids" else IGNORE_INDEX if k == "labels" else 0 for k in keys}


def image_tensors(processor, files: Sequence[Sequence[str]]) -> dict[str, torch.Tensor]:
    """The processor's image inputs for the image files of each row (see the module doc).

    Args:
        files: per row, its image paths in order (may be empty).

    Returns:
        ``pixel_values`` float32 and the processor's other image outputs (``image_grid_thw``,
        ``pixel_attention_mask``, ...), or ``{}`` when no row has an image.

    Raises:
        DeltatuneError: an image file that can no longer be read, naming it (:func:`deltatune.data.images.load_image`).
    """
    nested = [[load_image(Path(f), f) for f in row] for row in files if row]
    if not nested:
        return {}
    out = processor(images=nested, return_tensors="pt")
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items() if isinstance(v, torch.Tensor)}


def collate(processor, features: Sequence[dict[str, Any]], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Pad the per-token lists of ``features`` (int64, (B, T)) and add the image tensors of their
    ``images`` files (:func:`image_tensors`)."""
    batch = pad_batch(features, pad_values(features, pad_id), side=side)
    batch.update(image_tensors(processor, [f.get("images", []) for f in features]))
    return batch


@torch.no_grad()
def generate(
    model: torch.nn.Module, processor, prompts: list[dict[str, Any]], settings: GenerationSettings, pad_id: int,
    device: torch.device | str = "cpu",
) -> tuple[list[str], list[bool]]:
    """Generate an answer for each prompt feature (per-token lists and ``images`` paths), left-padded
    in batches of ``settings.batch_size``, longest first.

    Returns:
        (decoded texts in input order without the prompt and special tokens, whether each ended
        with an end token within ``settings.max_new_tokens``).
    """
    tokenizer = processor.tokenizer
    was_training = model.training
    model.eval()
    eos = eos_token_ids(model, tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]["input_ids"]))
    out, ended = [""] * len(prompts), [False] * len(prompts)
    for start in range(0, len(order), settings.batch_size):
        idx = order[start : start + settings.batch_size]
        batch = {k: v.to(device) for k, v in collate(processor, [prompts[i] for i in idx], pad_id, side="left").items()}
        kwargs = dict(max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams, do_sample=settings.do_sample,
                      pad_token_id=pad_id, eos_token_id=eos or None)
        if settings.do_sample:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        seqs = model.generate(**batch, **kwargs)
        new = seqs[:, batch["input_ids"].shape[1] :]
        for j, i in enumerate(idx):
            out[i] = tokenizer.decode(new[j], skip_special_tokens=True).strip()
            ended[i] = bool(torch.isin(new[j], torch.tensor(eos, device=new.device)).any()) if eos else False
    if was_training:
        model.train()
    return out, ended
