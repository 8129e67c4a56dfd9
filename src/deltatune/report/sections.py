"""The plain data of a run's report sections, from a :class:`~deltatune.report.reading.RunData`.

No HTML here (the templates lay it out, escaping every value): rows of ``(label, text)``,
tables as lists of lists of text, a confusion matrix with a heat-map strength per cell.

- :func:`header`: name, task, model, Δθ method, data files, hyperparameters, time, throughput,
  memory, parameters, size, status.
- :func:`split_sections`: per split of eval.json (validation, test): scalar metrics, the
  per-class table and confusion matrix (classification), the per-entity-type table (NER), the
  HasAns/NoAns table (QA), generated samples.
- :func:`compressed_section`, :func:`analysis_sections`: compressed-delta metrics; the worst
  examples and before/after generations of analysis.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from deltatune.delta.registry import METHODS
from deltatune.report.reading import UNKNOWN, RunData

# settings shown per Δθ method, besides the method's name
METHOD_SETTINGS = {
    "freeze": ("delta.train_layers",),
    "lora": ("delta.lora_r", "delta.lora_alpha", "delta.lora_dropout", "delta.target_modules"),
    "dora": ("delta.lora_r", "delta.lora_alpha", "delta.lora_dropout", "delta.target_modules"),
    "ia3": ("delta.target_modules",),
    "prefix": ("delta.num_virtual_tokens",),
}
HYPERPARAMETERS = (
    "train.learning_rate", "train.per_device_train_batch_size", "train.gradient_accumulation_steps", "train.num_train_epochs",
    "train.max_steps", "train.lr_scheduler_type", "train.warmup_ratio", "train.warmup_steps", "train.weight_decay",
    "train.optimizer", "model.dropout", "data.max_seq_length", "seed", "eval.eval_strategy", "eval.eval_steps",
    "eval.metric_for_best_model", "eval.early_stopping_patience",
)
_QA_GROUPS = ("HasAns", "NoAns")
_PRF = ("precision", "recall", "f1")


def fmt(value: Any) -> str:
    """A value as short text: ints with thousands separators, floats to 4 significant digits,
    ``-`` for ``None``, lists joined by commas."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3e}"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def fmt_bytes(n: Optional[float]) -> str:
    """Bytes as ``12.3 MiB`` (``-`` for ``None`` or a value that is not a finite number)."""
    if n is None or not isinstance(n, (int, float)) or isinstance(n, bool) or not math.isfinite(n):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def fmt_seconds(s: Optional[float]) -> str:
    """Seconds as ``3.2 s``, ``4 min 05 s`` or ``1 h 02 min`` (``-`` for ``None``)."""
    if s is None or not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s):
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


@dataclass
class Header:
    """The facts at the top of a run's report (each a list of ``(label, text)``)."""

    name: str
    task: str
    model: str
    method: str
    status: str
    status_note: str
    data: list[tuple[str, str]] = field(default_factory=list)
    hyperparameters: list[tuple[str, str]] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)


def method_text(run: RunData) -> str:
    """The Δθ method with its settings, e.g. ``lora (lora_r=8, lora_alpha=16, ...)``."""
    if not run.config_known:
        return UNKNOWN
    name = str(run.setting("delta.method", "full"))
    details = [f"{k.split('.')[-1]}={fmt(run.setting(k))}" for k in METHOD_SETTINGS.get(name, ()) if run.setting(k) is not None]
    if run.setting("delta.save") == "delta":
        details.append("saved as a compressed delta")
    return f"{name} ({', '.join(details)})" if details else name


