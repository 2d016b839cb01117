"""Where a classifier fails: its top losses and the class pairs it confuses most.

fastai's `ClassificationInterpretation` gives its users these two views; here
they take plain labels and probabilities, so they work for any model
(`tfft.Task`, Keras model, SavedModel) whose scores `tfft.evaluate` can read.
The confusion counts come from `sklearn.metrics.confusion_matrix`, the
per-example loss is scikit-learn's log loss term `-log p(true class)`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

from tfft.evaluation.calibration import top_label
from tfft.utils.checks import check_int

# Probabilities are clipped here before the log, as in sklearn.metrics.log_loss.
_EPS = np.finfo(np.float64).eps


def _class_names(names, k):
    if names is None:
        return [str(i) for i in range(k)]
    names = [str(n) for n in names]
    if len(names) != k:
        raise ValueError(
            f"class_names has {len(names)} names but the probabilities have {k} classes. "
            f"Received: class_names={names}"
        )
    return names


def _as_probabilities(probabilities):
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim == 2 and probs.shape[1] == 1:
        probs = probs[:, 0]
    if probs.ndim == 1:
        probs = np.stack([1.0 - probs, probs], axis=1)
    return probs


def top_losses(y_true: Any, probabilities: Any, k: int = 10,
               class_names: list | None = None, only_wrong: bool = True) -> list[dict]:
    """The examples with the largest loss: the most confidently wrong first.

    Args:
        y_true: array `(n,)` of class ids (or one-hot).
        probabilities: array `(n, k)` of class probabilities (binary: also
            `(n,)`).
        k: int. How many to return. Defaults to 10.
        class_names: list of str or None. Defaults to the class ids.
        only_wrong: bool. Keep misclassified examples only (a right answer can
            have a large loss when it is unsure). Defaults to True.

    Returns:
        A list of dicts, largest loss first: `index` (into the inputs),
        `loss` (`-log p(true)`), `true`, `predicted` (class names),
        `confidence` (p(predicted)) and `p_true`.

    Example:

    >>> top_losses([0, 1], [[0.2, 0.8], [0.3, 0.7]], k=1)[0]["index"]
    0
    """
    k = check_int("k", k)
    predicted, confidence, correct = top_label(y_true, probabilities)
    probs = _as_probabilities(probabilities)
    y = np.asarray(y_true)
    y = (y.argmax(axis=1) if y.ndim == 2 and y.shape[1] > 1 else y.reshape(-1)).astype(np.int64)
    if y.min() < 0 or y.max() >= probs.shape[1]:
        raise ValueError(
            f"y_true holds class ids outside [0, {probs.shape[1]}): "
            f"{sorted(set(y[(y < 0) | (y >= probs.shape[1])].tolist()))[:10]}"
        )
    names = _class_names(class_names, probs.shape[1])
    p_true = probs[np.arange(len(y)), y]
    loss = -np.log(np.clip(p_true, _EPS, 1.0))
    candidates = np.flatnonzero(~correct) if only_wrong else np.arange(len(y))
    # Stable sort: ties keep input order, so the result does not depend on the platform.
    order = candidates[np.argsort(-loss[candidates], kind="stable")][:k]
    return [
        {"index": int(i), "loss": float(loss[i]), "true": names[y[i]],
         "predicted": names[predicted[i]], "confidence": float(confidence[i]),
         "p_true": float(p_true[i])}
        for i in order
    ]


def most_confused(y_true: Any, y_pred: Any, class_names: list | None = None,
                  min_count: int = 1, k: int | None = None) -> list[dict]:
    """Pairs (true class, predicted class) with the most mistakes, largest first.

    Args:
        y_true: array `(n,)` of class ids.
        y_pred: array `(n,)` of predicted class ids, or `(n, k)` probabilities.
        class_names: list of str or None. Defaults to the class ids.
        min_count: int. Leave out pairs with fewer mistakes. Defaults to 1.
        k: int or None. Keep the first `k` pairs; None keeps all. Defaults to None.

    Returns:
        A list of dicts `{"true", "predicted", "count", "share_of_true"}`
        (`share_of_true`: the pair's count over the true class's support).

    Example:

    >>> most_confused([0, 0, 1, 2], [1, 1, 1, 0], class_names=["a", "b", "c"])[0]
    {'true': 'a', 'predicted': 'b', 'count': 2, 'share_of_true': 1.0}
    """
    min_count = check_int("min_count", min_count)
    if k is not None:
        k = check_int("k", k)
    y_true = np.asarray(y_true).reshape(-1).astype(np.int64)
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 2:
        y_pred = _as_probabilities(y_pred).argmax(axis=1)
    y_pred = y_pred.reshape(-1).astype(np.int64)
    if len(y_true) != len(y_pred):
        raise ValueError(
            f"Labels and predictions differ in length: {len(y_true)} and {len(y_pred)}."
        )
    num = len(class_names) if class_names is not None else int(max(y_true.max(),
                                                                   y_pred.max())) + 1
    names = _class_names(class_names, num)
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(num)))
    support = matrix.sum(axis=1)
    pairs = [(int(matrix[i, j]), i, j) for i in range(num) for j in range(num)
             if i != j and matrix[i, j] >= min_count]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    return [
        {"true": names[i], "predicted": names[j], "count": count,
         "share_of_true": float(count / support[i])}
        for count, i, j in pairs[:k]
    ]
