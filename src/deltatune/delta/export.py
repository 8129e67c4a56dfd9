"""What an export writes: merged weights, or a standard PEFT adapter naming its base portably.

An adapter of a run whose task head has a configuration (classification, token
classification, regression: label names, target standardization) also carries it in
``head_config.json`` (``adapter_config.json`` has no field for it, and a ``config.json`` would
make transformers take the folder for a full model): pass it when loading the base, and the
adapted model names its labels as the run did (the model card's "Task head" section shows how).

The run-level step (refusals, loading the run, the atomic folder swap) is
:func:`deltatune.serving.export.export_run`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deltatune.models.loading import quiet_transformers
from deltatune.models.resolve import portable_reference


def write_export(
    model, tokenizer, folder: Path, *, fmt: str, merge: bool, meta: dict[str, Any] | None,
    head: dict[str, Any] | None = None, head_class: str | None = None,
) -> None:
    """Save a trained model into the (empty, existing) ``folder`` as a standalone export.

    An adapter whose task has a head configuration (``head``: label names, ...) also gets
    ``head_config.json`` (see :func:`write_head_config`).

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
        head: the task's head configuration (:meth:`deltatune.tasks.base.Task.head_config`), or
            ``None``; written with an adapter only (a full model's config.json holds it).
        head_class: the ``transformers`` Auto class of the head (for the model card's example).

    Raises:
        OSError: the folder cannot be written (the caller writes to a temporary folder).
    """
    with quiet_transformers():
        if fmt == "adapter":
            model.save_pretrained(folder)
            base = meta["base"]
            portable = portable_reference(base["name_or_path"], base.get("resolved") or base["name_or_path"])
            _set_adapter_base(folder, portable)
            if head:
                write_head_config(folder, head, head_class or "AutoModel", portable)
        else:
            (model.merge_and_unload() if merge else model).save_pretrained(folder)
        tokenizer.save_pretrained(folder)


HEAD_CONFIG_FILE = "head_config.json"


def write_head_config(folder: Path, head: dict[str, Any], auto_class: str, base: str | None = None) -> None:
    """Write the model-config fields of an adapter's task head next to it in ``folder``.

    ``head_config.json`` holds ``head`` (``num_labels``, ``id2label``, ``label2id``, ... as the
    task declares them: :meth:`deltatune.tasks.base.Task.head_config`); JSON makes the keys of
    ``id2label`` strings: convert them to ints. A "Task head" section of the model card
    (README.md, if any) shows how to load with them::

        head = json.load(open("head_config.json"))
        head["id2label"] = {int(i): name for i, name in head["id2label"].items()}
        config = AutoConfig.from_pretrained(BASE)
        config.update(head)
        base = AutoModelForSequenceClassification.from_pretrained(BASE, config=config)
        model = PeftModel.from_pretrained(base, "<export folder>")

    Args:
        folder: the export folder (the adapter is written there).
        head: the fields, JSON-serializable.
        auto_class: the ``transformers`` Auto class of the head, named in the card's example.
        base: the adapter's base model as ``adapter_config.json`` names it, shown in the example.
    """
    (folder / HEAD_CONFIG_FILE).write_text(json.dumps(head, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    card_path = folder / "README.md"
    if not card_path.is_file():
        return
    shown = json.dumps(base) if base else "BASE_MODEL"
    id2label = head.get("id2label") or {}
    names = ", ".join(f"{i}: {n}" for i, n in sorted(id2label.items(), key=lambda kv: int(kv[0])))
    section = (
        "\n## Task head\n\n"
        f"The head has {head.get('num_labels', len(id2label))} outputs ({names}); `{HEAD_CONFIG_FILE}` holds its "
        "configuration (label names and, for regression, the target standardization). `adapter_config.json` cannot "
        "hold it: pass it when loading the base model, or outputs are named LABEL_0, LABEL_1, ...\n\n"
        "```python\nimport json\n\n"
        f"from peft import PeftModel\nfrom transformers import AutoConfig, {auto_class}\n\n"
        f'head = json.load(open("{HEAD_CONFIG_FILE}"))\n'
        'head["id2label"] = {int(i): name for i, name in head["id2label"].items()}\n'
        f"config = AutoConfig.from_pretrained({shown})\nconfig.update(head)\n"
        f"base = {auto_class}.from_pretrained({shown}, config=config)\n"
        'model = PeftModel.from_pretrained(base, "<this folder>")\n```\n'
    )
    card_path.write_text(card_path.read_text(encoding="utf-8").rstrip("\n") + "\n" + section, encoding="utf-8")


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
