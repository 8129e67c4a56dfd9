"""Δθ: what is trained (full, freeze, PEFT adapters) and how it is stored, loaded, merged and compressed."""

from deltatune.delta.methods import PEFT_METHODS, apply_delta, parameter_summary
from deltatune.delta.storage import is_delta_folder, load_trained, save_trained

__all__ = ["PEFT_METHODS", "apply_delta", "is_delta_folder", "load_trained", "parameter_summary", "save_trained"]
