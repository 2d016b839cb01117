"""Boxes from CSV/JSON/COCO files, tf.data pipelines, and augmentations that move boxes exactly."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tfft.data.boxes import (
    crop_with_boxes,
    detection_dataset,
    flip_boxes,
    flip_with_boxes,
    read_boxes,
    resize_with_boxes,
)
from tfft.data.crops import sample_crop
from tfft.data.masks import crop_with_mask, flip_with_mask, resize_with_mask, segmentation_dataset
from tfft.data.synthetic_scenes import make_scenes

NAMES = ["digit_0", "digit_1", "digit_2"]


def _xyxy(scene_boxes):
    """Scene boxes `(x, y, w, h, class)` as xyxy pixels and 0-based classes."""
    b = np.asarray(scene_boxes, np.float32).reshape(-1, 5)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:4]], 1), b[:, 4].astype(np.int32) - 1


def _mask_box(mask, label, region=None):
    """The bounding box (xyxy) of `label`'s pixels in `mask`, within `region` (xyxy ints)."""
    inside = np.asarray(mask) == label
    if region is not None:
        x1, y1, x2, y2 = (int(v) for v in region)
        limited = np.zeros_like(inside)
        limited[y1:y2, x1:x2] = inside[y1:y2, x1:x2]
        inside = limited
    if not inside.any():
        return None
    rows, cols = np.nonzero(inside)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)


def test_csv_and_coco_give_the_written_boxes(scene_dir):
    scenes = make_scenes(24, seed=0)
    from_csv = read_boxes(os.path.join(scene_dir, "train", "boxes.csv"))
    from_coco = read_boxes(os.path.join(scene_dir, "train", "coco.json"))
    assert from_csv.class_names == from_coco.class_names == NAMES
    assert len(from_csv) == len(from_coco) == 24
    for k in range(24):
        boxes, classes = _xyxy(scenes.boxes[k])
        for data in (from_csv, from_coco):
            assert data.image_paths[k].endswith(f"{k:05d}.png")
            assert data.image_sizes[k] == (128, 128)
            np.testing.assert_array_equal(data.boxes[k], boxes)
            np.testing.assert_array_equal(data.classes[k], classes)
    images, boxes = from_csv.load()
    assert np.array_equal(images, scenes.images)


def test_relative_units_and_json_rows_read_the_same(scene_dir, tmp_path):
    source = read_boxes(os.path.join(scene_dir, "test", "boxes.csv"), class_names=NAMES)
    with open(os.path.join(scene_dir, "test", "boxes.csv")) as f:
        rows = list(csv.DictReader(f))
    images = os.path.join(scene_dir, "test")
    relative = [{**r, "image": os.path.join(images, r["image"]),
                 **{k: int(r[k]) / 128 for k in ("x", "y", "w", "h")}} for r in rows]
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"boxes": relative}))
    auto = read_boxes(path, class_names=NAMES)
    explicit = read_boxes(path, class_names=NAMES, units="relative")
    for data in (auto, explicit):
        assert data.image_paths == source.image_paths
        for a, b in zip(data.boxes, source.boxes, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.fixture
def test_split(scene_dir, tmp_path):
    root = tmp_path / "split"
    shutil.copytree(os.path.join(scene_dir, "test"), root)
    return root


def _rewrite_row(root, index, **changes):
    path = root / "boxes.csv"
    with open(path) as f:
        rows = list(csv.DictReader(f))
    rows[index].update(changes)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "class", "x", "y", "w", "h"])
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


@pytest.mark.parametrize(("changes", "message"), [
    ({"x": "120", "w": "20"},
     r"row 4: the box lies outside the 128x128 .*x \+ w <= 128.*x=120, y=\d+, w=20"),
    ({"w": "-3"}, r"row 4: a box's width and height must be positive. Received: w=-3"),
    ({"class": "cat"}, r"row 4: unknown class name. Expected one of \['digit_0', 'digit_1', "
                       r"'digit_2'\]. Received: class='cat'"),
    ({"image": "images/missing.png"}, r"row 4: the image file does not exist.*missing\.png"),
    ({"y": "abc"}, r"row 4: y must be a number. Received: y='abc'"),
])
def test_bad_rows_name_the_file_and_row(test_split, changes, message):
    path = _rewrite_row(test_split, 2, **changes)  # the third box is on line 4
    with pytest.raises(ValueError, match=message) as error:
        read_boxes(path, class_names=NAMES)
    assert "boxes.csv" in str(error.value)


