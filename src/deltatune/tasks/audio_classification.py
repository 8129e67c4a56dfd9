"""Audio classification on any ``AutoModelForAudioClassification`` model, e.g. the Whisper encoder with a
classification head (``WhisperForAudioClassification``).

Rows: ``data.audio_column`` (a WAV/FLAC/MP3/OGG file path; relative paths start from the data file's
folder) and ``data.label_column``, from a CSV/JSONL table or a class-folder directory
(``<class>/<file>``). Each file is decoded with soundfile, mixed to mono, resampled with soxr to the
feature extractor's ``sampling_rate`` (:mod:`deltatune.data.audio`), cut to ``data.max_audio_seconds``
and padded to that length by the model's feature extractor (``AutoFeatureExtractor``; Whisper: an
80-bin log-mel spectrogram, 100 frames per second).

Whisper's encoder takes a fixed length (``max_source_positions`` = 1,500 positions = 30 s). With a
shorter ``data.max_audio_seconds`` the encoder keeps only its first ``50 * seconds`` positions
(the position embeddings are cut, as the model's config says from then on), so that a 1-2 s clip
costs 1-2 s of compute, not 30 (the recipe of e.g. Gong et al. 2023, "Whisper-AT", §3, which feeds
Whisper shorter inputs). Labels, loss, metrics and predictions are text classification's
(:mod:`deltatune.tasks.media_classification`).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForAudioClassification

from deltatune.data.audio import audio_problem, load_audio
from deltatune.errors import DeltatuneError
from deltatune.tasks.media_classification import MediaClassificationTask

# Whisper: 100 log-mel frames per second (hop 160 at 16 kHz), halved by the second convolution
WHISPER_POSITIONS_PER_SECOND = 50


def keep_whisper_positions(model: torch.nn.Module, seconds: float) -> None:
    """Cut a Whisper audio classifier's encoder to the positions ``seconds`` of audio need
    (``ceil(50 * seconds)``, at most its own): the position embedding keeps its first rows and
    ``config.max_source_positions`` says the new count. Nothing changes when it needs them all.

    Args:
        model: a ``WhisperForAudioClassification`` (its ``encoder`` is a ``WhisperEncoder``).
    """
    encoder = model.encoder
    positions = math.ceil(WHISPER_POSITIONS_PER_SECOND * seconds)
    if positions >= encoder.config.max_source_positions:
        return
    old = encoder.embed_positions
    new = torch.nn.Embedding(positions, old.embedding_dim, dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.copy_(old.weight[:positions])
    new.weight.requires_grad_(old.weight.requires_grad)
    encoder.embed_positions = new
    encoder.max_source_positions = positions
    encoder.config.max_source_positions = positions
    model.config.max_source_positions = positions


class AudioClassificationTask(MediaClassificationTask):
    """Audio classification (``AutoModelForAudioClassification``: Whisper encoder, wav2vec 2.0, AST, ...)."""

    name = "audio-classification"
    input_kind = "audio"
    file_kind = "audio"
    auto_model_class = AutoModelForAudioClassification

    @property
    def file_column(self) -> str:
        return self.config.data.audio_column

    def file_problem(self, path: Path) -> str | None:
        return audio_problem(path)

    def set_tokenizer(self, tokenizer) -> None:
        """Keep the feature extractor (:meth:`MediaClassificationTask.set_tokenizer`), first checking that
        ``data.max_audio_seconds`` fits the clip length it takes (Whisper: ``n_samples``, 30 s).

        Raises:
            DeltatuneError: ``data.max_audio_seconds`` longer than the model's clips.
        """
        seconds = self.config.data.max_audio_seconds
        samples = getattr(tokenizer, "n_samples", None) if tokenizer is not None else None
        rate = getattr(tokenizer, "sampling_rate", None)
        if seconds is not None and samples and rate and seconds * rate > samples:
            raise DeltatuneError(
                f"data.max_audio_seconds {seconds:g} exceeds the {samples / rate:g} s clips that model "
                f"'{self.config.model.name_or_path}' takes (its feature extractor's n_samples {samples} at {rate} Hz); "
                f"set data.max_audio_seconds to at most {samples / rate:g}"
            )
        super().set_tokenizer(tokenizer)

    def clip_seconds(self) -> float | None:
        """The clip length: ``data.max_audio_seconds``, else the feature extractor's own (Whisper: 30 s), else ``None``."""
        if self.config.data.max_audio_seconds is not None:
            return self.config.data.max_audio_seconds
        fe = self.tokenizer
        samples = getattr(fe, "n_samples", None) if fe is not None else None
        return samples / fe.sampling_rate if samples else None

    def input_length(self) -> int:
        """Encoder positions per clip at Whisper's 50 per second (the memory estimate's sequence length)."""
        return math.ceil(WHISPER_POSITIONS_PER_SECOND * (self.clip_seconds() or 30.0))

    def batch_inputs(self, files: list[str], train: bool) -> dict[str, torch.Tensor]:
        """The feature extractor's outputs (Whisper: ``input_features`` float32 (B, 80, 100 * seconds))
        of the clips, each at the extractor's rate, cut and padded to :meth:`clip_seconds`."""
        fe = self.tokenizer
        rate = int(fe.sampling_rate)
        seconds = self.clip_seconds()
        clips = [load_audio(Path(f), rate, f, seconds) for f in files]
        if seconds is None:
            out = fe(clips, sampling_rate=rate, padding="longest", return_tensors="pt")
        else:
            n = int(round(seconds * rate))
            out = fe(clips, sampling_rate=rate, padding="max_length", max_length=n, truncation=True, return_tensors="pt")
        keep = ("input_features", "input_values", "attention_mask")
        return {k: (v.float() if v.is_floating_point() else v) for k, v in out.items() if k in keep}

    def build_model(self, model_path: str, config_overrides: dict[str, Any]) -> torch.nn.Module:
        """:meth:`MediaClassificationTask.build_model`; a Whisper encoder is cut to ``data.max_audio_seconds``
        (:func:`keep_whisper_positions`)."""
        model = super().build_model(model_path, config_overrides)
        if model.config.model_type == "whisper":
            model.config.is_encoder_decoder = False  # the classifier is Whisper's encoder alone (a saved run says so)
            if self.config.data.max_audio_seconds is not None:
                keep_whisper_positions(model, self.config.data.max_audio_seconds)
        return model

    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        """Eight 0.25 s 16 kHz WAVs, four low tones (220 Hz, "low") and four high (1760 Hz, "high"), written
        once per process to a temporary folder; rows hold their absolute paths (see :meth:`Task.demo_rows`)."""
        rows = [{"audio": path, "label": label} for path, label in demo_tones("deltatune-demo-audio")]
        return {"rows": rows, "config": {"data": {"max_audio_seconds": 0.5}}}


def demo_tones(folder_name: str) -> list[tuple[str, str]]:
    """Eight 0.25 s 16 kHz mono WAVs (float32 sines), ``(absolute path, "low" | "high")``: four low
    tones (220 Hz) and four high (1760 Hz), each 1% apart, written once per machine to
    ``<tempdir>/<folder_name>`` (atomically: a temporary name, then ``os.replace``)."""
    import soundfile as sf

    folder = Path(tempfile.gettempdir()) / folder_name
    folder.mkdir(exist_ok=True)
    t = np.arange(4000) / 16000
    out = []
    for i in range(8):
        label = "high" if i % 2 else "low"
        path = folder / f"{label}-{i}.wav"
        if not path.is_file():
            tone = 0.5 * np.sin(2 * np.pi * (1760 if label == "high" else 220) * (1 + 0.01 * i) * t)
            tmp = folder / f".{label}-{i}.{os.getpid()}.wav"
            sf.write(str(tmp), tone.astype(np.float32), 16000)
            os.replace(tmp, path)
        out.append((str(path), label))
    return out
