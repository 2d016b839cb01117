"""Calibration, top losses and most-confused pairs against scikit-learn and by hand."""

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix

from tfft.evaluation import (
    calibration_report,
    most_confused,
    plot_reliability_diagram,
    top_losses,
)


def _scores(n=400, k=4, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    # Labels drawn from the probabilities themselves, then sharpened: overconfident.
    y = np.array([rng.choice(k, p=p) for p in probs])
    sharp = probs ** 3 / (probs ** 3).sum(axis=1, keepdims=True)
    return y, probs, sharp


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_curve_is_sklearns_and_ece_is_the_weighted_gap(strategy):
    y, probs, _ = _scores()
    report = calibration_report(y, probs, n_bins=8, strategy=strategy)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=8, strategy=strategy)
    np.testing.assert_allclose([b["accuracy"] for b in report.bins], prob_true)
    np.testing.assert_allclose([b["confidence"] for b in report.bins], prob_pred)
    assert sum(b["count"] for b in report.bins) == len(y)
    # ECE by hand, bin by bin from the counts.
    ece = 0.0
    for b in report.bins:
        inside = (confidence > b["lower"]) & (confidence <= b["upper"])
        if b["lower"] == report.bins[0]["lower"]:
            inside |= confidence == b["lower"]
        assert inside.sum() == b["count"]
        ece += inside.sum() / len(y) * abs(correct[inside].mean() - confidence[inside].mean())
    assert report.ece == pytest.approx(ece)
    assert report.max_calibration_error == pytest.approx(
        max(abs(b["accuracy"] - b["confidence"]) for b in report.bins))


def test_sharpened_probabilities_are_worse_calibrated():
    y, probs, sharp = _scores(n=2000)
    calibrated, overconfident = calibration_report(y, probs), calibration_report(y, sharp)
    # Labels drawn from `probs` make it calibrated up to sampling noise.
    assert calibrated.ece < 0.05
    assert overconfident.ece > 2 * calibrated.ece


def test_binary_positive_probabilities_and_all_right():
    report = calibration_report([0, 1, 1, 0], [0.1, 0.8, 0.6, 0.3])
    # Confidences 0.9, 0.8, 0.6, 0.7, all right: ECE is the mean shortfall from 1.
    assert report.ece == pytest.approx(np.mean([0.1, 0.2, 0.4, 0.3]))


def test_bad_inputs_say_what_was_received():
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        calibration_report([0, 1], [[2.0, -1.0], [0.5, 0.5]])
    with pytest.raises(ValueError, match="differ in length"):
        calibration_report([0, 1, 1], [[0.5, 0.5]])
    with pytest.raises(ValueError, match="strategy"):
        calibration_report([0], [[1.0, 0.0]], strategy="equal")


def test_reliability_diagram_png(tmp_path):
    y, _, sharp = _scores()
    path = plot_reliability_diagram(calibration_report(y, sharp), tmp_path / "r.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(TypeError):
        plot_reliability_diagram({"ece": 0.1}, tmp_path / "x.png")


def test_top_losses_are_the_most_confidently_wrong():
    y, probs, _ = _scores(n=200)
    names = ["a", "b", "c", "d"]
    losses = top_losses(y, probs, k=5, class_names=names)
    wrong = np.flatnonzero(probs.argmax(axis=1) != y)
    loss = -np.log(probs[np.arange(len(y)), y])
    expected = wrong[np.argsort(-loss[wrong])][:5]
    assert [row["index"] for row in losses] == expected.tolist()
    for row in losses:
        i = row["index"]
        assert row["loss"] == pytest.approx(loss[i])
        assert row["true"] == names[y[i]] and row["predicted"] == names[probs[i].argmax()]
        assert row["confidence"] == pytest.approx(probs[i].max())
    everyone = top_losses(y, probs, k=3, only_wrong=False)
    assert [r["index"] for r in everyone] == np.argsort(-loss)[:3].tolist()


def test_most_confused_counts_are_sklearns_off_diagonal():
    y, probs, _ = _scores(n=300)
    pred = probs.argmax(axis=1)
    pairs = most_confused(y, probs, class_names=list("abcd"), min_count=2)
    matrix = confusion_matrix(y, pred)
    expected = sorted(((matrix[i, j], i, j) for i in range(4) for j in range(4)
                       if i != j and matrix[i, j] >= 2), key=lambda t: (-t[0], t[1], t[2]))
    assert [(p["count"], "abcd".index(p["true"]), "abcd".index(p["predicted"]))
            for p in pairs] == [(int(c), i, j) for c, i, j in expected]
    assert pairs[0]["share_of_true"] == pytest.approx(expected[0][0] / matrix[expected[0][1]]
                                                      .sum())
    assert most_confused(y, pred, list("abcd"), k=2) == most_confused(y, probs, list("abcd"))[:2]
