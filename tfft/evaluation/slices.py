"""Metrics by slice: is the model as good for every group of inputs?

Give a group per example (a column of the data such as a source or a
region, or a function of the input such as its length or brightness) and
`slice_metrics` reports accuracy, macro F1 and support per group, and the
largest gap between groups: the first place to look for data bias. Every
number is scikit-learn's (`accuracy_score`, `f1_score`) on the slice's rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from tfft.evaluation.plots import new_figure, save_figure
from tfft.utils.checks import check_int
from tfft.utils.files import write_json_atomic

SLICE_METRICS = ("accuracy", "macro_f1")
# Groups computed from the inputs themselves (`tfft evaluate --slice-by`).
INPUT_SLICERS = ("length", "brightness")


@dataclasses.dataclass
class SliceReport:
    """Per-slice metrics of one model on one labelled set.

    Args:
        slices: list of dict. One per group, in sorted group order:
            `slice` (the group's name), `support`, `accuracy`, `macro_f1`.
        overall: dict. The same metrics over every example.
        gaps: dict. Per metric: `gap` (best minus worst slice), `best` and
            `worst` (slice names), over slices with at least `min_support`
            examples.
        slice_by: str. What the groups are (a column name, `"length"` ...).
        min_support: int. Slices smaller than this are reported but left out
            of the gaps.
    """

    slices: list
    overall: dict
    gaps: dict
    slice_by: str = "group"
    min_support: int = 1

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    def save_json(self, path: str) -> str:
        """Writes `to_dict()` to `path` atomically; returns the path."""
        return write_json_atomic(path, self.to_dict(), allow_nan=False)

    @classmethod
    def load_json(cls, path: str) -> SliceReport:
        """Reads a report written by `save_json`."""
        with open(path, encoding="utf-8") as f:
            return cls(**json.load(f))

    def table(self) -> str:
        """The report as a plain-text table."""
        width = max([len("slice"), len("(all)")] + [len(s["slice"]) for s in self.slices]) + 2
        lines = [f"Metrics by {self.slice_by}", "",
                 f"  {'slice':<{width}}{'support':>9}{'accuracy':>10}{'macro_f1':>10}"]
        for row in [*self.slices, {"slice": "(all)", **self.overall}]:
            lines.append(f"  {row['slice']:<{width}}{row['support']:>9}"
                         f"{row['accuracy']:>10.4f}{row['macro_f1']:>10.4f}")
        lines.append("")
        for metric, gap in self.gaps.items():
            if gap is None:
                lines.append(f"  largest {metric} gap: n/a (fewer than two slices with "
                             f">= {self.min_support} examples)")
            else:
                lines.append(f"  largest {metric} gap: {gap['gap']:.4f} "
                             f"({gap['best']} {gap['best_value']:.4f} vs "
                             f"{gap['worst']} {gap['worst_value']:.4f})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def save_plot(self, path: str) -> str:
        """Draws `plot_slices`; returns the path."""
        return plot_slices(self, path)


def slice_metrics(y_true: Any, y_pred: Any, groups: Any, slice_by: str = "group",
                  min_support: int = 1, inputs: Any = None) -> SliceReport:
    """Accuracy, macro F1 and support per slice, and the largest gap between slices.

    Args:
        y_true: array `(n,)` of class ids (or one-hot).
        y_pred: array `(n,)` of predicted ids, or `(n, k)` probabilities
            (argmax; binary `(n,)` floats at 0.5).
        groups: a sequence of `n` group values (a data column), or a callable
            mapping `inputs` (all of them) to those values, such as
            `text_length_groups`.
        slice_by: str. The name of what the groups are, for the table and
            plot. Defaults to `"group"`.
        min_support: int. Slices with fewer examples stay in the table but not
            in the gaps (a 3-example slice's accuracy says little). Defaults to 1.
        inputs: the inputs, when `groups` is a callable.

    Returns:
        A `SliceReport`. Macro F1 per slice is `f1_score(average="macro")` over
        the classes present in that slice's labels or predictions, as
        scikit-learn computes it.

    Example:

    >>> report = slice_metrics([0, 1, 1, 0], [0, 1, 0, 0], ["a", "a", "b", "b"])
    >>> [s["accuracy"] for s in report.slices]
    [1.0, 0.5]
    """
    min_support = check_int("min_support", min_support)
    y_true = np.asarray(y_true)
    if y_true.ndim == 2 and y_true.shape[1] > 1:
        y_true = y_true.argmax(axis=1)
    y_true = y_true.reshape(-1)
    y_pred = _predicted_ids(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(
            f"Labels and predictions differ in length: {len(y_true)} and {len(y_pred)}."
        )
    if len(y_true) == 0:
        raise ValueError("Cannot compute slice metrics on an empty set.")
    if callable(groups):
        if inputs is None:
            raise ValueError("groups is a function of the inputs: pass inputs= as well.")
        groups = groups(inputs)
    if isinstance(groups, (str, bytes)) or not isinstance(groups, (Sequence, np.ndarray)):
        raise TypeError(
            "groups must be a sequence with one value per example or a callable of the "
            f"inputs. Received: {type(groups).__name__}"
        )
    groups = np.asarray([_group_name(g) for g in groups], dtype=object)
    if len(groups) != len(y_true):
        raise ValueError(
            f"groups has {len(groups)} values but there are {len(y_true)} examples."
        )
    rows = []
    for name in sorted(set(groups.tolist()), key=_natural_key):
        keep = groups == name
        rows.append({"slice": name, **_metrics(y_true[keep], y_pred[keep])})
    overall = _metrics(y_true, y_pred)
    eligible = [r for r in rows if r["support"] >= min_support]
    gaps = {}
    for metric in SLICE_METRICS:
        if len(eligible) < 2:
            gaps[metric] = None
            continue
        best = max(eligible, key=lambda r: r[metric])
        worst = min(eligible, key=lambda r: r[metric])
        gaps[metric] = {"gap": best[metric] - worst[metric], "best": best["slice"],
                        "best_value": best[metric], "worst": worst["slice"],
                        "worst_value": worst[metric]}
    return SliceReport(rows, overall, gaps, slice_by=str(slice_by), min_support=min_support)


def _metrics(y_true, y_pred):
    return {
        "support": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def _predicted_ids(y_pred):
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 2 and y_pred.shape[1] > 1:
        return y_pred.argmax(axis=1)
    y_pred = y_pred.reshape(-1)
    if y_pred.dtype.kind == "f" and not np.all(y_pred == np.round(y_pred)):
        return (y_pred >= 0.5).astype(np.int64)
    return y_pred.astype(np.int64)


def _group_name(value):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "(missing)"
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def _natural_key(name):
    # Numbered bins ("1: 0-120 words") sort by number, not as text.
    head = name.split(":", 1)[0]
    return (0, int(head), name) if head.isdigit() else (1, 0, name)


def _bins(values, bins, unit):
    values = np.asarray(values, dtype=np.float64)
    bins = check_int("bins", bins)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        return [f"1: {values[0]:g} {unit}"] * len(values)
    ids = np.clip(np.searchsorted(edges[1:-1], values, side="right"), 0, len(edges) - 2)
    names = [f"{i + 1}: {edges[i]:.4g}-{edges[i + 1]:.4g} {unit}" for i in range(len(edges) - 1)]
    return [names[i] for i in ids]


def text_length_groups(texts: Sequence, bins: int = 4) -> list[str]:
    """Groups texts by word count into `bins` quantile bins (`"1: 12-85 words"` ...).

    Example:

    >>> text_length_groups(["a b", "a b c d", "a", "a b c"], bins=2)
    ['1: 1-2.5 words', '2: 2.5-4 words', '1: 1-2.5 words', '2: 2.5-4 words']
    """
    lengths = [len((t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)).split())
               for t in texts]
    return _bins(lengths, bins, "words")


def image_brightness_groups(images: Any, bins: int = 4) -> list[str]:
    """Groups images by mean pixel value (0-255) into `bins` quantile bins."""
    brightness = [float(np.mean(np.asarray(image, dtype=np.float64))) for image in images]
    return _bins(brightness, bins, "brightness")


def input_groups(slice_by: str) -> Callable[[Any], list[str]]:
    """The grouping function named `slice_by`: `"length"` or `"brightness"`."""
    functions = {"length": text_length_groups, "brightness": image_brightness_groups}
    if slice_by not in functions:
        raise ValueError(
            f"Unknown input slicer. Expected one of {list(INPUT_SLICERS)}. "
            f"Received: {slice_by!r}"
        )
    return functions[slice_by]


def plot_slices(report: SliceReport, path: str) -> str:
    """Bars of accuracy and macro F1 per slice (support in the labels); writes a PNG.

    Args:
        report: SliceReport.
        path: str. Where to write the PNG.

    Returns:
        The path written.
    """
    if not isinstance(report, SliceReport):
        raise TypeError(f"plot_slices takes a SliceReport. Received: {type(report).__name__}")
    rows = report.slices
    names = [f"{r['slice']} (n={r['support']})" for r in rows]
    fig = new_figure(8.0, max(3.0, 1.5 + 0.5 * len(rows)))
    ax = fig.subplots()
    y = np.arange(len(rows))
    height = 0.38
    for offset, metric, colour in ((-height / 2, "accuracy", "tab:blue"),
                                   (height / 2, "macro_f1", "tab:orange")):
        values = [r[metric] for r in rows]
        bars = ax.barh(y + offset, values, height=height, color=colour, label=metric)
        for bar, value in zip(bars, values, strict=True):
            ax.text(value + 0.005, bar.get_y() + bar.get_height() / 2, f"{value:.3f}",
                    va="center", fontsize=8)
        ax.axvline(report.overall[metric], color=colour, linestyle="--", linewidth=1)
    ax.set_yticks(y, labels=names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("score (dashed: all examples)")
    gap = report.gaps.get("accuracy")
    title = f"Metrics by {report.slice_by}"
    if gap is not None:
        title += f": accuracy gap {gap['gap']:.3f} ({gap['best']} vs {gap['worst']})"
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / len(rows)), ncol=2,
              fontsize=9)
    return save_figure(fig, os.fspath(path))
