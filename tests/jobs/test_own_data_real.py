"""`tfft finetune --data ...` end to end on real data and the real offline backbones.

Each test writes real data the way a user has it (a CSV file, a folder of PNG
files per class), runs the command line in-process at reduced size and checks
what a user relies on: the reported metrics are what the exported SavedModel
gives on the same test rows (so the export is the evaluated model), the
model learned (margins over the trivial baseline), and for images the
BatchNorm layers kept their pretrained values through fine-tuning.

Reduced sizes: the text jobs use 30-40 words per article at 48 tokens and one
fine-tuning epoch of the top block; the image job 60 LFW images per class.
"""

import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from sklearn import metrics as skm

import tfft
from tfft.cli.main import main

pytestmark = pytest.mark.slow

PER_CLASS = 60
TEXT_ARGS = ["--sequence-length", "48", "--head-epochs", "40", "--epochs", "1",
             "--unfreeze-top", "1", "--batch-size", "16"]


def _words(text, n):
    return " ".join(text.split()[:n])


def _finetune(args, tmp_path):
    run_dir, export_dir = tmp_path / "run", tmp_path / "export"
    code = main(["finetune", *args, "--run-dir", str(run_dir), "--export-dir", str(export_dir)])
    assert code == 0
    with open(run_dir / "report.json") as f:
        return json.load(f)


def _serve(export_path, texts):
    serve = tf.saved_model.load(export_path).signatures["serving_default"]
    return {k: v.numpy() for k, v in serve(inputs=tf.constant(list(texts))).items()}


@pytest.fixture(scope="module")
def articles(bbc):
    """Per topic, article indices in file order: train articles first, test ones after."""
    return {name: np.flatnonzero(bbc.y == i) for i, name in enumerate(bbc.class_names)}


def test_bbc_news_csv_through_finetune_data(bbc, articles, tmp_path):
    """A CSV with the user's own column names; the default backbone for texts (MiniLM)."""
    def rows(start, count):
        return [(_words(bbc.x[i], 40), name) for name, idx in articles.items()
                for i in idx[start:start + count]]

    train = pd.DataFrame(rows(0, 24), columns=["article", "topic"])
    test = pd.DataFrame(rows(100, 12), columns=["article", "topic"])
    train.to_csv(tmp_path / "bbc_train.csv", index=False)
    test.to_csv(tmp_path / "bbc_test.csv", index=False)
    report = _finetune(["--data", str(tmp_path / "bbc_train.csv"), "--test-data",
                        str(tmp_path / "bbc_test.csv"), "--text-column", "article",
                        "--label-column", "topic", *TEXT_ARGS], tmp_path)
    assert report["backbone_spec"] == "keras_hub:all_minilm_l6_v2"
    assert report["data"]["class_names"] == list(articles)
    assert report["data"]["sizes"]["test"] == 60
    assert [s["name"] for s in report["stages"]] == ["head", "fine_tune"]
    assert sorted(report["test"]) == ["accuracy", "macro_f1"]
    # Five balanced topics: chance is 0.2.
    assert report["test"]["accuracy"] >= 0.8

    # The export records the data options, so `tfft evaluate` can read the data again.
    data = tfft.export.read_metadata(report["export_path"])["data"]
    assert (data["source"], data["text_column"], data["label_column"]) == (
        str(tmp_path / "bbc_train.csv"), "article", "topic")
    served = _serve(report["export_path"], test["article"])
    predicted = served["class_names"].astype(str)
    assert report["test"]["accuracy"] == pytest.approx(
        skm.accuracy_score(test["topic"], predicted), abs=1e-9)
    assert report["test"]["macro_f1"] == pytest.approx(
        skm.f1_score(test["topic"], predicted, average="macro"), abs=1e-9)


def test_regression_csv_learns_a_topic_score(bbc, articles, tmp_path):
    """Target: a score per topic (business 0, politics 0.5, sport 1), read from a number column."""
    scores = {"business": 0.0, "politics": 0.5, "sports": 1.0}

    def rows(start, count):
        return [(_words(bbc.x[i], 40), score) for topic, score in scores.items()
                for i in articles[topic][start:start + count]]

    train = pd.DataFrame(rows(0, 40), columns=["text", "sport_score"])
    test = pd.DataFrame(rows(100, 14), columns=["text", "sport_score"])
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    report = _finetune(["--data", str(tmp_path / "train.csv"), "--test-data",
                        str(tmp_path / "test.csv"), "--label-column", "sport_score",
                        "--task", "regression", *TEXT_ARGS], tmp_path)
    metrics = report["test"]
    assert sorted(metrics) == ["mae", "mse", "r2", "rmse"]
    assert report["data"]["class_names"] is None
    assert [s["name"] for s in report["stages"]] == ["head", "fine_tune"]

    served = _serve(report["export_path"], test["text"])
    assert sorted(served) == ["value"]
    values, truth = served["value"][:, 0].astype(float), test["sport_score"].to_numpy()
    assert metrics["mae"] == pytest.approx(skm.mean_absolute_error(truth, values), abs=1e-5)
    assert metrics["rmse"] == pytest.approx(
        np.sqrt(skm.mean_squared_error(truth, values)), abs=1e-5)
    assert metrics["r2"] == pytest.approx(skm.r2_score(truth, values), abs=1e-4)
    # Learned: well above predicting the training mean (R^2 0; MAE below).
    baseline = skm.mean_absolute_error(truth, np.full_like(truth, train["sport_score"].mean()))
    assert metrics["r2"] >= 0.4
    assert metrics["mae"] <= 0.8 * baseline


