"""Load tokenizers, configs and pretrained weights with one-line errors.

``from_pretrained`` failures (a folder without weights, a corrupt file, an unknown
architecture) are turned into :class:`DeltatuneError` naming the model reference.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig
from transformers.utils import logging as hf_logging

from deltatune.errors import DeltatuneError


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


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

    Raises:
        DeltatuneError: the folder/hub id has no usable config.
    """
    try:
        return AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code, **overrides)
    except Exception as e:
        raise DeltatuneError(f"model '{model_path}': cannot read its config ({_first_line(e)})") from None


def load_tokenizer(model_path: str, trust_remote_code: bool = False):
    """``AutoTokenizer.from_pretrained`` (fast tokenizer when available).

    Raises:
        DeltatuneError: no tokenizer files in the folder / hub repo.
    """
    try:
        return AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise DeltatuneError(f"model '{model_path}': cannot load its tokenizer ({_first_line(e)})") from None


def load_pretrained(auto_class, model_path: str, trust_remote_code: bool = False, **kwargs: Any):
    """``auto_class.from_pretrained(model_path, **kwargs)`` with a one-line error on failure.

    Raises:
        DeltatuneError: missing or unreadable weights, or an architecture the class cannot build.
    """
    try:
        with quiet_transformers():
            return auto_class.from_pretrained(model_path, trust_remote_code=trust_remote_code, **kwargs)
    except Exception as e:
        raise DeltatuneError(f"model '{model_path}': cannot load weights ({_first_line(e)})") from None


def load_with_new_head(auto_class, model_path: str, trust_remote_code: bool = False, **kwargs: Any):
    """Load ``auto_class`` from ``model_path`` whose task head may be absent or shaped differently.

    A head missing from the checkpoint, or whose shape does not match (e.g. another label
    count), is initialised fresh (``ignore_mismatched_sizes``).

    Returns:
        (model, names of the parameters initialised fresh).
    """
    model, info = load_pretrained(
        auto_class,
        model_path,
        trust_remote_code=trust_remote_code,
        ignore_mismatched_sizes=True,
        output_loading_info=True,
        **kwargs,
    )
    fresh = set(info["missing_keys"]) | {k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys", [])}
    return model, fresh