def test_bad_coco_entries_are_named(test_split):
    path = test_split / "coco.json"
    coco = json.loads(path.read_text())
    coco["annotations"][1]["bbox"] = [100, 100, 40, 10]
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"coco\.json.*annotation 1: the box lies outside"):
        read_boxes(path)
    coco["annotations"][1]["bbox"] = [1, 1, 4, 4]
    coco["annotations"][1]["category_id"] = 9
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"annotation 1: unknown category_id.*\[1, 2, 3\]"):
        read_boxes(path)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['w', 'h'\]"):
        (test_split / "bad.csv").write_text("image,class,x,y\n")
        read_boxes(test_split / "bad.csv")


def test_dataset_pads_boxes_and_classes(scene_dir):
    data = read_boxes(os.path.join(scene_dir, "train", "boxes.csv"))
    ds = detection_dataset(data, batch_size=10)
    images, targets = next(iter(ds))
    assert images.shape == (10, 128, 128, 3) and images.dtype == tf.float32
    assert targets["boxes"].shape == (10, data.max_boxes, 4)
    for k in range(10):
        n = len(data.boxes[k])
        np.testing.assert_allclose(targets["boxes"][k, :n], data.boxes[k], atol=1e-4)
        assert np.all(targets["boxes"][k, n:] == -1) and np.all(targets["classes"][k, n:] == -1)
        np.testing.assert_array_equal(targets["classes"][k, :n], data.classes[k])
    # Resizing scales the boxes with the pixels.
    _, small = next(iter(detection_dataset(data, image_size=(64, 96), batch_size=1)))
    np.testing.assert_allclose(small["boxes"][0, :len(data.boxes[0])],
                               data.boxes[0] * [0.75, 0.5, 0.75, 0.5], atol=1e-4)


def test_augmented_dataset_is_seeded_and_keeps_boxes_in_the_image(scene_dir):
    data = read_boxes(os.path.join(scene_dir, "train", "boxes.csv"))

    def batches(seed):
        return [(x.numpy(), y["boxes"].numpy(), y["classes"].numpy())
                for x, y in detection_dataset(data, batch_size=8, augment=True, seed=seed)]

    first, again, other = batches(3), batches(3), batches(4)
    assert all(np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
               for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))
    boxes = np.concatenate([b for _, b, _ in first])
    classes = np.concatenate([c for _, _, c in first])
    real = classes >= 0
    assert np.all(boxes[real] >= 0) and np.all(boxes[real] <= 128)
    assert np.all(boxes[real][:, 2:] > boxes[real][:, :2])
    assert np.all(boxes[~real] == -1)
    assert 0 < real.sum() <= data.num_boxes  # crops drop some boxes, never add any


def test_flip_twice_is_the_identity_and_matches_the_flipped_mask():
    scenes = make_scenes(12, seed=2)
    for mask, scene_boxes in zip(scenes.masks, scenes.boxes, strict=True):
        boxes, classes = _xyxy(scene_boxes)
        np.testing.assert_array_equal(flip_boxes(flip_boxes(boxes, 128), 128), boxes)
        flipped = flip_boxes(boxes, 128).numpy()
        mirrored = mask[:, ::-1]
        for box, label in zip(flipped, classes, strict=True):
            np.testing.assert_array_equal(_mask_box(mirrored, label + 1, box), box)
    # The random flip moves image, boxes and mask together (same seed, same draw).
    image, boxes_in = scenes.images[0], _xyxy(scenes.boxes[0])[0]
    outcomes = set()
    for s in range(8):
        seed = tf.constant([s, 1])
        x, b = flip_with_boxes(tf.constant(image), boxes_in, seed)
        _, m = flip_with_mask(tf.constant(image), tf.constant(scenes.masks[0]), seed)
        flipped = not np.array_equal(x.numpy(), image)
        outcomes.add(flipped)
        assert np.array_equal(m.numpy(), scenes.masks[0][:, ::-1] if flipped else scenes.masks[0])
        np.testing.assert_array_equal(b, flip_boxes(boxes_in, 128) if flipped else boxes_in)
    assert outcomes == {True, False}


