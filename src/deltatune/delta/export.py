"""What an export writes: merged weights, or a standard PEFT adapter naming its base portably.

The run-level step (refusals, loading the run, the atomic folder swap) is
:func:`deltatune.serving.export.export_run`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deltatune.models.loading import quiet_transformers
from deltatune.models.resolve import portable_reference


def write_export(model, tokenizer, folder: Path, *, fmt: str, merge: bool, meta: dict[str, Any] | None) -> None:
    """Save a trained model into the (empty, existing) ``folder`` as a standalone export.

    Args:
        model: the run's model as loaded (a ``PeftModel`` for adapter runs).
        tokenizer: saved next to it.
        fmt: ``"adapter"``: the PEFT adapter only, its base named portably
            (:func:`deltatune.models.resolve.portable_reference` of ``meta["base"]``);
            ``"model"``: the full model in Hugging Face format.
        merge: with ``fmt="model"``, fold the adapters into the base weights first (peft
            ``merge_and_unload``); for an adapter run only.
        meta: the run's delta metadata (:func:`deltatune.delta.storage.read_meta`); needed for
            ``fmt="adapter"``.

    Raises:
        OSError: the folder cannot be written (the caller writes to a temporary folder).
    """
    with quiet_transformers():
        if fmt == "adapter":
            model.save_pretrained(folder)
            base = meta["base"]
            _set_adapter_base(folder, portable_reference(base["name_or_path"], base.get("resolved") or base["name_or_path"]))
        else:
            (model.merge_and_unload() if merge else model).save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def _set_adapter_base(folder: Path, base: str) -> None:
    """Write ``base`` as ``base_model_name_or_path`` of the adapter in ``folder``, and as the
    ``base_model`` (and ``base_model:<relation>:<base>`` tags) of the model card peft wrote
    next to it (README.md), if any."""
    cfg_path = folder / "adapter_config.json"
    adapter_cfg = json.loads(cfg_path.read_text())
    adapter_cfg["base_model_name_or_path"] = base
    cfg_path.write_text(json.dumps(adapter_cfg, indent=2))
    card_path = folder / "README.md"
    if card_path.is_file():
        from huggingface_hub import ModelCard

        card = ModelCard.load(card_path)
        card.data.base_model = base
        card.data.tags = [_retarget_tag(t, base) for t in card.data.tags or []]
        card.save(card_path)


def _retarget_tag(tag: str, base: str) -> str:
    """``base_model:adapter:/abs/path`` -> ``base_model:adapter:<base>``; other tags unchanged."""
    parts = tag.split(":", 2)
    return f"{parts[0]}:{parts[1]}:{base}" if len(parts) == 3 and parts[0] == "base_model" else tag
