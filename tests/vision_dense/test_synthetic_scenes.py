"""The real-photo scene builder: deterministic, a fixed test set, boxes that are their masks'."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from tfft.data.synthetic_scenes import make_scenes, write_scene_dataset


def _check_boxes_are_mask_bounds(mask, boxes):
    covered = np.zeros(mask.shape, bool)
    for x, y, w, h, label in boxes.tolist():
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= mask.shape[1] and y + h <= mask.shape[0]
        inside = mask[y:y + h, x:x + w] == label
        # The box is tight: its pixels touch all four edges ...
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        # ... and no two boxes share a pixel.
        assert not covered[y:y + h, x:x + w].any()
        covered[y:y + h, x:x + w] = True
        # Nothing but this digit's class (or background) inside its box.
        assert set(np.unique(mask[y:y + h, x:x + w]).tolist()) <= {0, label}
    # Every digit pixel lies in some box: the box is the bounding box of its pixels.
    assert not (mask[~covered] > 0).any()


def test_scenes_are_deterministic_and_the_test_set_is_fixed():
    a = make_scenes(6, seed=3)
    b = make_scenes(6, seed=3)
    c = make_scenes(6, seed=4)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert all(np.array_equal(p, q) for p, q in zip(a.boxes, b.boxes, strict=True))
    assert not np.array_equal(a.images, c.images)
    test_a = make_scenes(4, split="test", seed=3)
    test_b = make_scenes(4, split="test", seed=99)
    assert np.array_equal(test_a.images, test_b.images)
    assert not np.array_equal(test_a.images, a.images[:4])


def test_boxes_are_the_bounding_boxes_of_their_mask_pixels():
    scenes = make_scenes(40, seed=0)
    assert scenes.images.shape == (40, 128, 128, 3) and scenes.images.dtype == np.uint8
    assert scenes.class_names == ["background", "digit_0", "digit_1", "digit_2"]
    assert set(np.unique(scenes.masks).tolist()) == {0, 1, 2, 3}
    assert sum(len(b) for b in scenes.boxes) >= 40
    for mask, boxes in zip(scenes.masks, scenes.boxes, strict=True):
        assert len(boxes) >= 1
        _check_boxes_are_mask_bounds(mask, boxes)


def test_written_files_match_the_scenes(scene_dir):
    train = make_scenes(24, seed=0)
    root = os.path.join(scene_dir, "train")
    for index in (0, 23):
        image = np.asarray(Image.open(os.path.join(root, "images", f"{index:05d}.png")))
        mask = np.asarray(Image.open(os.path.join(root, "masks", f"{index:05d}.png")))
        assert np.array_equal(image, train.images[index])
        assert np.array_equal(mask, train.masks[index])
    with open(os.path.join(root, "boxes.csv")) as f:
        rows = list(csv.DictReader(f))
    expected = [(f"images/{i:05d}.png", train.class_names[b[4]], *b[:4])
                for i, boxes in enumerate(train.boxes) for b in boxes.tolist()]
    got = [(r["image"], r["class"], int(r["x"]), int(r["y"]), int(r["w"]), int(r["h"]))
           for r in rows]
    assert got == expected
    with open(os.path.join(root, "coco.json")) as f:
        coco = json.load(f)
    assert len(coco["annotations"]) == len(rows)
    assert [a["bbox"] for a in coco["annotations"]] == [list(e[2:]) for e in expected]
    assert len(os.listdir(os.path.join(scene_dir, "test", "images"))) == 8


def test_an_existing_folder_is_not_overwritten(scene_dir):
    before = sorted(os.listdir(scene_dir))
    with pytest.raises(FileExistsError):
        write_scene_dataset(scene_dir, num_train=2, num_test=1)
    assert sorted(os.listdir(scene_dir)) == before


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="digits"):
        make_scenes(2, digits=(1, 1))
    with pytest.raises(ValueError, match="split"):
        make_scenes(2, split="valid")
