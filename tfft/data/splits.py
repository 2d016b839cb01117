"""Deterministic stratified splits."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from sklearn.model_selection import train_test_split

from tfft.data.datasets import LabeledData


def stratified_split(
    labels: npt.ArrayLike, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Splits example indices into stratified train/validation/test sets.

    The same labels and seed always give the same split.

    Args:
        labels: array of int. One label per example.
        val_fraction: float. Share of examples for validation. Defaults to 0.15.
        test_fraction: float. Share of examples for test. Defaults to 0.15.
        seed: int. Random seed. Defaults to 0.

    Returns:
        `(train_idx, val_idx, test_idx)`, sorted int arrays.

    Raises:
        ValueError: a fraction is out of range, or a class would have no
            example in one of the non-empty splits (the message names it).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(
            "stratified_split expects a non-empty 1D array of labels. Received: "
            f"shape={labels.shape}"
        )
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1). Received: {name}={value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            "val_fraction + test_fraction must leave examples for training. "
            f"Received: val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    idx = np.arange(len(labels))
    held = val_fraction + test_fraction
    if held == 0:
        return idx, idx[:0], idx[:0]
    classes, counts = np.unique(labels, return_counts=True)
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    if counts.min() < needed:
        few = classes[counts < needed].tolist()
        raise ValueError(
            f"Classes {few} have fewer than {needed} examples, so some split would have "
            f"none of them: each class needs one example per split. Class counts: "
            f"{dict(zip(classes.tolist(), counts.tolist(), strict=True))}."
        )
    try:
        train_idx, rest_idx = train_test_split(
            idx, test_size=held, stratify=labels, random_state=seed
        )
        if test_fraction == 0:
            splits = np.sort(train_idx), np.sort(rest_idx), idx[:0]
        elif val_fraction == 0:
            splits = np.sort(train_idx), idx[:0], np.sort(rest_idx)
        else:
            val_idx, test_idx = train_test_split(
                rest_idx, test_size=test_fraction / held, stratify=labels[rest_idx],
                random_state=seed,
            )
            splits = np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)
    except ValueError as error:
        raise ValueError(
            f"Cannot split {len(labels)} examples of {len(classes)} classes with "
            f"val_fraction={val_fraction}, test_fraction={test_fraction} so that every "
            f"split holds every class: {error}"
        ) from None
    for name, split in zip(("train", "validation", "test"), splits, strict=True):
        if len(split):
            missing = np.setdiff1d(classes, labels[split])
            if len(missing):
                raise ValueError(
                    f"Classes {missing.tolist()} have no examples in the {name} split "
                    f"({len(split)} examples). Use larger fractions or more data."
                )
    return splits


def split_data(
    data: LabeledData, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> tuple[LabeledData, LabeledData, LabeledData]:
    """Splits a `LabeledData` into stratified `(train, validation, test)` parts.

    Args:
        data: LabeledData. Examples with 1D integer labels.
        val_fraction: float. Share of examples for validation. Defaults to 0.15.
        test_fraction: float. Share of examples for test. Defaults to 0.15.
        seed: int. Random seed. Defaults to 0.

    Returns:
        Three `LabeledData`; the same data and seed always give the same parts.
    """
    train_idx, val_idx, test_idx = stratified_split(
        data.y, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )
    return data.take(train_idx), data.take(val_idx), data.take(test_idx)


def carve_split(
    n: int, val_fraction: float, test_fraction: float, seed: int, *, carve_val: bool = True,
    carve_test: bool = True, min_test: int = 0, max_train: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Seeded shuffle split of `n` unlabelled rows for the splits not given as files.

    The rows are shuffled once with `seed`; the first `round(n * test_fraction)`
    (at least `min_test`) test, the next `round(n * val_fraction)` validate,
    the rest train (the first `max_train` of them). A split that comes from its
    own file (`carve_val` / `carve_test` False) takes no rows.

    Returns:
        `(train_idx, val_idx, test_idx)`: train sorted; val and test in
        shuffled order, None when not carved (or empty).
    """
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(min_test, round(n * test_fraction)) if carve_test else 0
    n_val = round(n * val_fraction) if carve_val else 0
    test = order[:n_test] if n_test else None
    val = order[n_test:n_test + n_val] if n_val else None
    train = order[n_test + n_val:]
    if max_train:
        train = train[:max_train]
    return np.sort(train), val, test
