"""Label encoding, class weights and multilabel targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt


class LabelEncoder:
    """Maps class names to integer ids and back, keeping the class names.

    Args:
        class_names: list of str. The declared classes, in id order. When None,
            `fit()` takes the sorted distinct labels it sees. Defaults to None.

    Example:

    >>> encoder = LabelEncoder(["neg", "pos"])
    >>> encoder.encode(["pos", "neg"]).tolist()
    [1, 0]
    >>> encoder.decode([0, 1])
    ['neg', 'pos']
    """

    def __init__(self, class_names: Sequence[str] | None = None) -> None:
        self.class_names = None
        self._ids = None
        if class_names is not None:
            self._set_classes(class_names)

    def _set_classes(self, class_names):
        names = [str(c) for c in class_names]
        if not names:
            raise ValueError("class_names must not be empty. Received: class_names=[]")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"class_names must be distinct. Received duplicates {duplicates} in "
                f"class_names={names!r}"
            )
        self.class_names = names
        self._ids = {name: i for i, name in enumerate(names)}

    def fit(self, labels: npt.ArrayLike) -> LabelEncoder:
        """Takes the class names from `labels` (sorted) unless they were declared."""
        if self.class_names is None:
            values = [str(v) for v in _flatten(labels)]
            if not values:
                raise ValueError("Cannot fit a LabelEncoder on no labels. Received: []")
            self._set_classes(sorted(set(values)))
        return self

    def _require_classes(self):
        if self.class_names is None:
            raise ValueError(
                "This LabelEncoder has no classes yet: pass class_names or call fit()."
            )

    def encode(self, labels: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Returns int64 ids; a label outside the classes raises ValueError naming its row."""
        self._require_classes()
        ids = np.empty(len(labels), dtype=np.int64)
        for row, label in enumerate(labels):
            ids[row] = self._id(label, row)
        return ids

    def _id(self, label, row):
        key = str(label)
        if key not in self._ids:
            raise ValueError(
                f"Label {label!r} at row {row} is not one of the declared classes "
                f"{self.class_names}."
            )
        return self._ids[key]

    def decode(self, ids: npt.ArrayLike) -> list[str]:
        """Returns the class names of integer `ids`."""
        self._require_classes()
        names = []
        for row, i in enumerate(np.asarray(ids).reshape(-1)):
            if not 0 <= int(i) < len(self.class_names):
                raise ValueError(
                    f"Label id {int(i)} at row {row} is out of range: expected an id in "
                    f"[0, {len(self.class_names)})."
                )
            names.append(self.class_names[int(i)])
        return names

    def encode_multilabel(self, label_lists: Sequence[Sequence[str] | str]) -> np.ndarray:
        """Returns a float32 multi-hot array `(n, num_classes)` from lists of labels."""
        self._require_classes()
        targets = np.zeros((len(label_lists), len(self.class_names)), dtype=np.float32)
        for row, labels in enumerate(label_lists):
            if isinstance(labels, str):
                labels = [labels]
            for label in labels:
                targets[row, self._id(label, row)] = 1.0
        return targets

    def decode_multilabel(
        self, targets: npt.ArrayLike, threshold: float = 0.5
    ) -> list[list[str]]:
        """Returns, per row, the class names whose score is above `threshold`."""
        self._require_classes()
        targets = np.asarray(targets)
        return [[self.class_names[j] for j in np.flatnonzero(row > threshold)] for row in targets]

    @property
    def num_classes(self) -> int:
        self._require_classes()
        return len(self.class_names)

    def get_config(self) -> dict[str, Any]:
        return {"class_names": list(self.class_names) if self.class_names else None}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LabelEncoder:
        return cls(**config)


# A label column is implausible as classes when it has more than this many classes ...
SUSPECT_CLASS_COUNT = 50
# ... and they number more than this share of its rows (most classes would have one or
# two examples: an id, a measurement or a free-text column, not a class).
SUSPECT_CLASS_SHARE = 0.5


