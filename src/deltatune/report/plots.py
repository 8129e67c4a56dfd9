"""The report's figures as inline SVG strings (matplotlib without pyplot, imported on first use).

Every function returns an ``<svg ...>`` element (no XML header) that scales to its container
(``width="100%"``, the ``viewBox`` kept), or ``""`` when there is nothing to draw. Text stays
text (``svg.fonttype: none``), escaped by matplotlib; ``$`` in user labels is escaped so it
is not read as mathtext. Element ids are salted per figure, so several figures can be inlined
in one page, and the output is deterministic.

- :func:`curves_svg`: training/validation loss, the validation metric and the learning rate
  per step, with the best step marked (also used by the web UI for live runs);
  :func:`curves_caption` names what it drew.

A series of more than :data:`MAX_POINTS` points is thinned before drawing (:func:`thin`: per
bucket of steps its lowest and highest value, plus the first, last and best step), so a
200,000-step run draws in well under a second and its page stays small; a series with few
points gets markers, so a single logged step is visible.
- :func:`gap_svg`: validation minus training loss per evaluation (the overfitting monitor).
- :func:`overlay_svg`: validation loss and metric of several runs on shared axes.
- :func:`history_svg`, :func:`importances_svg`: a ``deltatune auto`` search.
"""

from __future__ import annotations

import functools
import io
import math
import re
import threading
from typing import Any, Callable, Optional, Sequence

MAX_POINTS = 2000  # most points drawn per series (see thin)
FEW_POINTS = 20  # a series with at most this many points is drawn with markers
_WIDTH = 5.2  # inches: narrow enough that 9-pt text stays readable on a phone (scaled to ~370 px)
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


