"""Columns of ``speech-recognition`` (torch-free). Its ``data.*`` keys are those of other option models:
``data.audio_column`` and ``data.max_audio_seconds`` (:class:`deltatune.tasks.options.audio.AudioOptions`),
``data.skip_bad_rows`` (``MediaOptions``), ``data.max_target_length`` (``TextToTextOptions``) and the
common ``data.text_column`` (the transcript)."""

from __future__ import annotations

from typing import Any


def speech_recognition_columns(data: Any, with_labels: bool) -> list[str]:
    """The columns ``speech-recognition`` reads from ``data`` (a DataConfig): the audio path, the transcript."""
    return [data.audio_column] + ([data.text_column] if with_labels else [])
