"""Save and load what a run trained: the whole model, or only Δθ plus a reference to the base.

``model/`` of a run holds, by ``delta.method`` and ``delta.save``:
- ``full`` + ``save: model``: a complete Hugging Face model folder (loads with plain transformers);
- ``full`` + ``save: delta``: ``delta.safetensors``, θ_ft − θ_pre compressed (see
  :mod:`deltatune.delta.compress`);
- ``freeze``: ``trained.safetensors``, the tensors of the trained layers and head;
- ``lora``/``dora``/``ia3``/``prefix``: a standard PEFT adapter folder (``adapter_config.json``,
  ``adapter_model.safetensors``, head included), loadable by ``peft.PeftModel.from_pretrained``.
Every delta folder also holds the tokenizer and ``deltatune_delta.json``: the method, the
base model's reference string and resolved path, a SHA-256 of the base weight files, and the
task model's config (labels). Loading recomputes the hash and refuses a different base.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from deltatune.config import RunConfig
from deltatune.delta.compress import CompressionStats, compress_delta, reconstruct
from deltatune.delta.methods import PEFT_METHODS, peft_checkpointing_probe_quiet
from deltatune.errors import DeltatuneError
from deltatune.models import resolve_model
from deltatune.models.loading import ALLOW_PICKLE_HINT, quiet_transformers, safetensors_problem

META = "deltatune_delta.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def weights_hash(model_path: str) -> str:
    """SHA-256 over the base model's weight files (sorted by name; names and bytes).

    A hub id is first resolved to its local snapshot folder.
    """
    folder = Path(model_path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model_path))
    if folder.is_file():
        files = [folder]
    else:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def is_delta_folder(folder: str | Path) -> bool:
    """True when ``folder`` holds a Δθ (needs its base to load)."""
    return (Path(folder) / META).is_file()


DAMAGED = "the run's model folder is damaged or incomplete; restore it from the original or train the run again"


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The ``deltatune_delta.json`` of a delta folder: ``method``, ``base`` (``name_or_path``,
    ``resolved``, ``sha256``) and ``model_config`` (a dict).

    Raises:
        DeltatuneError: the file is unreadable, not JSON, or lacks one of those keys (names the file).
    """
    path = Path(folder) / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise DeltatuneError(f"{path} cannot be read ({_first_line(e)}): {DAMAGED}") from None
    base = meta.get("base") if isinstance(meta, dict) else None
    missing = [
        key
        for key, ok in (
            ("method", isinstance(meta, dict) and isinstance(meta.get("method"), str)),
            ("base.name_or_path", isinstance(base, dict) and isinstance(base.get("name_or_path"), str)),
            ("base.sha256", isinstance(base, dict) and isinstance(base.get("sha256"), str)),
            ("model_config", isinstance(meta, dict) and isinstance(meta.get("model_config"), dict)),
        )
        if not ok
    ]
    if missing:
        raise DeltatuneError(f"{path} has no valid '{missing[0]}': {DAMAGED}")
    return meta


def check_safetensors(path: Path) -> None:
    """Check that ``path`` is a complete safetensors file (header and data size agree); reads no tensors.

    Raises:
        DeltatuneError: the file is missing, truncated or not safetensors (names the file).
    """
    if not path.is_file():
        raise DeltatuneError(f"{path} is missing: {DAMAGED}")
    problem = safetensors_problem(path)
    if problem:
        raise DeltatuneError(f"{path} {problem}: {DAMAGED}")


