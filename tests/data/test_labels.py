import numpy as np
import pytest

import tfft  # noqa: F401
from tfft.data import (
    LabeledData,
    LabelEncoder,
    class_weights,
    multi_hot,
    split_data,
    stratified_split,
)


def test_label_encoder_round_trip_and_declared_order():
    encoder = LabelEncoder(["neg", "pos", "neutral"])
    ids = encoder.encode(["pos", "neutral", "neg", "pos"])
    assert ids.tolist() == [1, 2, 0, 1]
    assert encoder.decode(ids) == ["pos", "neutral", "neg", "pos"]
    assert LabelEncoder.from_config(encoder.get_config()).class_names == ["neg", "pos", "neutral"]


def test_label_encoder_fit_sorts_distinct_labels():
    encoder = LabelEncoder().fit(["b", "a", "c", "a"])
    assert encoder.class_names == ["a", "b", "c"]
    assert encoder.num_classes == 3


def test_label_outside_declared_classes_names_the_row():
    encoder = LabelEncoder(["neg", "pos"])
    with pytest.raises(ValueError, match=r"'meh' at row 2 .*\['neg', 'pos'\]"):
        encoder.encode(["pos", "neg", "meh"])


def test_label_encoder_rejects_duplicates_and_bad_ids():
    with pytest.raises(ValueError, match="distinct"):
        LabelEncoder(["a", "a"])
    with pytest.raises(ValueError, match="row 1 is out of range"):
        LabelEncoder(["a", "b"]).decode([0, 5])
    with pytest.raises(ValueError, match="no classes yet"):
        LabelEncoder().encode(["a"])


def test_multi_hot_from_label_lists():
    targets, names = multi_hot([["sports", "tech"], ["politics"], []])
    assert names == ["politics", "sports", "tech"]
    np.testing.assert_array_equal(targets, [[0, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert targets.dtype == np.float32
    encoder = LabelEncoder(names)
    assert encoder.decode_multilabel(targets) == [["sports", "tech"], ["politics"], []]
    with pytest.raises(ValueError, match="'art' at row 1"):
        multi_hot([["tech"], ["art"]], class_names=names)


def test_class_weights_balanced():
    labels = np.array([0] * 80 + [1] * 20)
    weights = class_weights(labels)
    assert weights == pytest.approx({0: 100 / (2 * 80), 1: 100 / (2 * 20)})
    # The weighted counts are equal: what "balanced" means.
    assert weights[0] * 80 == pytest.approx(weights[1] * 20)


def test_class_weights_class_without_examples_raises():
    with pytest.raises(ValueError, match=r"Classes \[1\] have no examples"):
        class_weights(np.array([0, 0, 2]), num_classes=3)
    with pytest.raises(TypeError, match="integer label ids"):
        class_weights(np.array([0.5, 1.0]))


def test_stratified_split_is_deterministic_and_stratified():
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    first = stratified_split(labels, 0.2, 0.2, seed=3)
    second = stratified_split(labels, 0.2, 0.2, seed=3)
    other = stratified_split(labels, 0.2, 0.2, seed=4)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    train, val, test = first
    assert len(np.intersect1d(train, val)) == 0 and len(np.intersect1d(val, test)) == 0
    assert len(train) + len(val) + len(test) == len(labels)
    # Every split keeps the class proportions (4:3:2:1).
    for split in (train, val, test):
        counts = np.bincount(labels[split], minlength=4)
        np.testing.assert_allclose(counts / counts.sum(), [0.4, 0.3, 0.2, 0.1], atol=0.03)


def test_stratified_split_class_too_small_for_every_split():
    labels = np.array([0] * 20 + [1] * 2)
    with pytest.raises(ValueError, match=r"Classes \[1\] have fewer than 3 examples"):
        stratified_split(labels, 0.15, 0.15)
    # Enough members but a split too small for the class's share: named, not silent.
    with pytest.raises(ValueError, match=r"Classes \[1\] have no examples in the validation"):
        stratified_split(labels, 0.2, 0.0)
    # Without a test split, two examples of class 1 are enough for a big validation split.
    train, val, test = stratified_split(labels, 0.5, 0.0)
    assert set(labels[val]) == {0, 1} and set(labels[train]) == {0, 1} and len(test) == 0


def test_stratified_split_too_small_split_raises():
    labels = np.repeat(np.arange(10), 3)
    with pytest.raises(ValueError, match=r"every split holds every class|no examples"):
        stratified_split(labels, 0.05, 0.05)


def test_split_data_returns_labeled_parts():
    data = LabeledData(np.arange(60).reshape(60, 1), np.repeat([0, 1, 2], 20), ["a", "b", "c"])
    train, val, test = split_data(data, 0.2, 0.2, seed=0)
    assert (len(train), len(val), len(test)) == (36, 12, 12)
    assert train.class_names == ["a", "b", "c"]
    # Inputs stay attached to their labels.
    np.testing.assert_array_equal(test.y, data.y[test.x[:, 0]])


def test_labeled_data_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="label 3 at row 1"):
        LabeledData(np.zeros((2, 1)), np.array([0, 3]), ["a", "b"])


def test_carve_split_shuffles_once_and_carves_only_missing_splits():
    from tfft.data.splits import carve_split

    train, val, test = carve_split(20, 0.1, 0.2, seed=4)
    order = np.random.default_rng(4).permutation(20)
    assert test.tolist() == order[:4].tolist() and val.tolist() == order[4:6].tolist()
    assert train.tolist() == sorted(order[6:].tolist())
    train, val, test = carve_split(20, 0.1, 0.2, seed=4, carve_test=False, max_train=5)
    assert test is None and val.tolist() == order[:2].tolist()
    assert train.tolist() == sorted(order[2:7].tolist())
    # A tiny set still keeps min_test rows for testing; no val share, no val rows.
    train, val, test = carve_split(3, 0.0, 0.1, seed=0, min_test=1)
    assert val is None and len(test) == 1 and len(train) == 2
