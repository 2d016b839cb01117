import json
import os

import numpy as np
import pytest
from sklearn import metrics as skm

import tfft  # noqa: F401  (sets the Keras backend first)
from tfft.evaluation import EvaluationReport, infer_task, report_from_predictions

NAMES = ["business", "sport", "tech", "politics"]


@pytest.fixture(scope="module")
def multiclass_case():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, 120)
    prob = rng.dirichlet(np.ones(4), 120)
    prob[np.arange(120), y] += 0.6
    prob /= prob.sum(axis=1, keepdims=True)
    return y, prob


def test_multiclass_equals_sklearn(multiclass_case):
    y, prob = multiclass_case
    report = report_from_predictions(y, prob, task="multiclass", class_names=NAMES)
    pred = prob.argmax(axis=1)
    m = report.metrics
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average=avg)
        assert m[f"{avg}_precision"] == pytest.approx(p)
        assert m[f"{avg}_recall"] == pytest.approx(r)
        assert m[f"{avg}_f1"] == pytest.approx(f)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob, multi_class="ovr"))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, average=None)
    assert list(m["per_class"]) == NAMES
    for i, name in enumerate(NAMES):
        row = m["per_class"][name]
        assert row == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i],
                                     "support": s[i]})
    assert m["num_examples"] == 120
    assert report.task == "multiclass" and report.class_names == NAMES


def test_multiclass_labels_and_one_hot_give_the_same_report(multiclass_case):
    y, prob = multiclass_case
    pred = prob.argmax(axis=1)
    from_ids = report_from_predictions(y, pred, class_names=NAMES)
    one_hot = np.eye(4, dtype=np.int64)[y]
    from_one_hot = report_from_predictions(one_hot, prob, class_names=NAMES)
    assert from_ids.metrics["roc_auc"] is None  # hard labels carry no ranking
    for key in ("accuracy", "macro_f1", "confusion_matrix", "per_class"):
        assert from_ids.metrics[key] == from_one_hot.metrics[key]


def test_absent_class_keeps_its_row_and_skips_auc():
    y = np.array([0, 0, 1, 1, 0])
    prob = np.array([[.8, .1, .1], [.6, .3, .1], [.2, .7, .1], [.1, .5, .4], [.3, .3, .4]])
    report = report_from_predictions(y, prob, class_names=["a", "b", "c"])
    assert report.metrics["roc_auc"] is None
    assert report.metrics["per_class"]["c"]["support"] == 0
    assert report.metrics["confusion_matrix"] == skm.confusion_matrix(
        y, prob.argmax(1), labels=[0, 1, 2]).tolist()


def test_logits_give_labels_but_no_auc(multiclass_case):
    y, prob = multiclass_case
    logits = np.log(prob) * 3.0 - 2.0
    report = report_from_predictions(y, logits)
    assert report.metrics["accuracy"] == pytest.approx(skm.accuracy_score(y, prob.argmax(1)))
    assert report.metrics["roc_auc"] is None


@pytest.mark.parametrize("shape", ["flat", "column", "two_columns"])
def test_binary_equals_sklearn(shape):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    score = np.clip(y * 0.35 + rng.random(80) * 0.65, 0, 1)
    given = {"flat": score, "column": score[:, None],
             "two_columns": np.stack([1 - score, score], axis=1)}[shape]
    report = report_from_predictions(y, given, task="binary", class_names=["neg", "pos"])
    pred = (score >= 0.5).astype(int) if shape != "two_columns" else given.argmax(1)
    m = report.metrics
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, score))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert set(m["per_class"]) == {"neg", "pos"}


def test_two_class_softmax_as_multiclass():
    y = np.array([0, 1, 1, 1, 0])
    prob = np.array([[.8, .2], [.3, .7], [.6, .4], [.1, .9], [.45, .55]])
    report = report_from_predictions(y, prob, class_names=["ham", "spam"])
    assert report.metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob[:, 1]))
    assert report.metrics["accuracy"] == pytest.approx(0.6)


def test_binary_threshold_moves_predictions():
    y = np.array([0, 0, 1, 1])
    score = np.array([0.1, 0.4, 0.45, 0.9])
    low = report_from_predictions(y, score, task="binary", threshold=0.3)
    high = report_from_predictions(y, score, task="binary")
    assert low.metrics["confusion_matrix"] == [[1, 1], [0, 2]]
    assert high.metrics["confusion_matrix"] == [[2, 0], [1, 1]]
    assert low.metrics["roc_auc"] == high.metrics["roc_auc"] == 1.0


def test_multilabel_equals_sklearn():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, (90, 3))
    prob = np.clip(y * 0.4 + rng.random((90, 3)) * 0.6, 0, 1)
    report = report_from_predictions(y, prob, task="multilabel", class_names=["x", "y", "z"])
    pred = (prob >= 0.5).astype(int)
    m = report.metrics
    assert m["hamming_loss"] == pytest.approx(skm.hamming_loss(y, pred))
    assert m["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    for avg in ("micro", "macro", "samples", "weighted"):
        assert m[f"{avg}_f1"] == pytest.approx(
            skm.f1_score(y, pred, average=avg, zero_division=0))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob, average="macro"))
    assert m["multilabel_confusion_matrix"] == skm.multilabel_confusion_matrix(y, pred).tolist()
    f = skm.f1_score(y, pred, average=None)
    assert [m["per_class"][n]["f1"] for n in "xyz"] == pytest.approx(f)


