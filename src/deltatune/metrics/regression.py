"""Regression metrics: mse, mae, rmse, Pearson's r and Spearman's rho (numpy, scipy.stats).

Definitions: mse = mean((pred - true)^2); mae = mean(|pred - true|); rmse = sqrt(mse), as
``sklearn.metrics.mean_squared_error`` / ``mean_absolute_error``. ``pearson`` is Pearson's
product-moment correlation (``scipy.stats.pearsonr``) and ``spearman`` Spearman's rank
correlation, ties given their average rank (``scipy.stats.spearmanr``); STS-B reports both
(Cer et al., 2017, "SemEval-2017 Task 1", §4). A correlation is undefined when the predictions
or the targets are constant (std 0) or there are fewer than 2 rows: it is then reported as
0.0 (no linear / rank relation is found), never NaN, so metrics.jsonl and the report stay
plain numbers.

With several targets every metric is the unweighted mean over targets, and ``per_target``
holds each target's own metrics by name.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from scipy import stats

METRICS = ("mse", "mae", "rmse", "pearson", "spearman")


def _correlation(fn, x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = float(fn(x, y)[0])
    return r if np.isfinite(r) else 0.0


def target_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """mse, mae, rmse, pearson and spearman of one target.

    Args:
        y_true: float array (N,), the true values.
        y_pred: float array (N,), the predictions, in the same units.

    Returns:
        ``{"mse", "mae", "rmse", "pearson", "spearman"}`` as floats; a correlation that is
        undefined (constant input, N < 2) is 0.0.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    err = y_pred - y_true
    mse = float(np.mean(err**2))
    return {
        "mse": mse,
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(mse)),
        "pearson": _correlation(stats.pearsonr, y_pred, y_true),
        "spearman": _correlation(stats.spearmanr, y_pred, y_true),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Metrics of a split with one or several targets.

    Args:
        y_true: float array (N, T) (or (N,) for one target), the true values.
        y_pred: float array of the same shape, the predictions in the same units.
        names: the T target names (the target columns).

    Returns:
        ``mse``, ``mae``, ``rmse``, ``pearson``, ``spearman`` (means over the targets when
        T > 1) and, with several targets, ``per_target`` ``{name: {metric: value}}``.
    """
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    if y_true.shape != y_pred.shape or y_true.shape[1] != len(names):
        raise ValueError(f"targets {y_true.shape} and predictions {y_pred.shape} do not fit {len(names)} target name(s)")
    per = {name: target_metrics(y_true[:, j], y_pred[:, j]) for j, name in enumerate(names)}
    out: dict[str, Any] = {m: float(np.mean([p[m] for p in per.values()])) for m in METRICS}
    if len(names) > 1:
        out["per_target"] = per
    return out
