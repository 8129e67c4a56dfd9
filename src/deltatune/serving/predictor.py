"""Predictions from a trained run: :func:`load` returns a :class:`Predictor`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import datasets
import numpy as np
import torch

from transformers import PretrainedConfig

from deltatune.config import RunConfig, build_config
from deltatune.delta import is_delta_folder, load_trained
from deltatune.delta.storage import read_meta
from deltatune.errors import DeltatuneError
from deltatune.models.loading import load_config, load_tokenizer
from deltatune.output_files import check_output, write_atomically
from deltatune.rundir import RunDir
from deltatune.tasks import Features, Task, get_task_class, is_encoder_decoder
from deltatune.training.inference import batched_outputs, merge_outputs


class Predictor:
    """A trained model with its task, ready to predict.

    Attributes:
        config: the run's resolved config.
        task: the fitted task (label map restored from the saved model config).
        model: the model in eval mode, on ``device``.
        tokenizer: the run's tokenizer.
    """

    def __init__(self, config: RunConfig, task: Task, model: torch.nn.Module, tokenizer, device: str | torch.device):
        self.config, self.task, self.model, self.tokenizer, self.device = config, task, model, tokenizer, torch.device(device)

    def outputs(
        self, ds: datasets.Dataset, with_labels: bool = True, batch_size: int | None = None
    ) -> tuple[dict[str, np.ndarray], Features]:
        """Raw :meth:`Task.eval_step` outputs for every feature of ``ds`` in feature order, and the features."""
        features = self.task.encode(ds, self.tokenizer, with_labels=with_labels)
        bs = batch_size or self.config.eval.per_device_eval_batch_size
        return merge_outputs(batched_outputs(self.model, self.task, features, bs, self.device), len(features)), features

    def metrics(self, ds: datasets.Dataset, batch_size: int | None = None) -> dict[str, Any]:
        """The task's metrics on labelled rows ``ds`` (generation metrics too for generative tasks)."""
        metrics = self.task.compute_metrics(*self.outputs(ds, with_labels=True, batch_size=batch_size))
        if hasattr(self.task, "final_metrics"):
            metrics.update(self.task.final_metrics(self.model, self.tokenizer, ds, self.device))
        return metrics

    def predict_rows(self, ds: datasets.Dataset, source: str = "input", batch_size: int | None = None) -> list[dict[str, Any]]:
        """One prediction record per row (``label`` and ``probabilities`` for classification).

        Raises:
            DeltatuneError: missing text column or empty texts, naming ``source`` and the row.
        """
        self.task.check(ds, source, with_labels=False)
        if hasattr(self.task, "generate_rows"):  # decoder tasks answer by generating
            texts, ended = self.task.generate_rows(self.model, self.tokenizer, ds, self.device, source)
            return [{"generated": t, "ended_with_eos": e} for t, e in zip(texts, ended)]
        return self.task.decode(*self.outputs(ds, with_labels=False, batch_size=batch_size))

    def predict(self, texts: Sequence[str] | Sequence[tuple[str, str]] | str) -> list[dict[str, Any]]:
        """Predict for raw texts (or (text, text_pair) tuples for pair tasks).

        Returns:
            One record per input, e.g. ``{"label": "1", "probabilities": {"0": 0.03, "1": 0.97}}``.
        """
        if isinstance(texts, str):
            texts = [texts]
        if hasattr(self.task, "rows_from_texts"):
            return self.predict_rows(self.task.rows_from_texts(list(texts)), "input")
        d = self.config.data
        if d.text_pair_column:
            pairs = [t if isinstance(t, (tuple, list)) else (t, "") for t in texts]
            ds = datasets.Dataset.from_dict({d.text_column: [p[0] for p in pairs], d.text_pair_column: [p[1] for p in pairs]})
        else:
            ds = datasets.Dataset.from_dict({d.text_column: list(texts)})
        return self.predict_rows(ds, "input")


