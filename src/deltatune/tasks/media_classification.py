"""What image and audio classification share: rows that name files, labels as text classification's.

Rows: a column of file paths (``data.image_column`` / ``data.audio_column``; relative paths start
from the data file's folder, :func:`deltatune.data.paths.resolve_file`) and ``data.label_column``
(a name, a number, or a list / ``data.label_separator``-joined string for multi-label). Labels,
loss, metrics, predictions and the trained head's config are those of
:class:`deltatune.tasks.classification.ClassificationTask`.

Encoding checks every file (images decoded, audio headers read, :func:`deltatune.data.images.image_problem` /
:func:`deltatune.data.audio.audio_problem`) and keeps its path; the pixels or samples are decoded in
:meth:`MediaClassificationTask.collate`, batch by batch, so that a split never sits decoded in
memory and training augmentations draw anew each epoch. A bad file is refused naming the split
file, the row and the file; with ``data.skip_bad_rows`` training and evaluation rows with a bad
file are skipped and counted (``Features.stats``, eval.json's ``data`` section), never
prediction rows (one prediction per input row).

Peft adapters use peft's generic ``PeftModel`` (``peft_task_type`` ``None``: peft's sequence
classification wrapper passes ``input_ids``), with the freshly initialised head modules trained and
saved whole (``modules_to_save``).
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import datasets
import numpy as np
import torch

from deltatune.config import RunConfig
from deltatune.data.columns import is_missing, require_columns
from deltatune.data.paths import COLUMN_REMEDIES, resolve_file
from deltatune.data.splits import row_number
from deltatune.errors import DeltatuneError
from deltatune.models.loading import load_with_new_head
from deltatune.tasks.base import Features
from deltatune.tasks.chat_format import EncodeStats
from deltatune.tasks.classification import ClassificationTask, _sort_key
from deltatune.tasks.examples import example_row, worst_examples


@dataclass
class FileStats(EncodeStats):
    """Counts of encoding a split of file rows: examples kept and rows skipped for a bad file
    (``data.skip_bad_rows``; their 1-based row numbers in ``dropped_rows``)."""

    skipped_bad_files: int = 0

    def summary(self) -> str:
        rows = f" (rows {', '.join(map(str, self.dropped_rows[:10]))}{', ...' if len(self.dropped_rows) > 10 else ''})"
        return f"examples {self.examples} | skipped (unreadable file) {self.skipped_bad_files}" + (rows if self.dropped_rows else "")


def fresh_modules(new_parameter_names: set[str]) -> list[str] | None:
    """Top-level module names holding freshly initialised parameters (``classifier``, ``projector``),
    for peft's ``modules_to_save``; ``None`` when the checkpoint had the whole head."""
    return sorted({n.split(".", 1)[0] for n in new_parameter_names if "." in n}) or None