_STYLE = {"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100}
_LOCK = threading.Lock()  # rcParams are global: one figure at a time (the web UI draws from several threads)


def _styled(salt: str) -> Callable:
    """Decorator: draw inside ``matplotlib.rc_context`` (:data:`_STYLE`, ``svg.hashsalt=salt``) under
    :data:`_LOCK`. pyplot is never used, so no backend is chosen and a user's own plotting state
    (a notebook's backend, their rcParams) is left alone."""
    def wrap(draw: Callable[..., str]) -> Callable[..., str]:
        @functools.wraps(draw)
        def styled(*args: Any, **kwargs: Any) -> str:
            import matplotlib

            with _LOCK, matplotlib.rc_context({**_STYLE, "svg.hashsalt": salt}):
                return draw(*args, **kwargs)
        return styled
    return wrap


def _subplots(nrows: int = 1, figsize: tuple[float, float] = (5.2, 2.6), **kwargs: Any):
    """``(figure, axes)`` like ``pyplot.subplots`` but on a bare :class:`matplotlib.figure.Figure` (no pyplot)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, 1, **kwargs)


def _label(text: Any) -> str:
    """User text as a matplotlib label: ``$`` escaped (no mathtext), cut to 60 characters."""
    s = str(text)
    s = s if len(s) <= 60 else s[:59] + "…"
    return s.replace("$", r"\$")


def _svg(fig) -> str:
    """The figure as an inline ``<svg>`` element scaled to its container."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)  # RDF with namespace URLs, no content
    head_end = text.index(">")
    # inline SVG in HTML needs no namespace declarations (the HTML parser maps xlink:href itself)
    head = re.sub(r'\s(width|height|xmlns(:xlink)?)="[^"]*"', "", text[:head_end])
    return f'{head} width="100%" preserveAspectRatio="xMidYMid meet" role="img">' + text[head_end + 1:]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _series(records: Sequence[dict[str, Any]], key: str, evals: bool) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over train records (``evals`` false) or eval records, one per step, by step."""
    points: dict[int, float] = {}
    for r in records:
        if "event" in r or not isinstance(r.get("step"), int) or not _finite(r.get(key)):
            continue
        if evals != any(k.startswith("eval_") for k in r):
            continue
        points[r["step"]] = float(r[key])
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def thin(steps: list[int], values: list[float], keep: Sequence[Optional[int]] = (), limit: int = MAX_POINTS) -> tuple[list[int], list[float]]:
    """At most about ``limit`` points of a series (``steps`` ascending), its shape kept.

    The steps are cut into ``(limit - 3) // 2`` buckets of equal count; each keeps its lowest and
    highest value (so spikes stay visible: min-max decimation), plus the first and last point and
    the points at the steps in ``keep`` (the best step). A series of ``limit`` points or fewer is
    returned as it is.
    """
    n = len(steps)
    if n <= limit:
        return steps, values
    wanted = {s for s in keep if s is not None}
    chosen = {0, n - 1} | {i for i, s in enumerate(steps) if s in wanted}
    buckets = max(1, (limit - len(chosen)) // 2)
    size = -(-n // buckets)
    get = values.__getitem__
    for a in range(0, n, size):
        r = range(a, min(a + size, n))
        chosen.add(min(r, key=get))
        chosen.add(max(r, key=get))
    idx = sorted(chosen)
    return [steps[i] for i in idx], [values[i] for i in idx]


def _curve_series(records: Sequence[dict[str, Any]], metric: Optional[str], best_step: Optional[int], learning_rate: bool = True) -> dict:
    """The series :func:`curves_svg` draws, thinned (:func:`thin`): ``{"train", "val", "metric",
    "train_metric", "lr"}`` each ``(steps, values)`` (empty lists when not logged); the metric's
    series are empty for the loss. ``train_metric`` is the metric as training records log it under
    its own name (GRPO's ``reward``, DPO's ``reward_accuracy`` per logged step)."""
    metric = metric or default_metric(records)
    mkey = f"eval_{metric}" if metric and metric != "loss" else None
    points: dict[str, dict[int, float]] = {"train": {}, "val": {}, "metric": {}, "train_metric": {}, "lr": {}}
    train, val, met, lr, train_met = points["train"], points["val"], points["metric"], points["lr"], points["train_metric"]
    tkey = metric if mkey else None
    for r in records:  # one pass (a 200,000-step log)
        step = r.get("step")
        if type(step) is not int or "event" in r:
            continue
        if "eval_loss" in r or (mkey is not None and mkey in r) or ("loss" not in r and any(k[:5] == "eval_" for k in r)):
            if _finite(r.get("eval_loss")):
                val[step] = float(r["eval_loss"])
            if mkey and _finite(r.get(mkey)):
                met[step] = float(r[mkey])
        else:
            if _finite(r.get("loss")):
                train[step] = float(r["loss"])
            if learning_rate and _finite(r.get("learning_rate")):
                lr[step] = float(r["learning_rate"])
            if tkey is not None and _finite(r.get(tkey)):
                train_met[step] = float(r[tkey])
    out: dict[str, Any] = {"metric_name": metric, "thinned": any(len(p) > MAX_POINTS for p in points.values())}
    for name, p in points.items():
        steps = sorted(p)
        out[name] = thin(steps, [p[x] for x in steps], (best_step,))
    return out


def curves_caption(records: Sequence[dict[str, Any]], metric: Optional[str] = None, best_step: Optional[int] = None,
                   learning_rate: bool = True) -> str:
    """The caption of :func:`curves_svg`'s figure: what it draws, only that (``""`` when it draws nothing)."""
    return _caption(_curve_series(records, metric, best_step, learning_rate), best_step)


def _caption(s: dict, best_step: Optional[int]) -> str:
    losses = [w for w, k in (("training", "train"), ("validation", "val")) if s[k][0]]
    parts = []
    if losses:
        parts.append(" and ".join(losses) + " loss")
    metrics = [w for w, k in (("training", "train_metric"), ("validation", "metric")) if s[k][0]]
    if metrics:
        parts.append(" and ".join(metrics) + f" {s['metric_name']}")
    if s["lr"][0]:
        parts.append("learning rate")
    if not parts:
        return ""
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    thinned = s["thinned"]
    return (text[0].upper() + text[1:] + " per optimizer step"
            + (f"; dashed line: the best step ({best_step})" if best_step is not None else "")
            + (f" (long series thinned to about {MAX_POINTS:,} points, each bucket's lowest and highest value kept)" if thinned else "")
            + ".")


def _line(ax, steps: list[int], values: list[float], **kwargs: Any) -> None:
    """``ax.plot`` with markers when the series has few points (a single logged step stays visible)."""
    if len(steps) <= FEW_POINTS:
        kwargs.setdefault("marker", "o")
        kwargs.setdefault("markersize", 3)
    ax.plot(steps, values, **kwargs)


def _sane_xlim(axes, steps: Sequence[int]) -> None:
    """A shared step axis around a single step (matplotlib would give ``step ± 0.1``): one step each side."""
    if steps and min(steps) == max(steps):
        axes.set_xlim(max(0, steps[0] - 1), steps[0] + 1)


def default_metric(records: Sequence[dict[str, Any]]) -> Optional[str]:
    """The first ``eval_<name>`` (not the loss) in the eval records, as ``<name>``; ``None`` if none."""
    for r in records:
        for k, v in r.items():
            if k.startswith("eval_") and k != "eval_loss" and _finite(v):
                return k[len("eval_"):]
    return None


def _mark_best(ax, best_step: Optional[int], label: bool) -> None:
    if best_step is None:
        return
    ax.axvline(best_step, color="#555555", linestyle="--", linewidth=1)
    if label:  # above the panel, on the side of the line with more room
        lo, hi = ax.get_xlim()
        right_half = best_step > (lo + hi) / 2
        ax.annotate(f"best step {best_step}", xy=(best_step, 1), xycoords=("data", "axes fraction"), xytext=(0, 2),
                    textcoords="offset points", fontsize=8, color="#333333", ha="right" if right_half else "left", va="bottom")


def curves_svg(
    records: Sequence[dict[str, Any]],
    metric: Optional[str] = None,
    best_step: Optional[int] = None,
    *,
    learning_rate: bool = True,
    title: Optional[str] = None,
) -> str:
    """The learning curves of one run as an SVG string (see :func:`curves_figure`, which also gives the caption)."""
    return curves_figure(records, metric, best_step, learning_rate=learning_rate, title=title)[0]


def curves_figure(
    records: Sequence[dict[str, Any]],
    metric: Optional[str] = None,
    best_step: Optional[int] = None,
    *,
    learning_rate: bool = True,
    title: Optional[str] = None,
) -> tuple[str, str]:
    """The learning curves of one run: ``(svg, caption)``; the caption names what is drawn.

    Panels, stacked with a shared step axis: training loss and validation loss per step; the
    validation metric ``eval_<metric>`` per evaluation and the metric as training records log it
    (``<metric>``: GRPO's reward, a preference task's reward accuracy), when logged; the learning rate per
    logged step (``learning_rate=True``). The best step is a dashed vertical line on every
    panel, labelled on the first.

    Args:
        records: metrics.jsonl records (train: ``step, loss, learning_rate``; eval:
            ``step, eval_loss, eval_<metric>``); non-finite values are skipped.
        metric: the validation metric's name without ``eval_`` (default: the first logged one).
        best_step: the step whose weights were kept, or ``None``.
        title: a title over the figure (user text; escaped).

    Returns:
        ``(svg, caption)``: ``<svg ...>...</svg>`` and its caption, or ``("", "")`` when no record
        has a loss, metric or learning rate. Series of over :data:`MAX_POINTS` points are thinned
        (:func:`thin`).
    """
    series = _curve_series(records, metric, best_step, learning_rate)
    return _draw_curves(series, best_step, title), _caption(series, best_step)


@_styled("curves")
def _draw_curves(series: dict, best_step: Optional[int], title: Optional[str]) -> str:
    metric = series["metric_name"]
    train, val, met, lr, train_met = series["train"], series["val"], series["metric"], series["lr"], series["train_metric"]
    panels = [p for p, has in (("loss", train[0] or val[0]), ("metric", met[0] or train_met[0]), ("lr", lr[0])) if has]
    if not panels:
        return ""
    heights = {"loss": 2.4, "metric": 1.8, "lr": 1.4}
    fig, axes = _subplots(len(panels), figsize=(_WIDTH, sum(heights[p] for p in panels)), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [heights[p] for p in panels]})
    for i, (panel, ax) in enumerate(zip(panels, axes[:, 0])):
        if panel == "loss":
            if train[0]:
                _line(ax, *train, color=_COLORS[0], linewidth=1.2, label="training loss")
            if val[0]:
                ax.plot(*val, color=_COLORS[1], marker="o" if len(val[0]) <= 200 else None, markersize=3, linewidth=1.2,
                        label="validation loss")
            ax.set_ylabel("loss")
            ax.legend(loc="best", fontsize=8)
        elif panel == "metric":
            if train_met[0]:
                _line(ax, *train_met, color=_COLORS[3], linewidth=1.2, label=_label(f"training {metric}"))
            if met[0]:
                ax.plot(*met, color=_COLORS[2], marker="o" if len(met[0]) <= 200 else None, markersize=3, linewidth=1.2,
                        label=_label(f"validation {metric}"))
            ax.set_ylabel(_label(metric if train_met[0] else f"validation {metric}"))
            if train_met[0]:
                ax.legend(loc="best", fontsize=8)
        else:
            _line(ax, *lr, color=_COLORS[4], linewidth=1.2)
            ax.set_ylabel("learning rate")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if i == 0:
            _sane_xlim(ax, train[0] + val[0] + met[0] + train_met[0] + lr[0] + ([best_step] if best_step is not None else []))
        _mark_best(ax, best_step, label=i == 0)
    axes[-1, 0].set_xlabel("step")
    axes[-1, 0].xaxis.get_major_locator().set_params(integer=True)
    if title:
        axes[0, 0].set_title(_label(title))
    fig.tight_layout()
    return _svg(fig)


