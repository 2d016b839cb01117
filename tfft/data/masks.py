"""Segmentation data: images with PNG class-id masks beside them, as `tf.data` pipelines.

The layout (what `tfft.data.synthetic_scenes.write_scene_dataset` writes):

    split/images/NAME.png|jpg   an image
    split/masks/NAME.png        its mask: one class id per pixel (8- or 16-bit
                                grayscale PNG), same height and width

Every mask is checked before any pipeline is built: a missing mask, a mask of
another size than its image, or a class id outside `[0, num_classes)` raises
a `ValueError` naming the file.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tfft.data.crops import check_min_scale, sample_crop

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def list_segmentation_files(image_dir: str, mask_dir: str | None = None,
                            num_classes: int | None = None) -> tuple[list[str], list[str]]:
    """Pairs each image with its mask and checks them; returns `(image_paths, mask_paths)`.

    Args:
        image_dir: str. Folder of images (png, jpg).
        mask_dir: str. Folder of PNG masks named like the images (stem +
            `.png`). Defaults to `masks` beside `image_dir`.
        num_classes: int. Class ids must be below it; None skips the check.

    Raises:
        ValueError: no images, a missing mask, a mask whose size differs from
            its image's, or a class id out of range. The message names the file.
    """
    from PIL import Image

    if mask_dir is None:
        mask_dir = os.path.join(os.path.dirname(os.path.normpath(image_dir)), "masks")
    if not os.path.isdir(image_dir):
        raise ValueError(f"The image folder does not exist. Received: image_dir={image_dir!r}")
    names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ValueError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir!r}."
        )
    images, masks = [], []
    for name in names:
        image_path = os.path.join(image_dir, name)
        mask_path = os.path.join(mask_dir, os.path.splitext(name)[0] + ".png")
        if not os.path.isfile(mask_path):
            raise ValueError(
                f"Missing mask for image {image_path!r}: expected the PNG file {mask_path!r}."
            )
        with Image.open(image_path) as image:
            image_size = image.size
        with Image.open(mask_path) as mask_file:
            if mask_file.size != image_size:
                raise ValueError(
                    f"Mask {mask_path!r} is {mask_file.size[0]}x{mask_file.size[1]} (w x h) "
                    f"but its image {image_path!r} is {image_size[0]}x{image_size[1]}; a mask "
                    "must have its image's size."
                )
            if mask_file.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(
                    f"Mask {mask_path!r} must be a single-channel PNG of class ids (mode L, P "
                    f"or I;16). Received mode {mask_file.mode!r}."
                )
            mask = np.asarray(mask_file)
        if num_classes is not None and mask.size and int(mask.max()) >= num_classes:
            bad = sorted(int(v) for v in np.unique(mask[mask >= num_classes]))[:10]
            raise ValueError(
                f"Mask {mask_path!r} holds class id(s) {bad} outside [0, {num_classes}) "
                f"(num_classes={num_classes})."
            )
        images.append(image_path)
        masks.append(mask_path)
    return images, masks


def _decode(image_path, mask_path, image_size):
    image = tf.io.decode_image(tf.io.read_file(image_path), channels=3,
                               expand_animations=False)
    # PIL reads the ids as stored (8-bit, 16-bit, palette indices); tf.io.decode_png
    # would rescale 8-bit values to 16 bits or map a palette to colours.
    mask = tf.numpy_function(_read_mask, [mask_path], tf.int32, stateful=False)
    mask = tf.reshape(mask, tf.concat([tf.shape(image)[:2], [1]], axis=0))
    image = tf.image.resize(tf.cast(image, tf.float32), image_size, method="bilinear",
                            antialias=True)
    # Class ids must not be blended: nearest neighbour keeps every pixel a real id.
    mask = tf.image.resize(mask, image_size, method="nearest")
    return image, mask[..., 0]


def _read_mask(path):
    from PIL import Image

    with Image.open(path.decode() if isinstance(path, bytes) else path) as mask:
        return np.asarray(mask, dtype=np.int32)


def flip_with_mask(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor,
                                                                                 tf.Tensor]:
    """Flips an image and its mask left-right together, with probability 1/2.

    Stateless: the same `seed` (shape (2,) int) gives the same choice, so a
    pipeline is reproducible.
    """
    flip = tf.random.stateless_uniform([], seed=seed) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[-2]), lambda: image)
    mask = tf.cond(flip, lambda: tf.reverse(mask, axis=[-1]), lambda: mask)
    return image, mask


def _augment(image, mask, seed, size, min_scale):
    if min_scale is None:  # flips only, drawn from the seed as before crops existed
        return flip_with_mask(image, mask, seed)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image, mask = crop_with_mask(image, mask, crop_seed, min_scale)
    image, mask = resize_with_mask(image, mask, size)
    image.set_shape((*size, 3))
    mask.set_shape(size)
    return flip_with_mask(image, mask, flip_seed)


def crop_with_mask(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor,
                   min_scale: float = 0.6) -> tuple[tf.Tensor, tf.Tensor]:
    """Crops the same random window from an image `(h, w, c)` and its mask `(h, w)`.

    The window comes from `tfft.data.crops.sample_crop`, so the same `seed`
    cuts the same window as `tfft.data.boxes.crop_with_boxes` (boxes and
    masks of one image move alike). Stateless.

    Args:
        image: `(h, w, c)` tensor.
        mask: `(h, w)` tensor of class ids.
        seed: shape (2,) int tensor.
        min_scale: float in (0, 1]. Smallest crop side, as a share of the
            image's. Defaults to 0.6.
    """
    shape = tf.shape(image)
    top, left, crop_height, crop_width = sample_crop(shape[0], shape[1], seed, min_scale)
    return (image[top:top + crop_height, left:left + crop_width],
            mask[top:top + crop_height, left:left + crop_width])


def resize_with_mask(image: tf.Tensor, mask: tf.Tensor, size: tuple[int, int]
                     ) -> tuple[tf.Tensor, tf.Tensor]:
    """Resizes an image (bilinear, antialiased, float32) and its mask (nearest) to `size`."""
    size = (int(size[0]), int(size[1]))
    image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)
    # Class ids must not be blended: nearest neighbour keeps every pixel a real id.
    mask = tf.image.resize(mask[..., None], size, method="nearest")[..., 0]
    return image, mask


def segmentation_dataset(image_dir: str, mask_dir: str | None = None, num_classes: int = 2,
                         image_size: tuple[int, int] = (128, 128), batch_size: int = 16,
                         shuffle: bool = False, augment: bool = False, seed: int = 0,
                         preprocessor=None, min_scale: float | None = None) -> tf.data.Dataset:
    """A `tf.data.Dataset` of `(images, masks)` batches from image and mask folders.

    Images come out float32 `(b, h, w, 3)` (0-255, or through `preprocessor`),
    masks int32 `(b, h, w)`, both resized to `image_size` (masks by nearest
    neighbour). Every mask is checked first (see `list_segmentation_files`).

    Args:
        image_dir: str. Folder of images.
        mask_dir: str. Folder of masks. Defaults to `masks` beside `image_dir`.
        num_classes: int. Number of mask classes, background included.
        image_size: (height, width). Defaults to (128, 128).
        batch_size: int. Defaults to 16.
        shuffle: bool. Shuffle each epoch (seeded). Defaults to False.
        augment: bool. Random left-right flips of image and mask together.
            Defaults to False.
        seed: int. Seed of shuffling and flips. Defaults to 0.
        preprocessor: callable or None. Applied to the image batch (e.g. a
            backbone's `ImagePreprocessor`). Defaults to None.
        min_scale: float in (0, 1] or None. With `augment`, also crop a random
            window (sides `min_scale`-1 of the image's, `crop_with_mask`) and
            resize it back to `image_size` before the flip. Defaults to None
            (flips only).

    Example:

    >>> ds = segmentation_dataset("scenes/train/images", num_classes=4)
    >>> images, masks = next(iter(ds))
    """
    images, masks = list_segmentation_files(image_dir, mask_dir, num_classes)
    size = (int(image_size[0]), int(image_size[1]))
    ds = tf.data.Dataset.from_tensor_slices((images, masks))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda i, m: _decode(i, m, size), num_parallel_calls=tf.data.AUTOTUNE)
    if min_scale is not None:
        check_min_scale(min_scale)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda pair, s: _augment(pair[0], pair[1], s, size, min_scale),
            num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size)
    if preprocessor is not None:
        ds = ds.map(lambda x, y: (preprocessor(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
