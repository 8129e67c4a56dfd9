"""Options of ``text-regression`` (torch-free).

``text-regression`` also reads ``data.text_pair_column`` and ``data.label_column`` of
:class:`deltatune.tasks.options.classification.ClassificationOptions` (its registry entry names
both models); the keys here are its own.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, field_validator, model_validator

# the default of ClassificationOptions.label_column (a saved config holds it even with label_columns)
_DEFAULT_LABEL_COLUMN = "label"


class RegressionOptions(BaseModel):
    """``data.*`` keys read by ``text-regression`` only."""

    label_columns: Optional[list[str]] = Field(
        default=None,
        description="columns of several float targets predicted together (one output each); None: the one target in "
        "data.label_column",
    )
    regression_loss: Literal["mse", "huber"] = Field(
        default="mse",
        description="text-regression loss: mse (squared error) or huber (delta 1, robust to outliers), on the "
        "standardized targets when data.standardize_targets is true",
    )
    standardize_targets: bool = Field(
        default=True,
        description="train on (target - mean) / std of each target over the training rows (saved with the model); "
        "predictions and metrics stay in the original units",
    )

    @field_validator("label_columns")
    @classmethod
    def _label_columns_are_names(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        if value is None:
            return value
        if not value:
            raise ValueError("data.label_columns is empty; name at least one target column, or unset it to use data.label_column")
        blank = [c for c in value if not c.strip()]
        if blank:
            raise ValueError("data.label_columns holds an empty column name; give the names of the target columns")
        repeated = sorted({c for c in value if value.count(c) > 1})
        if repeated:
            raise ValueError(f"data.label_columns names {', '.join(repeated)} more than once; list each target column once")
        return value

    @model_validator(mode="after")
    def _one_way_to_name_targets(self) -> "RegressionOptions":
        # inherited by DataConfig, which also has ClassificationOptions.label_column
        label_column = self.__dict__.get("label_column", _DEFAULT_LABEL_COLUMN)
        if self.label_columns and label_column != _DEFAULT_LABEL_COLUMN:
            raise ValueError(
                f"data.label_column ({label_column!r}) and data.label_columns ({self.label_columns}) are both set; "
                "give one target in data.label_column or several in data.label_columns"
            )
        return self


def target_columns(data: Any) -> list[str]:
    """The target columns of ``text-regression``: ``data.label_columns``, else ``[data.label_column]``."""
    return list(data.label_columns) if data.label_columns else [data.label_column]


def regression_columns(data: Any, with_labels: bool) -> list[str]:
    """The columns ``text-regression`` reads from ``data`` (a DataConfig): text, pair, target(s)."""
    cols = [data.text_column] + ([data.text_pair_column] if data.text_pair_column else [])
    return cols + (target_columns(data) if with_labels else [])