@_styled("gap")
def gap_svg(pairs: Sequence[tuple[int, float, Optional[float]]]) -> str:
    """Validation loss minus training loss per evaluation (the generalization gap) as an SVG string.

    Args:
        pairs: ``(step, validation loss, training loss or None)`` per evaluation
            (:func:`deltatune.report.overfitting.loss_pairs`).

    Returns:
        ``<svg ...>``, or ``""`` with fewer than 2 evaluations that have both losses.
    """
    points = [(s, v - t) for s, v, t in pairs if t is not None]
    if len(points) < 2:
        return ""
    xs, ys = thin([s for s, _ in points], [g for _, g in points])
    fig, ax = _subplots(1, figsize=(_WIDTH, 2.2))
    ax.plot(xs, ys, color=_COLORS[3], marker="o" if len(xs) <= 200 else None, markersize=3, linewidth=1.2)
    ax.axhline(0, color="#999999", linewidth=0.8)
    ax.set_xlabel("step")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("validation − training loss")
    fig.tight_layout()
    return _svg(fig)


@_styled("overlay")
def overlay_svg(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], metrics: Sequence[Optional[str]]) -> str:
    """Validation loss (top) and each run's validation metric (bottom) of several runs, overlaid.

    Args:
        runs: ``(label, metrics.jsonl records)`` per run (labels are user text; escaped).
        metrics: the validation metric per run (``None``: none drawn for that run); runs with
            different metrics share the lower panel, each line labelled with its metric.

    Returns:
        ``<svg ...>``, or ``""`` when no run has an evaluation.
    """
    losses = [(_label(name), thin(*_series(recs, "eval_loss", evals=True))) for name, recs in runs]
    mets = [(_label(f"{name}: {m}"), thin(*_series(recs, f"eval_{m}", evals=True)) if m and m != "loss" else ([], []))
            for (name, recs), m in zip(runs, metrics)]
    panels = [p for p, has in (("loss", any(s[0] for _, s in losses)), ("metric", any(s[0] for _, s in mets))) if has]
    if not panels:
        return ""
    fig, axes = _subplots(len(panels), figsize=(_WIDTH, 2.6 * len(panels)), squeeze=False)
    for panel, ax in zip(panels, axes[:, 0]):
        for i, (name, (steps, values)) in enumerate(losses if panel == "loss" else mets):
            if steps:
                ax.plot(steps, values, color=_COLORS[i % len(_COLORS)], marker="o", markersize=3, linewidth=1.2, label=name)
        ax.set_ylabel("validation loss" if panel == "loss" else "validation metric")
        ax.set_xlabel("step")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _svg(fig)