def test_a_cropped_box_is_the_box_of_the_cropped_mask():
    scenes = make_scenes(16, seed=3)
    kept_whole = clipped = dropped = 0
    for index, (image, mask, scene_boxes) in enumerate(
            zip(scenes.images, scenes.masks, scenes.boxes, strict=True)):
        boxes, classes = _xyxy(scene_boxes)
        for s in range(4):
            seed = tf.constant([index, s])
            x, b, c = crop_with_boxes(tf.constant(image), boxes, classes, seed, min_scale=0.5,
                                      min_visible=0.0)
            x_mask, m = crop_with_mask(tf.constant(image), tf.constant(mask), seed, min_scale=0.5)
            assert np.array_equal(x.numpy(), x_mask.numpy())
            m = m.numpy()
            height, width = m.shape
            b, c = b.numpy(), c.numpy()
            top, left, _, _ = (int(v) for v in sample_crop(128, 128, seed, 0.5))
            assert np.array_equal(image[top:top + height, left:left + width], x.numpy())
            kept = 0
            for box, label in zip(boxes, classes, strict=True):
                region = box - [left, top, left, top]
                region = np.clip(region, 0, [width, height, width, height])
                visible = (region[2] - region[0]) * (region[3] - region[1]) > 0
                if not visible:
                    dropped += 1
                    continue
                got = b[kept]
                assert c[kept] == label
                kept += 1
                np.testing.assert_array_equal(got, region)
                from_mask = _mask_box(m, label + 1, region)
                if np.all(box[:2] >= [left, top]) and np.all(box[2:] <= [left + width,
                                                                          top + height]):
                    kept_whole += 1
                    np.testing.assert_array_equal(got, from_mask)  # exactly the mask's box
                else:
                    clipped += 1
                    # A cut box holds every visible pixel of its object.
                    assert from_mask is None or (np.all(got[:2] <= from_mask[:2])
                                                 and np.all(got[2:] >= from_mask[2:]))
            assert kept == len(b)
    assert kept_whole > 20 and clipped > 3 and dropped > 3, (kept_whole, clipped, dropped)


def test_min_visible_drops_slivers_with_their_class():
    boxes = np.array([[0, 0, 10, 10], [30, 30, 40, 40], [50, 0, 60, 10]], np.float32)
    classes = np.array([0, 1, 2], np.int32)
    image = tf.zeros((64, 64, 3))
    dropped_seen = 0
    for s in range(20):
        seed = tf.constant([s, 9])
        _, b, c = crop_with_boxes(image, boxes, classes, seed, min_scale=0.5, min_visible=0.5)
        _, b_all, c_all = crop_with_boxes(image, boxes, classes, seed, min_scale=0.5,
                                          min_visible=0.0)
        full = np.prod(boxes[c][:, 2:] - boxes[c][:, :2], axis=1)
        area = np.prod(b.numpy()[:, 2:] - b.numpy()[:, :2], axis=1)
        assert np.all(area >= 0.5 * full)
        # What min_visible drops are exactly the slivers below half their area.
        all_area = np.prod(b_all.numpy()[:, 2:] - b_all.numpy()[:, :2], axis=1)
        all_full = np.prod(boxes[c_all][:, 2:] - boxes[c_all][:, :2], axis=1)
        assert c.numpy().tolist() == c_all.numpy()[all_area >= 0.5 * all_full].tolist()
        dropped_seen += len(c_all) - len(c)
    assert dropped_seen > 0


def test_resize_scales_boxes_like_the_mask():
    scenes = make_scenes(6, seed=4, image_size=(64, 64), max_digits=2)
    for image, mask, scene_boxes in zip(scenes.images, scenes.masks, scenes.boxes, strict=True):
        boxes, classes = _xyxy(scene_boxes)
        x, b = resize_with_boxes(tf.constant(image), boxes, (128, 128))
        x_mask, m = resize_with_mask(tf.constant(image), tf.constant(mask), (128, 128))
        assert x.shape == x_mask.shape == (128, 128, 3) and m.shape == (128, 128)
        for box, label in zip(b.numpy(), classes, strict=True):
            np.testing.assert_array_equal(_mask_box(m.numpy(), label + 1, box), box)


def test_segmentation_crops_are_seeded_and_keep_class_ids(scene_dir):
    image_dir = os.path.join(scene_dir, "train", "images")

    def masks(seed):
        ds = segmentation_dataset(image_dir, num_classes=4, augment=True, seed=seed,
                                  min_scale=0.6, batch_size=24)
        return next(iter(ds))[1].numpy()

    first, again = masks(1), masks(1)
    plain = next(iter(segmentation_dataset(image_dir, num_classes=4, batch_size=24)))[1].numpy()
    assert first.shape == plain.shape == (24, 128, 128)
    assert np.array_equal(first, again) and not np.array_equal(first, plain)
    assert set(np.unique(first).tolist()) <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match="min_scale"):
        segmentation_dataset(image_dir, num_classes=4, augment=True, min_scale=1.5)
