"""Dynamic padding: pad each batch only to its own longest sequence."""

from __future__ import annotations

from typing import Any, Sequence

import torch


def pad_batch(
    features: Sequence[dict[str, Any]],
    pad_values: dict[str, int],
    side: str = "right",
) -> dict[str, torch.Tensor]:
    """Stack variable-length int sequences into padded ``int64`` tensors of shape (B, T_max).

    Args:
        features: examples; every key in ``pad_values`` holds a list of ints.
        pad_values: value to pad each key with (e.g. ``{"input_ids": pad_id,
            "attention_mask": 0, "labels": -100}``). Keys not present in the features are skipped.
        side: ``"right"`` (training) or ``"left"`` (batched generation).

    Returns:
        dict key -> LongTensor (B, T_max) where T_max is the longest sequence in the batch.
    """
    out: dict[str, torch.Tensor] = {}
    for key, pad in pad_values.items():
        if key not in features[0]:
            continue
        seqs = [f[key] for f in features]
        t_max = max(len(s) for s in seqs)
        arr = torch.full((len(seqs), t_max), pad, dtype=torch.long)
        for i, s in enumerate(seqs):
            if not s:
                continue
            if side == "right":
                arr[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            else:
                arr[i, t_max - len(s) :] = torch.as_tensor(s, dtype=torch.long)
        out[key] = arr
    return out


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without ``labels``: what the model's forward takes when the task computes the loss itself."""
    return {k: v for k, v in batch.items() if k != "labels"}