@_styled("history")
def history_svg(rows: Sequence[dict[str, Any]], metric: str, maximize: bool) -> str:
    """A search's optimization history: each completed trial's objective and the best so far.

    Args:
        rows: leaderboard rows (``trial``, ``state``, ``value``), any order.
        metric: the objective's name (axis label).
        maximize: whether higher is better (for the best-so-far line).

    Returns:
        ``<svg ...>``, or ``""`` when no trial has a value.
    """
    points = sorted((int(r["trial"]), float(r["value"])) for r in rows
                    if r.get("state") == "COMPLETE" and _finite(r.get("value")) and r.get("trial") is not None)
    if not points:
        return ""
    best, best_so_far = None, []
    for _, v in points:
        best = v if best is None else (max(best, v) if maximize else min(best, v))
        best_so_far.append(best)
    fig, ax = _subplots(1, figsize=(_WIDTH, 2.6))
    xs = [t for t, _ in points]
    ax.plot(xs, [v for _, v in points], linestyle="none", marker="o", markersize=4, color=_COLORS[0], label="trial")
    ax.step(xs, best_so_far, where="post", color=_COLORS[1], linewidth=1.2, label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(_label(metric))
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _svg(fig)


@_styled("importances")
def importances_svg(values: dict[str, float]) -> str:
    """Parameter importances as horizontal bars, largest on top (``{param: share}``; ``""`` when empty)."""
    items = sorted(((k, float(v)) for k, v in values.items() if _finite(v)), key=lambda kv: kv[1])
    if not items:
        return ""
    fig, ax = _subplots(1, figsize=(_WIDTH, 0.9 + 0.35 * len(items)))
    ax.barh([_label(k) for k, _ in items], [v for _, v in items], color=_COLORS[0])
    ax.set_xlabel("importance (share)")
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return _svg(fig)
