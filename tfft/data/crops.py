"""Random crops shared by box and mask augmentation, so both move the same way.

`sample_crop` picks an integer window from a stateless seed; the box
pipeline (`tfft.data.boxes`) and the mask pipeline (`tfft.data.masks`) crop
with it, so the same seed cuts an image, its boxes and its mask alike.
"""

from __future__ import annotations

import tensorflow as tf


def check_min_scale(min_scale: float) -> float:
    """Returns `min_scale` as a float after checking it lies in (0, 1]."""
    if isinstance(min_scale, bool) or not isinstance(min_scale, (int, float)) or not (
            0.0 < min_scale <= 1.0):
        raise ValueError("min_scale (the smallest crop side, as a share of the image's) must be "
                         f"a number in (0, 1]. Received: min_scale={min_scale!r}")
    return float(min_scale)


def sample_crop(height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor,
                min_scale: float = 0.6) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """A random window `(top, left, crop_height, crop_width)` (int32) inside an image.

    Both sides are the image's times one scale drawn uniformly from
    `[min_scale, 1]` (the aspect ratio is kept, up to rounding); the window's
    position is uniform. Stateless: the same `seed` (shape (2,) int) gives
    the same window for the same image size.

    Args:
        height: int tensor. Image height in pixels.
        width: int tensor. Image width in pixels.
        seed: tensor of shape (2,). Stateless seed.
        min_scale: float in (0, 1]. Smallest side as a share of the image's.
            Defaults to 0.6.
    """
    min_scale = check_min_scale(min_scale)
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    scale_seed, top_seed, left_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3))
    scale = tf.random.stateless_uniform([], seed=scale_seed, minval=min_scale, maxval=1.0)
    crop_height = tf.clip_by_value(
        tf.cast(tf.round(scale * tf.cast(height, tf.float32)), tf.int32), 1, height)
    crop_width = tf.clip_by_value(
        tf.cast(tf.round(scale * tf.cast(width, tf.float32)), tf.int32), 1, width)
    top = tf.random.stateless_uniform([], seed=top_seed, minval=0,
                                      maxval=height - crop_height + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seed=left_seed, minval=0,
                                       maxval=width - crop_width + 1, dtype=tf.int32)
    return top, left, crop_height, crop_width
