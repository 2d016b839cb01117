"""Object detection on a tiny random CNN: targets, training, freezing, decoding, mAP, pictures."""

import os

import keras
import numpy as np
import pytest

from tfft.evaluation.detection import detection_map, plot_detections
from tfft.models import build_model
from tfft.models.detection import DetectionTask, build_detection_model, compile_detection

TINY_SIZE = (64, 64)  # the tiny_backbone fixture's input size


def _targets(scenes):
    """Padded xyxy boxes and 0-based classes of `make_scenes` scenes."""
    most = max(len(b) for b in scenes.boxes)
    boxes = np.full((len(scenes), most, 4), -1, np.float32)
    classes = np.full((len(scenes), most), -1, np.int32)
    for k, b in enumerate(scenes.boxes):
        boxes[k, :len(b), :2] = b[:, :2]
        boxes[k, :len(b), 2:] = b[:, :2] + b[:, 2:4]
        classes[k, :len(b)] = b[:, 4] - 1
    return boxes, classes


def _snapshot(weights):
    return [np.array(w.numpy(), copy=True) for w in weights]


@pytest.fixture
def tiny_task_factory(tiny_backbone):
    def build(**kwargs):
        kwargs.setdefault("filters", 16)
        return build_detection_model(tiny_backbone(), num_classes=3, image_size=TINY_SIZE,
                                     class_names=["zero", "one", "two"], **kwargs)

    return build


def test_training_lowers_the_loss_and_feature_extraction_keeps_the_backbone(
        tiny_scenes, tiny_task_factory, count_train_step_traces):
    task = tiny_task_factory(learning_rate=3e-3)
    assert isinstance(task, DetectionTask)
    assert sorted(task.backbone.output) == ["P3", "P4", "P5"]
    # 8x8 + 4x4 + 2x2 locations, 2 scales x 3 aspect ratios each.
    assert task.anchors.shape == ((64 + 16 + 4) * 6, 4)
    raw = task.predict(tiny_scenes.images[:2].astype("float32"), verbose=0)
    assert raw["box_deltas"].shape == (2, 504, 4) and raw["class_logits"].shape == (2, 504, 3)
    assert not task.backbone_layer.trainable and task.head.trainable
    moving = [w for w in task.backbone.weights if "moving" in w.path]
    assert moving, "the tiny backbone has BatchNorm statistics to watch"
    before = _snapshot(task.backbone.weights)
    head_before = _snapshot(task.head.trainable_weights)
    boxes, classes = _targets(tiny_scenes)
    traces = count_train_step_traces(task)
    history = task.fit(tiny_scenes.images.astype("float32"), {"boxes": boxes, "classes": classes},
                       epochs=4, batch_size=16, verbose=0)
    # The optimizer is built before fit, so the train step is traced once.
    assert len(traces) == 1
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    # Frozen backbone: weights and BatchNorm moving statistics bitwise unchanged.
    assert all(np.array_equal(a, w.numpy())
               for a, w in zip(before, task.backbone.weights, strict=True))
    assert any(not np.array_equal(a, w.numpy())
               for a, w in zip(head_before, task.head.trainable_weights, strict=True))
    found = task.predict_detections(tiny_scenes.images[:3], score_threshold=0.0)
    assert len(found) == 3
    for d in found:
        assert d["boxes"].shape == (task.settings["max_detections"], 4)
        assert np.all(np.diff(d["scores"]) <= 0)  # best first
        assert np.all((d["boxes"] >= 0) & (d["boxes"] <= 64))
        assert set(d["classes"].tolist()) <= {0, 1, 2}


def test_full_and_top_k_train_the_backbone_blocks_they_name(tiny_scenes, tiny_task_factory):
    task = tiny_task_factory(freeze="top_k:2", compile=False)
    trainable = {w.path.split("/")[0] for w in task.backbone.trainable_weights}
    assert trainable == {"stage3_conv", "stage3_bn", "stage4_conv", "stage4_bn"}
    task.freeze("full")
    compile_detection(task)
    assert task.backbone_layer.trainable
    before = _snapshot(task.backbone.trainable_weights)
    boxes, classes = _targets(tiny_scenes)
    task.fit(tiny_scenes.images[:16].astype("float32"),
             {"boxes": boxes[:16], "classes": classes[:16]}, epochs=1, batch_size=16, verbose=0)
    # stage0 feeds P3 and up; every stage reaches some level, so all of them learn.
    assert all(not np.array_equal(a, w.numpy())
               for a, w in zip(before, task.backbone.trainable_weights, strict=True))


