"""Metrics a bake-off can rank by (higher is better for all of them)."""

import numpy as np

METRICS = ("macro_f1", "accuracy", "weighted_f1", "balanced_accuracy")


def check_metric(metric):
    if metric not in METRICS:
        raise ValueError(
            f"Unknown metric. Expected one of {list(METRICS)}. Received: metric={metric!r}"
        )
    return metric


def score(metric, y_true, y_pred, num_classes=None):
    """`metric` of integer predictions `y_pred` against `y_true`."""
    from sklearn import metrics as skm

    check_metric(metric)
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    labels = list(range(num_classes)) if num_classes else None
    if metric == "accuracy":
        return float(skm.accuracy_score(y_true, y_pred))
    if metric == "balanced_accuracy":
        return float(skm.balanced_accuracy_score(y_true, y_pred))
    average = "macro" if metric == "macro_f1" else "weighted"
    return float(skm.f1_score(y_true, y_pred, labels=labels, average=average, zero_division=0))