def class_labels(values: Sequence[Any], where: str = "the labels") -> list[Any]:
    """Returns single-label values with whole numbers as ints; refuses continuous labels.

    When every present label is a number (an int, a float, or a string such
    as `"2.0"` that parses as a finite float), whole numbers become ints, so
    `0.0, 1.0, 2.0` (a CSV float column, or an int column with an empty
    cell) and `"0.0", "1.0"` are class ids 0, 1, 2, not the class names
    `"0.0"`, `"1.0"`. A number with a fractional part means the labels are
    a continuous target and raises ValueError suggesting regression. Other
    labels (class names), and missing ones (None, NaN), are returned as
    they are.

    Args:
        values: sequence. One label per row.
        where: str. Names the data in messages. Defaults to `"the labels"`.

    Returns:
        list, one label per row.

    Example:

    >>> class_labels([0.0, 1.0, "2.0"])
    [0, 1, 2]
    >>> class_labels(["neg", "pos"])
    ['neg', 'pos']
    """
    values = list(values)
    numbers = [_as_number(v) for v in values]
    present = [row for row, v in enumerate(values) if not _is_missing(v)]
    if not present or any(numbers[row] is None for row in present):
        return values
    fractional = [row for row in present if not float(numbers[row]).is_integer()]
    if fractional:
        row = fractional[0]
        distinct = len({numbers[r] for r in present})
        raise ValueError(
            f"The labels in {where} look continuous, not like classes: {values[row]!r} at "
            f"row {row} is not a whole number ({len(fractional)} of {len(present)} labels "
            f"have a fractional part; {distinct} distinct values). Class labels must be "
            "class names or whole-number ids. For a numeric target, train a regression "
            "on the float values instead: `tfft.build_model(..., task=\"regression\", "
            "num_classes=1)` with `y = pandas.read_csv(path)[label_column]"
            ".to_numpy(\"float32\")`."
        )
    return [v if _is_missing(v) else int(numbers[row]) for row, v in enumerate(values)]


def check_class_count(num_classes: int, num_rows: int, where: str = "the labels") -> None:
    """Refuses a class count that is implausible for the number of labelled rows.

    The rule: more than `SUSPECT_CLASS_COUNT` (50) classes that are also more
    than `SUSPECT_CLASS_SHARE` (half) of the rows. Such a column is almost
    always an id, a measurement or free text rather than a class label (a
    float target once gave 2,319 classes). Declaring the classes with
    `class_names=[...]` skips this check.

    Args:
        num_classes: int. Classes the labels would define.
        num_rows: int. Labelled rows.
        where: str. Names the data in messages. Defaults to `"the labels"`.
    """
    if num_classes > SUSPECT_CLASS_COUNT and num_classes > SUSPECT_CLASS_SHARE * num_rows:
        raise ValueError(
            f"The labels in {where} define {num_classes:,} classes for {num_rows:,} rows: "
            f"more than {SUSPECT_CLASS_COUNT} classes and more than "
            f"{SUSPECT_CLASS_SHARE:.0%} of the rows, so most classes would have one or two "
            "examples. This looks like an id, a measurement or a text column rather than "
            "a class label: check label_column, or for a numeric target train a regression "
            "(`tfft.build_model(..., task=\"regression\")`). If these really are classes, "
            "declare them with class_names=[...]."
        )


def _as_number(value):
    """The value as an int or float if it is a number or a numeric string, else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if np.isfinite(number) else None
    return None


def _is_missing(value):
    return value is None or (isinstance(value, (float, np.floating)) and np.isnan(value))


def _flatten(labels):
    for label in labels:
        if isinstance(label, (list, tuple, set, np.ndarray)):
            yield from label
        else:
            yield label


def multi_hot(
    label_lists: Sequence[Sequence[str] | str], class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Multi-hot targets from lists of labels.

    Args:
        label_lists: list of lists of str. The labels of each example.
        class_names: list of str. Declared classes; defaults to the sorted
            distinct labels.

    Returns:
        `(targets, class_names)`: a float32 array `(n, num_classes)` and the
        class names its columns stand for.
    """
    encoder = LabelEncoder(class_names).fit(label_lists)
    return encoder.encode_multilabel(label_lists), list(encoder.class_names)


def class_weights(labels: npt.ArrayLike, num_classes: int | None = None) -> dict[int, float]:
    """Balanced class weights for Keras `fit(class_weight=...)`.

    Uses scikit-learn's `compute_class_weight("balanced")`: a class's weight is
    `n_examples / (n_classes * n_examples_of_class)`.

    Args:
        labels: array of int. Label ids.
        num_classes: int. Number of classes; every class in
            `range(num_classes)` needs at least one example. Defaults to
            `max(labels) + 1`.

    Returns:
        dict `{class_id: weight}`.
    """
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise TypeError(
            "class_weights expects a 1D array of integer label ids. Received: "
            f"shape={labels.shape}, dtype={labels.dtype}"
        )
    if len(labels) == 0:
        raise ValueError("class_weights needs at least one label. Received: []")
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    require_all_classes(labels, num_classes, where="the labels given to class_weights")
    classes = np.arange(num_classes)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(c): float(w) for c, w in zip(classes, weights, strict=True)}


def require_all_classes(
    labels: npt.ArrayLike,
    num_classes: int,
    where: str = "the data",
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Raises ValueError when a class in `range(num_classes)` has no example."""
    labels = np.asarray(labels)
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes)
    if len(counts) > num_classes:
        row = int(np.flatnonzero(labels >= num_classes)[0])
        raise ValueError(
            f"Label id {int(labels[row])} at row {row} of {where} is out of range: "
            f"expected ids in [0, {num_classes})."
        )
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        names = [class_names[i] if class_names else int(i) for i in empty]
        raise ValueError(
            f"Classes {names} have no examples in {where}: every class needs at "
            f"least one. Class counts: {counts.tolist()}."
        )
    return counts