def test_multilabel_csv_reports_per_label_f1_at_the_threshold_of_its_export(
        bbc, articles, tmp_path):
    """Texts from one or two topics (two articles' openings joined), labelled with both."""
    topics = ["business", "sports", "tech"]
    pairs = [(t,) for t in topics] + [("business", "sports"), ("business", "tech"),
                                      ("sports", "tech")]

    def rows(start, count):
        out = []
        for j in range(count):
            chosen = pairs[j % len(pairs)]
            per = 30 // len(chosen)
            text = " ".join(_words(bbc.x[articles[t][start + j]], per) for t in chosen)
            out.append((text, "|".join(chosen)))
        return out

    train, test = (pd.DataFrame(rows(0, 120), columns=["text", "label"]),
                   pd.DataFrame(rows(200, 42), columns=["text", "label"]))
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    report = _finetune(["--data", str(tmp_path / "train.csv"), "--test-data",
                        str(tmp_path / "test.csv"), "--task", "multilabel", "--threshold", "0.4",
                        *TEXT_ARGS], tmp_path)
    metrics = report["test"]
    assert metrics["threshold"] == 0.4 and sorted(metrics["per_label_f1"]) == topics
    assert [s["name"] for s in report["stages"]] == ["head", "fine_tune"]

    served = _serve(report["export_path"], test["text"])
    assert sorted(served) == ["predictions", "probabilities"]
    np.testing.assert_array_equal(served["predictions"],
                                  (served["probabilities"] >= 0.4).astype(int))
    truth = np.array([[t in cell.split("|") for t in topics] for cell in test["label"]], int)
    per_label = skm.f1_score(truth, served["predictions"], average=None)
    assert [metrics["per_label_f1"][t] for t in topics] == pytest.approx(per_label, abs=1e-9)
    assert metrics["macro_f1"] == pytest.approx(per_label.mean(), abs=1e-9)
    # Learned: each topic is in half the rows, so always answering "all three" scores
    # F1 0.67 per label.
    assert metrics["macro_f1"] >= 0.75 and min(per_label) >= 0.7


def test_lfw_png_folders_with_efficientnet_lite0_and_an_export_served_on_png_bytes(lfw_png_job):
    """LFW faces vs not, written as PNG class folders (plus one broken file, skipped).

    The job runs once per session (`lfw_png_job` in tests/conftest.py); `tfft evaluate`
    scores its export too (tests/evaluation/test_evaluate_data.py).
    """
    report, lfw, spec = lfw_png_job["report"], lfw_png_job["data"], lfw_png_job["spec"]
    assert lfw_png_job["per_class"] == PER_CLASS
    assert report["data"]["modality"] == "image" and report["data"]["skipped"] == 1
    assert report["data"]["sizes"]["test"] == 37
    assert sum(report["data"]["sizes"].values()) == 2 * PER_CLASS
    assert report["stages"][1]["freeze"] == "top_k_frozen_batch_norm:1"
    assert report["test"]["accuracy"] >= 0.95

    # The job's final weights: BatchNorm as pretrained (frozen, inference mode), the
    # unfrozen top block's convolutions trained.
    task = tfft.build_model(spec, num_classes=2, class_names=lfw.class_names, compile=False)
    pretrained = {w.path: np.asarray(w) for w in task.get_layer("backbone").weights}
    # The BatchNorm weights plain top_k:1 would have trained.
    task.freeze("top_k:1")
    opened = {w.path for w in task.get_layer("backbone").trainable_weights}
    task.load_weights(os.path.join(report["run_dir"], "final.weights.h5"))
    tuned = {w.path: np.asarray(w) for w in task.get_layer("backbone").weights}
    batch_norm = [p for p in tuned if "bn" in p.split("/")[-2]]
    assert set(batch_norm) & opened
    assert all(np.array_equal(tuned[p], pretrained[p]) for p in batch_norm)
    moved = [p for p in tuned if not np.array_equal(tuned[p], pretrained[p])]
    assert moved and not set(moved) & set(batch_norm)

    # The export, loaded in a fresh process, answers PNG bytes like the job's model.
    picks = [0, 1, 100, 159]
    pngs = [tf.io.encode_png(np.repeat(lfw.x[i][..., np.newaxis], 3, -1)).numpy()
            for i in picks]
    served = tfft.export.load_serving_outputs_in_fresh_process(report["export_path"], pngs)
    want = task.predict(np.repeat(lfw.x[picks][..., np.newaxis], 3, -1), verbose=0)
    np.testing.assert_allclose(served["probabilities"], want, atol=1e-5)
    assert served["class_names"].tolist() == [lfw.class_names[i] for i in want.argmax(-1)]
