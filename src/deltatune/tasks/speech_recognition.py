"""Speech recognition: fine-tune an audio encoder-decoder (Whisper) on (audio file, transcript) rows.

Rows: ``data.audio_column`` (default ``audio``; a WAV/FLAC/MP3/OGG path, relative paths from the data
file's folder, as audio-classification) and ``data.text_column`` (default ``text``: the transcript).
The model is any ``AutoModelForSpeechSeq2Seq`` whose folder has an ``AutoProcessor`` with a feature
extractor and a tokenizer (``WhisperProcessor``; packaged default ``whisper-tiny-en``), so the task's
``input_kind`` is ``"audio-text"``.

Audio: each file is decoded, mixed to mono and resampled to the feature extractor's rate by
:func:`deltatune.data.audio.load_audio`, then turned into log-mel ``input_features`` (Whisper: float32
(B, 80, 100 × seconds)) padded to the clip length: ``data.max_audio_seconds``, else the extractor's own
(Whisper: 30 s). With a shorter ``data.max_audio_seconds`` a Whisper encoder keeps only the first
``50 × seconds`` positions (:func:`deltatune.tasks.audio_classification.keep_whisper_positions`), so a
2 s clip costs 2 s of encoder compute, not 30. A file **longer** than the clip length is refused
naming the data file, the row, the column and the file (cutting it would leave a transcript of words
the model never hears); ``data.skip_bad_rows`` skips such training/evaluation rows like unreadable files.

Decoder targets: the transcript is tokenized with the processor's tokenizer. Whisper's tokenizer puts
its decoder prompt first (tiny.en: ``<|startoftranscript|><|notimestamps|>``) and ``<|endoftext|>``
last. The task builds the whole decoder sequence ``prompt + text + eos`` itself, where the prompt is
the model's ``decoder_start_token_id`` followed by the tokenizer's prefix without its own start token
(no double start token), and feeds the model ``decoder_input_ids = sequence[:-1]`` with
``labels = sequence[1:]``, the positions that predict prompt tokens set to -100. So position ``i``
predicts token ``i + 1``; the loss covers the text and the end token, never the prompt. (The model's
own shift-right of ``labels`` is not used.) A Whisper tokenizer gets a leading space before a text
that has none, as Whisper's training transcripts (`` Hello.``) have. Targets are cut to
``data.max_target_length`` tokens (the end token kept).

Loss: summed fp32 token cross-entropy over label tokens and their count (the loop's contract).
Evaluation during training: loss and perplexity per label token; at the end of a run (and in
``deltatune evaluate``) greedy generation (``eval.max_new_tokens``, ``eval.num_beams``,
``eval.generation_batch_size``) on up to ``eval.generation_max_samples`` rows, scored by
:func:`deltatune.metrics.speech.wer_cer`: ``wer``, ``cer``, ``exact_match`` on normalized text
(lowercased, punctuation removed) and ``wer_raw``, in percent. Generation starts the decoder from the
prompt above (so the tokenizer's prompt, not the model's ``forced_decoder_ids``, decides the language
/ task tokens). Predictions: ``{"generated": transcript, "ended_with_eos": bool}`` per row
(``deltatune predict RUN --file clip.wav`` or ``--input rows.csv``).

Δθ methods: peft's generic ``PeftModel`` (``peft_task_type`` ``None``: peft's ``SEQ_2_SEQ_LM``
wrapper passes ``input_ids``, which Whisper does not take); LoRA ``all-linear`` targets the encoder's
and decoder's attention and MLP projections.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import datasets
import soundfile as sf
import torch
from transformers import AutoModelForSpeechSeq2Seq

from deltatune.config import RunConfig
from deltatune.data.audio import audio_problem, load_audio
from deltatune.data.columns import is_missing, require_columns
from deltatune.data.paths import COLUMN_REMEDIES, resolve_file
from deltatune.errors import DeltatuneError
from deltatune.models.loading import quiet_transformers
from deltatune.tasks.audio_classification import WHISPER_POSITIONS_PER_SECOND, keep_whisper_positions
from deltatune.tasks.base import Features, GenerativeTask, Task
from deltatune.tasks.chat_format import IGNORE_INDEX, EncodeStats
from deltatune.data.splits import row_number
from deltatune.tasks.collate import pad_batch
from deltatune.tasks.generation import GenerationSettings, eos_token_ids
from deltatune.tasks.prompting import SCORERS, GenerationMetrics
from deltatune.tasks.token_loss import LabelTokenLoss, masked_cross_entropy, unwrap


@dataclass
class SpeechEncodeStats(EncodeStats):
    """Encoding counts: ``truncated`` counts transcripts cut to ``data.max_target_length``;
    ``skipped_bad_files`` rows skipped for an unreadable or too long file (``data.skip_bad_rows``,
    their 1-based numbers in ``dropped_rows``); ``trained_tokens`` are label tokens."""

    skipped_bad_files: int = 0


def decoder_prompt(tokenizer, decoder_start: int | None) -> list[int]:
    """The decoder's prompt: ``decoder_start`` followed by the special tokens the tokenizer puts before
    every text, its own leading start token dropped (Whisper tiny.en: ``[50257 <|startoftranscript|>,
    50362 <|notimestamps|>]``; a tokenizer that adds no prefix: ``[decoder_start]``).

    The prefix is what the tokenizer gives for an empty text, less a trailing end token.

    Raises:
        DeltatuneError: neither the model config nor the tokenizer names a decoder start token.
    """
    empty = list(tokenizer("").input_ids)
    eos = tokenizer.eos_token_id
    prefix = empty[:-1] if empty and eos is not None and empty[-1] == eos else empty
    if decoder_start is None:
        if not prefix:
            raise DeltatuneError("the model has no decoder_start_token_id and its tokenizer adds no start token; cannot start the decoder")
        decoder_start = prefix[0]
    if prefix and prefix[0] == decoder_start:
        prefix = prefix[1:]
    return [int(decoder_start)] + [int(t) for t in prefix]


def decoder_sequences(prompt: list[int], text_ids: list[int], eos: int | None, max_target_length: int) -> tuple[list[int], list[int], bool]:
    """``(decoder_input_ids, labels, cut)`` of one transcript.

    Args:
        prompt: :func:`decoder_prompt` (length P >= 1).
        text_ids: the transcript's token ids without special tokens.
        eos: the end token appended (``None``: none).
        max_target_length: most label tokens that are not -100 (text + end token); longer texts are
            cut, the end token kept.

    Returns:
        Both lists of length ``P - 1 + len(text) + 1`` (end token): ``decoder_input_ids`` is
        ``(prompt + text + [eos])[:-1]``, ``labels`` is ``[-100] * (P - 1) + text + [eos]``, so that
        ``labels[i]`` is the token after ``decoder_input_ids[i]``; and whether the text was cut.
    """
    room = max_target_length - (1 if eos is not None else 0)
    cut = len(text_ids) > room
    body = list(text_ids[:room]) + ([eos] if eos is not None else [])
    sequence = list(prompt) + body
    return sequence[:-1], [IGNORE_INDEX] * (len(prompt) - 1) + body, cut


class SpeechRecognitionTask(LabelTokenLoss, GenerationMetrics, GenerativeTask, Task):
    """Audio file → transcript on a speech encoder-decoder (``AutoModelForSpeechSeq2Seq``: Whisper)."""

    name = "speech-recognition"
    input_kind = "audio-text"
    auto_model_class = AutoModelForSpeechSeq2Seq
    peft_task_type = None  # peft's generic PeftModel (see the module doc)
    default_metric = "loss"
    greater_is_better = False
    vocab_logits = True
    tokenizer: Any = None  # the processor (feature extractor + tokenizer), set_tokenizer

    def __init__(self, config: RunConfig, model_config=None):
        super().__init__(config)
        self.model_config = model_config  # the (saved) model's config, when known
        # relative path cell -> the file it named in the rows check() saw (with their data file's folder), for
        # generation called without the rows' source (final_metrics(ds) has no source argument)
        self._checked_files: dict[str, str] = {}

    # ---- columns and the processor ---------------------------------------------------------
    @property
    def audio_column(self) -> str:
        """The column holding each row's audio file path (``data.audio_column``)."""
        return self.config.data.audio_column

    @property
    def text_column(self) -> str:
        """The column holding each row's transcript (``data.text_column``)."""
        return self.config.data.text_column

    def set_tokenizer(self, tokenizer) -> None:
        """Keep the processor (``WhisperProcessor``: ``feature_extractor`` and ``tokenizer``).

        Raises:
            DeltatuneError: the processor lacks a feature extractor or a tokenizer; ``data.max_audio_seconds``
                longer than the clips the feature extractor takes (Whisper: 30 s).
        """
        fe = getattr(tokenizer, "feature_extractor", None)
        tok = getattr(tokenizer, "tokenizer", None)
        if fe is None or tok is None:
            raise DeltatuneError(
                f"model '{self.config.model.name_or_path}' has no processor with both a feature extractor and a tokenizer "
                f"(got {type(tokenizer).__name__}); speech-recognition needs a speech-to-text model such as whisper-tiny-en"
            )
        seconds = self.config.data.max_audio_seconds
        samples = getattr(fe, "n_samples", None)
        if seconds is not None and samples and seconds * fe.sampling_rate > samples:
            raise DeltatuneError(
                f"data.max_audio_seconds {seconds:g} exceeds the {samples / fe.sampling_rate:g} s clips that model "
                f"'{self.config.model.name_or_path}' takes; set data.max_audio_seconds to at most {samples / fe.sampling_rate:g}"
            )
        self.tokenizer = tokenizer
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    @property
    def text_tokenizer(self):
        """The processor's tokenizer."""
        return self.tokenizer.tokenizer

    def clip_seconds(self) -> float:
        """The clip length in seconds: ``data.max_audio_seconds``, else the feature extractor's (Whisper: 30)."""
        if self.config.data.max_audio_seconds is not None:
            return float(self.config.data.max_audio_seconds)
        fe = self.tokenizer.feature_extractor
        samples = getattr(fe, "n_samples", None)
        return samples / fe.sampling_rate if samples else 30.0

    def decoder_start(self) -> int | None:
        """The model's ``decoder_start_token_id`` (read from its config when the task has none yet)."""
        if self.model_config is None:
            from deltatune.models import resolve_model
            from deltatune.models.loading import load_config

            m = self.config.model
            self.model_config = load_config(resolve_model(m.name_or_path), m.trust_remote_code)
        return getattr(self.model_config, "decoder_start_token_id", None)

    def prompt_ids(self) -> list[int]:
        """The decoder prompt of every row (:func:`decoder_prompt`)."""
        return decoder_prompt(self.text_tokenizer, self.decoder_start())

    # ---- rows -------------------------------------------------------------------------------
    def fit(self, train: datasets.Dataset, source: str) -> None:
        """Check the training rows (nothing to learn from them); see :meth:`check`.

        Raises:
            DeltatuneError: as :meth:`check`; text-to-text options that do not apply
                (``data.prompt_template``, ``data.source_prefix``).
        """
        d = self.config.data
        for key in ("prompt_template", "source_prefix"):
            if getattr(d, key):
                raise DeltatuneError(f"data.{key} applies to text-to-text tasks; speech-recognition reads audio: remove it")
        self.check(train, source, with_labels=True)

    def check(self, ds: datasets.Dataset, source: str, with_labels: bool = True) -> None:
        """Check the columns, that every row names a file and (with labels) has a transcript; the files
        themselves are checked by :meth:`encode`.

        Raises:
            DeltatuneError: a missing column, an empty path or transcript (naming the file, the row from 1
                and the column).
        """
        cols = [self.audio_column] + ([self.text_column] if with_labels else [])
        require_columns(ds, cols, source, remedy=COLUMN_REMEDIES[self.input_kind])
        for col in cols:
            empty = [i for i, v in enumerate(ds[col], start=1) if is_missing(v) or not str(v).strip()]
            if empty:
                what = "file path" if col == self.audio_column else "transcript"
                raise DeltatuneError(f"{source}: row {empty[0]} has no {what} in column '{col}' ({len(empty)} such rows); fill or remove them")
        # only cells that resolve elsewhere (relative to their data file): a server's absolute upload paths add nothing
        resolved = ((str(v), str(resolve_file(v, source))) for v in ds[self.audio_column])
        self._checked_files.update({cell: path for cell, path in resolved if cell != path})

    def rows_from_texts(self, texts: Sequence[Any]) -> datasets.Dataset:
        """Rows from audio file paths (``predict --file``, :meth:`Predictor.predict`)."""
        return datasets.Dataset.from_dict({self.audio_column: [str(t) for t in texts]})

    def input_texts(self, ds: datasets.Dataset, source: str = "data") -> list[tuple[str, ...]]:
        """The file paths (no input text is tokenized; the vocabulary check skips this task)."""
        return [(str(v),) for v in ds[self.audio_column]]

    def references(self, row: dict[str, Any]) -> list[str]:
        """The reference transcript of a row (one)."""
        value = row.get(self.text_column)
        return ["" if value is None else str(value)]

    def score(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
        """WER, CER, exact match and raw WER in percent (:func:`deltatune.metrics.speech.wer_cer`, the registry's scorer)."""
        return SCORERS[self.name](predictions, references)

    def example_input(self, row: dict[str, Any], row_number: int, source: str) -> str:
        """A row's input as report.html shows it: its audio file."""
        return str(row.get(self.audio_column))

    def file_problem(self, path: Path) -> str | None:
        """Why ``path`` cannot be transcribed, in words (unreadable, or longer than :meth:`clip_seconds`), or ``None``."""
        problem = audio_problem(path)
        if problem is not None:
            return problem
        seconds = self.clip_seconds()
        duration = sf.info(str(path)).duration
        if duration > seconds + 1e-3:
            return (f"is {duration:.2f} s long, longer than the {seconds:g} s clips this run transcribes "
                    f"({'data.max_audio_seconds' if self.config.data.max_audio_seconds is not None else 'the model’s window'}); "
                    "cut it into shorter clips (long-form audio is not supported)")
        return None

    def _files(self, ds: datasets.Dataset, source: str, skip: bool, with_labels: bool) -> tuple[list[str], list[int], list[int]]:
        """(resolved paths, their row indices, skipped rows of the file) of ``ds``'s audio column (rows as
        :func:`deltatune.data.splits.row_number` counts them: the file's, also in a part carved out of it).

        Raises:
            DeltatuneError: a bad or too long file unless ``skip``, naming the file, row and column.
        """
        files, keep, skipped = [], [], []
        for i, value in enumerate(ds[self.audio_column]):
            # rows handed over without their source ("data": final_metrics) resolve as check() resolved them
            known = self._checked_files.get(str(value)) if source == "data" else None
            path = Path(known) if known else resolve_file(value, source)
            problem = self.file_problem(path)
            if problem is not None:
                if not skip:
                    hint = ", or set data.skip_bad_rows: true" if with_labels else "; transcription needs every file"
                    raise DeltatuneError(
                        f"{source}: row {row_number(source, i)}, column '{self.audio_column}': {path} {problem}; fix or remove the file{hint}"
                    )
                skipped.append(row_number(source, i))
                continue
            files.append(str(path))
            keep.append(i)
        return files, keep, skipped

    def encode(self, ds: datasets.Dataset, tokenizer, with_labels: bool = True, source: str = "data") -> Features:
        """Check each row's file and keep its resolved path; tokenize transcripts into ``decoder_input_ids``
        and ``labels`` (:func:`decoder_sequences`). Audio is decoded in :meth:`collate`, batch by batch.
        ``Features.meta`` holds each feature's row index in ``ds``.

        Raises:
            DeltatuneError: a bad or too long file (naming ``source``, the row, the column and the file),
                unless ``data.skip_bad_rows`` and ``with_labels``; no usable row left.
        """
        if tokenizer is not self.tokenizer:
            self.set_tokenizer(tokenizer)
        d = self.config.data
        files, keep, skipped = self._files(ds, source, with_labels and d.skip_bad_rows, with_labels)
        if skipped:
            print(f"warning: {source}: skipped {len(skipped)} of {len(ds)} rows whose audio file cannot be read or is too long "
                  f"(data.skip_bad_rows; first: row {skipped[0]})", file=sys.stderr, flush=True)
        if not files:
            raise DeltatuneError(f"{source}: no row has a readable audio file")
        rows: list[dict[str, Any]] = [{"file": f} for f in files]
        st = SpeechEncodeStats(examples=len(rows), skipped_bad_files=len(skipped), dropped_rows=skipped)
        frames = math.ceil(WHISPER_POSITIONS_PER_SECOND * self.clip_seconds())
        lengths = [frames] * len(rows)
        if with_labels:
            tok = self.text_tokenizer
            prompt = self.prompt_ids()
            eos = tok.eos_token_id
            column = ds[self.text_column]
            texts = [self.transcript_for_tokenizer(str(column[i]).strip()) for i in keep]
            ids = tok(texts, add_special_tokens=False).input_ids
            for row, text_ids in zip(rows, ids):
                dec, labels, cut = decoder_sequences(prompt, text_ids, eos, d.max_target_length)
                row["decoder_input_ids"], row["labels"] = dec, labels
                st.truncated += int(cut)
            st.trained_tokens = sum(sum(t != IGNORE_INDEX for t in r["labels"]) for r in rows)
            st.total_tokens = sum(len(r["labels"]) for r in rows)
            lengths = [frames + len(r["labels"]) for r in rows]
        return Features(rows, lengths, meta=keep, stats=st)

    def transcript_for_tokenizer(self, text: str) -> str:
        """The transcript as the tokenizer gets it: a Whisper tokenizer's text starts with a space (as in
        Whisper's training data); other tokenizers get it unchanged."""
        if type(self.text_tokenizer).__name__.startswith("Whisper") and text and not text[0].isspace():
            return " " + text
        return text

    # ---- batches ------------------------------------------------------------------------
    def batch_inputs(self, files: list[str]) -> torch.Tensor:
        """Log-mel ``input_features`` float32 (B, mel bins, frames) of the files, each decoded at the feature
        extractor's rate and padded to :meth:`clip_seconds`."""
        fe = self.tokenizer.feature_extractor
        rate = int(fe.sampling_rate)
        seconds = self.clip_seconds()
        clips = [load_audio(Path(f), rate, f) for f in files]
        n = int(round(seconds * rate))
        out = fe(clips, sampling_rate=rate, padding="max_length", max_length=n, truncation=True, return_tensors="pt")
        return out["input_features"].float()

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """``input_features`` float32 (B, mel, frames); with labels, ``decoder_input_ids`` int64 (B, T) right-padded
        with the pad id and ``labels`` int64 (B, T) padded with -100."""
        batch = {"input_features": self.batch_inputs([f["file"] for f in features])}
        if "labels" in features[0]:
            padded = pad_batch(
                [{"decoder_input_ids": f["decoder_input_ids"], "labels": f["labels"]} for f in features],
                {"decoder_input_ids": self.pad_token_id, "labels": IGNORE_INDEX},
            )
            batch.update(padded)
        return batch

    def show_feature(self, tokenizer, feature: dict[str, Any]) -> list[str]:
        """``deltatune check``: the file and its decoder sequence, the trained tokens wrapped in ``[[ ]]``
        (``... -> '<|startoftranscript|><|notimestamps|>[[ seven<|endoftext|>]]'``)."""
        tok = self.text_tokenizer
        labels = feature.get("labels")
        if labels is None:
            return [feature["file"]]
        prompt = feature["decoder_input_ids"][: sum(t == IGNORE_INDEX for t in labels) + 1]
        target = [t for t in labels if t != IGNORE_INDEX]
        return [f"{feature['file']} -> {tok.decode(prompt) + '[[' + tok.decode(target) + ']]'!r}"]

    # ---- model ----------------------------------------------------------------------------
    def build_model(self, model_path: str, config_overrides: dict[str, Any]) -> torch.nn.Module:
        """``AutoModelForSpeechSeq2Seq`` in float32; a Whisper encoder is cut to ``data.max_audio_seconds``
        (:func:`keep_whisper_positions`, the config saying so from then on).

        Raises:
            DeltatuneError: unloadable weights; ``data.max_target_length`` beyond the decoder's positions.
        """
        model = self.load_pretrained_float32(AutoModelForSpeechSeq2Seq, model_path, config_overrides)
        self.model_config = model.config
        positions = getattr(model.config, "max_target_positions", None)
        if positions and self.config.data.max_target_length > positions:
            raise DeltatuneError(
                f"data.max_target_length {self.config.data.max_target_length} exceeds the decoder's {positions} positions; "
                f"set it to at most {positions}"
            )
        if model.config.model_type == "whisper" and self.config.data.max_audio_seconds is not None:
            keep_whisper_positions(model.model, self.config.data.max_audio_seconds)
        return model

    # ---- loss ----------------------------------------------------------------------------
    @staticmethod
    def token_losses(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token cross-entropy (B, T) in fp32 over the labels (0 at -100) and the label mask (B, T)."""
        labels = batch["labels"]
        logits = model(input_features=batch["input_features"], decoder_input_ids=batch["decoder_input_ids"], use_cache=False).logits
        return masked_cross_entropy(logits, labels)

    # ---- outputs -> metrics / predictions (loss, num_targets, eval_step, compute_metrics: LabelTokenLoss;
    # WER/CER come from final_metrics, by generation)
    def usable_rows(self, ds: datasets.Dataset, source: str = "data") -> datasets.Dataset:
        """``ds`` without the rows whose file is unreadable or too long when ``data.skip_bad_rows`` is set (the rows
        :meth:`encode` skips), so that the generation metrics score the same rows as the loss; else ``ds``."""
        if not self.config.data.skip_bad_rows:
            return ds
        _, keep, skipped = self._files(ds, source, True, True)
        return ds.select(keep) if skipped else ds

    def final_metrics(self, model, tokenizer, ds: datasets.Dataset, device="cpu") -> dict[str, Any]:
        """:meth:`GenerationMetrics.final_metrics` of the rows :meth:`usable_rows` keeps."""
        return super().final_metrics(model, tokenizer, self.usable_rows(ds), device)

    def scored_generations(self, model, tokenizer, ds: datasets.Dataset, device="cpu", source: str = "data"):
        """:meth:`GenerationMetrics.scored_generations` of the rows :meth:`usable_rows` keeps (a record's ``row``
        then counts the kept rows)."""
        return super().scored_generations(model, tokenizer, self.usable_rows(ds, source), device, source)

    @torch.no_grad()
    def generate_rows(self, model, tokenizer, ds, device="cpu", source: str = "data") -> tuple[list[str], list[bool]]:
        """Transcribe each row's audio: the decoder starts from :meth:`prompt_ids` and generates with the run's
        ``eval`` settings (greedy by default, ``eval.max_new_tokens``), ``eval.generation_batch_size`` clips
        at a time.

        Returns:
            (transcripts in row order, special tokens removed and stripped; whether each ended with the end
            token within ``eval.max_new_tokens``).

        Raises:
            DeltatuneError: a missing audio column, a bad or too long file (naming the row).
        """
        from transformers.generation.utils import GenerationMixin

        if tokenizer is not None and tokenizer is not self.tokenizer:
            self.set_tokenizer(tokenizer)
        require_columns(ds, [self.audio_column], source, remedy=COLUMN_REMEDIES[self.input_kind])
        files, _, _ = self._files(ds, source, False, False)
        settings = GenerationSettings.from_config(self.config.eval)
        net = unwrap(model)
        hf = net.get_base_model() if hasattr(net, "get_base_model") else net  # peft: the model with its adapters injected
        was_training = hf.training
        hf.eval()
        tok = self.text_tokenizer
        eos = eos_token_ids(hf, tok)
        prompt = self.prompt_ids()
        texts: list[str] = []
        ended: list[bool] = []
        for start in range(0, len(files), settings.batch_size):
            chunk = files[start : start + settings.batch_size]
            x = self.batch_inputs(chunk).to(device)
            dec = torch.tensor([prompt] * len(chunk), dtype=torch.long, device=device)
            kwargs: dict[str, Any] = dict(
                max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams, do_sample=settings.do_sample,
                eos_token_id=eos or None, pad_token_id=self.pad_token_id,
            )
            if settings.do_sample:
                kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            # GenerationMixin.generate, not Whisper's override: the decoder prompt is given, and short clips
            # with a cut encoder are transcribed as one segment
            with quiet_transformers():  # no "attention mask is not set" notice: every clip has the same length
                seqs = GenerationMixin.generate(hf, input_features=x, decoder_input_ids=dec, **kwargs)
            new = seqs[:, len(prompt):]
            for row in new:
                texts.append(tok.decode(row, skip_special_tokens=True).strip())
                ended.append(bool(torch.isin(row, torch.tensor(eos, device=row.device)).any()) if eos else False)
        if was_training:
            hf.train()
        return texts, ended

    @classmethod
    def from_pretrained_config(cls, config: RunConfig, model_config) -> "SpeechRecognitionTask":
        return cls(config, model_config)

    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        """Eight 0.25 s 16 kHz WAVs, four low tones (220 Hz, transcript "low tone") and four high (1760 Hz,
        "high tone"), written once per process to a temporary folder; rows hold their absolute paths."""
        from deltatune.tasks.audio_classification import demo_tones

        rows = [{"audio": path, "text": f"{label} tone"} for path, label in demo_tones("deltatune-demo-speech")]
        return {"rows": rows, "config": {"data": {"max_audio_seconds": 0.5, "max_target_length": 8}}}
