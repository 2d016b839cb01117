"""Deterministic stratified splits."""

import numpy as np
from sklearn.model_selection import train_test_split


def stratified_split(labels, val_fraction=0.15, test_fraction=0.15, seed=0):
    """Splits example indices into stratified train/validation/test sets.

    The same labels and seed always give the same split.

    Args:
        labels: array of int. One label per example.
        val_fraction: float. Share of examples for validation. Defaults to 0.15.
        test_fraction: float. Share of examples for test. Defaults to 0.15.
        seed: int. Random seed. Defaults to 0.

    Returns:
        `(train_idx, val_idx, test_idx)`, sorted int arrays.
    """
    labels = np.asarray(labels)
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
    train_idx, rest_idx = train_test_split(
        idx, test_size=held, stratify=labels, random_state=seed
    )
    if test_fraction == 0:
        return np.sort(train_idx), np.sort(rest_idx), idx[:0]
    if val_fraction == 0:
        return np.sort(train_idx), idx[:0], np.sort(rest_idx)
    val_idx, test_idx = train_test_split(
        rest_idx, test_size=test_fraction / held, stratify=labels[rest_idx],
        random_state=seed,
    )
    return np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)