def test_targets_match_anchors_by_iou(tiny_task_factory):
    task = tiny_task_factory(compile=False)
    anchors = task.anchors
    inside = np.all(anchors >= 0, axis=1) & np.all(anchors <= 64, axis=1)
    pick = int(np.flatnonzero(inside)[0])
    box = anchors[pick]
    boxes = np.full((2, 2, 4), -1, np.float32)
    classes = np.full((2, 2), -1, np.int32)
    boxes[0, 0] = box
    classes[0, 0] = 2
    targets = {k: np.asarray(v) for k, v in task.encode_targets(boxes, classes).items()}
    # The box equal to an anchor: that anchor is positive, class 2, with zero deltas.
    assert targets["positive"][0, pick]
    np.testing.assert_allclose(targets["box_deltas"][0, pick], 0.0, atol=1e-5)
    np.testing.assert_array_equal(targets["classes"][0, pick], [0, 0, 1])
    # Every positive anchor overlaps the box by IoU >= 0.5 (the forced best match aside).
    x1 = np.maximum(anchors[:, 0], box[0])
    y1 = np.maximum(anchors[:, 1], box[1])
    x2 = np.minimum(anchors[:, 2], box[2])
    y2 = np.minimum(anchors[:, 3], box[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    iou = inter / (area + area[pick] - inter)
    np.testing.assert_array_equal(targets["positive"][0], iou >= 0.5)
    np.testing.assert_array_equal(targets["ignore"][0], (iou >= 0.4) & (iou < 0.5))
    assert np.all(targets["classes"][0][~targets["positive"][0]] == 0)
    # Padding rows and an image without boxes give no positives at all.
    assert not targets["positive"][1].any() and not targets["classes"][1].any()


def test_zero_deltas_decode_to_the_anchors_and_nms_removes_duplicates(tiny_task_factory):
    task = tiny_task_factory(compile=False)
    count = len(task.anchors)
    anchors = np.clip(task.anchors, 0, 64)
    first = 100
    overlaps = np.array([_iou(anchors[first], a) for a in anchors])
    overlaps[first] = 0
    duplicate = int(np.argmax(overlaps))
    far = int(np.flatnonzero(overlaps == 0)[-1])
    logits = np.full((1, count, 3), -10.0, np.float32)
    logits[0, first, 1] = 3.0      # best
    logits[0, duplicate, 1] = 2.0  # same place, next scale: overlaps `first`
    logits[0, far, 0] = 1.0
    found = task.decode_detections({"box_deltas": np.zeros((1, count, 4), np.float32),
                                    "class_logits": logits})
    found = {k: np.asarray(v) for k, v in found.items()}
    assert _iou(anchors[first], anchors[duplicate]) > 0.55
    assert found["num_detections"].tolist() == [2]
    np.testing.assert_allclose(found["boxes"][0, :2], anchors[[first, far]], atol=1e-4)
    assert found["classes"][0, :2].tolist() == [1, 0]
    np.testing.assert_allclose(found["scores"][0, :2], 1 / (1 + np.exp([-3.0, -1.0])), atol=1e-6)
    assert np.all(found["classes"][0, 2:] == -1) and np.all(found["scores"][0, 2:] == 0)


def _iou(a, b):
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def test_keras_file_round_trip_and_dispatch(tmp_path, tiny_scenes, tiny_backbone):
    task = build_model(tiny_backbone(), task="object_detection", num_classes=3,
                       image_size=TINY_SIZE, filters=8, compile=False, max_detections=7,
                       class_names=["a", "b", "c"])
    assert isinstance(task, DetectionTask) and task.freeze_policy.name == "feature_extraction"
    path = str(tmp_path / "det.keras")
    task.save(path)
    reloaded = keras.saving.load_model(path, compile=False)
    images = tiny_scenes.images[:2].astype("float32")
    for key, value in task.predict(images, verbose=0).items():
        np.testing.assert_allclose(reloaded.predict(images, verbose=0)[key], value, atol=1e-5)
    assert reloaded.class_names == ["a", "b", "c"] and reloaded.settings == task.settings
    assert reloaded.settings["max_detections"] == 7
    assert not reloaded.backbone.trainable_weights
    np.testing.assert_array_equal(reloaded.anchors, task.anchors)


def test_bad_arguments(tiny_backbone):
    with pytest.raises(ValueError, match="divisible by 32"):
        build_detection_model(tiny_backbone(), num_classes=3, image_size=(60, 60))
    with pytest.raises(ValueError, match="num_classes >= 1"):
        build_detection_model(tiny_backbone(), num_classes=0, image_size=TINY_SIZE)
    with pytest.raises(ValueError, match="class_names has 2 names but the head has 3"):
        build_detection_model(tiny_backbone(), num_classes=3, image_size=TINY_SIZE,
                              class_names=["a", "b"], compile=False)


def test_map_of_the_truth_is_one_and_of_shifted_boxes_as_computed_by_hand():
    truth = [np.array([[0, 0, 10, 10], [20, 20, 40, 30]], np.float32), np.zeros((0, 4))]
    classes = [np.array([0, 1]), np.zeros(0, int)]
    perfect = detection_map(truth, classes, truth, classes, [np.ones(2), np.zeros(0)],
                            class_names=["a", "b"])
    assert perfect["map50"] == pytest.approx(1.0) and perfect["map50_95"] == pytest.approx(1.0)
    # Shift the first box 2 px right: IoU = 80 / 120 = 2/3, so it matches at the IoU
    # thresholds 0.50, 0.55, 0.60, 0.65 and misses 0.70 ... 0.95: AP 4/10 for class a.
    shifted = [truth[0] + [[2, 0, 2, 0], [0, 0, 0, 0]], truth[1]]
    result = detection_map(truth, classes, shifted, classes, [np.ones(2), np.zeros(0)],
                           class_names=["a", "b"])
    assert result["map50"] == pytest.approx(1.0)
    assert result["map50_95"] == pytest.approx((0.4 + 1.0) / 2)
    assert result["per_class_ap50"] == pytest.approx({"a": 1.0, "b": 1.0})
    # Shifted 6 px: IoU = 40 / 160 = 0.25, a miss at every threshold.
    far = [truth[0] + [[6, 0, 6, 0], [0, 0, 0, 0]], truth[1]]
    missed = detection_map(truth, classes, far, classes, [np.ones(2), np.zeros(0)],
                           class_names=["a", "b"])
    assert missed["per_class_ap50"]["a"] == pytest.approx(0.0)
    assert missed["map50"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one entry per image"):
        detection_map(truth, classes, truth[:1], classes, [np.ones(2), np.zeros(0)])


def test_plot_writes_a_png(tmp_path, tiny_scenes):
    boxes, classes = _targets(tiny_scenes)
    found = [{"boxes": b[c >= 0], "classes": c[c >= 0], "scores": np.full((c >= 0).sum(), 0.9)}
             for b, c in zip(boxes[:4], classes[:4], strict=True)]
    path = plot_detections(tiny_scenes.images[:4], found, str(tmp_path / "boxes.png"),
                           ["0", "1", "2"], true_boxes=[f["boxes"] for f in found])
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 5000


def test_an_export_that_fails_verification_leaves_nothing(tmp_path, tiny_scenes,
                                                          tiny_task_factory, monkeypatch):
    import tfft.export.detection as detection_export
    from tfft.export.saved_model import ExportError, encode_image

    task = tiny_task_factory(compile=False, filters=8)
    seen = {}

    def disagree(path, samples, expected, atol):
        seen.update(path=path, files=sorted(os.listdir(path)), expected=expected)
        raise ExportError("the reloaded SavedModel's 'boxes' differs")

    monkeypatch.setattr(detection_export, "verify_in_fresh_process", disagree)
    target = tmp_path / "det" / "1"
    with pytest.raises(ExportError, match="Detection export not written"):
        detection_export.export_detection(task, str(target),
                                          verify_with=[encode_image(tiny_scenes.images[0])])
    # The SavedModel was written and checked in a staging folder, which is gone.
    assert "saved_model.pb" in seen["files"] and "tfft_detection.json" in seen["files"]
    assert set(seen["expected"]) == {"boxes", "classes", "scores", "num_detections"}
    assert not os.path.exists(seen["path"]) and not target.exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_fit_on_a_dataset_does_not_warn_that_shuffle_is_ignored(tiny_scenes, tiny_task_factory):
    import warnings

    import tensorflow as tf

    task = tiny_task_factory()
    boxes, classes = _targets(tiny_scenes)
    data = tf.data.Dataset.from_tensor_slices(
        (tiny_scenes.images[:16].astype("float32"), {"boxes": boxes[:16], "classes": classes[:16]})
    ).batch(8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task.fit(data, epochs=1, verbose=0)
    assert not [w for w in caught if "shuffle" in str(w.message)], [str(w.message) for w in caught]
