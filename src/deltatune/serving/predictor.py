"""Predictions from a trained run: :func:`load` returns a :class:`Predictor`."""

from __future__ import annotations

import copy
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
from deltatune.models.loading import load_config, load_processor
from deltatune.output_files import PREDICTION_SUFFIXES, check_output, write_atomically
from deltatune.rundir import RunDir
from deltatune.tasks import Features, GenerativeTask, Task, get_task_class, is_encoder_decoder
from deltatune.training.inference import batched_outputs, merge_outputs


class Predictor:
    """A trained model with its task, ready to predict.

    Attributes:
        config: the run's resolved config.
        task: the fitted task (label map restored from the saved model config).
        model: the model in eval mode, on ``device``.
        tokenizer: the run's tokenizer.
        model_dir: the run's ``model/`` folder it was loaded from (``None``: built otherwise).
    """

    def __init__(
        self, config: RunConfig, task: Task, model: torch.nn.Module, tokenizer, device: str | torch.device, model_dir: Path | None = None
    ):
        self.config, self.task, self.model, self.tokenizer, self.device = config, task, model, tokenizer, torch.device(device)
        self.model_dir = model_dir

    def outputs(
        self, ds: datasets.Dataset, with_labels: bool = True, batch_size: int | None = None, source: str = "data"
    ) -> tuple[dict[str, np.ndarray], Features]:
        """Raw :meth:`Task.eval_step` outputs for every feature of ``ds`` in feature order, and the
        features (``source`` names ``ds`` in error messages)."""
        check_batch_size(batch_size)
        features = self.task.encode(ds, self.tokenizer, with_labels=with_labels, source=source)
        bs = batch_size or self.config.eval.per_device_eval_batch_size
        if with_labels and self.task.needs_reference_pass:  # dpo, kto: the reference model's log-probabilities first
            parts = batched_outputs(self.model, self.task, features, bs, self.device, step=self.task.reference_step)
            self.task.attach_reference(features, merge_outputs(parts, len(features)))
        return merge_outputs(batched_outputs(self.model, self.task, features, bs, self.device), len(features)), features

    def metrics(self, ds: datasets.Dataset, batch_size: int | None = None, source: str = "data") -> dict[str, Any]:
        """The task's metrics on labelled rows ``ds`` (generation metrics too for generative tasks).

        Raises:
            DeltatuneError: ``batch_size`` is not an integer >= 1.
        """
        return self.metrics_and_stats(ds, batch_size, source)[0]

    def metrics_and_stats(
        self, ds: datasets.Dataset, batch_size: int | None = None, source: str = "data"
    ) -> tuple[dict[str, Any], Any]:
        """:meth:`metrics` and the encoding counts of ``ds`` (rows truncated, dropped by kind, with
        their numbers: :class:`deltatune.tasks.chat_format.EncodeStats`; ``None`` for tasks that keep none)."""
        outputs, features = self.outputs(ds, with_labels=True, batch_size=batch_size, source=source)
        metrics = self.task.compute_metrics(outputs, features)
        if isinstance(self.task, GenerativeTask):
            metrics.update(self.task.final_metrics(self.model, self.tokenizer, ds, self.device))
        return metrics, features.stats

    def predict_rows(self, ds: datasets.Dataset, source: str = "input", batch_size: int | None = None) -> list[dict[str, Any]]:
        """One prediction record per row (``label`` and ``probabilities`` for classification).

        ``batch_size`` is the number of rows per forward pass; generative runs generate
        ``eval.generation_batch_size`` rows at a time.

        Raises:
            DeltatuneError: missing text column or empty texts, naming ``source`` and the row;
                ``batch_size`` not an integer >= 1.
        """
        check_batch_size(batch_size)
        self.task.check(ds, source, with_labels=False)
        if isinstance(self.task, GenerativeTask):  # decoder tasks answer by generating
            texts, ended = self.task.generate_rows(self.model, self.tokenizer, ds, self.device, source)
            return [{"generated": t, "ended_with_eos": e} for t, e in zip(texts, ended)]
        return self.task.decode(*self.outputs(ds, with_labels=False, batch_size=batch_size, source=source))

    def with_generation(
        self, max_new_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None
    ) -> "Predictor":
        """This predictor with other generation options (same model, task state and tokenizer).

        Options left ``None`` keep the run's; see :func:`generation_overrides`.

        Raises:
            DeltatuneError: an option out of range, ``top_p`` without sampling, or a run that does
                not generate.
        """
        overrides = generation_overrides(max_new_tokens, temperature, top_p)
        if not overrides:
            return self
        if not isinstance(self.task, GenerativeTask):
            raise DeltatuneError(f"{self.config.task} runs do not generate text: generation parameters do not apply")
        cfg = build_config(self.config, overrides)
        if top_p is not None and not cfg.eval.do_sample:
            raise DeltatuneError("top_p (parameters.top_p) applies to sampling; add temperature > 0")
        task = copy.copy(self.task)
        task.config = cfg
        return Predictor(cfg, task, self.model, self.tokenizer, self.device, model_dir=self.model_dir)

    def worker_copy(self) -> "Predictor":
        """This predictor for another thread: the same model (read-only in inference), its own
        copy of the tokenizer (a fast tokenizer must not be used by two threads at once) and of
        the task holding it."""
        tokenizer = copy.deepcopy(self.tokenizer)
        task = copy.copy(self.task)
        task.set_tokenizer(tokenizer)
        return Predictor(self.config, task, self.model, tokenizer, self.device, model_dir=self.model_dir)

    def predict(self, texts: Sequence[str] | Sequence[tuple[str, str]] | str) -> list[dict[str, Any]]:
        """Predict for raw texts (or (text, text_pair) tuples for pair tasks).

        Returns:
            One record per input, e.g. ``{"label": "1", "probabilities": {"0": 0.03, "1": 0.97}}``.
        """
        if isinstance(texts, str):
            texts = [texts]
        return self.predict_rows(self.task.rows_from_texts(list(texts)), "input")