def _check_adapter_folder(folder: Path, allow_pickle_weights: bool) -> None:
    """Check a PEFT adapter folder before peft reads it: a JSON ``adapter_config.json`` with a
    ``peft_type``, and complete ``adapter_model.safetensors`` weights (a pickle ``adapter_model.bin``
    only with ``allow_pickle_weights``)."""
    cfg_path = folder / "adapter_config.json"
    try:
        adapter_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DeltatuneError(f"{cfg_path} cannot be read ({_first_line(e)}): {DAMAGED}") from None
    if not isinstance(adapter_cfg, dict) or not isinstance(adapter_cfg.get("peft_type"), str):
        raise DeltatuneError(f"{cfg_path} has no valid 'peft_type': {DAMAGED}")
    weights = folder / "adapter_model.safetensors"
    if not weights.exists() and (folder / "adapter_model.bin").is_file():
        if not allow_pickle_weights:
            raise DeltatuneError(
                f"{folder / 'adapter_model.bin'} is a Python pickle, which can run code when loaded, and there is no "
                f"adapter_model.safetensors; {ALLOW_PICKLE_HINT}"
            )
        return
    check_safetensors(weights)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    check_safetensors(path)
    try:
        return load_file(str(path))
    except Exception as e:
        raise DeltatuneError(f"{path} cannot be read ({_first_line(e)}): {DAMAGED}") from None


def _write_meta(folder: Path, cfg: RunConfig, base_path: str, model_config: dict, extra: dict | None = None) -> None:
    meta = {
        "method": cfg.delta.method,
        "save": cfg.delta.save,
        "base": {"name_or_path": cfg.model.name_or_path, "resolved": base_path, "sha256": weights_hash(base_path)},
        "model_config": model_config,
        **(extra or {}),
    }
    (folder / META).write_text(json.dumps(meta, indent=2))


def _task_model_config(model: torch.nn.Module) -> dict:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.config.to_dict()


def save_trained(
    model: torch.nn.Module,
    folder: Path,
    tokenizer,
    cfg: RunConfig,
    base_path: str,
    base_state: "callable | None" = None,
) -> dict[str, Any]:
    """Write the deployable result of a run into ``folder`` (which must exist and be empty).

    Args:
        model: the trained model (unwrapped; peft-wrapped for adapter methods).
        tokenizer: saved alongside.
        base_path: the resolved base model folder or hub id.
        base_state: for ``full`` + ``save: delta``, a function returning θ_pre of the
            parameters that exist in the base checkpoint (name -> tensor).

    Returns:
        Facts for the report: ``saved_bytes`` and, for compressed deltas, compression stats.
    """
    method = cfg.delta.method
    info: dict[str, Any] = {}
    with quiet_transformers():
        tokenizer.save_pretrained(folder)
        if method == "full" and cfg.delta.save == "model":
            model.save_pretrained(folder)
        elif method == "full":
            tuned = {n: p.detach() for n, p in model.named_parameters()}
            stored, st = compress_delta(
                base_state(), tuned, cfg.delta.delta_energy, cfg.delta.delta_rank, cfg.delta.delta_int8
            )
            save_file(stored, str(folder / "delta.safetensors"))
            info["compression"] = _stats_dict(st)
            _write_meta(folder, cfg, base_path, _task_model_config(model), {"compression": info["compression"]})
        elif method == "freeze":
            trained = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
            save_file(trained, str(folder / "trained.safetensors"))
            _write_meta(folder, cfg, base_path, _task_model_config(model))
        elif method in PEFT_METHODS:
            model.save_pretrained(folder)
            _write_meta(folder, cfg, base_path, _task_model_config(model))
        else:  # pragma: no cover - config validation prevents this
            raise ValueError(method)
    info["saved_bytes"] = folder_size(folder, weights_only=True)
    return info


def _stats_dict(st: CompressionStats) -> dict[str, Any]:
    return {
        "factored_matrices": st.factored,
        "dense_matrices": st.dense,
        "mean_rank": round(st.mean_rank, 1),
        "stored_bytes": st.stored_bytes,
        "dense_fp32_bytes": st.full_bytes,
    }


def folder_size(folder: Path, weights_only: bool = False) -> int:
    """Bytes of the files in ``folder`` (only weight files when ``weights_only``)."""
    return sum(
        p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and (not weights_only or p.name.endswith(WEIGHT_SUFFIXES))
    )


def check_base(meta: dict[str, Any]) -> str:
    """Resolve the base model a delta was trained on and verify its weights hash.

    Returns:
        The resolved base path.

    Raises:
        DeltatuneError: the base cannot be found, or its weights differ from training time.
    """
    ref = meta["base"]["name_or_path"]
    path = resolve_model(ref)
    got = weights_hash(path)
    if got != meta["base"]["sha256"]:
        raise DeltatuneError(
            f"base model '{ref}' ({path}) is not the one this delta was trained on: weights hash {got[:12]} != "
            f"{meta['base']['sha256'][:12]}; install or point to the original base model"
        )
    return path


