"""Prediction from trained runs, the HTTP server (``deltatune serve``) and exports for other runtimes.

Importing the package is torch-free (the CLI reads :mod:`deltatune.serving.settings` before
torch loads); ``Predictor``, ``load`` and ``write_predictions`` import
:mod:`deltatune.serving.predictor` on first use.
"""

from typing import Any

__all__ = ["Predictor", "load", "write_predictions"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from deltatune.serving import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'deltatune.serving' has no attribute {name!r}")
