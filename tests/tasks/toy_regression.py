"""A worked example of a new task (docs/extending.md): text regression, one real number per text.

Test-only: tests/tasks/test_contract.py registers it and runs the task contract on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from deltatune.data.columns import check_text_column, require_columns
from deltatune.errors import DeltatuneError
from deltatune.models.loading import load_with_new_head
from deltatune.tasks.base import Features, Task
from deltatune.tasks.collate import model_inputs, pad_batch


class TextRegressionTask(Task):
    """A score per text (``data.text_column`` -> ``data.label_column``); summed squared error."""

    name = "text-regression"
    default_metric = "mse"
    greater_is_better = False
    auto_model_class = AutoModelForSequenceClassification
    peft_task_type = "SEQ_CLS"

    def fit(self, train, source):
        self.check(train, source)  # nothing to learn from the rows

    def check(self, ds, source, with_labels=True):
        d = self.config.data
        require_columns(ds, [d.text_column] + ([d.label_column] if with_labels else []), source)
        check_text_column(ds[d.text_column], d.text_column, source)
        for i, value in enumerate(ds[d.label_column] if with_labels else [], start=1):
            try:
                float(value)
            except (TypeError, ValueError):
                raise DeltatuneError(f"{source}: row {i} has {value!r} in column '{d.label_column}'; give a number") from None

    def encode(self, ds, tokenizer, with_labels=True, source="data"):
        d = self.config.data
        enc = tokenizer([str(t) for t in ds[d.text_column]], truncation=True, max_length=d.max_seq_length)
        rows = [{"input_ids": ids, "attention_mask": mask} for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
        if with_labels:
            for row, value in zip(rows, ds[d.label_column]):
                row["labels"] = float(value)
        return Features(rows, [len(r["input_ids"]) for r in rows])

    def build_model(self, model_path, config_overrides):
        m = self.config.model
        model, self.new_parameter_names = load_with_new_head(
            AutoModelForSequenceClassification, model_path, trust_remote_code=m.trust_remote_code,
            allow_pickle_weights=m.allow_pickle_weights, num_labels=1, problem_type="regression", **config_overrides,
        )
        return model

    def collate(self, features):
        batch = pad_batch(features, {"input_ids": self.pad_token_id, "attention_mask": 0})
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.float32)
        return batch

    def loss(self, model, batch):
        pred = model(**model_inputs(batch)).logits.float().squeeze(-1)
        return F.mse_loss(pred, batch["labels"], reduction="sum"), torch.tensor(pred.shape[0], device=pred.device)

    def num_targets(self, batch):
        return int(batch["input_ids"].shape[0])

    @torch.no_grad()
    def eval_step(self, model, batch):
        out = {"scores": model(**model_inputs(batch)).logits.float().squeeze(-1).cpu().numpy()}
        if "labels" in batch:
            out["labels"] = batch["labels"].cpu().numpy()
        return out

    def compute_metrics(self, outputs, features=None):
        err = outputs["scores"].astype(np.float64) - outputs["labels"]
        return {"mse": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err)))}

    def decode(self, outputs, features=None):
        return [{"score": float(s)} for s in outputs["scores"]]

    @classmethod
    def from_pretrained_config(cls, config, model_config):
        return cls(config)

    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        rows = [{"text": "good " * (i % 4 + 1), "label": float(i % 4)} for i in range(8)]
        return {"rows": rows, "config": {}}
