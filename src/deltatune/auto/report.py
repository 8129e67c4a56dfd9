"""The outcome of a search: leaderboard, parameter importances, disk clean-up.

Importances come from optuna's PED-ANOVA evaluator, optuna 5's default (Watanabe et al. 2023,
"PED-ANOVA: Efficiently Quantifying Hyperparameter Importance in Arbitrary Subspaces"): how much
each parameter's distribution differs between the top trials and all completed trials,
normalized to sum to 1. With few trials they are rough (optuna's own caveats are kept in the
report), and when every trial scored the same they are all equal and say nothing.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any, Optional

from deltatune.auto.budget import format_seconds
from deltatune.config import read_yaml
from deltatune.errors import DeltatuneError

COLUMNS = (
    ("model", "model.name_or_path"),
    ("method", "delta.method"),
    ("lr", "train.learning_rate"),
    ("batch", "train.per_device_train_batch_size"),
    ("epochs", "train.num_train_epochs"),
    ("warmup", "train.warmup_ratio"),
    ("wd", "train.weight_decay"),
    ("lora_r", "delta.lora_r"),
)
_STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2, "RUNNING": 3, "WAITING": 4}


def leaderboard(trials: list, metric: str, maximize: bool, pinned: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per trial: completed trials best first, then pruned, failed.

    Args:
        trials: ``study.trials`` (optuna ``FrozenTrial`` objects).
        metric: the objective's metric name (the row key for its value).
        pinned: user-fixed config keys, shown in every row.

    Returns:
        Rows with keys ``trial``, ``state``, ``metric`` (name), ``value``, the config keys of
        :data:`COLUMNS`, ``seconds``, ``estimated_seconds`` (``None`` when not estimated),
        ``test`` (dict), ``note``, ``path``, ``baseline``. ``model.name_or_path`` is the trial's
        model even when it was not searched (one candidate): from its ``model`` attribute, else
        its config.yaml.
    """
    rows = []
    for t in trials:
        settings = {**pinned, **t.user_attrs.get("settings", {})}
        settings["model.name_or_path"] = (
            settings.get("model.name_or_path") or t.user_attrs.get("model") or _config_model(t.user_attrs.get("path"))
        )
        value = t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        rows.append({
            "trial": t.number,
            "state": t.state.name,
            "metric": metric,
            "value": value,
            **{key: settings.get(key) for _, key in COLUMNS},
            "seconds": t.user_attrs.get("seconds"),
            "estimated_seconds": t.user_attrs.get("estimated_seconds"),
            "test": t.user_attrs.get("test", {}),
            "note": t.user_attrs.get("note") or t.user_attrs.get("error") or ("did not finish" if t.state.name == "FAIL" else ""),
            "path": t.user_attrs.get("path"),
            "baseline": bool(t.user_attrs.get("baseline")),
        })
    def key(r):
        v = r["value"]
        return (_STATE_ORDER.get(r["state"], 9), v is None, 0.0 if v is None else (-v if maximize else v), r["trial"])

    return sorted(rows, key=key)


def _config_model(path: Optional[str]) -> Optional[str]:
    """``model.name_or_path`` in the config.yaml of the run directory ``path`` (``None`` if unreadable)."""
    if not path:
        return None
    try:
        model = read_yaml(Path(path) / "config.yaml").get("model")
    except DeltatuneError:
        return None
    return model.get("name_or_path") if isinstance(model, dict) else None


def _fmt(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if key == "train.learning_rate":
        return f"{value:.2e}"
    if isinstance(value, float):
        return f"{value:.3g}" if key != "value" else f"{value:.4f}"
    return str(value)


def format_leaderboard(rows: list[dict[str, Any]], test_metric: Optional[str] = None) -> str:
    """A fixed-width text table of :func:`leaderboard` rows (constant columns are left out, but for
    the model, the method and the learning rate)."""
    if not rows:
        return "(no trials)"
    metric = rows[0]["metric"]
    always = ("model.name_or_path", "delta.method", "train.learning_rate")
    shown = [(h, k) for h, k in COLUMNS if len({str(r[k]) for r in rows}) > 1 or k in always]
    header = ["trial", "state", metric] + ([f"test {test_metric}"] if test_metric else []) + [h for h, _ in shown] + ["time", "note"]
    table = []
    for r in rows:
        name = f"{r['trial']}*" if r["baseline"] else str(r["trial"])
        line = [name, r["state"].lower(), _fmt(r["value"], "value")]
        if test_metric:
            line.append(_fmt(r["test"].get(test_metric), "value"))
        line += [_fmt(r[k], k) for _, k in shown]
        line += [format_seconds(r["seconds"]) if r["seconds"] is not None else "-", r["note"]]
        table.append(line)
    widths = [max(len(header[i]), *(len(x[i]) for x in table)) for i in range(len(header) - 1)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + cells[-1]  # noqa: E731
    out = [fmt(header).rstrip(), fmt(["-" * w for w in widths] + ["-" * 4]).rstrip()]
    out += [fmt(x).rstrip() for x in table]
    return "\n".join(out) + "\n(* = the hand-set default configuration)"


def write_leaderboard(rows: list[dict[str, Any]], folder: Path) -> None:
    """``leaderboard.json`` (rows as they are) and ``leaderboard.csv`` (test metrics flattened)."""
    (folder / "leaderboard.json").write_text(json.dumps(rows, indent=2))
    tests = sorted({k for r in rows for k in r["test"]})
    fields = [k for k in rows[0] if k != "test"] + [f"test_{k}" for k in tests] if rows else []
    with (folder / "leaderboard.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({**{k: v for k, v in r.items() if k != "test"}, **{f"test_{k}": r["test"].get(k) for k in tests}})


def importances(study) -> dict[str, Any]:
    """``{"values": {param: share}, "evaluator", "trials", "caveats"}``, or ``{"error": why}`` when not computable."""
    import warnings

    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return {"error": f"needs at least 2 completed trials ({len(complete)} so far)"}
    if len({t.value for t in complete}) == 1:
        return {"error": f"all {len(complete)} completed trials scored the same"}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except Exception as e:  # the evaluator fails on degenerate studies
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()}
    if not values:
        return {"error": "no parameter varies across the completed trials"}
    return {
        "values": {k: round(float(v), 4) for k, v in values.items()},
        "evaluator": "PED-ANOVA",
        "trials": len(complete),
        "caveats": sorted({str(w.message) for w in caught}),
    }


def format_importances(imp: dict[str, Any]) -> str:
    """One line: ``learning_rate_scale 0.61, train.num_train_epochs 0.22, ...``."""
    if "values" not in imp:
        return f"parameter importances: not available ({imp['error']})"
    parts = ", ".join(f"{k} {v:.2f}" for k, v in imp["values"].items())
    return f"parameter importances ({imp['evaluator']}, {imp['trials']} completed trials; rough with few trials): {parts}"


def prune_trial_folders(rows: list[dict[str, Any]], best_trial: Optional[int]) -> int:
    """Delete checkpoints/ of every trial and model/ of every trial but the best; return bytes freed.

    Each trial keeps config.yaml, metrics.jsonl and eval.json, so it stays readable and
    reproducible (``deltatune train <trial>/config.yaml``).
    """
    freed = 0
    for r in rows:
        if not r["path"]:
            continue
        root = Path(r["path"])
        targets = [root / "checkpoints"] + ([root / "model"] if r["trial"] != best_trial else [])
        for t in targets:
            if t.is_dir():
                freed += sum(p.stat().st_size for p in t.rglob("*") if p.is_file())
                shutil.rmtree(t, ignore_errors=True)
    return freed