def _data_rows(run: RunData) -> list[tuple[str, str]]:
    """``(split, "file (size; N rows used)")`` per data split.

    From eval.json's ``train.data_files`` (written at the end of training: the file as given,
    its size in bytes when it was a local file, the rows used, or the file a validation split was
    carved from). A run without it (older, or unfinished) shows the files of config.yaml as
    given, with no size: a relative path is never looked up from the current folder, which need
    not be the one the run was started from.
    """
    files = run.train_summary.get("data_files")
    if isinstance(files, dict) and files:
        rows = []
        for split in ("train", "validation", "test"):
            e = files.get(split)
            if not isinstance(e, dict):
                continue
            used = [f"{e['rows']:,} rows used"] if isinstance(e.get("rows"), int) else []
            if e.get("file"):
                extra = ([fmt_bytes(e["bytes"])] if isinstance(e.get("bytes"), int) else []) + used
                rows.append((split, f"{e['file']}" + (f" ({'; '.join(extra)})" if extra else "")))
            elif e.get("carved_from") is not None or split == "validation":
                share = run.setting("data.validation_split")
                what = f"{fmt(share)} of the training file" if share is not None else "carved from the training file"
                rows.append((split, what + (f" ({'; '.join(used)})" if used else "")))
        return rows + _sample_limits(run)
    counts = _row_counts(run)
    rows = []
    for split, key in (("train", "data.train_file"), ("validation", "data.validation_file"), ("test", "data.test_file")):
        value = run.setting(key)
        if not value:
            if split == "validation" and run.setting("data.train_file"):
                rows.append((split, f"{fmt(run.setting('data.validation_split'))} of the training file"
                             + (f" ({counts[split]:,} rows)" if split in counts else "")))
            continue
        rows.append((split, f"{value}" + (f" ({counts[split]:,} rows used)" if split in counts else "")))
    return rows + _sample_limits(run)


def _sample_limits(run: RunData) -> list[tuple[str, str]]:
    return [(key, fmt(run.setting(key))) for key in ("data.max_train_samples", "data.max_eval_samples") if run.setting(key)]


def _row_counts(run: RunData) -> dict[str, int]:
    """Rows per split when the files tell: eval.json ``data`` counts (decoder tasks), else the
    classification supports, the QA ``total``."""
    out: dict[str, int] = {}
    ev = run.eval or {}
    data = ev.get("data") or {}
    for split in ("train", "validation", "test"):
        d = data.get(split)
        if isinstance(d, dict):
            for k in ("rows", "examples", "num_rows"):
                if isinstance(d.get(k), int) and not isinstance(d.get(k), bool):
                    out[split] = d[k]
                    break
        m = ev.get(split)
        if split not in out and isinstance(m, dict):
            if isinstance(m.get("per_class"), dict) and "confusion_matrix" in m:
                out[split] = sum(r.get("support", 0) for r in m["per_class"].values())
            elif isinstance(m.get("total"), int):
                out[split] = m["total"]
    return out


def learning_rate_text(run: RunData) -> str:
    """``train.learning_rate``, or the Δθ method's default learning rate (deltatune.delta.registry) when unset."""
    if not run.config_known:
        return UNKNOWN
    lr = run.setting("train.learning_rate")
    if lr is not None:
        return fmt(lr)
    method = METHODS.get(str(run.setting("delta.method", "full")))
    return f"{fmt(method.learning_rate)} (the method's default)" if method else "-"


