"""Calibration: does a confidence of 0.9 mean right nine times in ten?

The reliability curve is scikit-learn's `sklearn.calibration.calibration_curve`
on the top-label confidence (the probability of the predicted class) against
whether that prediction was right. scikit-learn has no expected calibration
error, so `calibration_report` computes it here, over the same bins:
`ECE = sum_b n_b / n * |accuracy_b - confidence_b|`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
from sklearn.calibration import calibration_curve

from tfft.evaluation.plots import new_figure, save_figure
from tfft.utils.checks import check_int

BIN_STRATEGIES = ("uniform", "quantile")


@dataclasses.dataclass
class CalibrationReport:
    """Top-label calibration of a classifier on one labelled set.

    Args:
        ece: float. Expected calibration error (0: calibrated).
        max_calibration_error: float. The largest `|accuracy - confidence|`
            of a non-empty bin.
        bins: list of dict. One per non-empty bin: `lower`, `upper` (the
            bin's edges), `confidence` (mean top-label probability), `accuracy`
            (share right) and `count`.
        num_examples: int.
        strategy: str. `"uniform"` or `"quantile"` bins.
    """

    ece: float
    max_calibration_error: float
    bins: list
    num_examples: int
    strategy: str = "uniform"

    def to_dict(self) -> dict:
        """A JSON-ready dict of the report."""
        return dataclasses.asdict(self)

    def save_plot(self, path: str) -> str:
        """Draws the reliability diagram (`plot_reliability_diagram`); returns the path."""
        return plot_reliability_diagram(self, path)


def top_label(y_true: Any, probabilities: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns `(predicted ids, confidences, correct)` of single-label scores.

    Args:
        y_true: array `(n,)` of class ids (or one-hot `(n, k)`).
        probabilities: array `(n, k)` of class probabilities, or `(n,)` /
            `(n, 1)` positive-class probabilities of a binary task.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    y = y.reshape(-1)
    if probs.ndim == 2 and probs.shape[1] == 1:
        probs = probs[:, 0]
    if probs.ndim == 1:
        probs = np.stack([1.0 - probs, probs], axis=1)
    if probs.ndim != 2:
        raise ValueError(
            "probabilities must have shape (n, classes), (n,) or (n, 1). "
            f"Received shape {probs.shape}."
        )
    if len(probs) != len(y):
        raise ValueError(
            f"Labels and probabilities differ in length: {len(y)} labels, {len(probs)} rows."
        )
    if len(y) == 0:
        raise ValueError("Cannot assess calibration on an empty set.")
    if not np.all(np.isfinite(probs)) or probs.min() < 0.0 or probs.max() > 1.0:
        raise ValueError(
            "probabilities must be finite and in [0, 1] (apply a softmax or sigmoid to "
            f"logits). Received values in [{np.nanmin(probs):.4g}, {np.nanmax(probs):.4g}]."
        )
    predicted = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    return predicted, confidence, predicted == y.astype(np.int64)


def calibration_report(y_true: Any, probabilities: Any, n_bins: int = 10,
                       strategy: str = "uniform") -> CalibrationReport:
    """Reliability curve and expected calibration error of a classifier.

    Args:
        y_true: array `(n,)` of class ids (or one-hot).
        probabilities: array `(n, k)` of class probabilities (binary: also
            `(n,)` positive-class probabilities).
        n_bins: int. Confidence bins. Defaults to 10.
        strategy: str. `"uniform"` (equal widths on [0, 1]) or `"quantile"`
            (equal counts), as in `calibration_curve`. Defaults to `"uniform"`.

    Returns:
        A `CalibrationReport`.

    Example:

    >>> report = calibration_report([0, 1, 1, 0], [[.9, .1], [.2, .8], [.6, .4], [.7, .3]])
    >>> round(report.ece, 3)
    0.275
    """
    n_bins = check_int("n_bins", n_bins, minimum=1)
    if strategy not in BIN_STRATEGIES:
        raise ValueError(
            f"Unknown bin strategy. Expected one of {list(BIN_STRATEGIES)}. "
            f"Received: strategy={strategy!r}"
        )
    _, confidence, correct = top_label(y_true, probabilities)
    if strategy == "quantile":
        edges = np.percentile(confidence, np.linspace(0, 100, n_bins + 1))
    else:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    # The bin rule of calibration_curve: interior edges, right-closed search.
    ids = np.searchsorted(edges[1:-1], confidence)
    counts = np.bincount(ids, minlength=n_bins)
    sum_conf = np.bincount(ids, weights=confidence, minlength=n_bins)
    sum_right = np.bincount(ids, weights=correct.astype(np.float64), minlength=n_bins)
    nonzero = counts > 0
    accuracy = sum_right[nonzero] / counts[nonzero]
    mean_conf = sum_conf[nonzero] / counts[nonzero]
    if len(np.unique(correct)) == 2:
        # The curve itself from scikit-learn; the sums above add the counts it does not return.
        accuracy, mean_conf = calibration_curve(correct, confidence, n_bins=n_bins,
                                                strategy=strategy)
    gaps = np.abs(accuracy - mean_conf)
    weights = counts[nonzero] / len(confidence)
    bins = [
        {"lower": float(edges[i]), "upper": float(edges[i + 1]), "confidence": float(c),
         "accuracy": float(a), "count": int(counts[i])}
        for i, c, a in zip(np.flatnonzero(nonzero), mean_conf, accuracy, strict=True)
    ]
    return CalibrationReport(
        ece=float(np.sum(weights * gaps)), max_calibration_error=float(gaps.max()),
        bins=bins, num_examples=len(confidence), strategy=strategy,
    )


def plot_reliability_diagram(report: CalibrationReport, path: str) -> str:
    """Draws accuracy against confidence per bin, with the counts below; writes a PNG.

    Args:
        report: CalibrationReport.
        path: str. Where to write the PNG.

    Returns:
        The path written.
    """
    if not isinstance(report, CalibrationReport):
        raise TypeError(
            f"plot_reliability_diagram takes a CalibrationReport. Received: "
            f"{type(report).__name__}"
        )
    fig = new_figure(5.5, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    lower = np.array([b["lower"] for b in report.bins])
    width = np.array([b["upper"] - b["lower"] for b in report.bins])
    accuracy = np.array([b["accuracy"] for b in report.bins])
    confidence = np.array([b["confidence"] for b in report.bins])
    top.bar(lower, accuracy, width=width, align="edge", color="tab:blue", edgecolor="white",
            label="accuracy in bin")
    top.bar(lower, confidence - accuracy, bottom=accuracy, width=width, align="edge",
            color="tab:red", alpha=0.3, edgecolor="tab:red", label="gap to confidence")
    top.plot([0, 1], [0, 1], color="0.3", linestyle="--", linewidth=1, label="calibrated")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=9)
    top.set_title(f"Reliability (n={report.num_examples}, ECE={report.ece:.3f}, "
                  f"max gap={report.max_calibration_error:.3f})")
    bottom.bar(lower, [b["count"] for b in report.bins], width=width, align="edge",
               color="0.5", edgecolor="white")
    bottom.set_xlabel("confidence (probability of the predicted class)")
    bottom.set_ylabel("examples")
    return save_figure(fig, os.fspath(path))
