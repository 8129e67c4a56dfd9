"""Options of ``audio-classification`` (torch-free)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field


class AudioOptions(BaseModel):
    """``data.*`` keys read by ``audio-classification`` only."""

    audio_column: str = Field(
        default="audio",
        description="column holding each row's audio file path (WAV/FLAC/MP3/OGG; relative paths start from the data "
        "file's folder); a class-folder data directory gives 'audio'",
    )
    max_audio_seconds: Optional[float] = Field(
        default=None, gt=0, le=600,
        description="clips are cut to and padded to this many seconds; None: the feature extractor's own length "
        "(Whisper: 30 s); a Whisper encoder keeps only the positions this length needs",
    )


def audio_columns(data: Any, with_labels: bool) -> list[str]:
    """The columns ``audio-classification`` reads from ``data`` (a DataConfig): the audio path, the label."""
    return [data.audio_column] + ([data.label_column] if with_labels else [])
