"""Masks from PNG files beside the images: tf.data loading, flips, bad files refused."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfft.data.masks import flip_with_mask, segmentation_dataset
from tfft.data.synthetic_scenes import make_scenes


def _batches(ds):
    images, masks = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(images), np.concatenate(masks)


def test_loads_images_and_masks_as_written(scene_dir):
    images, masks = _batches(segmentation_dataset(
        os.path.join(scene_dir, "train", "images"), num_classes=4, batch_size=5))
    scenes = make_scenes(24, seed=0)
    assert images.shape == (24, 128, 128, 3) and masks.shape == (24, 128, 128)
    assert masks.dtype == np.int32
    assert np.array_equal(masks, scenes.masks)
    assert np.abs(images - scenes.images).max() < 1e-3


def test_flip_moves_the_mask_with_the_image_exactly(scene_dir):
    image_dir = os.path.join(scene_dir, "train", "images")
    plain_x, plain_y = _batches(segmentation_dataset(image_dir, num_classes=4))
    aug_x, aug_y = _batches(segmentation_dataset(image_dir, num_classes=4, augment=True, seed=5))
    flipped = 0
    for x, y, ax, ay in zip(plain_x, plain_y, aug_x, aug_y, strict=True):
        if np.array_equal(ax, x[:, ::-1]) and not np.array_equal(ax, x):
            flipped += 1
            assert np.array_equal(ay, y[:, ::-1])
        else:
            assert np.array_equal(ax, x) and np.array_equal(ay, y)
    assert 0 < flipped < len(plain_x)
    again_x, again_y = _batches(segmentation_dataset(image_dir, num_classes=4, augment=True,
                                                     seed=5))
    assert np.array_equal(again_x, aug_x) and np.array_equal(again_y, aug_y)


def test_flip_with_mask_on_one_pair():
    image = tf.reshape(tf.range(2 * 3 * 3, dtype=tf.float32), (2, 3, 3))
    mask = tf.constant([[0, 1, 2], [3, 0, 1]])
    outcomes = set()
    for s in range(8):
        x, y = flip_with_mask(image, mask, tf.constant([s, 0]))
        if np.array_equal(y.numpy(), mask.numpy()[:, ::-1]):
            assert np.array_equal(x.numpy(), image.numpy()[:, ::-1])
            outcomes.add("flipped")
        else:
            assert np.array_equal(x.numpy(), image.numpy()) and np.array_equal(y, mask)
            outcomes.add("kept")
    assert outcomes == {"flipped", "kept"}


@pytest.fixture
def copy_of_split(scene_dir, tmp_path):
    root = tmp_path / "split"
    shutil.copytree(os.path.join(scene_dir, "test"), root)
    return root


def test_a_missing_mask_names_the_file(copy_of_split):
    os.remove(copy_of_split / "masks" / "00003.png")
    with pytest.raises(ValueError, match=r"Missing mask .*00003\.png"):
        segmentation_dataset(str(copy_of_split / "images"), num_classes=4)


def test_a_mask_of_the_wrong_size_names_the_file(copy_of_split):
    Image.fromarray(np.zeros((64, 128), np.uint8)).save(copy_of_split / "masks" / "00002.png")
    with pytest.raises(ValueError, match=r"00002\.png.* is 128x64 .*128x128"):
        segmentation_dataset(str(copy_of_split / "images"), num_classes=4)


def test_class_ids_out_of_range_name_the_file(copy_of_split):
    mask = np.zeros((128, 128), np.uint8)
    mask[5, 5] = 7
    Image.fromarray(mask).save(copy_of_split / "masks" / "00005.png")
    with pytest.raises(ValueError, match=r"00005\.png.* class id\(s\) \[7\] outside \[0, 4\)"):
        segmentation_dataset(str(copy_of_split / "images"), num_classes=4)
    # With room for class 7 the same files load.
    segmentation_dataset(str(copy_of_split / "images"), num_classes=8)


def test_an_rgb_mask_is_refused(copy_of_split):
    Image.fromarray(np.zeros((128, 128, 3), np.uint8)).save(copy_of_split / "masks" / "00001.png")
    with pytest.raises(ValueError, match=r"00001\.png.*single-channel"):
        segmentation_dataset(str(copy_of_split / "images"), num_classes=4)
