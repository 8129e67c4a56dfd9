"""Task metrics, each from a well-kept library where one exists."""

from deltatune.metrics.classification import multi_label_metrics, single_label_metrics
from deltatune.metrics.report import format_table

__all__ = ["format_table", "multi_label_metrics", "single_label_metrics"]
