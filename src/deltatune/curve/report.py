"""The learning curve's table (text) and page (curve.html: the table and an inline matplotlib SVG).

Torch-free; matplotlib is imported on first drawing (through :mod:`deltatune.report.plots`).
"""

from __future__ import annotations

import html
import math
from typing import Any, Optional

from deltatune.report.plots import _COLORS, _label, _styled, _subplots, _svg


def summarize(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fraction: training rows, seeds finished, mean and (sample) standard deviation of the metric.

    Args:
        points: curve.json's ``points`` (``fraction``, ``train_rows``, ``seed``, ``value``; ``value``
            ``None`` for a point not finished).
    """
    rows = []
    for fraction in sorted({p["fraction"] for p in points}):
        here = [p for p in points if p["fraction"] == fraction]
        values = [p["value"] for p in here if p.get("value") is not None]
        sizes = sorted({p["train_rows"] for p in here if p.get("train_rows") is not None})
        mean = sum(values) / len(values) if values else None
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else (0.0 if values else None)
        rows.append({"fraction": fraction, "train_rows": sizes[0] if len(sizes) == 1 else (sizes or None),
                     "runs": len(values), "planned": len(here), "mean": mean, "std": std})
    return rows


def _num(v: Optional[float], digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _rows_text(n: Any) -> str:
    if n is None:
        return "-"
    return f"{n:,}" if isinstance(n, int) else "/".join(f"{x:,}" for x in n)


def fit_lines(data: dict[str, Any]) -> list[str]:
    """The fit in words: the formula, the leave-last-out check and the gain from doubling (or why there is none)."""
    fit, metric = data["fit"], data["metric"]
    if not fit["ok"]:
        return [fit["reason"]]
    lines = [f"fit: {fit['law']['formula']} (n = training rows; rmse {fit['rmse']:.4f})"]
    if fit["predicted_at_largest"] is not None:
        err = fit["predicted_at_largest"] - fit["measured_at_largest"]
        lines.append(
            f"check: fitted on the smaller fractions only, it predicts {metric} {fit['predicted_at_largest']:.4f} at "
            f"{fit['largest']:,} rows; measured {fit['measured_at_largest']:.4f} (error {err:+.4f})"
        )
    else:
        lines.append(fit["check_reason"])
    lines.append(
        f"2x data ({2 * fit['largest']:,} rows): predicted {metric} {fit['predicted_at_double']:.4f} "
        f"({fit['change_from_doubling']:+.4f})"
    )
    if fit["predicted_at_largest"] is not None:
        miss = abs(fit["predicted_at_largest"] - fit["measured_at_largest"])
        if miss > abs(fit["change_from_doubling"]):
            lines.append(
                f"caution: the check misses by {miss:.4f}, more than the predicted change from doubling: treat that "
                "prediction as a rough guess (more fractions or seeds make the fit firmer)"
            )
    return lines


def format_table(data: dict[str, Any]) -> str:
    """curve.json's points as a text table (one line per fraction: rows, runs, mean +- std), then the fit."""
    metric = data["metric"]
    head = f"{'fraction':>8}  {'train rows':>12}  {'runs':>5}  {metric + ' mean':>14}  {'std':>7}"
    lines = [head, "-" * len(head)]
    for r in summarize(data["points"]):
        lines.append(
            f"{r['fraction']:>8.3f}  {_rows_text(r['train_rows']):>12}  {str(r['runs']) + '/' + str(r['planned']):>5}  "
            f"{_num(r['mean']):>14}  {_num(r['std']):>7}"
        )
    return "\n".join(lines + fit_lines(data))


@_styled("deltatune-curve")
def curve_svg(data: dict[str, Any]) -> str:
    """The metric against training rows (log x axis): every point, mean +- std per fraction, the fitted
    curve (extended to 2x the data) and the leave-last-out curve; ``""`` without a finished point."""
    points = [p for p in data["points"] if p.get("value") is not None]
    if not points:
        return ""
    fig, ax = _subplots(figsize=(5.2, 3.2))
    metric = _label(data["metric"])
    ax.scatter([p["train_rows"] for p in points], [p["value"] for p in points], s=12, color=_COLORS[0], alpha=0.4, label="runs")
    summary = [r for r in summarize(data["points"]) if r["mean"] is not None and isinstance(r["train_rows"], int)]
    ax.errorbar([r["train_rows"] for r in summary], [r["mean"] for r in summary], yerr=[r["std"] for r in summary],
                fmt="o", color=_COLORS[0], capsize=3, label="mean ± std")
    fit = data["fit"]
    lo = min(p["train_rows"] for p in points)
    if fit["ok"]:
        xs = [lo * (2 * fit["largest"] / lo) ** (i / 99) for i in range(100)]
        for key, color, style, name in (("law", _COLORS[1], "-", "fit"), ("check_law", _COLORS[2], "--", "fit without the largest")):
            law = fit.get(key)
            if law:
                sign = -1 if data["direction"] == "maximize" else 1
                ax.plot(xs, [law["a"] + sign * law["b"] * x ** (-law["c"]) for x in xs], style, color=color, linewidth=1.2, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("training rows (log scale)")
    ax.set_ylabel(f"validation {metric}")
    ax.legend(fontsize=8)
    return _svg(fig)


def render_html(data: dict[str, Any]) -> str:
    """curve.html: a self-contained page (inline CSS and SVG, no script) with the table, the fit and the plot."""
    e = html.escape
    metric = data["metric"]
    rows = "".join(
        f"<tr><td>{r['fraction']:.3f}</td><td>{e(_rows_text(r['train_rows']))}</td><td>{r['runs']}/{r['planned']}</td>"
        f"<td>{_num(r['mean'])}</td><td>{_num(r['std'])}</td></tr>"
        for r in summarize(data["points"])
    )
    runs = "".join(
        f"<tr><td>{p['fraction']:.3f}</td><td>{p['seed']}</td><td>{e(_rows_text(p.get('train_rows')))}</td>"
        f"<td>{_num(p.get('value'))}</td><td>{e(str(p['path']))}</td></tr>"
        for p in data["points"]
    )
    fit = "".join(f"<li>{e(line)}</li>" for line in fit_lines(data))
    try:
        svg = curve_svg(data)
    except Exception as ex:  # noqa: BLE001 - the table is the result; a drawing bug must not lose it
        svg = f"<p>(plot not drawn: {e(type(ex).__name__)}: {e(str(ex))})</p>"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>learning curve</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:52em;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "svg{max-width:100%;height:auto}</style></head><body>"
        f"<h1>Learning curve: validation {e(metric)}</h1>"
        f"<p>{e(data['task'])}, {e(str(data['config'].get('model.name_or_path', '')))}; {data['validation_rows'] or '?'} "
        f"validation rows, the same for every point; {e(data['direction'])} {e(metric)}.</p>"
        f"{svg}<ul>{fit}</ul>"
        f"<h2>Per fraction</h2><table><tr><th>fraction</th><th>training rows</th><th>runs</th><th>{e(metric)} mean</th>"
        f"<th>std</th></tr>{rows}</table>"
        f"<h2>Runs</h2><table><tr><th>fraction</th><th>seed</th><th>rows</th><th>{e(metric)}</th><th>run folder</th></tr>{runs}</table>"
        "<p>Fit: inverse power law (Figueroa et al. 2012; Hestness et al. 2017). Each run folder is a normal run: "
        "reproduce one with <code>deltatune train RUN/config.yaml</code>.</p></body></html>\n"
    )