class MediaClassificationTask(ClassificationTask):
    """Classification of files named in the rows; subclasses say which files and how a batch is decoded."""

    peft_task_type = None
    modules_to_save: list[str] | None = None  # set by build_model: the head modules it initialised fresh
    file_kind = "media"  # "image" / "audio": messages
    tokenizer: Any = None  # the model's processor (image processor / feature extractor), set_tokenizer

    def __init__(self, config: RunConfig, labels: list[str] | None = None, multi_label: bool | None = None):
        super().__init__(config, labels, multi_label)
        self.rng = random.Random(config.seed)  # training augmentations

    # ---- what subclasses give ---------------------------------------------------------------
    @property
    def file_column(self) -> str:
        """The column holding each row's file path."""
        raise NotImplementedError

    def file_problem(self, path: Path) -> str | None:
        """Why ``path`` cannot be used, in words, or ``None``."""
        raise NotImplementedError

    def batch_inputs(self, files: list[str], train: bool) -> dict[str, torch.Tensor]:
        """The model inputs of the files ``files`` (decoded, augmented when ``train``, processed)."""
        raise NotImplementedError

    def input_length(self) -> int:
        """Positions the backbone sees per example (the memory estimate's sequence length)."""
        raise NotImplementedError

    def planned_length(self, lengths: Sequence[int]) -> int:
        """:meth:`input_length`: every example has that many positions, whatever ``data.max_seq_length`` says."""
        return self.input_length()

    # ---- rows -------------------------------------------------------------------------------
    def set_tokenizer(self, tokenizer) -> None:
        """Keep the model's processor (image processor / feature extractor) for :meth:`collate`."""
        self.tokenizer = tokenizer

    def fit(self, train: datasets.Dataset, source: str) -> None:
        """Build the label map from the training rows and check them (see :meth:`check`).

        Raises:
            DeltatuneError: missing columns, empty paths, missing labels, fewer than 2 classes;
                ``data.text_pair_column`` set.
        """
        d = self.config.data
        if d.text_pair_column:
            raise DeltatuneError(f"data.text_pair_column applies to text pairs; {self.name} reads one file per row: remove it")
        require_columns(train, [self.file_column, d.label_column], source, remedy=COLUMN_REMEDIES[self.input_kind])
        self._fit_labels(train, source)
        self.check(train, source, with_labels=True)

    def check(self, ds: datasets.Dataset, source: str, with_labels: bool = True) -> None:
        """Check the columns, that every row names a file, and (optionally) that every label was seen in
        training; the files themselves are checked by :meth:`encode`.

        Raises:
            DeltatuneError: naming the file, the row (from 1) and the column.
        """
        d = self.config.data
        col = self.file_column
        require_columns(ds, [col] + ([d.label_column] if with_labels else []), source, remedy=COLUMN_REMEDIES[self.input_kind])
        empty = [i for i, v in enumerate(ds[col], start=1) if is_missing(v)]
        if empty:
            raise DeltatuneError(
                f"{source}: row {empty[0]} has no file path in column '{col}' ({len(empty)} such rows); fill or remove them"
            )
        if with_labels:
            self._check_known_labels(ds, source)

    def rows_from_texts(self, texts: Sequence[Any]) -> datasets.Dataset:
        """Rows from file paths (``predict --image/--audio PATH``, :meth:`Predictor.predict`): each fills the file column."""
        return datasets.Dataset.from_dict({self.file_column: [str(t) for t in texts]})

    def input_texts(self, ds: datasets.Dataset, source: str = "data") -> list[tuple[str, ...]]:
        """The file paths (no text is tokenized: the vocabulary check skips these tasks)."""
        return [(str(v),) for v in ds[self.file_column]]

    # ---- encoding ---------------------------------------------------------------------------
    def _label_ids(self, value: Any, row: int, source: str) -> Any:
        names = self._row_labels(value, row, source)
        if not self.multi_label:
            return self.label2id[names[0]]
        hot = [0.0] * len(self.labels)
        for n in names:
            hot[self.label2id[n]] = 1.0
        return hot

    def encode(self, ds: datasets.Dataset, tokenizer, with_labels: bool = True, source: str = "data") -> Features:
        """Check each row's file and keep its resolved path (``{"file": str, "labels": ...}``); the pixels or
        samples are read in :meth:`collate`. ``Features.meta`` holds each feature's row index in ``ds``.
        Messages name the row of the file (:func:`deltatune.data.splits.row_number`: a part carved out of
        the training file keeps its file rows).

        Raises:
            DeltatuneError: a bad file (naming ``source``, the row, the column and the file), unless
                ``data.skip_bad_rows`` and ``with_labels``; no usable row left.
        """
        d = self.config.data
        skip = with_labels and d.skip_bad_rows
        labels = ds[d.label_column] if with_labels else None
        rows, meta, skipped = [], [], []
        for i, value in enumerate(ds[self.file_column]):
            path = resolve_file(value, source)
            problem = self.file_problem(path)
            if problem is not None:
                if not skip:
                    hint = ", or set data.skip_bad_rows: true" if with_labels else "; prediction needs every file"
                    raise DeltatuneError(
                        f"{source}: row {row_number(source, i)}, column '{self.file_column}': {path} {problem}; "
                        f"fix or remove the file{hint}"
                    )
                skipped.append(row_number(source, i))
                continue
            row: dict[str, Any] = {"file": str(path)}
            if with_labels:
                row["labels"] = self._label_ids(labels[i], row_number(source, i), source)
            rows.append(row)
            meta.append(i)
        if skipped:
            print(f"warning: {source}: skipped {len(skipped)} of {len(ds)} rows whose {self.file_kind} file cannot be read "
                  f"(data.skip_bad_rows; first: row {min(skipped)})", file=sys.stderr, flush=True)
        if not rows:
            raise DeltatuneError(f"{source}: no row has a readable {self.file_kind} file")
        stats = FileStats(examples=len(rows), skipped_bad_files=len(skipped), dropped_rows=sorted(skipped))
        return Features(rows, [self.input_length()] * len(rows), meta=meta, stats=stats)

    def training_features(self, features: Features) -> Features:
        """The training split's features marked for the training augmentations (:meth:`collate`)."""
        rows = [{**r, "train": True} for r in features.rows]
        return Features(rows, features.lengths, meta=features.meta, examples=features.examples, stats=features.stats)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Decode and process the batch's files (:meth:`batch_inputs`); ``labels`` int64 (B,) or float32 (B, L)."""
        batch = self.batch_inputs([f["file"] for f in features], bool(features[0].get("train")))
        if "labels" in features[0]:
            dtype = torch.float32 if self.multi_label else torch.long
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=dtype)
        return batch

    def num_targets(self, batch) -> int:
        return int(next(iter(batch.values())).shape[0])

    def show_feature(self, tokenizer, feature: dict[str, Any]) -> list[str]:
        """``deltatune check``: the file and its label."""
        label = feature.get("labels")
        shown = ", ".join(self.labels[j] for j, v in enumerate(label) if v) if isinstance(label, list) else self.labels[label] if label is not None else "-"
        return [f"{feature['file']} -> {shown}"]

    # ---- model ------------------------------------------------------------------------------
    def build_model(self, model_path: str, config_overrides: dict[str, Any]) -> torch.nn.Module:
        """``auto_model_class`` with ``num_labels``, ``id2label``, ``label2id`` and ``problem_type``; a head
        absent from the checkpoint or of another shape is initialised fresh and saved whole with an adapter."""
        model, self.new_parameter_names = load_with_new_head(
            self.auto_model_class,
            model_path,
            trust_remote_code=self.config.model.trust_remote_code,
            allow_pickle_weights=self.config.model.allow_pickle_weights,
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id=self.label2id,
            problem_type="multi_label_classification" if self.multi_label else "single_label_classification",
            **config_overrides,
        )
        self.modules_to_save = fresh_modules(self.new_parameter_names)
        return model

    # ---- outputs ----------------------------------------------------------------------------
    def worst_examples(self, outputs, features, rows, k):
        """As :meth:`ClassificationTask.worst_examples`, the input shown being the file path; ``row`` indexes
        ``rows`` (skipped rows have no record)."""
        probs, labels = self.probabilities(outputs["logits"]), np.asarray(outputs["labels"])
        index = features.meta if features.meta is not None else list(range(len(probs)))
        files = [str(v) for v in rows[self.file_column]]
        records = []
        for j, (p, y) in enumerate(zip(probs, labels)):
            i = int(index[j])
            if self.multi_label:
                true = {name for n, name in enumerate(self.labels) if y[n] >= 0.5}
                pred = {name for n, name in enumerate(self.labels) if p[n] >= 0.5}
                score = len(true & pred) / len(true | pred) if true | pred else 1.0
                shown = ", ".join(f"{self.labels[n]} ({p[n]:.2f})" for n in range(len(self.labels)) if p[n] >= 0.5)
                records.append(example_row(i, files[i], ", ".join(sorted(true, key=_sort_key)) or "(none)", shown or "(none)", score))
            else:
                best = int(p.argmax())
                records.append(example_row(i, files[i], self.labels[int(y)], f"{self.labels[best]} ({p[best]:.2f})", p[int(y)]))
        name = "Jaccard of predicted and true labels" if self.multi_label else "p(true label)"
        return worst_examples(name, True, records, k)
