"""Export a run's model as a standalone folder: merged weights, or a standard PEFT adapter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from deltatune.delta.methods import PEFT_METHODS
from deltatune.delta.storage import is_delta_folder, read_meta
from deltatune.errors import DeltatuneError
from deltatune.models.loading import quiet_transformers


def export_run(run: str | Path, out: str | Path, merge: bool = True, fmt: str = "model", overwrite: bool = False) -> Path:
    """Write a run's trained model to ``out``.

    Args:
        run: the run directory.
        out: a new folder.
        merge: with ``fmt="model"``, fold adapters into the base weights (peft ``merge_and_unload``).
        fmt: ``"model"`` (a folder plain transformers loads) or ``"adapter"`` (a PEFT adapter
            folder for ``peft.PeftModel.from_pretrained``; adapter runs only).

    Returns:
        ``out`` as a Path.

    Raises:
        DeltatuneError: ``out`` exists (without ``overwrite``); ``fmt="adapter"`` on a run that has
            no adapter; ``fmt="model"`` without ``merge`` on an adapter run.
    """
    from deltatune.serving.predictor import load

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DeltatuneError(f"{out} already exists; choose a new --out folder or pass --overwrite")
        is_model = (out / "config.json").is_file() or (out / "adapter_config.json").is_file()
        if not is_model or out.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
            raise DeltatuneError(f"{out} is not an exported model folder: --overwrite only replaces exports; choose a new --out")
    predictor = load(run, device="cpu")
    model_dir = Path(run) / "model"
    method = read_meta(model_dir)["method"] if is_delta_folder(model_dir) else "full"
    tmp = out.with_name(f".tmp-{out.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with quiet_transformers():
        if fmt == "adapter":
            if method not in PEFT_METHODS:
                shutil.rmtree(tmp)
                raise DeltatuneError(f"run {run} trained with delta.method {method}: it has no adapter; export with --merge")
            predictor.model.save_pretrained(tmp)
            cfg_path = tmp / "adapter_config.json"
            adapter_cfg = json.loads(cfg_path.read_text())
            adapter_cfg["base_model_name_or_path"] = read_meta(model_dir)["base"]["resolved"]
            cfg_path.write_text(json.dumps(adapter_cfg, indent=2))
        else:
            model = predictor.model
            if method in PEFT_METHODS:
                if not merge:
                    shutil.rmtree(tmp)
                    raise DeltatuneError("an adapter run exports as a standalone model only with --merge (or use --format adapter)")
                model = model.merge_and_unload()
            model.save_pretrained(tmp)
        predictor.tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
