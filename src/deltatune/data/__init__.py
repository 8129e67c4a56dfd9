"""Loading rows from files and hub datasets, column checks, and validation splits."""

from deltatune.data.columns import require_columns
from deltatune.data.loading import load_table
from deltatune.data.splits import train_validation_split

__all__ = ["load_table", "require_columns", "train_validation_split"]
