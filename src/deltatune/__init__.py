"""deltatune: fine-tune pretrained transformers; keep the full weights or just the delta.

Python API::

    import deltatune
    run = deltatune.finetune("config.yaml")          # or a dict / RunConfig, plus overrides
    predictor = deltatune.load(run.path)
    predictor.predict(["a great movie"])
    deltatune.evaluate(run.path, "test.csv")
"""

import importlib
from typing import Any

import deltatune.auto  # noqa: E402,F401  (torch-free package; the name is rebound to the function below)
from deltatune.config import RunConfig, build_config  # noqa: E402
from deltatune.errors import DeltatuneError  # noqa: E402
from deltatune.version import __version__  # noqa: E402

# torch, transformers and datasets load on first use, so that `deltatune --help` and usage or
# config errors from the CLI come back without importing them (PEP 562 module __getattr__)
_LAZY = {"Run": "deltatune.api", "evaluate": "deltatune.api", "finetune": "deltatune.api", "load": "deltatune.api",
         "AutoResult": "deltatune.auto.runner"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deltatune' has no attribute {name!r}")


def auto(*args: Any, **kwargs: Any):
    """Infer the task, choose the model and search hyperparameters: :func:`deltatune.auto.runner.auto`.

    The subpackage :mod:`deltatune.auto` holds the parts; ``deltatune.auto(...)`` is this function.
    """
    from deltatune.api import auto as api_auto

    return api_auto(*args, **kwargs)


__all__ = ["AutoResult", "DeltatuneError", "Run", "RunConfig", "auto", "build_config", "evaluate", "finetune", "load", "__version__"]
