"""Load tokenizers, configs and pretrained weights with one-line errors.

``from_pretrained`` failures (a folder without weights, a corrupt file, an unknown
architecture) are turned into :class:`DeltatuneError` naming the model reference.

Two load permissions are never taken from a folder, only from the user (the command line or the
Python call; a fresh ``train`` config is the user's own word):

- ``trust_remote_code``: a model whose config names custom code (``auto_map`` to a module in
  the folder or repo, for an architecture transformers does not know) needs it; without it
  transformers refuses before importing anything, and we say which flag allows it.
- ``allow_pickle_weights``: weights load from safetensors only (``use_safetensors=True``); a
  folder that holds only ``pytorch_model.bin``/``.pt`` pickles is refused unless allowed.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig
from transformers.utils import logging as hf_logging

from deltatune.errors import DeltatuneError


TRUST_REMOTE_CODE_HINT = "pass --trust-remote-code (Python: trust_remote_code=True) only if you trust where it came from"
ALLOW_PICKLE_HINT = "pass --allow-pickle-weights (Python: allow_pickle_weights=True) only if you trust where it came from"
# weight files that are Python pickles: loading one can run code
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _custom_code(model_path: str) -> str:
    """The ``auto_map`` classes a local folder's config.json / tokenizer_config.json name (for messages)."""
    names: list[str] = []
    for name in ("config.json", "tokenizer_config.json"):
        try:
            auto_map = json.loads((Path(model_path) / name).read_text()).get("auto_map") or {}
        except (OSError, ValueError, AttributeError):
            continue
        for v in auto_map.values() if isinstance(auto_map, dict) else ():
            names += [x for x in (v if isinstance(v, (list, tuple)) else [v]) if isinstance(x, str)]
    return f" ({', '.join(sorted(set(names)))})" if names else ""


def pickle_only_files(folder: str | Path) -> list[str]:
    """Names of the pickle weight files in ``folder`` when it holds no ``.safetensors`` file, else ``[]``.

    A hub id (not a local folder) gives ``[]``: transformers' ``use_safetensors=True`` refuses there.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = [p.name for p in folder.iterdir() if p.is_file()]
    if any(f.endswith(".safetensors") for f in files):
        return []
    return sorted(f for f in files if f.endswith(PICKLE_WEIGHT_SUFFIXES))


def _load_error(model_path: str, what: str, e: Exception, weights: bool = False, allow_pickle_weights: bool = True) -> DeltatuneError:
    """The one-line error for a failed ``from_pretrained``: remote code refused, and for ``weights``
    pickle-only weights refused or a damaged safetensors file named; else ``what`` failed."""
    msg = str(e)
    if "trust_remote_code" in msg:
        return DeltatuneError(
            f"model '{model_path}' runs its own Python code when loaded{_custom_code(model_path)}; {TRUST_REMOTE_CODE_HINT}"
        )
    if weights and not allow_pickle_weights:
        pickles = pickle_only_files(model_path)
        if pickles or (not Path(model_path).is_dir() and "safetensors" in msg):
            found = f"only {', '.join(pickles)} (Python pickle" if pickles else "no .safetensors weights (pickles"
            return DeltatuneError(
                f"model '{model_path}' has {found}, which can run code when loaded); convert it to safetensors "
                f"or {ALLOW_PICKLE_HINT}"
            )
    broken = _broken_safetensors(model_path) if weights else ""
    if broken:
        return DeltatuneError(f"model '{model_path}': {broken}; restore or re-download the file")
    return DeltatuneError(f"model '{model_path}': {what} ({_first_line(e)})")


def safetensors_problem(path: str | Path) -> str:
    """``""`` when ``path`` is a complete safetensors file (its header and size agree; no tensor is
    read), else why not: ``"is not a complete safetensors file (<reason>)"``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as st:
            st.keys()
    except Exception as e:  # SafetensorError: truncated or garbled; OSError: unreadable
        return f"is not a complete safetensors file ({_first_line(e)})"
    return ""


