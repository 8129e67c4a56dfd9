"""Classification metrics (scikit-learn).

Definitions follow scikit-learn: accuracy = share of exact matches; macro F1 = unweighted mean
of per-class F1 over the classes present in the gold labels or the predictions (scikit-learn's
default ``labels``: a class that occurs in neither has no defined F1 and is left out of the mean
rather than counted as 0; such classes are listed under ``absent_classes``); micro F1 = F1 of
the pooled counts (equals accuracy for single-label data);
subset accuracy (multi-label) = share of rows whose whole label set is exactly right.
References: sklearn.metrics.{accuracy_score, f1_score, precision_recall_fscore_support,
confusion_matrix}; Manning, Raghavan & Schütze (2008), §13.6 for macro/micro averaging.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from deltatune.errors import DeltatuneError



def _check_inputs(metric: str, y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> None:
    """Raise a one-line :class:`DeltatuneError` for nothing to score, mismatched lengths, or class ids
    / label columns that ``labels`` does not have."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        raise DeltatuneError(f"no examples to score: {metric} got 0 rows; give the evaluation split at least one row")
    if len(y_true) != len(y_pred):
        raise DeltatuneError(f"{metric}: {len(y_true)} gold rows for {len(y_pred)} predictions; give one prediction per row")
    if y_true.ndim == 2 or y_pred.ndim == 2:
        if y_true.shape[-1] != len(labels) or y_pred.shape[-1] != len(labels):
            raise DeltatuneError(f"{metric}: rows of {y_true.shape[-1]}/{y_pred.shape[-1]} labels for {len(labels)} label names")
        return
    for name, ids in (("gold", y_true), ("predicted", y_pred)):
        if ids.min() < 0 or ids.max() >= len(labels):
            raise DeltatuneError(f"{metric}: {name} class id {int(ids.max() if ids.max() >= len(labels) else ids.min())} is outside 0..{len(labels) - 1} ({len(labels)} labels)")

def single_label_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Metrics for single-label classification.

    Args:
        y_true: int array (N,), class ids in ``[0, len(labels))``.
        y_pred: int array (N,), predicted class ids.
        labels: class names by id.

    Returns:
        ``accuracy``, ``f1_macro`` (mean over the classes present in ``y_true`` or ``y_pred``, as
        ``sklearn.metrics.f1_score(average="macro")``), ``f1_micro``, ``absent_classes`` (names of
        the classes in neither, in label order; left out of ``f1_macro``), ``per_class`` {name:
        precision, recall, f1, support} for every class (an absent one: all 0) and
        ``confusion_matrix`` (rows = true class, columns = predicted, in label order).
    """
    _check_inputs("single_label_metrics", y_true, y_pred, labels)
    ids = list(range(len(labels)))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    seen = set(y_true.tolist()) | set(y_pred.tolist())
    present = [i for i in ids if i in seen]
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)) if present else 0.0,
        "f1_micro": float(f1_score(y_true, y_pred, labels=ids, average="micro", zero_division=0)),
        "absent_classes": [labels[i] for i in ids if i not in seen],
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def multi_label_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Metrics for multi-label classification.

    Args:
        y_true: 0/1 array (N, L).
        y_pred: 0/1 array (N, L).
        labels: the L label names.

    Returns:
        ``subset_accuracy``, ``f1_micro``, ``f1_macro`` (mean over the labels set in some row of
        ``y_true`` or ``y_pred``: ``sklearn.metrics.f1_score(average="macro")`` with those
        ``labels``), ``absent_classes`` (names of the labels set in no row of either; left out
        of ``f1_macro``), ``per_class`` {name: precision, recall, f1, support} for every label.
    """
    _check_inputs("multi_label_metrics", y_true, y_pred, labels)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    used = (y_true != 0).any(axis=0) | (y_pred != 0).any(axis=0)
    present = [i for i in range(len(labels)) if used[i]]
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    return {
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_micro": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)) if present else 0.0,
        "absent_classes": [labels[i] for i in range(len(labels)) if not used[i]],
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(labels)
        },
    }
