import numpy as np
import pytest
from matplotlib import image as mpimg

import tfft  # noqa: F401  (sets the Keras backend first)
from tfft.evaluation import (
    plot_confusion_matrix,
    plot_per_class_f1,
    plot_training_curves,
    report_from_predictions,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path, min_side=200):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    pixels = mpimg.imread(path)
    height, width = pixels.shape[:2]
    assert height > min_side and width > min_side, (height, width)
    # Not blank: a real drawing has many distinct colours and some dark ink.
    rgb = np.round(pixels[..., :3].reshape(-1, 3) * 255).astype(np.int64)
    assert len(np.unique(rgb @ np.array([65536, 256, 1]))) > 20
    assert (rgb.mean(axis=1) < 0.3 * 255).mean() > 0.002
    return pixels


@pytest.fixture(scope="module")
def report():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 200)
    pred = np.where(rng.random(200) < 0.7, y, rng.integers(0, 5, 200))
    names = ["business", "entertainment", "politics", "sport", "tech"]
    return report_from_predictions(y, pred, class_names=names)


def test_confusion_matrix_png(report, tmp_path):
    path = plot_confusion_matrix(report, tmp_path / "cm.png")
    assert path == str(tmp_path / "cm.png")
    _check_png(path)
    normalized = _check_png(plot_confusion_matrix(report, tmp_path / "cm_norm.png",
                                                  normalize=True))
    assert not np.array_equal(normalized, mpimg.imread(path))


def test_confusion_matrix_grows_with_classes(tmp_path):
    y = np.arange(24) % 12
    big = report_from_predictions(y, y, class_names=[f"class_{i:02d}" for i in range(12)])
    small = report_from_predictions(y % 2, y % 2)
    big_px = _check_png(plot_confusion_matrix(big, tmp_path / "big.png"))
    small_px = _check_png(plot_confusion_matrix(small, tmp_path / "small.png"))
    assert big_px.shape[0] > small_px.shape[0]


def test_per_class_f1_png(report, tmp_path):
    _check_png(plot_per_class_f1(report, tmp_path / "f1.png"))


def test_save_plots_writes_both(report, tmp_path):
    paths = report.save_plots(tmp_path / "plots")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["confusion_matrix.png", "per_class_f1.png"]
    for path in paths:
        _check_png(path)


def test_multilabel_and_regression_plots(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (50, 3))
    multilabel = report_from_predictions(y, rng.random((50, 3)), task="multilabel")
    for path in multilabel.save_plots(tmp_path / "ml"):
        _check_png(path)
    target = rng.normal(size=40)
    regression = report_from_predictions(target, target + rng.normal(size=40) * 0.2,
                                         task="regression")
    (path,) = regression.save_plots(tmp_path / "reg")
    assert path.endswith("predicted_vs_true.png")
    _check_png(path)
    with pytest.raises(ValueError, match="needs a classification report"):
        plot_confusion_matrix(regression, tmp_path / "x.png")


def test_training_curves_with_stages(tmp_path):
    import keras

    history = keras.callbacks.History()
    history.history = {"loss": [0.5, 0.4, 0.35], "val_loss": [0.6, 0.5, 0.52],
                       "accuracy": [0.8, 0.85, 0.88], "val_accuracy": [0.75, 0.8, 0.79]}
    stages = [
        ("head", {"loss": [1.2, 0.9], "val_loss": [1.3, 1.0], "accuracy": [0.5, 0.7],
                  "val_accuracy": [0.45, 0.65], "learning_rate": [1e-3, 1e-3]}),
        ("full fine-tune", history),
    ]
    both = _check_png(plot_training_curves(stages, tmp_path / "curves.png"))
    one = _check_png(plot_training_curves(stages[:1], tmp_path / "one.png"))
    # Two panels (loss and accuracy) stacked; the 5-epoch figure is no narrower.
    assert both.shape[0] > 500 and both.shape[1] >= one.shape[1]
    loss_only = _check_png(plot_training_curves([("s", {"loss": [1.0, 0.5]})],
                                                tmp_path / "loss.png"))
    assert loss_only.shape[0] < both.shape[0]


def test_training_curves_bad_input(tmp_path):
    with pytest.raises(ValueError, match="non-empty list"):
        plot_training_curves([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="pair \\(stage_name"):
        plot_training_curves([("only name",)], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no epochs"):
        plot_training_curves([("empty", {"loss": []})], tmp_path / "x.png")
    with pytest.raises(ValueError, match="Metric 'auc' is in no stage's history"):
        plot_training_curves([("s", {"loss": [1.0]})], tmp_path / "x.png", metric="auc")
    with pytest.raises(TypeError, match="keras History or a dict"):
        plot_training_curves([("s", [1.0, 2.0])], tmp_path / "x.png")
