"""Classification metrics (scikit-learn).

Definitions follow scikit-learn: accuracy = share of exact matches; macro F1 = unweighted mean
of per-class F1; micro F1 = F1 of the pooled counts (equals accuracy for single-label data);
subset accuracy (multi-label) = share of rows whose whole label set is exactly right.
References: sklearn.metrics.{accuracy_score, f1_score, precision_recall_fscore_support,
confusion_matrix}; Manning, Raghavan & Schütze (2008), §13.6 for macro/micro averaging.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def single_label_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Metrics for single-label classification.

    Args:
        y_true: int array (N,), class ids in ``[0, len(labels))``.
        y_pred: int array (N,), predicted class ids.
        labels: class names by id.

    Returns:
        ``accuracy``, ``f1_macro``, ``f1_micro``, ``per_class`` {name: precision, recall, f1,
        support} and ``confusion_matrix`` (rows = true class, columns = predicted, in label order).
    """
    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "f1_micro": float(f1_score(y_true, y_pred, labels=ids, average="micro", zero_division=0)),
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
        ``subset_accuracy``, ``f1_micro``, ``f1_macro``, ``per_class`` {name: precision, recall,
        f1, support}.
    """
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    return {
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_micro": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(labels)
        },
    }
