"""Human-readable tables of metrics for the terminal."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


LABEL_WIDTH = 40  # longer class names are cut in the tables (the JSON keeps them whole)


def _label(name: Any) -> str:
    text = str(name)
    return text if len(text) <= LABEL_WIDTH else text[: LABEL_WIDTH - 1] + "…"


def format_table(metrics: dict[str, Any], title: str = "") -> str:
    """Render scalar metrics, a per-class table and a confusion matrix as plain text."""
    lines = [title] if title else []
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    width = max((len(k) for k in scalars), default=0)
    lines += [f"  {k.ljust(width)}  {_fmt(v)}" for k, v in scalars.items()]
    per_class = metrics.get("per_class")
    if isinstance(per_class, dict) and per_class:
        names = [_label(n) for n in per_class]
        w = max(8, *(len(n) for n in names))
        lines.append(f"  {'class'.ljust(w)}  precision  recall      f1  support")
        for name, row in per_class.items():
            lines.append(
                f"  {_label(name).ljust(w)}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  {row['support']:7d}"
            )
    cm = metrics.get("confusion_matrix")
    if isinstance(cm, list) and cm and isinstance(per_class, dict):
        names = [_label(n) for n in per_class]
        w = max(6, *(len(n) for n in names), *(len(str(x)) for row in cm for x in row))
        lines.append("  confusion matrix (rows: true, columns: predicted)")
        lines.append("  " + " " * w + "  " + "  ".join(n.rjust(w) for n in names))
        for name, row in zip(names, cm):
            lines.append("  " + name.rjust(w) + "  " + "  ".join(str(x).rjust(w) for x in row))
    return "\n".join(lines)
