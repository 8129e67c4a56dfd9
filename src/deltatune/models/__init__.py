"""Model references (local folder, hub id, packaged default) and model building."""

from deltatune.models.resolve import PACKAGED_MODELS, resolve_model

__all__ = ["PACKAGED_MODELS", "resolve_model"]
