"""Evaluation metrics: scikit-learn metrics on a model's predictions.

Every number comes from `sklearn.metrics`; this module only shapes the
inputs (probabilities to labels, one-hot to ids), checks them and lays the
results out as a report that prints, saves to JSON and plots.
"""

import dataclasses
import json
import math
import os

import numpy as np
from sklearn import metrics as skm

from tfft.evaluation import plots
from tfft.evaluation.tasks import AVERAGES, CLASSIFICATION_TASKS, TASKS
from tfft.utils.files import write_json_atomic


@dataclasses.dataclass
class EvaluationReport:
    """Metrics of one model on one labelled set.

    Args:
        metrics: dict. Metric name to value. Classification: `accuracy`,
            `macro_precision`, `macro_recall`, `macro_f1`, the same with
            `micro_` and `weighted_`, `roc_auc` (None where it does not apply),
            `confusion_matrix` (list of lists, rows are true classes),
            `per_class` ({name: {precision, recall, f1, support}}) and
            `num_examples`. Multilabel adds `subset_accuracy`, `hamming_loss`
            and `samples_*`, and gives one 2x2 matrix per label in
            `multilabel_confusion_matrix` instead of `confusion_matrix`.
            Regression: `mae`, `mse`, `rmse`, `r2`, `num_examples`.
        task: str. One of `"binary"`, `"multiclass"`, `"multilabel"`,
            `"regression"`.
        class_names: list of str, or None for regression.
        y_true: np.ndarray or None. Labels the metrics came from; kept for
            plots, left out of `to_dict()`.
        y_pred: np.ndarray or None. Predicted labels (or values), likewise.
        y_score: np.ndarray or None. Binary and multiclass: the scores the
            predictions came from, when given as probabilities (for
            calibration and top losses, `tfft.evaluation.calibration`),
            likewise.
    """

    metrics: dict
    task: str
    class_names: list = None
    y_true: np.ndarray = dataclasses.field(default=None, repr=False, compare=False)
    y_pred: np.ndarray = dataclasses.field(default=None, repr=False, compare=False)
    y_score: np.ndarray = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(
                f"Unknown task. Expected one of {list(TASKS)}. Received: task={self.task!r}"
            )

    def __getitem__(self, key):
        return self.metrics[key]

    def to_dict(self):
        """Returns a JSON-ready dict: `task`, `class_names` and `metrics`."""
        return {
            "task": self.task,
            "class_names": None if self.class_names is None else list(self.class_names),
            "metrics": _jsonable(self.metrics),
        }

    @classmethod
    def from_dict(cls, config):
        """Rebuilds a report written by `to_dict()` (without stored predictions)."""
        return cls(
            metrics=dict(config["metrics"]),
            task=config["task"],
            class_names=config.get("class_names"),
        )

    def save_json(self, path):
        """Writes `to_dict()` to `path` atomically and returns the path.

        The JSON goes to a temporary file in the same folder that then replaces
        `path`, so a reader never sees a half-written report.
        """
        return write_json_atomic(path, self.to_dict(), allow_nan=False)

    @classmethod
    def load_json(cls, path):
        """Reads a report written by `save_json`."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def save_plots(self, directory):
        """Draws the report's figures into `directory` and returns their paths.

        Classification: `confusion_matrix.png` (one panel per label for
        multilabel) and `per_class_f1.png`. Regression: `predicted_vs_true.png`
        when the report holds its predictions.
        """
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        paths = []
        if self.task in CLASSIFICATION_TASKS:
            paths.append(
                plots.plot_confusion_matrix(self, os.path.join(directory, "confusion_matrix.png"))
            )
            paths.append(
                plots.plot_per_class_f1(self, os.path.join(directory, "per_class_f1.png"))
            )
        elif self.y_true is not None and self.y_pred is not None:
            paths.append(
                plots.plot_predicted_vs_true(
                    self, os.path.join(directory, "predicted_vs_true.png")
                )
            )
        return paths

    def table(self):
        """Returns the report as a plain-text table."""
        m = self.metrics
        lines = [f"Evaluation report: task={self.task}, examples={m['num_examples']}", ""]
        if self.task == "regression":
            for key in ("mae", "mse", "rmse", "r2"):
                lines.append(f"  {key:<8}{_fmt(m.get(key))}")
            return "\n".join(lines)

        summary = [("accuracy", m["accuracy"])]
        if self.task == "multilabel":
            summary.append(("hamming_loss", m["hamming_loss"]))
        summary.append(("roc_auc", m.get("roc_auc")))
        if self.task == "binary":
            positive = self.class_names[1]
            summary += [(f"{key} ({positive})", m[key]) for key in ("precision", "recall", "f1")]
        label_width = max(len(label) for label, _ in summary) + 2
        lines += [f"  {label:<{label_width}}{_fmt(value)}" for label, value in summary]
        lines.append("")
        averages = list(AVERAGES) + (["samples"] if self.task == "multilabel" else [])
        lines.append(f"  {'average':<10}{'precision':>10}{'recall':>10}{'f1':>10}")
        for avg in averages:
            lines.append(
                f"  {avg:<10}{_fmt(m[f'{avg}_precision']):>10}"
                f"{_fmt(m[f'{avg}_recall']):>10}{_fmt(m[f'{avg}_f1']):>10}"
            )
        lines.append("")
        width = max([len("class")] + [len(str(n)) for n in m["per_class"]]) + 2
        lines.append(
            f"  {'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"
        )
        for name, row in m["per_class"].items():
            lines.append(
                f"  {name:<{width}}{_fmt(row['precision']):>10}{_fmt(row['recall']):>10}"
                f"{_fmt(row['f1']):>10}{row['support']:>9}"
            )
        if "confusion_matrix" in m:
            lines.append("")
            lines.append("  confusion matrix (rows: true, columns: predicted)")
            names = [str(n) for n in self.class_names]
            cell = max([len(n) for n in names] + [len(str(v)) for r in m["confusion_matrix"]
                                                   for v in r]) + 2
            lines.append("  " + " " * width + "".join(f"{n:>{cell}}" for n in names))
            for name, row in zip(names, m["confusion_matrix"], strict=True):
                lines.append(f"  {name:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
        return "\n".join(lines)

    def __str__(self):
        return self.table()


def report_from_predictions(
    y_true, y_pred_or_prob, task: str = "multiclass", class_names: list | None = None,
    threshold: float = 0.5,
) -> EvaluationReport:
    """Builds an `EvaluationReport` from labels and predictions.

    Args:
        y_true: array. Integer class ids of shape `(n,)` (or one-hot `(n, k)`)
            for binary and multiclass, a 0/1 matrix `(n, k)` for multilabel,
            numbers `(n,)` or `(n, d)` for regression.
        y_pred_or_prob: array. Predicted class ids, or scores: `(n, k)`
            probabilities for multiclass; `(n,)`, `(n, 1)` or `(n, 2)`
            probabilities for binary; `(n, k)` probabilities or 0/1 for
            multilabel; predicted values for regression. Integer arrays are
            read as labels, float arrays as probabilities.
        task: str. `"binary"`, `"multiclass"`, `"multilabel"` or
            `"regression"`. Defaults to `"multiclass"`.
        class_names: list of str. One name per class (per label for
            multilabel; negative then positive for binary). Defaults to the
            class ids as strings.
        threshold: float. Probability at or above which a binary or
            multilabel prediction is positive. Defaults to 0.5.

    Returns:
        An `EvaluationReport`.

    Example:

    >>> report = report_from_predictions([0, 1, 2, 2], [0, 2, 2, 2], class_names=["a", "b", "c"])
    >>> report.metrics["accuracy"]
    0.75
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task. Expected one of {list(TASKS)}. Received: task={task!r}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1). Received: threshold={threshold!r}")
    y_true = _as_array(y_true, "y_true")
    y_pred = _as_array(y_pred_or_prob, "y_pred_or_prob")
    if len(y_true) != len(y_pred):
        raise ValueError(
            "Labels and predictions differ in length: "
            f"len(y_true)={len(y_true)}, len(y_pred_or_prob)={len(y_pred)}."
        )
    if len(y_true) == 0:
        raise ValueError("Cannot evaluate on an empty set: y_true has no examples.")
    if task == "regression":
        return _regression_report(y_true, y_pred)
    if task == "multilabel":
        return _multilabel_report(y_true, y_pred, class_names, threshold)
    return _single_label_report(y_true, y_pred, task, class_names, threshold)