def header(run: RunData) -> Header:
    """The header of a run's report (see :class:`Header`); every missing value is ``-`` or left out."""
    t = run.train_summary
    hyper = []
    for key in HYPERPARAMETERS if run.config_known else ():
        value = learning_rate_text(run) if key == "train.learning_rate" else run.setting(key)
        if value is not None:
            hyper.append((key, value if isinstance(value, str) else fmt(value)))
    task_settings = run.start_record.get("task_settings")
    if isinstance(task_settings, dict):  # the task's own (beta, num_generations, ...), as the run used them
        hyper.extend((str(k), fmt(v)) for k, v in task_settings.items())
    if not run.config_known:
        hyper.append(("settings", f"{UNKNOWN} (config.yaml is missing or empty)"))
    facts = []
    steps = run.last_step
    if steps is not None:
        total = run.total_steps if run.status in ("training", "interrupted", "unfinished") else None
        facts.append(("steps", fmt(steps) + (f" of {fmt(total)}" if total else "")))
    if run.best_step is not None:
        facts.append(("best step", f"{run.best_step}" + (f" (by validation {run.metric})" if run.metric_known else "")))
    for label, key, f in (
        ("training time", "train_seconds", fmt_seconds), ("examples / s", "examples_per_second", fmt),
        ("tokens / s", "tokens_per_second", fmt), ("peak memory (RSS)", "peak_rss_mib", lambda v: fmt_bytes(v * 2**20)),
        ("saved size", "saved_bytes", fmt_bytes),
    ):
        if t.get(key) is not None:
            facts.append((label, f(t[key])))
    if t.get("trainable_parameters") is not None:
        total = t.get("total_parameters") or 0
        share = f" of {fmt(total)} ({100 * t['trainable_parameters'] / total:.2f} %)" if total else ""
        facts.append(("parameters trained", f"{fmt(t['trainable_parameters'])}{share}"))
    if t.get("micro_batch_size") is not None:
        facts.append(("batch plan", f"micro-batch {t['micro_batch_size']} x {t.get('micro_batches_per_step', 1)} per step"))
    if not t and run.train_records:
        speeds = [r.get("examples_per_second") for r in run.train_records if isinstance(r.get("examples_per_second"), (int, float))]
        if speeds:
            facts.append(("examples / s (latest)", fmt(speeds[-1])))
    return Header(
        name=run.name, task=run.task, model=str(run.setting("model.name_or_path", UNKNOWN if not run.config_known else "-")),
        method=method_text(run), status=run.status, status_note=status_note(run), data=_data_rows(run), hyperparameters=hyper,
        facts=facts,
    )


def status_note(run: RunData) -> str:
    """The sentence after the status: how far the run got and, for one that stopped, how to go on."""
    steps = run.last_step
    of = f" of {run.total_steps:,}" if run.total_steps else ""
    at = f"step {fmt(steps)}{of}" if steps is not None else "its start"
    resume = (f"resume with: deltatune train --resume {run.root}" if run.checkpoint_steps
              else "no checkpoint was saved, so it cannot be resumed: train it again (deltatune train ... --overwrite)")
    if run.status == "finished":
        return "trained to the end"
    if run.status == "early-stopped":
        return f"stopped early (eval.early_stopping_patience) at step {fmt(steps)}"
    if run.status == "training":
        return f"training now: {at}; this report shows what was logged so far"
    if run.status == "interrupted":
        return f"interrupted at {at}; {resume}; this report shows what was logged"
    if run.status == "unfinished":
        return (f"unfinished at {at}: still training, or interrupted (continue it with deltatune train --resume {run.root}); "
                "this report shows what was logged so far")
    return "nothing logged yet"


@dataclass
class Confusion:
    """A confusion matrix: ``labels`` (true = rows, predicted = columns, in eval.json's per_class order)
    and per cell ``(count, strength)`` with strength = count / row total in [0, 1] (the heat-map colour)."""

    labels: list[str]
    rows: list[list[tuple[int, float]]]


@dataclass
class SplitSection:
    """One split's metrics (``name``: ``validation``/``test``/...), each part empty when absent."""

    name: str
    scalars: list[tuple[str, str]] = field(default_factory=list)
    per_class: list[list[str]] = field(default_factory=list)  # [name, precision, recall, f1, support]
    confusion: Optional[Confusion] = None
    entities: list[list[str]] = field(default_factory=list)  # [type, precision, recall, f1, support]
    qa_groups: list[list[str]] = field(default_factory=list)  # [group, exact, f1, total]
    samples: list[dict[str, str]] = field(default_factory=list)  # {"prediction", "reference"}


def _entity_types(metrics: dict[str, Any]) -> list[str]:
    """Entity types of a NER metrics dict: ``X`` with ``X_precision``, ``X_recall``, ``X_f1`` and ``X_support``."""
    kinds = [k[: -len("_support")] for k in metrics if k.endswith("_support")]
    return sorted(x for x in kinds if all(f"{x}_{m}" in metrics for m in _PRF))