def load_trained(folder: str | Path, build_base: "callable", allow_pickle_weights: bool = False) -> torch.nn.Module:
    """Rebuild the trained model from a delta folder.

    The folder's files are checked before the (slow) base is built: ``deltatune_delta.json``,
    and per method ``adapter_config.json`` + ``adapter_model.safetensors``,
    ``trained.safetensors`` or ``delta.safetensors``.

    Args:
        build_base: ``build_base(base_path) -> model`` builds the task model on the base weights.
        allow_pickle_weights: accept a PEFT adapter stored only as ``adapter_model.bin`` (a pickle).

    Raises:
        DeltatuneError: base mismatch (see :func:`check_base`); a missing, truncated or invalid
            file of the folder (names the file); a pickle adapter without ``allow_pickle_weights``.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    method = meta["method"]
    weights = {"freeze": folder / "trained.safetensors", "full": folder / "delta.safetensors"}.get(method)
    if method in PEFT_METHODS:
        _check_adapter_folder(folder, allow_pickle_weights)
    elif weights is not None:
        check_safetensors(weights)
    else:
        raise DeltatuneError(f"{folder / META}: unknown method '{method}': {DAMAGED}")
    base_path = check_base(meta)
    model = build_base(base_path)
    if method in PEFT_METHODS:
        from peft import PeftModel

        try:
            with quiet_transformers(), peft_checkpointing_probe_quiet():
                return PeftModel.from_pretrained(model, str(folder))
        except Exception as e:
            raise DeltatuneError(f"adapter in {folder} cannot be loaded ({_first_line(e)}): {DAMAGED}") from None
    if method == "freeze":
        _copy_into(model, _load_safetensors(weights))
        return model
    base = {n: p.detach() for n, p in model.named_parameters()}
    _copy_into(model, reconstruct(base, _load_safetensors(weights)))
    return model


def share_key(folder: str | Path) -> tuple | None:
    """What two adapter runs must have in common to share one base model in memory, or ``None``.

    Adapter runs (LoRA, DoRA, IA3, prefix) of the same base weights (SHA-256), the same method
    family and the same task head shape share one base: each adds its adapter (and its own
    trained head, peft's ``modules_to_save``) under its own adapter name. Runs of other methods
    return ``None`` (nothing to share: their weights are the model).
    """
    meta = read_meta(folder)
    if meta["method"] not in PEFT_METHODS:
        return None
    cfg = {k: v for k, v in meta["model_config"].items() if k not in ("id2label", "label2id", "_name_or_path")}
    return (meta["base"]["sha256"], json.dumps(cfg, sort_keys=True, default=str))


def add_adapter(model: torch.nn.Module, folder: str | Path, adapter_name: str, allow_pickle_weights: bool = False) -> None:
    """Load the adapter of another run of the same base (:func:`share_key`) into a peft ``model``.

    The model then holds both adapters; ``model.set_adapter(adapter_name)`` selects one.

    Raises:
        DeltatuneError: a missing or damaged adapter file (names it); a pickle adapter without
            ``allow_pickle_weights``.
    """
    folder = Path(folder)
    _check_adapter_folder(folder, allow_pickle_weights)
    try:
        with quiet_transformers(), peft_checkpointing_probe_quiet():
            model.load_adapter(str(folder), adapter_name=adapter_name)
    except Exception as e:
        raise DeltatuneError(f"adapter in {folder} cannot be loaded ({_first_line(e)}): {DAMAGED}") from None


def _copy_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    unknown = [k for k in tensors if k not in params]
    if unknown:
        raise DeltatuneError(f"saved delta has tensors the model lacks, e.g. {unknown[0]}; was it trained for another task?")
    with torch.no_grad():
        for k, t in tensors.items():
            params[k].copy_(t.to(params[k].dtype))
