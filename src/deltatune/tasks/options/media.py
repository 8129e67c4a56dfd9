"""Options shared by the tasks that read media files named in the rows (``image-classification``,
``audio-classification``); torch-free."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MediaOptions(BaseModel):
    """``data.*`` keys read by the tasks whose rows name image or audio files."""

    skip_bad_rows: bool = Field(
        default=False,
        description="skip (and count) rows whose file cannot be read (missing, empty, not an image/audio file) in training "
        "and evaluation data instead of refusing the data; prediction always refuses them",
    )
