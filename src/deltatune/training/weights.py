"""Load weights saved with ``save_pretrained`` back into a live model (e.g. to restore the best model)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_model_weights(model: torch.nn.Module, folder: Path) -> None:
    """Copy the tensors of ``folder/model.safetensors`` (or its sharded index) into ``model``.

    Raises:
        FileNotFoundError: no safetensors weights in ``folder``.
        KeyError: a trainable parameter of ``model`` is not in the files.
    """
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors in {folder}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(folder / f)))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing:
        raise KeyError(f"{folder} lacks {len(missing)} trained parameters, e.g. {missing[0]}")
    own = model.state_dict()
    with torch.no_grad():
        for name, t in state.items():
            if name in own:
                own[name].copy_(t.to(own[name].device, own[name].dtype))
