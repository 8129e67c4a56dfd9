"""Loading rows from files and hub datasets, column checks, and validation splits.

The names below load on first use (PEP 562), so that the torch- and datasets-free
:mod:`deltatune.data.paths` can be imported cheaply (the CLI's checks before torch).
"""

import importlib
from typing import Any

_LAZY = {
    "load_table": "deltatune.data.loading",
    "require_columns": "deltatune.data.columns",
    "train_validation_split": "deltatune.data.splits",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deltatune.data' has no attribute {name!r}")


__all__ = ["load_table", "require_columns", "train_validation_split"]
