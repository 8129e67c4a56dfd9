"""Reading audio files for audio tasks: decode (soundfile), mix to mono, resample (soxr), cut.

Formats are those of libsndfile through ``soundfile`` (WAV, FLAC, OGG, and MP3 from libsndfile
1.1). Resampling uses soxr's high-quality polyphase filter (``soxr.resample``, quality "HQ"). A
file that is missing, empty or not audio is reported by :func:`audio_problem` in words, so that a
task can refuse the row naming the file or skip it (``data.skip_bad_rows``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from deltatune.errors import DeltatuneError


def audio_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as audio, in words (``"is empty (0 bytes)"``), or ``None`` (reads the header only)."""
    if not path.is_file():
        return "does not exist" if not path.exists() else "is not a file"
    if path.stat().st_size == 0:
        return "is empty (0 bytes)"
    try:
        info = sf.info(str(path))
    except Exception as e:  # sf.LibsndfileError: not a format libsndfile reads
        return f"is not an audio file soundfile can read ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
    if info.frames == 0:
        return "holds no samples"
    return None


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """``samples`` (float32, shape (n,) or (n, channels)) resampled from ``from_rate`` to ``to_rate`` Hz
    (soxr, quality HQ); the length becomes about ``n * to_rate / from_rate``."""
    if from_rate == to_rate:
        return samples
    return soxr.resample(samples, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: Path, rate: int, where: str, max_seconds: float | None = None) -> np.ndarray:
    """The audio at ``path`` as mono float32 samples in [-1, 1] at ``rate`` Hz, shape (n,).

    Channels are averaged; with ``max_seconds`` only the first ``max_seconds`` are read (before
    resampling, so a long file costs little) and the result has at most ``round(max_seconds * rate)``
    samples.

    Args:
        where: names the row in messages (``"train.csv: row 3, column 'audio'"``).

    Raises:
        DeltatuneError: the file cannot be read as audio (naming ``where`` and the file).
    """
    problem = audio_problem(path)
    if problem is None:
        try:
            file_rate = sf.info(str(path)).samplerate
            frames = -1 if max_seconds is None else int(np.ceil(max_seconds * file_rate))
            samples, file_rate = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
        except Exception as e:  # damaged data after a good header
            problem = f"is a damaged audio file ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
    if problem is not None:
        raise DeltatuneError(f"{where}: {path} {problem}; fix or remove the file, or set data.skip_bad_rows: true")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    out = resample(np.ascontiguousarray(mono), file_rate, rate)
    if max_seconds is not None:
        out = out[: int(round(max_seconds * rate))]
    return out