def infer_task(y_true, y_score) -> str:
    """Guesses the task from labels and model outputs.

    One-hot or integer labels with `k > 1` output columns: multiclass; 0/1
    label matrices with several positives per row: multilabel; 0/1 labels with
    one output column: binary; non-integer labels: regression.
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    width = 1 if y_score.ndim == 1 else y_score.shape[-1]
    integral = y_true.dtype.kind in "biu" or (
        y_true.dtype.kind == "f"
        and np.all(np.isfinite(y_true))
        and np.all(y_true == np.round(y_true))
    )
    if not integral:
        return "regression"
    if y_true.ndim == 2 and y_true.shape[1] > 1:
        if not np.isin(y_true, (0, 1)).all():
            return "regression"
        return "multiclass" if np.all(y_true.sum(axis=1) == 1) else "multilabel"
    if width > 1:
        return "multiclass"
    if np.isin(y_true, (0, 1)).all():
        return "binary"
    return "regression"


def _as_array(values, name):
    if hasattr(values, "numpy") and not isinstance(values, np.ndarray):
        values = values.numpy()
    array = np.asarray(values)
    if array.ndim == 0:
        raise ValueError(f"{name} must be an array of one entry per example. Received a scalar.")
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must hold numbers (class ids, probabilities or values). "
            f"Received dtype {array.dtype}."
        )
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or infinite values.")
    return array


def _class_ids(array, name):
    """Returns `array` as int ids, or raises if it holds non-integers."""
    if array.dtype.kind in "biu":
        return array.astype(np.int64)
    if np.all(array == np.round(array)):
        return array.astype(np.int64)
    raise ValueError(
        f"{name} must hold integer class ids. Received non-integer values such as "
        f"{array[array != np.round(array)][:3].tolist()}."
    )


def _check_class_names(class_names, num_classes, source):
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    class_names = [str(n) for n in class_names]
    if len(class_names) != num_classes:
        raise ValueError(
            f"class_names has {len(class_names)} names but {source} has {num_classes} "
            f"classes. Received: class_names={class_names}"
        )
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be unique. Received: class_names={class_names}")
    return class_names


def _check_range(ids, num_classes, name):
    bad = ids[(ids < 0) | (ids >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{name} holds class ids outside [0, {num_classes}): "
            f"{sorted(set(bad.tolist()))[:10]}."
        )


def _single_label_report(y_true, y_pred, task, class_names, threshold):
    if y_true.ndim == 2 and y_true.shape[1] > 1:
        if not (np.isin(y_true, (0, 1)).all() and np.all(y_true.sum(axis=1) == 1)):
            raise ValueError(
                f"A 2-D y_true for {task} must be one-hot (one 1 per row). Use "
                "task='multilabel' for several labels per example."
            )
        y_true = y_true.argmax(axis=1)
    elif y_true.ndim == 2 and y_true.shape[1] == 1:
        y_true = y_true[:, 0]
    if y_true.ndim != 1:
        raise ValueError(f"y_true must be 1-D class ids. Received shape {y_true.shape}.")
    y_true = _class_ids(y_true, "y_true")

    scores = None
    if y_pred.ndim == 2 and y_pred.shape[1] == 1:
        y_pred = y_pred[:, 0]
    if y_pred.ndim == 2:
        num_classes = y_pred.shape[1]
        if task == "binary" and num_classes != 2:
            raise ValueError(
                "Binary scores must have shape (n,), (n, 1) or (n, 2). "
                f"Received shape {y_pred.shape}; use task='multiclass' for more classes."
            )
        source = f"the predictions (shape {y_pred.shape})"
        class_names = _check_class_names(class_names, num_classes, source)
        if y_pred.dtype.kind == "f":
            scores = y_pred
        pred_ids = y_pred.argmax(axis=1)
    elif y_pred.ndim == 1:
        if task == "binary" and y_pred.dtype.kind == "f" and not np.all(
            y_pred == np.round(y_pred)
        ):
            if y_pred.min() < 0.0 or y_pred.max() > 1.0:
                raise ValueError(
                    "Binary scores must be probabilities in [0, 1] (apply a sigmoid to "
                    "logits) or 0/1 labels. Received values in "
                    f"[{y_pred.min():.4g}, {y_pred.max():.4g}]."
                )
            scores = y_pred
            pred_ids = (y_pred >= threshold).astype(np.int64)
        else:
            pred_ids = _class_ids(y_pred, "y_pred_or_prob")
        if task == "binary":
            num_classes = 2
            class_names = _check_class_names(class_names, 2, "a binary task")
        elif class_names is not None:
            num_classes = len(class_names)
            class_names = _check_class_names(class_names, num_classes, "")
        else:
            num_classes = int(max(y_true.max(), pred_ids.max())) + 1
            class_names = _check_class_names(None, num_classes, "")
    else:
        raise ValueError(
            f"y_pred_or_prob must be 1-D labels or 2-D scores. Received shape {y_pred.shape}."
        )
    _check_range(y_true, num_classes, "y_true")
    _check_range(pred_ids, num_classes, "y_pred_or_prob")

    labels = list(range(num_classes))
    metrics = {"accuracy": float(skm.accuracy_score(y_true, pred_ids))}
    for avg in AVERAGES:
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true, pred_ids, labels=labels, average=avg, zero_division=0
        )
        metrics[f"{avg}_precision"] = float(p)
        metrics[f"{avg}_recall"] = float(r)
        metrics[f"{avg}_f1"] = float(f)
    if task == "binary":
        # The usual binary figures: precision/recall/F1 of the positive class.
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true, pred_ids, labels=labels, average="binary", pos_label=1, zero_division=0
        )
        metrics.update(precision=float(p), recall=float(r), f1=float(f))
    metrics["roc_auc"] = _roc_auc(y_true, scores, task, num_classes)
    metrics["confusion_matrix"] = skm.confusion_matrix(y_true, pred_ids, labels=labels).tolist()
    metrics["per_class"] = _per_class(y_true, pred_ids, labels, class_names)
    metrics["num_examples"] = len(y_true)
    return EvaluationReport(metrics, task, class_names, y_true=y_true, y_pred=pred_ids,
                            y_score=scores)


def _roc_auc(y_true, scores, task, num_classes):
    """ROC AUC where it is defined: probabilities given and every class present."""
    if scores is None or len(np.unique(y_true)) < num_classes:
        return None
    if task == "binary":
        positive = scores[:, 1] if scores.ndim == 2 else scores
        return float(skm.roc_auc_score(y_true, positive))
    # One-vs-rest AUC needs rows that are probabilities; logits have no AUC here.
    if scores.min() < 0.0 or not np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return None
    normalised = scores / scores.sum(axis=1, keepdims=True)
    if num_classes == 2:
        # sklearn takes the positive column for two classes (one-vs-rest equals it).
        return float(skm.roc_auc_score(y_true, normalised[:, 1]))
    return float(
        skm.roc_auc_score(y_true, normalised, multi_class="ovr", labels=list(range(num_classes)))
    )


def _per_class(y_true, y_pred, labels, class_names):
    p, r, f, s = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    return {
        name: {
            "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, name in enumerate(class_names)
    }


def _multilabel_report(y_true, y_pred, class_names, threshold):
    if y_true.ndim != 2:
        raise ValueError(
            f"Multilabel y_true must be a 0/1 matrix (n, labels). Received shape {y_true.shape}."
        )
    if y_pred.shape != y_true.shape:
        raise ValueError(
            "Multilabel predictions must have the labels' shape. Received: "
            f"y_true {y_true.shape}, y_pred_or_prob {y_pred.shape}."
        )
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("Multilabel y_true must hold only 0 and 1.")
    y_true = y_true.astype(np.int64)
    num_labels = y_true.shape[1]
    class_names = _check_class_names(
        class_names, num_labels, f"the predictions (shape {y_pred.shape})"
    )
    scores = None
    if y_pred.dtype.kind == "f" and not np.isin(y_pred, (0.0, 1.0)).all():
        if y_pred.min() < 0.0 or y_pred.max() > 1.0:
            raise ValueError(
                "Multilabel scores must be probabilities in [0, 1] (apply a sigmoid to "
                f"logits). Received values in [{y_pred.min():.4g}, {y_pred.max():.4g}]."
            )
        scores = y_pred
        pred = (y_pred >= threshold).astype(np.int64)
    else:
        pred = y_pred.astype(np.int64)
        if not np.isin(pred, (0, 1)).all():
            raise ValueError("Multilabel predicted labels must hold only 0 and 1.")

    subset = float(skm.accuracy_score(y_true, pred))
    metrics = {
        "accuracy": subset,
        "subset_accuracy": subset,
        "hamming_loss": float(skm.hamming_loss(y_true, pred)),
    }
    for avg in (*AVERAGES, "samples"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true, pred, average=avg, zero_division=0
        )
        metrics[f"{avg}_precision"] = float(p)
        metrics[f"{avg}_recall"] = float(r)
        metrics[f"{avg}_f1"] = float(f)
    # Macro AUC over labels needs both outcomes of every label in y_true.
    both_present = np.all((y_true.min(axis=0) == 0) & (y_true.max(axis=0) == 1))
    metrics["roc_auc"] = (
        float(skm.roc_auc_score(y_true, scores, average="macro"))
        if scores is not None and both_present else None
    )
    metrics["multilabel_confusion_matrix"] = skm.multilabel_confusion_matrix(
        y_true, pred
    ).tolist()
    metrics["per_class"] = _per_class(y_true, pred, list(range(num_labels)), class_names)
    metrics["num_examples"] = len(y_true)
    return EvaluationReport(metrics, "multilabel", class_names, y_true=y_true, y_pred=pred)


def _regression_report(y_true, y_pred):
    if y_true.ndim == 2 and y_true.shape[1] == 1:
        y_true = y_true[:, 0]
    if y_pred.ndim == 2 and y_pred.shape[1] == 1:
        y_pred = y_pred[:, 0]
    if y_true.shape != y_pred.shape:
        raise ValueError(
            "Regression predictions must have the targets' shape. Received: "
            f"y_true {y_true.shape}, y_pred_or_prob {y_pred.shape}."
        )
    y_true = y_true.astype(np.float64)
    y_pred = y_pred.astype(np.float64)
    mse = float(skm.mean_squared_error(y_true, y_pred))
    metrics = {
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "mse": mse,
        "rmse": math.sqrt(mse),
        # R^2 is undefined for a single example; sklearn warns and returns NaN.
        "r2": float(skm.r2_score(y_true, y_pred)) if len(y_true) > 1 else None,
        "num_examples": len(y_true),
    }
    return EvaluationReport(metrics, "regression", None, y_true=y_true, y_pred=y_pred)


def _fmt(value):
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.4f}"


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
