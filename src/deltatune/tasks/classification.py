"""Text classification: single-label (softmax) and multi-label (sigmoid), single texts or pairs.

Rows: ``data.text_column`` (and optionally ``data.text_pair_column``) plus ``data.label_column``.
Labels may be strings or integers; they are normalised to strings (``1``, ``1.0`` and ``"1"``
are the same label) and sorted to make the label map (integers numerically). Multi-label rows
hold a list of labels (JSON) or a string split on ``data.label_separator`` (CSV).

Loss: cross-entropy (single-label) or binary cross-entropy averaged over the label set
(multi-label), summed over examples; the loop divides by the number of examples in the
accumulated batch. Multi-label predictions threshold sigmoid probabilities at 0.5.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from deltatune.config import RunConfig
from deltatune.data.columns import check_text_column, is_missing, require_columns
from deltatune.errors import DeltatuneError
from deltatune.metrics.classification import multi_label_metrics, single_label_metrics
from deltatune.models.loading import load_with_new_head
from deltatune.tasks.base import Features, Task
from deltatune.tasks.collate import model_inputs, pad_batch
from deltatune.tasks.examples import example_row, worst_examples


def normalize_label(value: Any) -> str:
    """Canonical string form of one label: ints and integral floats lose the ``.0``.

    Raises:
        ValueError: for a missing value (None/NaN/empty).
    """
    if is_missing(value):
        raise ValueError("missing label")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _sort_key(name: str):
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def text_inputs(ds: datasets.Dataset, data) -> list[tuple[str, ...]]:
    """``(text,)`` per row of ``ds``, or ``(text, text_pair)`` when ``data.text_pair_column`` is set."""
    texts = [str(t) for t in ds[data.text_column]]
    if not data.text_pair_column:
        return [(t,) for t in texts]
    return list(zip(texts, (str(t) for t in ds[data.text_pair_column])))


def tokenize_texts(ds: datasets.Dataset, tokenizer, data) -> list[dict[str, list[int]]]:
    """One row of ``input_ids``/``attention_mask``[/``token_type_ids``] per row of ``ds``: its
    ``data.text_column`` (and ``data.text_pair_column``) tokenized, truncated to ``data.max_seq_length``."""
    texts = [str(t) for t in ds[data.text_column]]
    pairs = [str(t) for t in ds[data.text_pair_column]] if data.text_pair_column else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=data.max_seq_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


class ClassificationTask(Task):
    """Sequence classification with a linear head on the encoder (``AutoModelForSequenceClassification``)."""

    name = "text-classification"
    auto_model_class = AutoModelForSequenceClassification
    peft_task_type = "SEQ_CLS"
    head_config_keys = ("id2label", "label2id", "problem_type")

    def __init__(self, config: RunConfig, labels: list[str] | None = None, multi_label: bool | None = None):
        super().__init__(config)
        self.labels: list[str] = list(labels or [])
        self.multi_label = multi_label

    # ---- labels ---------------------------------------------------------------------------
    @property
    def default_metric(self) -> str:  # type: ignore[override]
        return "f1_micro" if self.multi_label else "accuracy"

    greater_is_better = True

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}

    def _row_labels(self, value: Any, row: int, source: str) -> list[str]:
        col = self.config.data.label_column
        try:
            if self.multi_label:
                if isinstance(value, (list, tuple, np.ndarray)):
                    items = list(value)
                elif self.config.data.label_separator and isinstance(value, str):
                    items = [v for v in value.split(self.config.data.label_separator) if v.strip()]
                elif is_missing(value):
                    items = []  # a row with no labels is valid multi-label data
                else:
                    items = [value]
                return sorted({normalize_label(v) for v in items})
            if isinstance(value, (list, tuple, np.ndarray)):
                raise DeltatuneError(
                    f"{source}: row {row} has a list in '{col}' but the task is single-label; set data.multi_label: true"
                )
            return [normalize_label(value)]
        except ValueError:
            raise DeltatuneError(f"{source}: row {row} has no label in column '{col}'; fill it or drop the row") from None

    def _detect_multi_label(self, values: list) -> bool:
        if self.config.data.multi_label is not None:
            return self.config.data.multi_label
        if self.config.data.label_separator:
            return True
        return any(isinstance(v, (list, tuple, np.ndarray)) for v in values)

    def fit(self, train: datasets.Dataset, source: str) -> None:
        """Build the label map from the training rows and check texts and labels.

        Raises:
            DeltatuneError: missing columns, empty texts, missing labels, fewer than 2 classes.
        """
        d = self.config.data
        require_columns(train, [d.text_column, d.text_pair_column, d.label_column], source)
        self._fit_labels(train, source)
        self.check(train, source, with_labels=True)

    def _fit_labels(self, train: datasets.Dataset, source: str) -> None:
        """Set ``multi_label`` and the sorted label names from the training rows' label column.

        Raises:
            DeltatuneError: a missing label, fewer than 2 classes (single-label), no label at all.
        """
        d = self.config.data
        values = train[d.label_column]
        self.multi_label = self._detect_multi_label(values)
        names: set[str] = set()
        for i, v in enumerate(values, start=1):
            names.update(self._row_labels(v, i, source))
        if len(names) < 2 and not self.multi_label:
            raise DeltatuneError(
                f"{source}: column '{d.label_column}' has {len(names)} distinct label(s) {sorted(names)}; "
                "classification needs at least 2"
            )
        if not names:
            raise DeltatuneError(f"{source}: column '{d.label_column}' holds no labels")
        self.labels = sorted(names, key=_sort_key)

    def check(self, ds: datasets.Dataset, source: str, with_labels: bool = True) -> None:
        """Check columns, texts and (optionally) that every label was seen in training.

        Raises:
            DeltatuneError: naming the file, the row (data rows counted from 1) and the column.
        """
        d = self.config.data
        require_columns(ds, [d.text_column, d.text_pair_column] + ([d.label_column] if with_labels else []), source)
        check_text_column(ds[d.text_column], d.text_column, source)
        if d.text_pair_column:
            check_text_column(ds[d.text_pair_column], d.text_pair_column, source)
        if with_labels:
            self._check_known_labels(ds, source)

    def _check_known_labels(self, ds: datasets.Dataset, source: str) -> None:
        """Every label of ``ds``'s label column was seen in training.

        Raises:
            DeltatuneError: naming the file, the row (from 1), the label and the column.
        """
        d = self.config.data
        known = self.label2id
        for i, v in enumerate(ds[d.label_column], start=1):
            for name in self._row_labels(v, i, source):
                if name not in known:
                    raise DeltatuneError(
                        f"{source}: row {i} has label '{name}' in column '{d.label_column}' that the training "
                        f"data does not have (known: {', '.join(self.labels[:20])}); fix the label or add it to training"
                    )

    def input_texts(self, ds: datasets.Dataset, source: str = "data") -> list[tuple[str, ...]]:
        """``(text,)`` per row, or ``(text, text_pair)`` for sentence pairs (see :meth:`Task.input_texts`)."""
        return text_inputs(ds, self.config.data)

    def stratify_keys(self, ds: datasets.Dataset) -> list | None:
        if self.multi_label:
            return None
        return [normalize_label(v) if not is_missing(v) else "" for v in ds[self.config.data.label_column]]

    # ---- encoding -----------------------------------------------------------------------
    def encode(self, ds: datasets.Dataset, tokenizer, with_labels: bool = True, source: str = "data") -> Features:
        """Tokenize (truncating to ``data.max_seq_length``) into input_ids/attention_mask[/token_type_ids]/labels.

        ``labels`` is an int class id (single-label) or a multi-hot list of 0/1 floats (multi-label).
        """
        d = self.config.data
        rows = tokenize_texts(ds, tokenizer, d)
        if with_labels:
            l2i = self.label2id
            for i, (row, v) in enumerate(zip(rows, ds[d.label_column]), start=1):
                names = self._row_labels(v, i, source)
                if self.multi_label:
                    hot = [0.0] * len(self.labels)
                    for n in names:
                        hot[l2i[n]] = 1.0
                    row["labels"] = hot
                else:
                    row["labels"] = l2i[names[0]]
        return Features(rows, [len(r["input_ids"]) for r in rows])

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_batch(features, {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0})
        if "labels" in features[0]:
            if self.multi_label:
                batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.float32)
            else:
                batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    # ---- model --------------------------------------------------------------------------
    def build_model(self, model_path: str, config_overrides: dict[str, Any]) -> torch.nn.Module:
        """``AutoModelForSequenceClassification`` with ``num_labels``, ``id2label``, ``label2id``.

        A classifier head whose shape does not match the label count is re-initialised.
        """
        model, self.new_parameter_names = load_with_new_head(
            AutoModelForSequenceClassification,
            model_path,
            trust_remote_code=self.config.model.trust_remote_code,
            allow_pickle_weights=self.config.model.allow_pickle_weights,
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id=self.label2id,
            problem_type="multi_label_classification" if self.multi_label else "single_label_classification",
            **config_overrides,
        )
        return model

    def loss(self, model, batch):
        logits = model(**model_inputs(batch)).logits.float()
        labels = batch["labels"]
        if self.multi_label:
            per_example = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(-1)
            total = per_example.sum()
        else:
            total = F.cross_entropy(logits, labels, reduction="sum")
        return total, torch.tensor(labels.shape[0], device=logits.device)

    def num_targets(self, batch) -> int:
        return int(batch["input_ids"].shape[0])

    # ---- outputs --------------------------------------------------------------------------
    @torch.no_grad()
    def eval_step(self, model, batch):
        logits = model(**model_inputs(batch)).logits.float()
        out = {"logits": logits.cpu().numpy()}
        if "labels" in batch:
            out["labels"] = batch["labels"].cpu().numpy()
        return out

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Softmax (single-label) or sigmoid (multi-label) of (N, L) logits, float64 (N, L)."""
        logits = logits.astype(np.float64)
        if self.multi_label:
            return 1.0 / (1.0 + np.exp(-logits))
        z = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def compute_metrics(self, outputs, features=None):
        logits, labels = outputs["logits"], outputs["labels"]
        probs = self.probabilities(logits)
        if self.multi_label:
            m = multi_label_metrics(labels.astype(int), (probs >= 0.5).astype(int), self.labels)
            loss = F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(labels).float())
        else:
            m = single_label_metrics(labels, probs.argmax(-1), self.labels)
            loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels).long())
        return {"loss": float(loss), **m}

    def decode(self, outputs, features=None):
        probs = self.probabilities(outputs["logits"])
        records = []
        for row in probs:
            p = {name: float(row[i]) for i, name in enumerate(self.labels)}
            if self.multi_label:
                label: Any = [name for i, name in enumerate(self.labels) if row[i] >= 0.5]
            else:
                label = self.labels[int(row.argmax())]
            records.append({"label": label, "probabilities": p})
        return records

    def worst_examples(self, outputs, features, rows, k):
        """The ``k`` rows with the lowest probability of their true label (single-label), or the
        lowest Jaccard index of the predicted and true label sets (multi-label; two empty sets
        count 1), worst first; see :meth:`Task.worst_examples`.

        ``input`` is the text (``" || "`` and the pair text for sentence pairs), ``reference`` the
        true label(s), ``prediction`` the predicted label(s) with their probability, e.g.
        ``positive (0.93)``.
        """
        d = self.config.data
        probs, labels = self.probabilities(outputs["logits"]), np.asarray(outputs["labels"])
        texts = [str(t) for t in rows[d.text_column]]
        if d.text_pair_column:
            texts = [f"{t} || {u}" for t, u in zip(texts, rows[d.text_pair_column])]
        records = []
        for i, (p, y, text) in enumerate(zip(probs, labels, texts)):
            if self.multi_label:
                true = {name for j, name in enumerate(self.labels) if y[j] >= 0.5}
                pred = {name for j, name in enumerate(self.labels) if p[j] >= 0.5}
                score = len(true & pred) / len(true | pred) if true | pred else 1.0
                shown = ", ".join(f"{self.labels[j]} ({p[j]:.2f})" for j in range(len(self.labels)) if p[j] >= 0.5)
                records.append(example_row(i, text, ", ".join(sorted(true, key=_sort_key)) or "(none)", shown or "(none)", score))
            else:
                best = int(p.argmax())
                records.append(example_row(i, text, self.labels[int(y)], f"{self.labels[best]} ({p[best]:.2f})", p[int(y)]))
        name = "Jaccard of predicted and true labels" if self.multi_label else "p(true label)"
        return worst_examples(name, True, records, k)

    @classmethod
    def from_pretrained_config(cls, config: RunConfig, model_config) -> "ClassificationTask":
        id2label = {int(k): v for k, v in model_config.id2label.items()}
        labels = [id2label[i] for i in range(len(id2label))]
        return cls(config, labels, model_config.problem_type == "multi_label_classification")


    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        """Eight two-class sentiment rows (``text``, ``label``); see :meth:`Task.demo_rows`."""
        good, bad = "a good and lovely film", "a bad and boring film"
        return {"rows": [{"text": good if i % 2 else bad, "label": "pos" if i % 2 else "neg"} for i in range(8)], "config": {}}
