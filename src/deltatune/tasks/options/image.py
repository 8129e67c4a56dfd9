"""Options of ``image-classification`` (torch-free)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ImageOptions(BaseModel):
    """``data.*`` keys read by ``image-classification`` only."""

    image_column: str = Field(
        default="image",
        description="column holding each row's image file path (relative paths start from the data file's folder); "
        "a class-folder data directory gives 'image'",
    )
    random_resized_crop: bool = Field(
        default=False,
        description="training images only: crop a random area (8-100%) and aspect ratio (3/4-4/3) before the model's resize",
    )
    horizontal_flip: bool = Field(default=False, description="training images only: mirror left-right with probability 0.5")


def image_columns(data: Any, with_labels: bool) -> list[str]:
    """The columns ``image-classification`` reads from ``data`` (a DataConfig): the image path, the label."""
    return [data.image_column] + ([data.label_column] if with_labels else [])