def _broken_safetensors(model_path: str) -> str:
    """``"<file> is not a complete safetensors file (...)"`` for the first damaged one in a local folder, else ``""``."""
    folder = Path(model_path)
    for f in sorted(folder.glob("*.safetensors")) if folder.is_dir() else ():
        problem = safetensors_problem(f)
        if problem:
            return f"{f.name} {problem}"
    return ""


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars inside the block (restored after)."""
    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def dropout_overrides(model_path: str, dropout: float | None, trust_remote_code: bool = False) -> dict[str, Any]:
    """Config keys to set so that every dropout probability of the model becomes ``dropout``.

    Every config attribute whose name contains ``dropout`` and holds a float (hidden_dropout_prob,
    attention_probs_dropout_prob, attention_dropout, ...) or is unset (classifier_dropout) is set.
    Returns ``{}`` when ``dropout`` is ``None``.
    """
    if dropout is None:
        return {}
    cfg = load_config(model_path, trust_remote_code=trust_remote_code)
    keys = {k for k, v in cfg.to_dict().items() if "dropout" in k and (v is None or isinstance(v, float))}
    return {k: dropout for k in sorted(keys)}


def load_config(model_path: str, trust_remote_code: bool = False, **overrides: Any) -> PretrainedConfig:
    """``AutoConfig.from_pretrained`` with ``overrides`` applied.

    Args:
        trust_remote_code: allow a config class defined in the folder/repo (``auto_map``) to be
            imported and run; only on the user's word, never from a run folder's config.

    Raises:
        DeltatuneError: the folder/hub id has no usable config; it needs custom code and
            ``trust_remote_code`` is false (names ``--trust-remote-code``).
    """
    try:
        with quiet_transformers():  # its warnings (e.g. an unknown model_type) precede our one-line error
            return AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code, **overrides)
    except Exception as e:
        raise _load_error(model_path, "cannot read its config", e) from None


def load_tokenizer(model_path: str, trust_remote_code: bool = False):
    """``AutoTokenizer.from_pretrained`` (fast tokenizer when available).

    Raises:
        DeltatuneError: no tokenizer files in the folder / hub repo; a tokenizer defined by
            custom code while ``trust_remote_code`` is false.
    """
    try:
        return AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise _load_error(model_path, "cannot load its tokenizer", e) from None


INPUT_KINDS = ("text", "image", "audio", "image-text", "audio-text")


def load_processor(model_path: str, kind: str = "text", trust_remote_code: bool = False):
    """What turns a task's inputs into model inputs, by the task's ``input_kind``: ``"text"`` →
    :func:`load_tokenizer`; ``"image"`` → ``AutoImageProcessor`` (resize, crop, normalize);
    ``"audio"`` → ``AutoFeatureExtractor`` (e.g. Whisper's log-mel spectrogram); ``"image-text"`` →
    ``AutoProcessor`` (tokenizer, image processor and chat template of a vision-language model); ``"audio-text"`` →
    ``AutoProcessor`` (feature extractor and tokenizer of a speech-to-text model: ``WhisperProcessor``).

    Raises:
        DeltatuneError: an unknown ``kind``; no processor files (``preprocessor_config.json``) in the
            folder / hub repo; one defined by custom code while ``trust_remote_code`` is false.
    """
    if kind == "text":
        return load_tokenizer(model_path, trust_remote_code)
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoProcessor

    classes = {"image": (AutoImageProcessor, "image processor"), "audio": (AutoFeatureExtractor, "feature extractor")}
    classes["image-text"] = (AutoProcessor, "processor")  # tokenizer + image processor + chat template
    classes["audio-text"] = (AutoProcessor, "processor")  # feature extractor + tokenizer (speech-recognition)
    if kind not in classes:
        raise DeltatuneError(f"unknown input kind {kind!r}; one of {', '.join(INPUT_KINDS)}")
    auto_class, what = classes[kind]
    try:
        with quiet_transformers():
            return auto_class.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise _load_error(model_path, f"cannot load its {what} (preprocessor_config.json)", e) from None


def load_pretrained(
    auto_class, model_path: str, trust_remote_code: bool = False, allow_pickle_weights: bool = False, **kwargs: Any
):
    """``auto_class.from_pretrained(model_path, **kwargs)`` with a one-line error on failure.

    Args:
        trust_remote_code: allow model code from the folder/repo (see :func:`load_config`).
        allow_pickle_weights: also accept ``pytorch_model.bin``-style pickle weights when there
            are no safetensors; by default transformers is asked for ``use_safetensors=True``.

    Raises:
        DeltatuneError: missing or unreadable weights, or an architecture the class cannot build;
            pickle-only weights without ``allow_pickle_weights`` (names ``--allow-pickle-weights``);
            custom code without ``trust_remote_code`` (names ``--trust-remote-code``).
    """
    try:
        with quiet_transformers():
            return auto_class.from_pretrained(
                model_path,
                trust_remote_code=trust_remote_code,
                use_safetensors=None if allow_pickle_weights else True,
                **kwargs,
            )
    except Exception as e:
        raise _load_error(model_path, "cannot load weights", e, weights=True, allow_pickle_weights=allow_pickle_weights) from None


def load_with_new_head(
    auto_class, model_path: str, trust_remote_code: bool = False, allow_pickle_weights: bool = False, **kwargs: Any
):
    """Load ``auto_class`` from ``model_path`` whose task head may be absent or shaped differently.

    A head missing from the checkpoint, or whose shape does not match (e.g. another label
    count), is initialised fresh (``ignore_mismatched_sizes``). ``trust_remote_code`` and
    ``allow_pickle_weights`` as in :func:`load_pretrained`.

    Returns:
        (model, names of the parameters initialised fresh).
    """
    model, info = load_pretrained(
        auto_class,
        model_path,
        trust_remote_code=trust_remote_code,
        allow_pickle_weights=allow_pickle_weights,
        ignore_mismatched_sizes=True,
        output_loading_info=True,
        **kwargs,
    )
    fresh = set(info["missing_keys"]) | {k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys", [])}
    return model, fresh