def load(run: str | Path, device: str | None = None) -> Predictor:
    """Load a run directory (or its model/ folder's parent) for prediction.

    Raises:
        DeltatuneError: not a deltatune run directory, or the model is missing.
    """
    rd = RunDir(run)
    if not rd.config.is_file():
        raise DeltatuneError(f"{rd.root} is not a deltatune run directory (no config.yaml); give the folder made by deltatune train")
    if not rd.model.is_dir():
        raise DeltatuneError(f"{rd.root} has no model/ folder: the run did not finish (resume it with deltatune train --resume {rd.root})")
    cfg = build_config(rd.config)
    task, model = load_task_model(cfg, rd.model)
    tokenizer = load_tokenizer(str(rd.model), cfg.model.trust_remote_code)
    task.set_tokenizer(tokenizer)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Predictor(cfg, task, model.to(dev).eval(), tokenizer, dev)


def load_task_model(cfg: RunConfig, model_dir: Path) -> tuple[Task, torch.nn.Module]:
    """The fitted task and the trained model of a run's ``model/`` folder (full model or Δθ + base).

    Raises:
        DeltatuneError: a Δθ whose base model is missing or differs from training time.
    """
    if is_delta_folder(model_dir):
        model_cfg = PretrainedConfig.from_dict(read_meta(model_dir)["model_config"])
        task_cls = get_task_class(cfg.task, is_encoder_decoder(cfg.model, model_cfg))
        task = task_cls.from_pretrained_config(cfg, model_cfg)
        return task, load_trained(model_dir, lambda base: task.build_model(base, {}))
    model_cfg = load_config(str(model_dir), cfg.model.trust_remote_code)
    task_cls = get_task_class(cfg.task, is_encoder_decoder(cfg.model, model_cfg))
    task = task_cls.from_pretrained_config(cfg, model_cfg)
    return task, task.load_trained(str(model_dir))


# the file types write_predictions writes
PREDICTION_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


def merge_record(inputs: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """One output row: the input columns, then the prediction; a prediction key that is also an
    input column (e.g. a gold ``label`` column) is written as ``predicted_<key>`` so no input is lost."""
    out = dict(inputs)
    for k, v in record.items():
        out[f"predicted_{k}" if k in inputs else k] = v
    return out


def write_predictions(
    records: list[dict[str, Any]],
    inputs: Iterable[dict[str, Any]],
    path: str | Path,
    *,
    overwrite: bool = False,
    inputs_path: str | Path | None = None,
) -> None:
    """Write inputs + predictions to CSV/TSV (one ``prob_<label>`` column per label) or JSONL, by extension.

    In CSV/TSV, list and dict cells (a ``messages`` column, entity lists) are written as JSON;
    multi-label ``label`` lists as ``a;b``. The file is written atomically (temporary file, then
    rename).

    Args:
        records: one prediction per input row.
        inputs: the input rows.
        path: the file to write.
        overwrite: replace an existing file.
        inputs_path: the file the inputs were read from; never overwritten.

    Raises:
        DeltatuneError: an extension other than .csv, .tsv, .jsonl or .json, an existing file
            without ``overwrite``, or ``path`` being ``inputs_path``.
    """
    import json

    import pandas as pd

    path = check_output(path, overwrite=overwrite, inputs=[inputs_path], suffixes=PREDICTION_SUFFIXES)
    rows = []
    for inp, rec in zip(inputs, records):
        rows.append(merge_record(inp, rec))
    ext = path.suffix.lower()
    if ext in (".jsonl", ".json"):
        def write(f) -> None:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n")
    else:
        flat = []
        for r in rows:
            r = dict(r)
            probs = r.pop("probabilities", None) or r.pop("predicted_probabilities", None) or {}
            for key in ("label", "predicted_label"):
                if isinstance(r.get(key), list):
                    r[key] = ";".join(r[key])
            for key, v in r.items():
                if isinstance(v, np.ndarray):
                    v = v.tolist()
                if isinstance(v, (list, tuple, dict)):
                    r[key] = json.dumps(v, ensure_ascii=False, default=_json_default)
            r.update({f"prob_{k}": v for k, v in probs.items()})
            flat.append(r)

        def write(f) -> None:
            pd.DataFrame(flat).to_csv(f, index=False, sep="\t" if ext == ".tsv" else ",")

    write_atomically(path, write)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)