def test_regression_equals_sklearn():
    rng = np.random.default_rng(5)
    y = rng.normal(size=50)
    pred = y + rng.normal(scale=0.3, size=50)
    report = report_from_predictions(y, pred[:, None], task="regression")
    m = report.metrics
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)))
    assert m["r2"] == pytest.approx(skm.r2_score(y, pred))
    assert m["num_examples"] == 50 and report.class_names is None
    assert "mae" in report.table() and "rmse" in str(report)


def test_table_shows_every_class_and_the_matrix(multiclass_case):
    y, prob = multiclass_case
    report = report_from_predictions(y, prob, class_names=NAMES)
    text = report.table()
    assert text == str(report)
    for name in NAMES:
        assert f"  {name}" in text
    assert "confusion matrix" in text
    assert f"{report.metrics['macro_f1']:.4f}" in text
    diagonal = np.diag(report.metrics["confusion_matrix"])
    last_row = text.rstrip().splitlines()[-1].split()
    assert last_row[0] == NAMES[-1] and int(last_row[4]) == diagonal[-1]


def test_save_json_round_trips_and_is_atomic(tmp_path, multiclass_case):
    y, prob = multiclass_case
    report = report_from_predictions(y, prob, class_names=NAMES)
    path = tmp_path / "sub" / "report.json"
    assert report.save_json(path) == str(path)
    with open(path) as f:
        data = json.load(f)
    assert data["task"] == "multiclass" and data["class_names"] == NAMES
    assert data["metrics"]["confusion_matrix"] == report.metrics["confusion_matrix"]
    assert EvaluationReport.load_json(path) == report
    # No temporary files are left beside the report.
    assert os.listdir(path.parent) == ["report.json"]


def test_save_json_failure_keeps_the_old_file(tmp_path, multiclass_case):
    y, prob = multiclass_case
    path = tmp_path / "report.json"
    report_from_predictions(y, prob).save_json(path)
    before = path.read_text()
    broken = EvaluationReport({"num_examples": 1, "bad": object()}, "multiclass", ["a"])
    with pytest.raises(TypeError):
        broken.save_json(path)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["report.json"]


def test_infer_task():
    assert infer_task(np.array([0, 2, 1]), np.eye(3)) == "multiclass"
    assert infer_task(np.array([0, 1, 1]), np.array([[.2], [.7], [.9]])) == "binary"
    assert infer_task(np.array([[1, 1], [0, 1]]), np.ones((2, 2))) == "multilabel"
    assert infer_task(np.array([[1, 0], [0, 1]]), np.ones((2, 2))) == "multiclass"
    assert infer_task(np.array([0.5, 1.7]), np.array([0.4, 1.5])) == "regression"


# --- bad input -------------------------------------------------------------------------


def test_length_mismatch():
    with pytest.raises(ValueError, match=r"differ in length.*len\(y_true\)=3.*=2"):
        report_from_predictions([0, 1, 2], [0, 1])


def test_class_names_count_mismatch():
    with pytest.raises(ValueError, match=r"class_names has 2 names but .* 3 classes"):
        report_from_predictions([0, 1, 2], np.eye(3), class_names=["a", "b"])
    with pytest.raises(ValueError, match="class_names has 3 names but a binary task"):
        report_from_predictions([0, 1], [0.2, 0.8], task="binary", class_names=["a", "b", "c"])


def test_empty_set():
    with pytest.raises(ValueError, match="empty"):
        report_from_predictions([], [])


def test_labels_out_of_range():
    with pytest.raises(ValueError, match="y_true holds class ids outside \\[0, 3\\): \\[3, 7\\]"):
        report_from_predictions([0, 3, 7], np.eye(3))
    with pytest.raises(ValueError, match="outside \\[0, 2\\)"):
        report_from_predictions([0, -1], [0, 1], class_names=["a", "b"])


def test_other_bad_input():
    with pytest.raises(ValueError, match="Unknown task"):
        report_from_predictions([0], [0], task="ranking")
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
        report_from_predictions([0, 1], [-2.5, 3.1], task="binary")
    with pytest.raises(ValueError, match="integer class ids"):
        report_from_predictions([0.5, 1.0], [0, 1])
    with pytest.raises(TypeError, match="must hold numbers"):
        report_from_predictions(["a", "b"], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        report_from_predictions([0, 1], np.array([[0.5, np.nan], [0.2, 0.8]]))
    with pytest.raises(ValueError, match="labels' shape"):
        report_from_predictions(np.ones((3, 2)), np.ones((3, 3)), task="multilabel")