def check_batch_size(batch_size: int | None) -> None:
    """Accept ``None`` (the run's default) or an integer >= 1.

    Raises:
        DeltatuneError: anything else, naming ``--batch-size``.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise DeltatuneError(f"--batch-size (batch_size) must be an integer >= 1, got {batch_size!r}")


# peft task types of the tasks that answer by generating text (decoder and encoder-decoder tasks)
GENERATIVE_TASK_TYPES = ("CAUSAL_LM", "SEQ_2_SEQ_LM")


def generation_overrides(
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    num_beams: int | None = None,
) -> dict[str, Any]:
    """The run-config ``eval.*`` overrides for generation options given by the user (``None`` = the run's own).

    ``max_new_tokens`` (tokens, >= 1) caps each answer; ``temperature`` > 0 samples at that
    temperature, 0 decodes greedily; ``top_p`` (0 < p <= 1) is the nucleus of sampling (needs
    sampling); ``num_beams`` >= 1 (1: no beam search).

    Raises:
        DeltatuneError: a value out of range or not finite, naming the option.
    """
    import math

    def bad(flag: str, value: Any, want: str) -> DeltatuneError:
        return DeltatuneError(f"--{flag.replace('_', '-')} ({flag}) must be {want}, got {value!r}")

    out: dict[str, Any] = {}
    for name, value in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams)):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, value, "an integer >= 1")
            out[f"eval.{name}"] = value
    if temperature is not None:
        number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
        if not number or not math.isfinite(temperature) or temperature < 0:
            raise bad("temperature", temperature, "a finite number >= 0 (0: greedy)")
        out["eval.temperature"] = float(temperature)
        out["eval.do_sample"] = temperature > 0
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise bad("top_p", top_p, "a number in (0, 1]")
        out["eval.top_p"] = float(top_p)
    return out


def load(
    run: str | Path,
    device: str | None = None,
    *,
    trust_remote_code: bool = False,
    allow_pickle_weights: bool = False,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    num_beams: int | None = None,
) -> Predictor:
    """Load a run directory (or its model/ folder's parent) for prediction; a folder of
    ``deltatune export --format onnx`` loads with onnxruntime
    (:func:`deltatune.serving.onnx_backend.load_onnx`; nothing in it runs code).

    The load permissions come from the caller only; the run's config.yaml values of
    ``model.trust_remote_code`` and ``model.allow_pickle_weights`` are ignored, so a run folder
    received from someone else cannot make its own code run.

    Args:
        device: ``"cpu"``, ``"cuda"``, ...; default: CUDA when available.
        trust_remote_code: allow Python code shipped with the model (``auto_map``) to run.
        allow_pickle_weights: accept pickle weights (``pytorch_model.bin``, ``adapter_model.bin``)
            when there are no safetensors.
        max_new_tokens, temperature, top_p, num_beams: generation options of generative runs
            (decoder and encoder-decoder tasks), see :func:`generation_overrides`; ``None``
            keeps the run's ``eval`` settings.

    Raises:
        DeltatuneError: not a deltatune run directory, or the model is missing; a model that
            needs custom code without ``trust_remote_code`` or has only pickle weights without
            ``allow_pickle_weights``; a damaged model/adapter file (names it); generation options
            for a run that does not generate, out of range, or ``top_p`` without sampling.
    """
    if (Path(run) / "deltatune_onnx.json").is_file():  # an ONNX export (deltatune export --format onnx): onnxruntime
        from deltatune.serving.onnx_backend import load_onnx

        if generation_overrides(max_new_tokens, temperature, top_p, num_beams):
            raise DeltatuneError(f"{run} is an ONNX export of an encoder run, which does not generate text; generation options do not apply")
        return load_onnx(run, device)
    rd = RunDir(run)
    rd.check_loadable()
    generation = generation_overrides(max_new_tokens, temperature, top_p, num_beams)
    cfg = _permitted_config(rd, trust_remote_code, allow_pickle_weights)
    if generation:
        given = ", ".join(f"--{k[5:].replace('_', '-')}" for k in generation if k != "eval.do_sample")
        if not issubclass(get_task_class(cfg.task), GenerativeTask):  # speech-recognition: peft type None, generates
            raise DeltatuneError(
                f"{given}: run {rd.root} ({cfg.task}) does not generate text; these options are for decoder and encoder-decoder runs"
            )
        if top_p is not None and not generation.get("eval.do_sample", cfg.eval.do_sample):
            raise DeltatuneError(
                f"--top-p (top_p) applies to sampling, and run {rd.root} decodes greedily"
                f"{' with --temperature 0' if temperature is not None else ''}; add --temperature T with T > 0 to sample"
            )
        cfg = build_config(cfg, generation)
    task, model = load_task_model(cfg, rd.model)
    tokenizer = load_processor(str(rd.model), task.input_kind, cfg.model.trust_remote_code)
    task.set_tokenizer(tokenizer)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Predictor(cfg, task, model.to(dev).eval(), tokenizer, dev, model_dir=rd.model)


def _permitted_config(rd: RunDir, trust_remote_code: bool, allow_pickle_weights: bool) -> RunConfig:
    """The run's config with the caller's load permissions (never the run folder's own). Without
    ``trust_remote_code`` a GRPO run's ``data.reward_path`` is dropped: its user rewards are not
    imported (:mod:`deltatune.tasks.grpo.rewards`)."""
    permissions = {"model.trust_remote_code": bool(trust_remote_code), "model.allow_pickle_weights": bool(allow_pickle_weights)}
    cfg = build_config(rd.config, permissions)
    if not trust_remote_code and getattr(cfg.data, "reward_path", None):
        cfg = build_config(cfg, {"data.reward_path": None})
    return cfg


def load_onto(run: str | Path, shared: Predictor, adapter_name: str, *, allow_pickle_weights: bool = False) -> Predictor:
    """Load an adapter run into the model of ``shared`` (a loaded adapter run of the same base).

    The returned predictor has its own config, task (labels) and tokenizer and the same model
    object as ``shared``, which now holds both adapters: call ``model.set_adapter(adapter_name)``
    before using it (and ``shared``'s adapter, ``"default"``, before using ``shared``). Only
    runs whose :func:`deltatune.delta.storage.share_key` equals ``shared``'s may share.

    Raises:
        DeltatuneError: not a loadable run; not an adapter run of the same base and head
            shape; a damaged adapter file.
    """
    from deltatune.delta.storage import add_adapter, share_key

    rd = RunDir(run)
    rd.check_loadable()
    key = share_key(rd.model) if is_delta_folder(rd.model) else None
    shared_key = share_key(shared_root(shared)) if is_delta_folder(shared_root(shared)) else None
    if key is None or key != shared_key:
        raise DeltatuneError(f"run {rd.root} is not an adapter run of the same base and head as {shared_root(shared).parent}; load it alone")
    cfg = _permitted_config(rd, False, allow_pickle_weights)
    model_cfg = PretrainedConfig.from_dict(read_meta(rd.model)["model_config"])
    task = get_task_class(cfg.task, is_encoder_decoder(cfg.model, model_cfg), cfg.train.method).from_pretrained_config(cfg, model_cfg)
    add_adapter(shared.model, rd.model, adapter_name, allow_pickle_weights)
    tokenizer = load_processor(str(rd.model), task.input_kind, False)
    task.set_tokenizer(tokenizer)
    shared.model.eval()
    return Predictor(cfg, task, shared.model, tokenizer, shared.device, model_dir=rd.model)


def shared_root(predictor: Predictor) -> Path:
    """The ``model/`` folder ``predictor`` was loaded from."""
    if predictor.model_dir is None:
        raise DeltatuneError("this predictor was not loaded from a run folder")
    return predictor.model_dir


def load_task_model(cfg: RunConfig, model_dir: Path) -> tuple[Task, torch.nn.Module]:
    """The fitted task and the trained model of a run's ``model/`` folder (full model or Δθ + base).

    ``cfg.model.trust_remote_code`` / ``allow_pickle_weights`` are the load permissions (set by
    :func:`load` from the caller, not from the run folder).

    Raises:
        DeltatuneError: a Δθ whose base model is missing or differs from training time; a
            damaged file (names it); a permission missing (see :func:`load`).
    """
    if is_delta_folder(model_dir):
        model_cfg = PretrainedConfig.from_dict(read_meta(model_dir)["model_config"])
        task_cls = get_task_class(cfg.task, is_encoder_decoder(cfg.model, model_cfg), cfg.train.method)
        task = task_cls.from_pretrained_config(cfg, model_cfg)
        return task, load_trained(model_dir, lambda base: task.build_model(base, {}), cfg.model.allow_pickle_weights)
    model_cfg = load_config(str(model_dir), cfg.model.trust_remote_code)
    task_cls = get_task_class(cfg.task, is_encoder_decoder(cfg.model, model_cfg), cfg.train.method)
    task = task_cls.from_pretrained_config(cfg, model_cfg)
    return task, task.load_trained(str(model_dir))


# the file types write_predictions writes


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
