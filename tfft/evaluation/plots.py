"""Figures for evaluation reports and training runs, written straight to PNG.

The figures are drawn on `matplotlib.figure.Figure` objects with the Agg
canvas, never through `pyplot`: nothing opens a window, and the user's own
matplotlib backend and pyplot state are left as they were.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tfft.evaluation.tasks import CLASSIFICATION_TASKS

_TRAINING_KEYS_SKIPPED = ("learning_rate", "lr")


def _new_figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def new_figure(width: float, height: float):
    """A `matplotlib.figure.Figure` on the Agg canvas (no pyplot, no window)."""
    return _new_figure(width, height)


def save_figure(fig, path: str) -> str:
    """Writes `fig` to `path` as PNG (creating the folder); returns the path."""
    return _save(fig, path)


def _is_report(report):
    # Duck-typed: the metrics module draws its reports with these functions.
    return isinstance(getattr(report, "metrics", None), dict) and hasattr(report, "task")


def _check_report(report, what):
    if not _is_report(report):
        raise TypeError(
            f"{what} takes an EvaluationReport. Received: {type(report).__name__}"
        )
    if report.task not in CLASSIFICATION_TASKS:
        raise ValueError(
            f"{what} needs a classification report ({list(CLASSIFICATION_TASKS)}). "
            f"Received a report with task={report.task!r}"
        )


def plot_confusion_matrix(report: Any, path: str, normalize: bool = False) -> str:
    """Draws the report's confusion matrix with class names and writes a PNG.

    Args:
        report: EvaluationReport. A binary or multiclass report (multilabel
            draws one 2x2 panel per label).
        path: str. Where to write the PNG.
        normalize: bool. Colour by the share of each true class (row) rather
            than by counts; cells still show counts. Defaults to False.

    Returns:
        The path written.
    """
    _check_report(report, "plot_confusion_matrix")
    names = [str(n) for n in report.class_names]
    if report.task == "multilabel":
        return _plot_multilabel_confusion(report, names, path)
    matrix = np.asarray(report.metrics["confusion_matrix"], dtype=np.int64)
    k = len(names)
    side = max(5.0, 1.0 + 0.55 * k + 0.06 * max(len(n) for n in names))
    fig = _new_figure(side + 1.2, side)
    ax = fig.subplots()
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape, float), where=totals > 0)
    colours = shares if normalize else matrix
    image = ax.imshow(colours, cmap="Blues", vmin=0)
    bar = fig.colorbar(image, ax=ax, shrink=0.8,
                       label="share of true class" if normalize else "examples")
    if not normalize:
        bar.ax.yaxis.get_major_locator().set_params(integer=True)
    threshold = colours.max() / 2.0 if colours.max() > 0 else 1
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=9,
                        color="white" if colours[i, j] > threshold else "black")
    ax.set_xticks(range(k), labels=names, rotation=45 if k > 3 else 0, ha="right" if k > 3
                  else "center")
    ax.set_yticks(range(k), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = report.metrics.get("accuracy")
    ax.set_title(f"Confusion matrix (n={report.metrics['num_examples']}, accuracy={acc:.3f})")
    return _save(fig, path)


def _plot_multilabel_confusion(report, names, path):
    matrices = np.asarray(report.metrics["multilabel_confusion_matrix"], dtype=np.int64)
    k = len(names)
    cols = min(k, 4)
    rows = int(np.ceil(k / cols))
    fig = _new_figure(max(5.0, 2.6 * cols), max(4.0, 2.6 * rows + 0.6))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for idx, ax in enumerate(axes):
        if idx >= k:
            ax.set_axis_off()
            continue
        m = matrices[idx]
        ax.imshow(m, cmap="Blues", vmin=0)
        for i in range(2):
            for j in range(2):
                ax.text(j, i, str(m[i, j]), ha="center", va="center",
                        color="white" if m[i, j] > m.max() / 2 else "black")
        ax.set_xticks([0, 1], labels=["no", "yes"])
        ax.set_yticks([0, 1], labels=["no", "yes"])
        ax.set_title(names[idx], fontsize=10)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.suptitle(f"Per-label confusion (n={report.metrics['num_examples']})")
    return _save(fig, path)


def plot_per_class_f1(report: Any, path: str) -> str:
    """Draws a bar per class with its F1 and the macro F1 as a line; writes a PNG.

    Args:
        report: EvaluationReport. A classification report.
        path: str. Where to write the PNG.

    Returns:
        The path written.
    """
    _check_report(report, "plot_per_class_f1")
    per_class = report.metrics["per_class"]
    names = list(per_class)
    f1 = np.array([per_class[n]["f1"] for n in names])
    support = [per_class[n]["support"] for n in names]
    fig = _new_figure(7.0, max(3.0, 1.2 + 0.4 * len(names)))
    ax = fig.subplots()
    y = np.arange(len(names))
    bars = ax.barh(y, f1, color="tab:blue")
    for bar, value, count in zip(bars, f1, support, strict=True):
        inside = value > 0.45
        ax.text(value - 0.01 if inside else value + 0.01, bar.get_y() + bar.get_height() / 2,
                f"{value:.3f} (n={count})", va="center", ha="right" if inside else "left",
                fontsize=9, color="white" if inside else "black")
    macro = report.metrics["macro_f1"]
    ax.axvline(macro, color="tab:red", linestyle="--", linewidth=1)
    ax.set_yticks(y, labels=names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("F1")
    ax.set_title(f"F1 per class (dashed: macro F1 = {macro:.3f})")
    return _save(fig, path)


def plot_predicted_vs_true(report: Any, path: str) -> str:
    """Scatters a regression report's predictions against the targets; writes a PNG."""
    if not _is_report(report) or report.task != "regression":
        raise ValueError("plot_predicted_vs_true needs a regression EvaluationReport.")
    if report.y_true is None or report.y_pred is None:
        raise ValueError(
            "This report holds no predictions (it was read from JSON); rebuild it with "
            "report_from_predictions or evaluate."
        )
    y_true = np.ravel(report.y_true)
    y_pred = np.ravel(report.y_pred)
    fig = _new_figure(5.5, 5.0)
    ax = fig.subplots()
    ax.scatter(y_true, y_pred, s=10, alpha=0.6)
    lo, hi = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    ax.plot([lo, hi], [lo, hi], color="tab:red", linestyle="--", label="y = x")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    m = report.metrics
    ax.set_title(f"MAE {m['mae']:.3g}, RMSE {m['rmse']:.3g}")
    ax.legend(loc="upper left")
    return _save(fig, path)


