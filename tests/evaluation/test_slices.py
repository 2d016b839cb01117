"""Metrics by slice: every number equals scikit-learn's on the slice's rows."""

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from tfft.evaluation import (
    SliceReport,
    image_brightness_groups,
    plot_slices,
    slice_metrics,
    text_length_groups,
)


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    groups = rng.choice(["north", "south", "east"], n)
    y = rng.integers(0, 3, n)
    # Worse in the south: a third of its predictions are replaced by noise.
    pred = y.copy()
    noisy = (groups == "south") & (rng.random(n) < 0.5)
    pred[noisy] = rng.integers(0, 3, noisy.sum())
    return y, pred, groups


def test_each_slice_equals_sklearn_and_the_gap_is_best_minus_worst():
    y, pred, groups = _data()
    report = slice_metrics(y, pred, list(groups), slice_by="region")
    assert [s["slice"] for s in report.slices] == ["east", "north", "south"]
    for row in report.slices:
        keep = groups == row["slice"]
        assert row["support"] == keep.sum()
        assert row["accuracy"] == accuracy_score(y[keep], pred[keep])
        assert row["macro_f1"] == f1_score(y[keep], pred[keep], average="macro")
    assert report.overall["accuracy"] == accuracy_score(y, pred)
    gap = report.gaps["accuracy"]
    assert gap["worst"] == "south"
    values = {r["slice"]: r["accuracy"] for r in report.slices}
    assert gap["gap"] == pytest.approx(max(values.values()) - values["south"])
    assert "largest accuracy gap" in report.table() and "south" in report.table()


def test_probabilities_and_one_hot_labels_are_read_as_ids():
    y, pred, groups = _data(60)
    probs = np.eye(3)[pred] * 0.8 + 0.2 / 3
    one_hot = np.eye(3)[y]
    a = slice_metrics(one_hot, probs, groups)
    b = slice_metrics(y, pred, groups)
    assert a.slices == b.slices


def test_small_slices_stay_in_the_table_but_not_in_the_gap():
    y = np.array([0, 1, 0, 1, 0, 1, 1])
    pred = np.array([0, 1, 0, 1, 0, 1, 0])
    groups = ["big"] * 6 + ["tiny"]
    report = slice_metrics(y, pred, groups, min_support=2)
    assert [s["slice"] for s in report.slices] == ["big", "tiny"]
    assert report.gaps["accuracy"] is None
    assert slice_metrics(y, pred, groups).gaps["accuracy"]["gap"] == 1.0


def test_groups_from_a_function_of_the_inputs():
    texts = ["one", "one two", "one two three", "one two three four five six"]
    report = slice_metrics([0, 1, 0, 1], [0, 1, 1, 1], text_length_groups, inputs=texts)
    assert report.slices[0]["slice"].startswith("1:") and len(report.slices) >= 2
    images = [np.full((4, 4, 3), v, np.uint8) for v in (10, 20, 200, 250)]
    assert image_brightness_groups(images, bins=2) == [
        "1: 10-110 brightness", "1: 10-110 brightness",
        "2: 110-250 brightness", "2: 110-250 brightness"]


def test_missing_values_are_a_slice_and_bad_groups_are_refused():
    report = slice_metrics([0, 1, 1], [0, 1, 0], ["a", None, float("nan")])
    assert [s["slice"] for s in report.slices] == ["(missing)", "a"]
    with pytest.raises(ValueError, match="3 examples"):
        slice_metrics([0, 1, 1], [0, 1, 0], ["a", "b"])
    with pytest.raises(TypeError, match="sequence"):
        slice_metrics([0, 1], [0, 1], "ab")
    with pytest.raises(ValueError, match="inputs="):
        slice_metrics([0, 1], [0, 1], text_length_groups)


def test_json_round_trip_and_png(tmp_path):
    y, pred, groups = _data(90)
    report = slice_metrics(y, pred, groups, slice_by="region")
    path = report.save_json(str(tmp_path / "slices.json"))
    assert SliceReport.load_json(path) == report
    with open(path) as f:
        assert json.load(f)["gaps"]["accuracy"]["worst"] == report.gaps["accuracy"]["worst"]
    with open(plot_slices(report, tmp_path / "s.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
