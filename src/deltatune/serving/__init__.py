"""Prediction from trained runs (and, later, the HTTP app)."""

from deltatune.serving.predictor import Predictor, load, write_predictions

__all__ = ["Predictor", "load", "write_predictions"]
