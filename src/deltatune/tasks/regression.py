"""Text regression: one or several real-valued targets per text or sentence pair (STS-B similarity).

Rows: ``data.text_column`` (and optionally ``data.text_pair_column``) plus the target(s):
``data.label_column`` (one target) or ``data.label_columns`` (several, predicted together by
one head with an output each). Every target value must be a finite number (a float, an int or
a string such as ``"3.8"``); a missing, non-numeric, NaN or infinite value is refused naming the
file, the row (from 1) and the column.

Targets are standardized with ``data.standardize_targets`` (default): ``(y - mean) / std`` per
target, with mean and std (population std) over the training rows; a target constant in
training gets std 1. The head is trained on the standardized values; mean and std are saved in
the model's config (``regression_target_mean`` / ``regression_target_std`` beside
``id2label`` = the target names), so :meth:`TextRegressionTask.from_pretrained_config`
restores them and predictions, metrics and served answers are in the original units.

Loss (``data.regression_loss``): squared error or Huber (delta 1, on the standardized scale),
averaged over the targets of an example and summed over examples; the loop divides by the
number of examples of the accumulated batch. Metrics: :mod:`deltatune.metrics.regression`
(``mse`` selects the best checkpoint, lower is better, as for the loss-like metrics of the
other tasks; set ``eval.metric_for_best_model: spearman`` for STS-style ranking).

Predictions: ``{"score": value}``, or ``{"score": {target name: value}}`` with several targets.
"""

from __future__ import annotations

import math
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from deltatune.config import RunConfig
from deltatune.data.columns import check_text_column, is_missing, require_columns
from deltatune.errors import DeltatuneError
from deltatune.metrics.regression import regression_metrics
from deltatune.models.loading import load_with_new_head
from deltatune.tasks.classification import text_inputs, tokenize_texts
from deltatune.tasks.base import Features, Task
from deltatune.tasks.collate import model_inputs, pad_batch
from deltatune.tasks.examples import example_row, worst_examples
from deltatune.tasks.options.regression import target_columns

# model config attributes holding the standardization (saved with config.json / the delta's meta)
MEAN_KEY, STD_KEY = "regression_target_mean", "regression_target_std"


def parse_target(value: Any, row: int, column: str, source: str) -> float:
    """``value`` of ``column`` as a finite float.

    Raises:
        DeltatuneError: a missing, non-numeric (booleans included), NaN or infinite value,
            naming ``source``, the ``row`` (from 1) and the column.
    """
    if is_missing(value):
        raise DeltatuneError(f"{source}: row {row} has no target in column '{column}'; fill it with a number or drop the row")
    try:
        if isinstance(value, bool):
            raise ValueError
        x = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise DeltatuneError(f"{source}: row {row} has {value!r} in column '{column}', not a number; give a number (e.g. 3.8)") from None
    if not math.isfinite(x):
        raise DeltatuneError(f"{source}: row {row} has {value!r} in column '{column}'; give a finite number or drop the row")
    return x