def split_section(name: str, metrics: dict[str, Any]) -> SplitSection:
    """The tables of one split's metrics dict (as in eval.json; see :class:`SplitSection`)."""
    sec = SplitSection(name)
    types = _entity_types(metrics)
    grouped = {f"{x}_{m}" for x in types for m in (*_PRF, "support")}
    grouped |= {k for k in metrics if k.split("_", 1)[0] in _QA_GROUPS}
    for k, v in metrics.items():
        if k not in grouped and isinstance(v, (int, float)) and not isinstance(v, bool):
            sec.scalars.append((k, fmt(v)))
    per_class = metrics.get("per_class")
    if isinstance(per_class, dict):
        for label, row in per_class.items():
            if isinstance(row, dict):
                sec.per_class.append([str(label), *(fmt(row.get(m)) for m in _PRF), fmt(row.get("support"))])
        cm = metrics.get("confusion_matrix")  # checked square, of counts (deltatune.report.checked)
        labels = [str(x) for x in per_class]
        if isinstance(cm, list) and len(cm) == len(labels):
            rows = []
            for r in cm:
                total = sum(r) or 1
                rows.append([(c, c / total) for c in r])
            sec.confusion = Confusion(labels, rows)
    for x in types:
        sec.entities.append([x, *(fmt(metrics[f"{x}_{m}"]) for m in _PRF), fmt(metrics[f"{x}_support"])])
    for g in _QA_GROUPS:
        if any(k.startswith(g + "_") for k in metrics):
            sec.qa_groups.append([g, fmt(metrics.get(f"{g}_exact")), fmt(metrics.get(f"{g}_f1")), fmt(metrics.get(f"{g}_total"))])
    samples = metrics.get("samples")
    if isinstance(samples, list):
        sec.samples = [{"prediction": s["prediction"], "reference": s["reference"]} for s in samples]
    return sec


def split_sections(run: RunData) -> list[SplitSection]:
    """The validation and test sections of eval.json (others keys such as ``train`` are not splits)."""
    ev = run.eval or {}
    return [split_section(s, ev[s]) for s in ("validation", "test") if isinstance(ev.get(s), dict)]


def compressed_section(run: RunData) -> Optional[tuple[list[tuple[str, str]], SplitSection]]:
    """eval.json's ``compressed_delta``: ``(settings, validation metrics of the reconstructed model)``, or ``None``."""
    c = (run.eval or {}).get("compressed_delta")
    if not isinstance(c, dict):
        return None
    settings = [(k, fmt(v)) for k, v in c.items() if not isinstance(v, dict)]
    return settings, split_section("validation (compressed Δθ)", c.get("validation") or {})


@dataclass
class AnalysisSection:
    """analysis.json: the worst-scored examples and before/after generations (empty when absent)."""

    split: str = "validation"
    score: str = ""
    higher_is_better: bool = True
    worst: list[dict[str, str]] = field(default_factory=list)  # row, input, reference, prediction, score
    generations: list[dict[str, str]] = field(default_factory=list)  # row, input, reference, before, after


def analysis_section(run: RunData) -> AnalysisSection:
    """The tables of analysis.json (see :class:`AnalysisSection`); tolerant of missing keys."""
    a = run.analysis or {}  # typed by deltatune.report.checked.clean_analysis
    sec = AnalysisSection(split=a.get("split", "validation"))
    worst = a.get("worst_examples")
    if isinstance(worst, dict):
        sec.score = worst.get("score", "score")
        sec.higher_is_better = worst.get("higher_is_better", True)
        for r in worst["rows"]:
            sec.worst.append({k: fmt(r[k]) if k in ("row", "score") else r[k] for k in ("row", "input", "reference", "prediction", "score")})
    for g in a.get("generations") or []:
        sec.generations.append({k: fmt(g[k]) if k == "row" else g[k] for k in ("row", "input", "reference", "before", "after")})
    return sec