def _history_dict(history, stage):
    values = getattr(history, "history", history)
    if not isinstance(values, dict):
        raise TypeError(
            f"Stage {stage!r}: expected a keras History or a dict of per-epoch lists. "
            f"Received: {type(history).__name__}"
        )
    out = {}
    for key, series in values.items():
        series = np.asarray(series, dtype=np.float64).ravel()
        out[str(key)] = series
    return out


def _normalise_stages(histories):
    if hasattr(histories, "history") or isinstance(histories, dict):
        histories = [("train", histories)]
    if not isinstance(histories, (list, tuple)) or not histories:
        raise ValueError(
            "histories must be a non-empty list of (stage_name, History or dict). "
            f"Received: {histories!r}"
        )
    stages = []
    for item in histories:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise ValueError(
                "Each entry of histories must be a pair (stage_name, History or dict). "
                f"Received: {item!r}"
            )
        name, history = item
        values = _history_dict(history, name)
        lengths = {len(v) for v in values.values()}
        if not values or lengths == {0}:
            raise ValueError(f"Stage {name!r} has no epochs recorded.")
        stages.append((str(name), values, max(lengths)))
    return stages


def _pick_metric(stages, metric):
    keys = []
    for _, values, _ in stages:
        keys.extend(k for k in values if k not in keys)
    if metric is not None:
        if metric not in keys:
            raise ValueError(
                f"Metric {metric!r} is in no stage's history. Available: {keys}"
            )
        return metric
    for key in keys:
        if key.startswith("val_") or key in _TRAINING_KEYS_SKIPPED or "loss" in key:
            continue
        return key
    return None


def plot_training_curves(histories: Any, path: str, metric: str | None = None) -> str:
    """Plots loss and one metric per epoch across consecutive training stages.

    Stages (e.g. "head" then "full fine-tune") are drawn one after another on
    a shared epoch axis, separated by dashed lines and labelled on a shaded
    band, so the effect of unfreezing is visible at a glance.

    Args:
        histories: list of `(stage_name, history)` where `history` is a
            `keras.callbacks.History` or a dict of per-epoch lists (`loss`,
            `val_loss`, `accuracy`...). A single History or dict is one stage.
        path: str. Where to write the PNG.
        metric: str or None. History key for the second panel; None picks the
            first non-loss metric (e.g. `accuracy`). Defaults to None.

    Returns:
        The path written.

    Example:

    >>> plot_training_curves(
    ...     [("head", {"loss": [1.0, 0.7], "accuracy": [0.5, 0.7]}),
    ...      ("full", {"loss": [0.5, 0.4], "accuracy": [0.8, 0.85]})],
    ...     "/tmp/curves.png")
    '/tmp/curves.png'
    """
    stages = _normalise_stages(histories)
    metric = _pick_metric(stages, metric)
    panels = ["loss"] + ([metric] if metric is not None else [])
    has_loss = any("loss" in v or "val_loss" in v for _, v, _ in stages)
    if not has_loss:
        panels = panels[1:]
        if not panels:
            raise ValueError("The histories record neither a loss nor a metric to plot.")
    total = sum(n for _, _, n in stages)
    fig = _new_figure(max(7.0, 2.0 + 0.25 * total), 3.6 * len(panels))
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True))
    colours = {"train": "tab:blue", "val": "tab:orange"}
    for ax, key in zip(axes, panels, strict=True):
        start = 0
        for s, (name, values, n_epochs) in enumerate(stages):
            epochs_x = np.arange(start + 1, start + n_epochs + 1)
            for split, series_key in (("train", key), ("val", f"val_{key}")):
                series = values.get(series_key)
                if series is None or len(series) == 0:
                    continue
                ax.plot(epochs_x[: len(series)], series, marker="o", markersize=3,
                        color=colours[split], label=split if s == 0 else None)
            if s % 2 == 1:
                ax.axvspan(start + 0.5, start + n_epochs + 0.5, color="0.93", zorder=0)
            if s > 0:
                ax.axvline(start + 0.5, color="0.35", linestyle="--", linewidth=1)
            ax.text(start + 0.5 + n_epochs / 2, 1.0, name, transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=9, color="0.25")
            start += n_epochs
        ax.set_ylabel(key)
        ax.set_xlim(0.5, total + 0.5)
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(loc="best")
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("epoch (all stages)")
    return _save(fig, path)
