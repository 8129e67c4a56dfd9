"""The report of a ``deltatune auto`` folder: summary, leaderboard, optimization history,
parameter importances, and the best trial's own sections."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from deltatune.report import plots
from deltatune.report.html import markup, render, run_view
from deltatune.report.reading import AutoData
from deltatune.report.sections import fmt, fmt_bytes, fmt_seconds

# leaderboard columns: (heading, row key); constant config columns are left out (but model, method, lr)
_COLUMNS = (
    ("model", "model.name_or_path"), ("method", "delta.method"), ("lr", "train.learning_rate"),
    ("batch", "train.per_device_train_batch_size"), ("epochs", "train.num_train_epochs"), ("warmup", "train.warmup_ratio"),
    ("wd", "train.weight_decay"), ("lora_r", "delta.lora_r"),
)
_ALWAYS = {"model.name_or_path", "delta.method", "train.learning_rate"}


def _link(target: Path, page_dir: Path) -> str:
    """A relative link from ``page_dir`` to ``target`` (``""`` when it does not exist)."""
    return Path(os.path.relpath(target.resolve(), page_dir.resolve())).as_posix() if target.is_file() else ""


def _short_model(name) -> str:
    """A model folder as its last component (``/x/y/tiny_bert`` -> ``tiny_bert``); hub ids and packaged names as they are."""
    text = fmt(name)
    return Path(text).name if text.startswith(("/", ".", "~")) else text


def leaderboard_table(auto: AutoData) -> tuple[list[str], list[tuple[list[str], str, bool]]]:
    """``(head, rows)``: each row ``(cells, link to the trial's report.html or "", is the best)``."""
    rows = auto.leaderboard
    metric = str(auto.report.get("metric") or (rows[0].get("metric") if rows else "value"))
    shown = [(h, k) for h, k in _COLUMNS if k in _ALWAYS or len({str(r.get(k)) for r in rows}) > 1]
    tests = sorted({k for r in rows for k in (r.get("test") or {})})
    test_metric = metric if metric in tests else None
    head = ["trial", "state", metric] + ([f"test {test_metric}"] if test_metric else []) + [h for h, _ in shown] + ["time", "note"]
    best = (auto.report.get("best") or {}).get("trial")
    out = []
    for r in rows:
        cells = [f"{r.get('trial')}{'*' if r.get('baseline') else ''}", str(r.get("state", "")).lower(), fmt(r.get("value"))]
        if test_metric:
            cells.append(fmt((r.get("test") or {}).get(test_metric)))
        cells += [_short_model(r.get(k)) if k == "model.name_or_path" else fmt(r.get(k)) for _, k in shown]
        cells += [fmt_seconds(r.get("seconds")), str(r.get("note") or "")]
        link = ""
        if r.get("path"):
            p = Path(str(r["path"]))
            p = auto.root / "trials" / p.name if (auto.root / "trials" / p.name).is_dir() else p
            link = _link(p / "report.html", auto.root)
        out.append((cells, link, best is not None and r.get("trial") == best))
    return head, out


def _summary(auto: AutoData) -> list[tuple[str, str]]:
    rep = auto.report
    best = rep.get("best") or {}
    study = rep.get("study") or {}
    rows = [("task", fmt(rep.get("task"))), ("objective", f"{fmt(rep.get('metric'))} ({fmt(rep.get('direction'))}) on the validation split"),
            ("trials", fmt(study.get("trials", len(auto.leaderboard)))), ("time", fmt_seconds(rep.get("seconds"))),
            ("time budget", fmt_seconds(rep.get("time_budget_seconds")) if rep.get("time_budget_seconds") else "none")]
    if best:
        rows.append(("best", f"trial {best.get('trial')}: {fmt(rep.get('metric'))} {fmt(best.get('value'))}"))
    base = rep.get("baseline") or {}
    if base:
        rows.append(("default configuration", f"trial {base.get('trial')}: {fmt(base.get('value'))} ({str(base.get('state', '')).lower()})"))
    if rep.get("interrupted"):
        rows.append(("status", "interrupted"))
    if rep.get("freed_bytes"):
        rows.append(("disk freed", fmt_bytes(rep.get("freed_bytes"))))
    return rows


def render_auto(auto: AutoData) -> str:
    """The page of a ``deltatune auto`` folder (written as ``<auto>/report.html``)."""
    rep = auto.report
    metric = str(rep.get("metric") or "objective")
    direction = str(rep.get("direction") or "maximize")
    imp = rep.get("importances") or {}
    values = imp.get("values") if isinstance(imp.get("values"), dict) else {}
    if values:
        note = (f"{imp.get('evaluator', 'PED-ANOVA')} importances over {imp.get('trials', '?')} completed trials (shares summing to 1; "
                "rough with few trials)" + (f"; {'; '.join(map(str, imp.get('caveats') or []))}" if imp.get("caveats") else ""))
    else:
        note = f"Not available: {imp.get('error', 'not computed')}."
    head, rows = leaderboard_table(auto)
    best = run_view(auto.best, anchor="best") if auto.best is not None else None
    best_link = _link(auto.best.root / "report.html", auto.root) if auto.best is not None else ""
    context: dict[str, Any] = dict(
        name=auto.root.resolve().name, summary=_summary(auto), leaderboard_head=head, leaderboard_rows=rows,
        history=markup(plots.history_svg(auto.leaderboard, metric, direction == "maximize")), metric=metric, direction=direction,
        importances=markup(plots.importances_svg(values)), importance_note=note, best=best, best_link=best_link,
        reproduce=str((rep.get("best") or {}).get("reproduce", "")), auto_notes=list(auto.notes),
    )
    return render("auto.html.j2", **context)
