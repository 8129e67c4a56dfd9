"""The comparison of several runs: one table column per run and overlaid validation curves.

Runs of different tasks still share the table: a row a run does not have shows ``-``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from deltatune.report import plots
from deltatune.report.html import markup, render, verdict
from deltatune.report.reading import RunData
from deltatune.report.sections import (
    fmt,
    fmt_bytes,
    fmt_seconds,
    learning_rate_text,
    method_text,
)

_SETTINGS = (
    ("batch", "train.per_device_train_batch_size"), ("epochs", "train.num_train_epochs"), ("max steps", "train.max_steps"),
    ("warmup ratio", "train.warmup_ratio"), ("weight decay", "train.weight_decay"), ("dropout", "model.dropout"),
    ("max seq length", "data.max_seq_length"), ("seed", "seed"),
)
_MAIN_METRICS = ("accuracy", "f1", "f1_macro", "f1_micro", "subset_accuracy", "exact_match", "rougeL", "bleu", "chrf",
                 "perplexity", "loss")


def _metric_names(runs: list[RunData]) -> list[str]:
    """The main validation metrics any run has, in :data:`_MAIN_METRICS` order, then each run's own best-model metric."""
    have = set()
    for r in runs:
        have |= {k for k, v in ((r.eval or {}).get("validation") or {}).items() if isinstance(v, (int, float))}
        have |= {k[len("eval_"):] for rec in r.eval_records for k in rec if k.startswith("eval_")}
    names = [m for m in _MAIN_METRICS if m in have]
    for r in runs:
        if r.metric not in names and r.metric in have:
            names.append(r.metric)
    return names


def _final(run: RunData, name: str, split: str = "validation") -> Any:
    """A final metric of ``split`` (eval.json), else the last evaluation's ``eval_<name>`` (validation only)."""
    m = ((run.eval or {}).get(split) or {})
    if name in m:
        return m[name]
    if split == "validation":
        for rec in reversed(run.eval_records):
            if f"eval_{name}" in rec:
                return rec[f"eval_{name}"]
    return None


def comparison_rows(runs: list[RunData]) -> list[tuple[str, list[str]]]:
    """``(row label, one text per run)`` for the comparison table: setup, key hyperparameters, main
    validation (and test) metrics, time, throughput, memory, size, status."""
    rows: list[tuple[str, list[str]]] = [
        ("task", [r.task for r in runs]),
        ("model", [str(r.setting("model.name_or_path", "-")) for r in runs]),
        ("Δθ method", [method_text(r) for r in runs]),
        ("status", [r.status for r in runs]),
        ("learning rate", [learning_rate_text(r) for r in runs]),
    ]
    rows += [(label, [fmt(r.setting(key)) for r in runs]) for label, key in _SETTINGS]
    for name in _metric_names(runs):
        rows.append((f"validation {name}", [fmt(_final(r, name)) for r in runs]))
    for name in _metric_names(runs):
        values = [_final(r, name, "test") for r in runs]
        if any(v is not None for v in values):
            rows.append((f"test {name}", [fmt(v) for v in values]))
    rows += [
        ("best-model metric", [r.metric for r in runs]),
        ("steps (best)", [f"{fmt(r.last_step)} ({fmt(r.best_step)})" for r in runs]),
        ("training time", [fmt_seconds(r.train_summary.get("train_seconds")) for r in runs]),
        ("examples / s", [fmt(r.train_summary.get("examples_per_second")) for r in runs]),
        ("peak memory (RSS)", [fmt_bytes(r.train_summary["peak_rss_mib"] * 2**20) if r.train_summary.get("peak_rss_mib") is not None
                               else "-" for r in runs]),
        ("parameters trained", [fmt(r.train_summary.get("trainable_parameters")) for r in runs]),
        ("saved size", [fmt_bytes(r.train_summary.get("saved_bytes")) for r in runs]),
    ]
    return rows


def _labels(runs: list[RunData]) -> list[str]:
    """Column names: the folder names, with the parent folder added where two are equal."""
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [f"{r.root.resolve().parent.name}/{r.name}" if names.count(r.name) > 1 else r.name for r in runs]


def render_comparison(runs: list[RunData], output: Path) -> str:
    """The comparison page of ``runs`` (links to each run's report.html, relative to ``output``'s folder, when it exists)."""
    names = _labels(runs)
    links = []
    for r in runs:
        rep = r.root / "report.html"
        links.append(Path(os.path.relpath(rep.resolve(), output.resolve().parent)).as_posix() if rep.is_file() else "")
    verdicts = []
    for n, r in zip(names, runs):
        d = verdict(r)
        verdicts.append((n, d.message if d else "no training record yet"))
    overlay = plots.overlay_svg([(n, r.records) for n, r in zip(names, runs)], [r.metric for r in runs])
    run_notes = [f"{n}: {note}" for n, r in zip(names, runs) for note in r.notes]
    return render("compare.html.j2", names=names, links=links, rows=comparison_rows(runs), overlay=markup(overlay), verdicts=verdicts,
                  run_notes=run_notes)
