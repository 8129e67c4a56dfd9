"""The new-run form: its fields, the ``deltatune train`` overrides they make, and the checks
made before a run starts (the ones ``deltatune train`` makes before torch, plus the task and
columns inferred from the training file).

Everything here but :func:`inspect` stays torch-free for the encoder tasks; inferring the task
(``task: infer``) or the columns of a decoder task reads the model's config
(:func:`deltatune.auto.candidates.model_family`, which imports transformers), and
:func:`inspect` runs :func:`deltatune.api.check` (tokenizer, encoding): the UI calls both in a
worker thread.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from deltatune.errors import DeltatuneError

INFER = "infer"
# a run started from the UI prints a progress line this often (seconds), unless the form sets it
PROGRESS_KEY, PROGRESS_SECONDS = "train.log_interval_seconds", 3
# form field -> dotted config key (strings; the numbers below are typed)
FILE_KEYS = {"train_file": "data.train_file", "validation_file": "data.validation_file", "test_file": "data.test_file"}
NUMBER_KEYS = {
    "epochs": "train.num_train_epochs",
    "learning_rate": "train.learning_rate",
    "batch_size": "train.per_device_train_batch_size",
    "max_seq_length": "data.max_seq_length",
    "max_train_samples": "data.max_train_samples",
    "max_eval_samples": "data.max_eval_samples",
}


class RunForm(BaseModel):
    """The fields of the new-run form (blank optional fields keep deltatune's defaults).

    Attributes:
        name: the run's folder name in the runs folder.
        task: a registered task name, or ``infer`` (:func:`deltatune.auto.infer.infer_task`).
        model: a packaged model name (``minilm``), a local model folder or a ``.gguf`` file.
        train_file, validation_file, test_file: data files (paths on the UI's machine).
        method: the Δθ method (``delta.method``).
        epochs, learning_rate, batch_size, max_seq_length, max_train_samples, max_eval_samples:
            the main hyperparameters; ``None`` keeps the default (the method's learning rate).
        settings: more ``key=value`` overrides, one per line (``#`` starts a comment line).
    """

    model_config = ConfigDict(extra="forbid")
    name: str = ""
    task: str = INFER
    model: str = "minilm"
    train_file: str = ""
    validation_file: str | None = None
    test_file: str | None = None
    method: str = "full"
    epochs: float | None = Field(default=None, gt=0, le=100_000)
    learning_rate: float | None = Field(default=None, gt=0, le=1e3)
    batch_size: int | None = Field(default=None, gt=0, le=2**20)
    max_seq_length: int | None = Field(default=None, gt=0, le=10**7)
    max_train_samples: int | None = Field(default=None, gt=0, le=10**12)
    max_eval_samples: int | None = Field(default=None, gt=0, le=10**12)
    settings: str = ""


# settings the "more settings" box refuses: key -> why (the UI sets it, or it is unsafe without a login)
REFUSED_SETTINGS = {
    "output_dir": "output_dir is set by the run name; remove that line",
    "model.trust_remote_code": "model.trust_remote_code runs Python code from the model's files, which the UI "
                               "(no login) does not allow; train such a model with the CLI (deltatune train)",
}


def setting_lines(text: str) -> list[str]:
    """The ``key=value`` lines of the "more settings" box (blank and ``#`` lines skipped).

    Raises:
        DeltatuneError: a line without ``=`` (names it); a key of :data:`REFUSED_SETTINGS`.
    """
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line or not line.split("=", 1)[0].strip():
            raise DeltatuneError(f"more settings, line {i}: {line!r} is not key=value (e.g. train.weight_decay=0.1)")
        key, value = line.split("=", 1)
        if key.strip() in REFUSED_SETTINGS:
            raise DeltatuneError(f"more settings, line {i}: {REFUSED_SETTINGS[key.strip()]}")
        out.append(f"{key.strip()}={value.strip()}")
    return out


def form_overrides(form: RunForm) -> list[str]:
    """The form as ``deltatune train`` overrides, the "more settings" last (they win).

    ``task`` is left out when it is ``infer``; blank fields are left out.

    Raises:
        DeltatuneError: no training file; a "more settings" line that is not ``key=value``.
    """
    if not form.train_file.strip():
        raise DeltatuneError("training data: give the path of a training file (CSV, TSV, JSON, JSONL or Parquet)")
    out = [] if form.task == INFER else [f"task={json.dumps(form.task)}"]
    out += [f"model.name_or_path={json.dumps(form.model.strip())}", f"delta.method={json.dumps(form.method)}"]
    for field, key in FILE_KEYS.items():
        value = (getattr(form, field) or "").strip()
        if value:
            out.append(f"{key}={json.dumps(value)}")
    for field, key in NUMBER_KEYS.items():
        value = getattr(form, field)
        if value is not None:
            out.append(f"{key}={value}")
    return out + setting_lines(form.settings)


GGUF_MAGIC = b"GGUF"


def check_model(ref: str) -> None:
    """Refuse a model the run could not load, before it starts (torch-free): it must be a
    packaged name, an existing model folder (with config.json, or a deltatune run folder), an
    existing ``.gguf`` file that starts with the GGUF magic bytes, or a hub id while the hub is
    online (``HF_HUB_OFFLINE`` unset).

    Raises:
        DeltatuneError: naming the model and what to give.
    """
    from deltatune.models.resolve import PACKAGED_MODELS

    ref = ref.strip()
    packaged = ", ".join(PACKAGED_MODELS)
    if not ref:
        raise DeltatuneError(f"model: give a packaged model ({packaged}), a model folder or a .gguf file")
    if ref in PACKAGED_MODELS:
        return
    path = Path(ref).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise DeltatuneError(f"model: GGUF file not found: {path}")
        try:
            with path.open("rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise DeltatuneError(f"model: cannot read {path}: {e.strerror}") from None
        if magic != GGUF_MAGIC:
            raise DeltatuneError(f"model: {path} is not a GGUF file (it does not start with the bytes GGUF); give a .gguf model file")
        return
    if path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        if not path.exists():
            raise DeltatuneError(f"model: model path not found: {path}")
        if not ((path / "config.json").is_file() or (path / "model" / "config.json").is_file()):
            raise DeltatuneError(f"model: {path} is not a model folder (no config.json); give a model folder, a .gguf file or one of: {packaged}")
        return
    if os.environ.get("HF_HUB_OFFLINE"):
        raise DeltatuneError(f"model: {ref!r} is not a packaged model ({packaged}) nor a local folder, and the hub is offline "
                             "(HF_HUB_OFFLINE is set); give a local model folder or a packaged name")


def user_keys(overrides: list[str]) -> dict[str, Any]:
    """The dotted keys the user set and their values."""
    from deltatune.config import parse_override

    return {".".join(k): v for k, v in map(parse_override, overrides)}


def infer_columns(overrides: list[str]) -> tuple[str, dict[str, Any], list[str]]:
    """The task and column settings inferred from the training file (what the user set wins).

    Returns:
        ``(task, settings, reasons)``: the task (chosen or inferred), the dotted keys to add
        (not set by the user) and the inference's reasons, one line each.

    Raises:
        DeltatuneError: unreadable training file; a task that cannot be inferred; a model
            that cannot be read (``task: infer`` or a task with several model families).
    """
    from deltatune.auto.infer import SAMPLE_ROWS, infer_task
    from deltatune.data import load_table
    from deltatune.tasks.registry import REGISTRY

    user = user_keys(overrides)
    train = str(user["data.train_file"])
    task = user.get("task")
    ds = load_table(train, split="train", config_name=user.get("data.dataset_config_name"))
    sample = ds.select(range(min(SAMPLE_ROWS, len(ds)))).to_list()
    family = "encoder" if task in REGISTRY and REGISTRY[task].families == ("encoder",) else _family(user)
    inference = infer_task(sample, ds.column_names, family, task, source=train)
    settings = {k: v for k, v in inference.settings.items() if k not in user}
    reasons = list(inference.reasons) + [f"{k} = {v!r}: set by you" for k, v in user.items() if k in inference.settings]
    return inference.task, settings, reasons


def _family(user: dict[str, Any]) -> str:
    """The model family of the form's model (reads its config: imports transformers)."""
    from deltatune.auto.candidates import model_family
    from deltatune.models import resolve_model
    from deltatune.models.loading import load_config

    return model_family(load_config(resolve_model(str(user.get("model.name_or_path") or "minilm")), False))


def prepared_overrides(form: RunForm, output_dir: str) -> tuple[list[str], list[str]]:
    """The overrides a run of ``form`` starts with, checked as ``deltatune train`` checks them before torch.

    ``train.log_interval_seconds`` is set to :data:`PROGRESS_SECONDS` (the log is a file, where
    deltatune prints a progress line only that often) unless the form sets it. The task and
    columns inferred from the training file are added (what the user set wins);
    then the config is built and validated, the run folder checked (it must not exist) and
    each data file checked to exist and to have the columns the task reads.

    Returns:
        ``(overrides, reasons)``: the overrides (without ``output_dir``) and the inference's reasons.

    Raises:
        DeltatuneError: as :func:`form_overrides`, :func:`infer_columns`,
            :func:`deltatune.config.build_config`, :meth:`deltatune.rundir.RunDir.check`,
            :func:`deltatune.data.paths.check_data_file` and :func:`~deltatune.data.paths.check_columns`.
    """
    from deltatune.config import build_config
    from deltatune.data.paths import check_columns, check_data_file
    from deltatune.rundir import RunDir
    from deltatune.tasks.registry import REGISTRY

    overrides = form_overrides(form)
    check_model(str(user_keys(overrides).get("model.name_or_path") or ""))
    if not any(o.startswith(f"{PROGRESS_KEY}=") for o in overrides):  # the run page's progress moves
        overrides.insert(0, f"{PROGRESS_KEY}={PROGRESS_SECONDS}")
    if form.task != INFER:  # a bad key or value is reported before the data is read
        build_config(None, overrides + [f"output_dir={json.dumps(output_dir)}"])
    user = user_keys(overrides)
    for key in FILE_KEYS.values():
        if user.get(key):
            check_data_file(str(user[key]))
    task, settings, reasons = infer_columns(overrides)
    if form.task == INFER:
        overrides.insert(0, f"task={json.dumps(task)}")
    overrides += [f"{k}={json.dumps(v)}" for k, v in settings.items()]
    cfg = build_config(None, overrides + [f"output_dir={json.dumps(output_dir)}"])
    RunDir(cfg.output_dir).check(overwrite=False, resume=False)
    columns = REGISTRY[cfg.task].columns
    d = cfg.data
    for ref in (d.train_file, d.validation_file, d.test_file):
        if ref and columns is not None:
            check_columns(ref, columns(d, True))
    return overrides, reasons


def inspect(form: RunForm, output_dir: str, examples: int = 2) -> dict[str, Any]:
    """What the Inspect button shows: the inferred task and columns and ``deltatune check``'s report.

    Imports torch (:func:`deltatune.api.check` loads the tokenizer and encodes the data).

    Returns:
        ``{"task", "settings", "reasons", "overrides", "check"}``.

    Raises:
        DeltatuneError: as :func:`prepared_overrides` and :func:`deltatune.api.check`.
    """
    from deltatune.api import check

    overrides, reasons = prepared_overrides(form, output_dir)
    user = user_keys(overrides)
    settings = {k: v for k, v in user.items() if k.startswith("data.") and k.endswith(("_column", "_template", "separator"))}
    report = check(None, overrides + [f"output_dir={json.dumps(output_dir)}"], examples=examples)
    return {"task": user.get("task"), "settings": settings, "reasons": reasons, "overrides": overrides, "check": report}
