"""`tfft finetune --dataset rotten_tomatoes --no-feature-cache` on the real MiniLM.

One reduced-size run of the command line, in-process, proves both paths at once:
the head stage trains without the feature cache, and the Rotten Tomatoes dataset
goes end to end (split, training, report, export).
"""

import json
import os

import h5py
import numpy as np
import pytest

from tfft.cli.main import main

CLASS_NAMES = ["fresh", "plot", "rotten"]


def _head_biases(weights_file):
    """The output layer's bias vectors found in a Keras `.weights.h5` file."""
    found = []

    def visit(name, item):
        if isinstance(item, h5py.Dataset) and "head" in name and item.ndim == 1:
            found.append((name, item[()]))

    with h5py.File(weights_file, "r") as f:
        f.visititems(visit)
    return found


@pytest.fixture(scope="module")
def rotten_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rotten_job")
    features = root / "features"
    config = root / "split.json"
    # A larger test share than the default, so the accuracy margin means something.
    config.write_text(json.dumps({"val_fraction": 0.1, "test_fraction": 0.4}))
    with pytest.MonkeyPatch.context() as patch:
        # A feature cache folder for this run only (the session's is shared).
        patch.setenv("TFFT_FEATURE_CACHE_DIR", str(features))
        code = main([
            "finetune", "--dataset", "rotten_tomatoes", "--no-feature-cache",
            "--config", str(config), "--max-examples", "300", "--sequence-length", "32",
            "--head-epochs", "5", "--epochs", "0", "--batch-size", "32",
            "--run-dir", str(root / "run"), "--export-dir", str(root / "export"),
        ])
    assert code == 0
    with open(root / "run" / "report.json") as f:
        report = json.load(f)
    return {"report": report, "features": features, "run_dir": root / "run"}


@pytest.mark.slow
def test_head_stage_trains_without_the_feature_cache(rotten_run):
    report = rotten_run["report"]
    assert report["config"]["feature_cache"] is False
    [stage] = report["stages"]
    assert stage["name"] == "head"
    assert stage["feature_cache_hit"] is False and stage["feature_seconds"] == 0.0
    # Nothing was written to the feature cache: the backbone ran every epoch.
    features = rotten_run["features"]
    assert not features.exists() or os.listdir(features) == [], os.listdir(features)
    # The head learned: its loss fell over the 5 epochs (measured 1.10 -> 0.72 on
    # 150 examples), and its bias, initialised to zeros, moved.
    losses = stage["history"]["loss"]
    assert len(losses) == 5 and losses[-1] < losses[0] - 0.1, losses
    biases = _head_biases(rotten_run["run_dir"] / "final.weights.h5")
    assert biases, "no head bias in final.weights.h5"
    for name, bias in biases:
        assert bias.shape == (len(CLASS_NAMES),) and np.abs(bias).max() > 1e-3, (name, bias)


@pytest.mark.slow
def test_rotten_tomatoes_end_to_end_beats_the_majority_rate(rotten_run):
    report = rotten_run["report"]
    assert report["config"]["dataset"] == "rotten_tomatoes"
    test = report["test_report"]
    assert test["class_names"] == CLASS_NAMES
    metrics = test["metrics"]
    support = {name: metrics["per_class"][name]["support"] for name in CLASS_NAMES}
    assert sum(support.values()) == metrics["num_examples"] == 120
    majority = max(support.values()) / metrics["num_examples"]
    confusion = np.asarray(metrics["confusion_matrix"])
    assert confusion.shape == (3, 3)
    assert metrics["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    # Measured: accuracy 0.642 against a majority rate of 0.533 (64 fresh of 120).
    assert report["test"]["accuracy"] >= majority + 0.05, (report["test"], majority)

    export = report["export_path"]
    assert os.path.exists(os.path.join(export, "saved_model.pb"))
    with open(os.path.join(export, "tfft_metadata.json")) as f:
        meta = json.load(f)
    assert meta["class_names"] == CLASS_NAMES
    assert meta["dataset"] == "rotten_tomatoes"
    assert meta["evaluation"]["metrics"]["accuracy"] == pytest.approx(metrics["accuracy"])