class TextRegressionTask(Task):
    """Regression with a linear head of one output per target (``AutoModelForSequenceClassification``, ``problem_type="regression"``)."""

    name = "text-regression"
    default_metric = "mse"
    greater_is_better = False
    auto_model_class = AutoModelForSequenceClassification
    peft_task_type = "SEQ_CLS"
    head_config_keys = ("id2label", "label2id", "problem_type", MEAN_KEY, STD_KEY)
    setting_keys = ("regression_loss", "standardize_targets")

    def __init__(self, config: RunConfig, mean: list[float] | None = None, std: list[float] | None = None):
        super().__init__(config)
        self.targets = target_columns(config.data)
        n = len(self.targets)
        self.mean = np.asarray(mean if mean is not None else [0.0] * n, dtype=np.float64)
        self.std = np.asarray(std if std is not None else [1.0] * n, dtype=np.float64)

    # ---- rows -------------------------------------------------------------------------------
    def target_values(self, ds: datasets.Dataset, source: str) -> np.ndarray:
        """The targets of ``ds`` as a float64 array (N, T), checked row by row (see :func:`parse_target`)."""
        cols = [[parse_target(v, i, c, source) for i, v in enumerate(ds[c], start=1)] for c in self.targets]
        return np.asarray(cols, dtype=np.float64).T.reshape(len(ds), len(self.targets))

    def fit(self, train: datasets.Dataset, source: str) -> None:
        """Check the training rows and compute each target's mean and std over them.

        Raises:
            DeltatuneError: missing columns, empty texts, a bad target value (file, row, column),
                data.multi_label or data.label_separator set (classification options).
        """
        d = self.config.data
        for key in ("multi_label", "label_separator"):
            if getattr(d, key) is not None:
                raise DeltatuneError(f"data.{key} applies to text-classification, not text-regression; unset it")
        self.check(train, source)
        y = self.target_values(train, source)
        if d.standardize_targets:
            self.mean, std = y.mean(axis=0), y.std(axis=0)
            self.std = np.where(std > 0, std, 1.0)
        else:
            self.mean, self.std = np.zeros(len(self.targets)), np.ones(len(self.targets))

    def check(self, ds: datasets.Dataset, source: str, with_labels: bool = True) -> None:
        """Check columns, texts and (with labels) that every target is a finite number.

        Raises:
            DeltatuneError: naming the file, the row (data rows counted from 1) and the column.
        """
        d = self.config.data
        require_columns(ds, [d.text_column, d.text_pair_column] + (self.targets if with_labels else []), source)
        check_text_column(ds[d.text_column], d.text_column, source)
        if d.text_pair_column:
            check_text_column(ds[d.text_pair_column], d.text_pair_column, source)
        if with_labels:
            self.target_values(ds, source)

    def input_texts(self, ds: datasets.Dataset, source: str = "data") -> list[tuple[str, ...]]:
        """``(text,)`` per row, or ``(text, text_pair)`` for sentence pairs (see :meth:`Task.input_texts`)."""
        return text_inputs(ds, self.config.data)

    # ---- encoding -----------------------------------------------------------------------------
    def encode(self, ds: datasets.Dataset, tokenizer, with_labels: bool = True, source: str = "data") -> Features:
        """Tokenize (truncating to ``data.max_seq_length``) into input_ids/attention_mask[/token_type_ids]/labels.

        ``labels`` is the list of the row's standardized targets (T floats).
        """
        rows = tokenize_texts(ds, tokenizer, self.config.data)
        if with_labels:
            z = (self.target_values(ds, source) - self.mean) / self.std
            for row, values in zip(rows, z):
                row["labels"] = [float(v) for v in values]
        return Features(rows, [len(r["input_ids"]) for r in rows])

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad the token ids; ``labels`` as a float32 (B, T) tensor."""
        batch = pad_batch(features, {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0})
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.float32)
        return batch

    # ---- model --------------------------------------------------------------------------------
    def build_model(self, model_path: str, config_overrides: dict[str, Any]) -> torch.nn.Module:
        """``AutoModelForSequenceClassification`` with one output per target (``id2label`` = target
        names, ``problem_type="regression"``); the standardization is written into its config."""
        model, self.new_parameter_names = load_with_new_head(
            AutoModelForSequenceClassification,
            model_path,
            trust_remote_code=self.config.model.trust_remote_code,
            allow_pickle_weights=self.config.model.allow_pickle_weights,
            num_labels=len(self.targets),
            id2label=dict(enumerate(self.targets)),
            label2id={name: i for i, name in enumerate(self.targets)},
            problem_type="regression",
            **config_overrides,
        )
        setattr(model.config, MEAN_KEY, [float(v) for v in self.mean])
        setattr(model.config, STD_KEY, [float(v) for v in self.std])
        return model

    def loss(self, model, batch):
        """Squared error or Huber loss on the standardized targets, mean over targets, summed over examples."""
        pred = model(**model_inputs(batch)).logits.float()
        labels = batch["labels"]
        if self.config.data.regression_loss == "huber":
            per = F.huber_loss(pred, labels, reduction="none", delta=1.0)
        else:
            per = F.mse_loss(pred, labels, reduction="none")
        return per.mean(-1).sum(), torch.tensor(labels.shape[0], device=pred.device)

    def num_targets(self, batch) -> int:
        return int(batch["input_ids"].shape[0])

    # ---- outputs ------------------------------------------------------------------------------
    def to_units(self, z: np.ndarray) -> np.ndarray:
        """Standardized values (N, T) back in the targets' original units (float64)."""
        return np.asarray(z, dtype=np.float64) * self.std + self.mean

    @torch.no_grad()
    def eval_step(self, model, batch):
        """``scores`` (B, T) and, when labelled, ``labels`` (B, T), both in the original units."""
        out = {"scores": self.to_units(model(**model_inputs(batch)).logits.float().cpu().numpy())}
        if "labels" in batch:
            out["labels"] = self.to_units(batch["labels"].cpu().numpy())
        return out

    def compute_metrics(self, outputs, features=None):
        """:func:`deltatune.metrics.regression.regression_metrics` in the original units, plus
        ``loss`` (the training loss on the standardized scale)."""
        scores, labels = np.asarray(outputs["scores"]), np.asarray(outputs["labels"])
        z_pred, z_true = torch.from_numpy((scores - self.mean) / self.std), torch.from_numpy((labels - self.mean) / self.std)
        fn = F.huber_loss if self.config.data.regression_loss == "huber" else F.mse_loss
        return {"loss": float(fn(z_pred, z_true)), **regression_metrics(labels, scores, self.targets)}

    def decode(self, outputs, features=None):
        """``{"score": value}`` per row, ``{"score": {target: value}}`` with several targets."""
        records = []
        for row in np.asarray(outputs["scores"]).reshape(-1, len(self.targets)):
            if len(self.targets) == 1:
                records.append({"score": float(row[0])})
            else:
                records.append({"score": {name: float(v) for name, v in zip(self.targets, row)}})
        return records

    def worst_examples(self, outputs, features, rows, k):
        """The ``k`` rows with the largest absolute error (mean over targets), worst first; see
        :meth:`Task.worst_examples`. ``input`` is the text (``" || "`` and the pair text for pairs)."""
        d = self.config.data
        scores = np.asarray(outputs["scores"]).reshape(-1, len(self.targets))
        labels = np.asarray(outputs["labels"]).reshape(-1, len(self.targets))
        texts = [str(t) for t in rows[d.text_column]]
        if d.text_pair_column:
            texts = [f"{t} || {u}" for t, u in zip(texts, rows[d.text_pair_column])]

        def shown(values: np.ndarray) -> str:
            return ", ".join(f"{name}={v:.3g}" for name, v in zip(self.targets, values)) if len(self.targets) > 1 else f"{values[0]:.3g}"

        records = [
            example_row(i, text, shown(y), shown(p), float(np.mean(np.abs(p - y))))
            for i, (p, y, text) in enumerate(zip(scores, labels, texts))
        ]
        return worst_examples("absolute error", False, records, k)

    @classmethod
    def from_pretrained_config(cls, config: RunConfig, model_config) -> "TextRegressionTask":
        """The task with the standardization saved in the run's model config (none saved: mean 0, std 1).

        Raises:
            DeltatuneError: the saved head's targets differ from the config's target columns.
        """
        id2label = {int(k): v for k, v in (model_config.id2label or {}).items()}
        saved = [id2label[i] for i in range(len(id2label))]
        task = cls(config, getattr(model_config, MEAN_KEY, None), getattr(model_config, STD_KEY, None))
        if saved and saved != task.targets:
            raise DeltatuneError(
                f"the saved model predicts {saved} but the run's config names the targets {task.targets} "
                "(data.label_column / data.label_columns); use the run's own config"
            )
        return task

    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        """Eight rows of a score 0-3 that grows with the text's length (``text``, ``label``); see :meth:`Task.demo_rows`."""
        return {"rows": [{"text": "good " * (i % 4 + 1), "label": float(i % 4)} for i in range(8)], "config": {}}
