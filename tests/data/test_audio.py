"""Reading audio for audio tasks: resampling with soxr, mono, truncation, bad files in words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deltatune.data.audio import audio_problem, load_audio, resample
from deltatune.errors import DeltatuneError


def _tone(path: Path, rate: int, seconds: float, channels: int = 1, hz: float = 440.0) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * hz * t).astype(np.float32)
    sf.write(str(path), np.stack([x] * channels, axis=1) if channels > 1 else x, rate)
    return path


def test_resampling_8k_to_16k_doubles_the_length_and_keeps_the_tone(tmp_path):
    wav = _tone(tmp_path / "a.wav", 8000, 1.0, hz=440.0)
    x = load_audio(wav, 16000, "rows.csv: row 1")
    assert x.dtype == np.float32 and x.ndim == 1 and abs(len(x) - 16000) <= 2
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * 16000 / len(x) - 440.0) < 2.0  # the tone is still at 440 Hz
    assert len(resample(np.zeros(8000, np.float32), 8000, 16000)) == 16000


def test_stereo_is_mixed_to_mono_and_flac_is_read(tmp_path):
    flac = _tone(tmp_path / "a.flac", 16000, 0.5, channels=2)
    x = load_audio(flac, 16000, "x")
    assert x.shape == (8000,)


def test_clips_are_cut_to_max_seconds(tmp_path):
    wav = _tone(tmp_path / "long.wav", 8000, 3.0)
    assert len(load_audio(wav, 16000, "x", max_seconds=1.25)) == 20000
    assert len(load_audio(wav, 16000, "x", max_seconds=10.0)) == pytest.approx(48000, abs=2)  # shorter clips are not padded here


def test_bad_audio_files_are_named_in_words(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    assert audio_problem(empty) == "is empty (0 bytes)"
    assert audio_problem(text).startswith("is not an audio file soundfile can read")
    assert audio_problem(tmp_path / "gone.flac") == "does not exist"
    with pytest.raises(DeltatuneError, match=r"rows.csv: row 4: .*notes.wav is not an audio file.*data.skip_bad_rows"):
        load_audio(text, 16000, "rows.csv: row 4")
