"""Semantic segmentation on a tiny random CNN: it trains, freezing holds, IoU and pictures."""

import os

import keras
import numpy as np
import pytest

from tfft.evaluation.segmentation import plot_segmentation, segmentation_iou
from tfft.models.segmentation import (
    SegmentationTask,
    build_segmentation_model,
    compile_segmentation,
)

TINY_SIZE = (64, 64)  # the tiny_backbone fixture's input size


def _snapshot(weights):
    return [np.array(w.numpy(), copy=True) for w in weights]


def test_training_lowers_the_loss_and_feature_extraction_keeps_the_backbone(tiny_scenes,
                                                                           tiny_backbone):
    task = build_segmentation_model(tiny_backbone(), num_classes=4, image_size=TINY_SIZE,
                                    filters=16, learning_rate=3e-3)
    assert isinstance(task, SegmentationTask)
    assert task.output_shape == (None, *TINY_SIZE, 4)
    assert sorted(task.backbone.output) == ["P2", "P3", "P4", "P5"]
    assert not task.backbone_layer.trainable and task.head.trainable
    moving = [w for w in task.backbone.weights if "moving" in w.path]
    assert moving, "the tiny backbone has BatchNorm statistics to watch"
    before = _snapshot(task.backbone.weights)
    head_before = _snapshot(task.head.trainable_weights)
    history = task.fit(tiny_scenes.images, tiny_scenes.masks, epochs=4, batch_size=16,
                       verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    # Frozen backbone: weights and BatchNorm moving statistics bitwise unchanged.
    after = task.backbone.weights
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, after, strict=True))
    assert any(not np.array_equal(a, w.numpy())
               for a, w in zip(head_before, task.head.trainable_weights, strict=True))
    masks = task.predict_masks(tiny_scenes.images[:4])
    assert masks.shape == (4, *TINY_SIZE) and masks.min() >= 0 and masks.max() < 4


def test_full_fine_tuning_changes_the_backbone(tiny_scenes, tiny_backbone):
    task = build_segmentation_model(tiny_backbone(), num_classes=4, image_size=TINY_SIZE,
                                    filters=16, freeze="full")
    assert task.backbone_layer.trainable
    before = _snapshot(task.backbone.trainable_weights)
    task.fit(tiny_scenes.images[:16], tiny_scenes.masks[:16], epochs=1, batch_size=16,
             verbose=0)
    assert all(not np.array_equal(a, w.numpy())
               for a, w in zip(before, task.backbone.trainable_weights, strict=True))
    # In one tf.function (tfft.training.make_single_train_function), not Keras' two.
    assert hasattr(task.train_function, "traced")


def test_top_k_trains_only_the_top_stages(tiny_backbone):
    task = build_segmentation_model(tiny_backbone(), num_classes=3, image_size=TINY_SIZE,
                                    filters=8, freeze="top_k:2", compile=False)
    trainable = {w.path.split("/")[0] for w in task.backbone.trainable_weights}
    assert trainable == {"stage3_conv", "stage3_bn", "stage4_conv", "stage4_bn"}
    task.freeze("feature_extraction")
    compile_segmentation(task)
    assert not task.backbone.trainable_weights


def test_keras_file_round_trip(tmp_path, tiny_scenes, tiny_backbone):
    task = build_segmentation_model(tiny_backbone(), num_classes=4, image_size=TINY_SIZE,
                                    filters=8, compile=False)
    path = str(tmp_path / "seg.keras")
    task.save(path)
    reloaded = keras.saving.load_model(path, compile=False)
    images = tiny_scenes.images[:2].astype("float32")
    np.testing.assert_allclose(reloaded.predict(images, verbose=0),
                               task.predict(images, verbose=0), atol=1e-5)
    assert not reloaded.backbone.trainable_weights


def test_bad_arguments(tiny_backbone):
    with pytest.raises(ValueError, match="divisible by 32"):
        build_segmentation_model(tiny_backbone(), num_classes=3, image_size=(60, 60))
    with pytest.raises(ValueError, match="num_classes >= 2"):
        build_segmentation_model(tiny_backbone(), num_classes=1, image_size=TINY_SIZE)


def test_iou_matches_hand_counts():
    truth = np.array([[[0, 0, 1, 1], [0, 0, 2, 2]]])
    pred = np.array([[[0, 1, 1, 1], [0, 0, 2, 0]]])
    result = segmentation_iou(truth, pred, 4, ["bg", "a", "b", "c"])
    # bg: 3 shared of 5 in either; a: 2 of 3; b: 1 of 2; c: absent everywhere.
    assert result["per_class_iou"] == pytest.approx({"bg": 3 / 5, "a": 2 / 3, "b": 1 / 2,
                                                     "c": None})
    assert result["mean_iou"] == pytest.approx((3 / 5 + 2 / 3 + 1 / 2) / 3)
    perfect = segmentation_iou(truth, truth, 4)
    assert perfect["mean_iou"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        segmentation_iou(truth, pred[:, :1], 4)


def test_plot_writes_a_png(tmp_path, tiny_scenes):
    path = plot_segmentation(tiny_scenes.images[:3], tiny_scenes.masks[:3],
                             tiny_scenes.masks[:3], str(tmp_path / "masks.png"), 4,
                             ["background", "0", "1", "2"])
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 5000
