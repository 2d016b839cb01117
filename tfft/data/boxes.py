"""Object-detection data: boxes from CSV, JSON or COCO files, as `tf.data` pipelines.

Three annotation formats, one row (or annotation) per box:

- CSV with the columns `image,class,x,y,w,h` (what
  `tfft.data.synthetic_scenes.write_scene_dataset` writes as `boxes.csv`);
- JSON: a list of objects with the same keys (or `{"boxes": [...]}`);
- COCO JSON: `{"images": [...], "annotations": [...], "categories": [...]}`
  (`coco.json` beside `boxes.csv`); images without annotations are kept.

`x, y` is a box's top-left corner and `w, h` its size, in pixels or as shares
of the image's width and height (`units="relative"`; COCO is always pixels).
Image paths are relative to the annotation file's folder unless absolute.
Every row is checked before any pipeline is built: a missing image file, an
unknown class name, a non-positive size or a box outside its image raises a
`ValueError` naming the file and row, what is valid and what was received.

Inside tfft a box is `(x1, y1, x2, y2)` in pixels ("xyxy"), `x2 = x + w`, so
the pixel columns `x1 .. x2 - 1` are inside; the augmentations below move
boxes with their image exactly in these coordinates (a left-right flip maps
`x1, x2` to `W - x2, W - x1`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Any

import numpy as np
import tensorflow as tf

from tfft.data.crops import check_min_scale, sample_crop

BOX_COLUMNS = ("image", "class", "x", "y", "w", "h")
UNITS = ("auto", "pixels", "relative")
# Pixel boxes may overshoot the image by float rounding this much; they are clipped.
_PIXEL_TOLERANCE = 1e-3
_RELATIVE_TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True)
class BoxData:
    """Images with their boxes, as read from an annotation file.

    Args:
        image_paths: list of str. One per image, in the file's order.
        boxes: list of np.ndarray. Per image a `(k, 4)` float32 array of
            `(x1, y1, x2, y2)` pixels in the image's own size.
        classes: list of np.ndarray. Per image a `(k,)` int32 array of indices
            into `class_names`.
        class_names: list of str. The object classes (no background).
        image_sizes: list of (height, width). Each image's size in pixels.
        source: str. The annotation file.
    """

    image_paths: list
    boxes: list
    classes: list
    class_names: list
    image_sizes: list
    source: str = ""

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def num_boxes(self) -> int:
        return int(sum(len(b) for b in self.boxes))

    @property
    def max_boxes(self) -> int:
        """The most boxes on one image."""
        return max((len(b) for b in self.boxes), default=0)

    def load(self, image_size: tuple[int, int] | None = None) -> tuple[np.ndarray, list]:
        """All images as uint8 `(n, h, w, 3)` and their boxes scaled to that size.

        Resized to `image_size` as `detection_dataset` resizes them (bilinear,
        antialiased); with `image_size=None` all images must share one size.
        """
        images, boxes = [], []
        for path, image_boxes in zip(self.image_paths, self.boxes, strict=True):
            image = _read_image(tf.constant(path))
            scaled = tf.constant(image_boxes, tf.float32)
            if image_size is not None:
                image, scaled = resize_with_boxes(image, scaled, image_size)
            images.append(np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8))
            boxes.append(scaled.numpy())
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise ValueError(f"The images of {self.source!r} differ in size ({sorted(shapes)[:3]} "
                             "...); pass image_size to resize them to one.")
        return np.stack(images), boxes


def _where(path, row):
    return f"{path!r}, {row}"


def _number(value, name, where):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {name} must be a number. Received: {name}={value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{where}: {name} must be a finite number. Received: {name}={value!r}")
    return number


def _image_size(path, where, cache):
    if path not in cache:
        from PIL import Image, UnidentifiedImageError

        if not os.path.isfile(path):
            raise ValueError(f"{where}: the image file does not exist. Received: {path!r}")
        try:
            with Image.open(path) as image:
                cache[path] = (image.height, image.width)
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{where}: {path!r} is not a readable image ({error}).") from None
    return cache[path]


def _pixel_box(values, image_size, units, where):
    """`(x1, y1, x2, y2)` pixels from `(x, y, w, h)`, after checking it lies in the image."""
    x, y, w, h = values
    height, width = image_size
    if w <= 0 or h <= 0:
        raise ValueError(f"{where}: a box's width and height must be positive. Received: "
                         f"w={w:g}, h={h:g}")
    if units == "relative":
        if x < -_RELATIVE_TOLERANCE or y < -_RELATIVE_TOLERANCE or (
                x + w > 1 + _RELATIVE_TOLERANCE or y + h > 1 + _RELATIVE_TOLERANCE):
            raise ValueError(
                f"{where}: the box lies outside the image. Relative boxes need 0 <= x, 0 <= y, "
                f"x + w <= 1 and y + h <= 1. Received: x={x:g}, y={y:g}, w={w:g}, h={h:g}")
        x, w = x * width, w * width
        y, h = y * height, h * height
    elif x < -_PIXEL_TOLERANCE or y < -_PIXEL_TOLERANCE or (
            x + w > width + _PIXEL_TOLERANCE or y + h > height + _PIXEL_TOLERANCE):
        raise ValueError(
            f"{where}: the box lies outside the {width}x{height} (w x h) image. Pixel boxes need "
            f"0 <= x, 0 <= y, x + w <= {width} and y + h <= {height}. Received: x={x:g}, "
            f"y={y:g}, w={w:g}, h={h:g} (x + w = {x + w:g}, y + h = {y + h:g})")
    return [min(max(x, 0.0), width), min(max(y, 0.0), height),
            min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)]


def _pick_units(units, rows, path):
    if units not in UNITS:
        raise ValueError(f"Unknown box units. Expected one of {list(UNITS)}. Received: "
                         f"units={units!r}")
    if units != "auto":
        return units
    values = [v for row in rows for v in row[2]]
    fractional = any(v != int(v) for v in values)
    if values and fractional and all(0.0 <= v <= 1.0 for v in values):
        return "relative"
    return "pixels"


def _class_index(name, names, where):
    if name not in names:
        raise ValueError(f"{where}: unknown class name. Expected one of {list(names)}. "
                         f"Received: class={name!r}")
    return names[name]


def _collect(rows, path, image_root, class_names, units):
    """Checks the parsed rows `(where, image, (x, y, w, h), class)` and groups them by image."""
    units = _pick_units(units, rows, path)
    if class_names is None:
        class_names = sorted({row[3] for row in rows})
    names = {str(n): k for k, n in enumerate(class_names)}
    if len(names) != len(class_names):
        raise ValueError(f"class_names has duplicates. Received: class_names={class_names!r}")
    order, per_image, sizes = [], {}, {}
    for where, image, values, name in rows:
        image_path = os.path.normpath(os.path.join(image_root, image))
        size = _image_size(image_path, where, sizes)
        box = _pixel_box(values, size, units, where)
        index = _class_index(name, names, where)
        if image_path not in per_image:
            order.append(image_path)
            per_image[image_path] = []
        per_image[image_path].append((box, index))
    return order, per_image, sizes, [str(n) for n in class_names]


def _as_box_data(order, per_image, sizes, class_names, source):
    boxes, classes = [], []
    for image_path in order:
        entries = per_image[image_path]
        boxes.append(np.asarray([b for b, _ in entries], np.float32).reshape(-1, 4))
        classes.append(np.asarray([c for _, c in entries], np.int32).reshape(-1))
    return BoxData(list(order), boxes, classes, class_names,
                   [sizes[p] for p in order], source)


def _read_rows_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        missing = [c for c in BOX_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"{path!r} lacks the column(s) {missing}. A box CSV needs the "
                             f"columns {list(BOX_COLUMNS)}. Received: {reader.fieldnames!r}")
        reader.fieldnames = columns
        # Line 1 is the header, so the first box is on line 2.
        return [(f"row {reader.line_num}", row) for row in reader]


def _parse_rows(entries, path):
    rows = []
    for where, row in entries:
        where = _where(path, where)
        if not isinstance(row, dict):
            raise ValueError(f"{where}: each box must be an object with the keys "
                             f"{list(BOX_COLUMNS)}. Received: {row!r}")
        missing = [c for c in BOX_COLUMNS if row.get(c) in (None, "")]
        if missing:
            raise ValueError(f"{where}: missing {missing}; each box needs {list(BOX_COLUMNS)}. "
                             f"Received: {row!r}")
        values = tuple(_number(row[c], c, where) for c in ("x", "y", "w", "h"))
        rows.append((where, str(row["image"]), values, str(row["class"])))
    return rows


def _read_coco(coco, path, image_root, class_names):
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise ValueError(f"{path!r} is not COCO-style JSON: {key!r} must be a list. "
                             f"Received keys: {sorted(coco)}")
    categories = {}
    for k, category in enumerate(coco["categories"]):
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            raise ValueError(f"{_where(path, f'category {k}')}: a category needs 'id' and "
                             f"'name'. Received: {category!r}")
        categories[category["id"]] = str(category["name"])
    if class_names is None:
        class_names = [categories[i] for i in sorted(categories)]
    names = {str(n): k for k, n in enumerate(class_names)}
    order, per_image, sizes, files = [], {}, {}, {}
    for k, image in enumerate(coco["images"]):
        where = _where(path, f"image {k}")
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise ValueError(f"{where}: an image needs 'id' and 'file_name'. Received: {image!r}")
        image_path = os.path.normpath(os.path.join(image_root, str(image["file_name"])))
        size = _image_size(image_path, where, sizes)
        stated = (image.get("height"), image.get("width"))
        if None not in stated and tuple(int(v) for v in stated) != size:
            raise ValueError(
                f"{where}: the file {image_path!r} is {size[1]}x{size[0]} (w x h) but the JSON "
                f"says {stated[1]}x{stated[0]}.")
        files[image["id"]] = image_path
        order.append(image_path)
        per_image[image_path] = []
    for k, annotation in enumerate(coco["annotations"]):
        where = _where(path, f"annotation {k}")
        if not isinstance(annotation, dict) or not {"image_id", "category_id", "bbox"} <= set(
                annotation):
            raise ValueError(f"{where}: an annotation needs 'image_id', 'category_id' and 'bbox'"
                             f". Received: {annotation!r}")
        if annotation["image_id"] not in files:
            raise ValueError(f"{where}: image_id {annotation['image_id']!r} is not among the "
                             "file's images.")
        if annotation["category_id"] not in categories:
            raise ValueError(f"{where}: unknown category_id. Expected one of "
                             f"{sorted(categories)}. Received: {annotation['category_id']!r}")
        bbox = annotation["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise ValueError(f"{where}: bbox must be [x, y, w, h]. Received: bbox={bbox!r}")
        values = tuple(_number(v, c, where) for v, c in zip(bbox, "xywh", strict=True))
        image_path = files[annotation["image_id"]]
        box = _pixel_box(values, sizes[image_path], "pixels", where)
        index = _class_index(categories[annotation["category_id"]], names, where)
        per_image[image_path].append((box, index))
    return _as_box_data(order, per_image, sizes, [str(n) for n in class_names], path)


def read_boxes(path: str | os.PathLike, class_names: list[str] | None = None,
               units: str = "auto", image_root: str | None = None) -> BoxData:
    """Reads and checks a box annotation file (CSV, JSON rows or COCO JSON).

    Args:
        path: str. A `.csv` or `.json` file (see the module docstring).
        class_names: list of str. The classes, in model order; a name outside
            them is an error. Defaults to the file's names, sorted (COCO: its
            categories in id order). Pass the training file's names when
            reading a test file.
        units: str. `"pixels"`, `"relative"` (shares of the image size) or
            `"auto"`: relative when every coordinate lies in [0, 1] and one
            is fractional. COCO files are always pixels. Defaults to "auto".
        image_root: str. Folder the image paths are relative to. Defaults to
            the annotation file's folder.

    Returns:
        A `BoxData`.

    Example:

    >>> data = read_boxes("scenes/train/boxes.csv")
    >>> data.class_names, data.num_boxes
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"The box annotation file does not exist. Received: path={path!r}")
    root = os.path.dirname(os.path.abspath(path)) if image_root is None else os.fspath(image_root)
    if class_names is not None:
        class_names = [str(n) for n in class_names]
    if path.lower().endswith(".csv"):
        entries = _read_rows_csv(path)
    elif path.lower().endswith(".json"):
        with open(path) as f:
            try:
                content = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path!r} is not valid JSON: {error}") from None
        if isinstance(content, dict) and "annotations" in content:
            return _read_coco(content, path, root, class_names)
        if isinstance(content, dict) and isinstance(content.get("boxes"), list):
            content = content["boxes"]
        if not isinstance(content, list):
            raise ValueError(f"{path!r} must hold a list of boxes, {{'boxes': [...]}} or COCO "
                             f"JSON. Received a {type(content).__name__}.")
        entries = [(f"entry {k}", row) for k, row in enumerate(content)]
    else:
        raise ValueError(f"Unknown box file type. Expected a .csv or .json file. Received: "
                         f"path={path!r}")
    rows = _parse_rows(entries, path)
    if not rows:
        raise ValueError(f"{path!r} holds no boxes.")
    order, per_image, sizes, names = _collect(rows, path, root, class_names, units)
    return _as_box_data(order, per_image, sizes, names, path)


def flip_boxes(boxes: tf.Tensor, width: Any) -> tf.Tensor:
    """Mirrors `(k, 4)` xyxy pixel boxes left-right in an image `width` pixels wide."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    width = tf.cast(width, tf.float32)
    x1, y1, x2, y2 = tf.unstack(boxes, num=4, axis=-1)
    return tf.stack([width - x2, y1, width - x1, y2], axis=-1)


def flip_with_boxes(image: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor
                    ) -> tuple[tf.Tensor, tf.Tensor]:
    """Flips an image `(h, w, c)` and its xyxy pixel boxes left-right, with probability 1/2.

    Stateless: the same `seed` (shape (2,) int) gives the same choice
    (the same draw as `tfft.data.masks.flip_with_mask`).
    """
    flip = tf.random.stateless_uniform([], seed=seed) < 0.5
    width = tf.shape(image)[1]
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    boxes = tf.cond(flip, lambda: flip_boxes(boxes, width),
                    lambda: tf.convert_to_tensor(boxes, tf.float32))
    return image, boxes


def crop_boxes(boxes: tf.Tensor, classes: tf.Tensor, top: Any, left: Any, crop_height: Any,
               crop_width: Any, min_visible: float = 0.25) -> tuple[tf.Tensor, tf.Tensor]:
    """Boxes seen through a crop window: shifted, clipped, and dropped (with their class)
    when less than `min_visible` of their area (or nothing) is left inside."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    offset = tf.cast(tf.stack([left, top, left, top]), tf.float32)
    limit = tf.cast(tf.stack([crop_width, crop_height, crop_width, crop_height]), tf.float32)
    clipped = tf.clip_by_value(boxes - offset, 0.0, limit)
    area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    full = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = tf.logical_and(area > 0.0, area >= min_visible * full)
    return tf.boolean_mask(clipped, keep), tf.boolean_mask(classes, keep)


def crop_with_boxes(image: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor, seed: tf.Tensor,
                    min_scale: float = 0.6, min_visible: float = 0.25
                    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Crops a random window (`tfft.data.crops.sample_crop`) from an image and its boxes.

    Boxes are shifted into the window and clipped to it; a box with less than
    `min_visible` of its area inside (or none) is dropped with its class.
    The same `seed` crops the same window as `tfft.data.masks.crop_with_mask`.

    Args:
        image: `(h, w, c)` tensor.
        boxes: `(k, 4)` xyxy pixel boxes.
        classes: `(k,)` class ids.
        seed: shape (2,) int tensor. Stateless seed.
        min_scale: float. Smallest crop side, as a share. Defaults to 0.6.
        min_visible: float in [0, 1]. Smallest share of a box's area that must
            stay inside for the box to be kept. Defaults to 0.25.

    Returns:
        `(image, boxes, classes)`, the image `(crop_h, crop_w, c)`.
    """
    if not 0.0 <= float(min_visible) <= 1.0:
        raise ValueError(f"min_visible must be in [0, 1]. Received: min_visible={min_visible!r}")
    shape = tf.shape(image)
    top, left, crop_height, crop_width = sample_crop(shape[0], shape[1], seed, min_scale)
    image = image[top:top + crop_height, left:left + crop_width]
    boxes, classes = crop_boxes(boxes, classes, top, left, crop_height, crop_width, min_visible)
    return image, boxes, classes


def resize_with_boxes(image: tf.Tensor, boxes: tf.Tensor, size: tuple[int, int]
                      ) -> tuple[tf.Tensor, tf.Tensor]:
    """Resizes an image (bilinear, antialiased, float32) and scales its xyxy boxes to match."""
    size = (int(size[0]), int(size[1]))
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)
    scale = tf.stack([size[1] / shape[1], size[0] / shape[0]] * 2)
    return image, tf.convert_to_tensor(boxes, tf.float32) * scale


def _read_image(path):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return tf.cast(image, tf.float32)


def detection_dataset(source: str | os.PathLike | BoxData, image_size: tuple[int, int] = (128, 128),
                      batch_size: int = 16, shuffle: bool = False, augment: bool = False,
                      seed: int = 0, class_names: list[str] | None = None, units: str = "auto",
                      max_boxes: int | None = None, min_scale: float = 0.6,
                      min_visible: float = 0.25, preprocessor=None) -> tf.data.Dataset:
    """A `tf.data.Dataset` of `(images, {"boxes", "classes"})` batches for detection.

    Images come out float32 `(b, h, w, 3)`, 0-255 at `image_size` (or through
    `preprocessor`); `boxes` float32 `(b, max_boxes, 4)` xyxy pixels at
    `image_size` and `classes` int32 `(b, max_boxes)`, both padded with -1
    (what `tfft.models.detection.DetectionTask` trains on).

    With `augment=True` each image is first cropped to a random window
    (`crop_with_boxes`: sides `min_scale`-1 of the image's, boxes clipped,
    boxes with less than `min_visible` of their area left dropped), then
    resized, then flipped left-right with probability 1/2; boxes move with
    the pixels exactly. Seeded and stateless: the same `seed` gives the same
    batches.

    Args:
        source: str or BoxData. An annotation file for `read_boxes`, or data
            already read.
        image_size: (height, width). Defaults to (128, 128).
        batch_size: int. Defaults to 16.
        shuffle: bool. Shuffle each epoch (seeded). Defaults to False.
        augment: bool. Random crop, resize and flip. Defaults to False.
        seed: int. Seed of shuffling and augmentation. Defaults to 0.
        class_names, units: as in `read_boxes` (for a file `source`).
        max_boxes: int. Padded box count. Defaults to the most boxes on one image.
        min_scale, min_visible: as in `crop_with_boxes`. Defaults to 0.6, 0.25.
        preprocessor: callable or None. Applied to the image batch.

    Example:

    >>> ds = detection_dataset("scenes/train/boxes.csv", augment=True, shuffle=True)
    >>> images, targets = next(iter(ds))
    """
    data = source if isinstance(source, BoxData) else read_boxes(
        source, class_names=class_names, units=units)
    if not len(data):
        raise ValueError(f"No images in {data.source!r}.")
    size = (int(image_size[0]), int(image_size[1]))
    if max_boxes is None:
        max_boxes = max(data.max_boxes, 1)
    if max_boxes < data.max_boxes:
        raise ValueError(f"max_boxes={max_boxes} is below the most boxes on one image of "
                         f"{data.source!r} ({data.max_boxes}).")
    check_min_scale(min_scale)
    counts = [len(b) for b in data.boxes]
    boxes = tf.RaggedTensor.from_row_lengths(
        np.concatenate(data.boxes).reshape(-1, 4).astype(np.float32), counts)
    classes = tf.RaggedTensor.from_row_lengths(
        np.concatenate(data.classes).reshape(-1).astype(np.int32), counts)
    ds = tf.data.Dataset.from_tensor_slices((list(data.image_paths), boxes, classes))
    if shuffle:
        ds = ds.shuffle(len(data), seed=seed, reshuffle_each_iteration=True)

    def load(path, image_boxes, image_classes, example_seed=None):
        image = _read_image(path)
        if example_seed is not None:
            crop_seed, flip_seed = tf.unstack(
                tf.random.experimental.stateless_split(example_seed, 2))
            image, image_boxes, image_classes = crop_with_boxes(
                image, image_boxes, image_classes, crop_seed, min_scale, min_visible)
        image, image_boxes = resize_with_boxes(image, image_boxes, size)
        if example_seed is not None:
            image, image_boxes = flip_with_boxes(image, image_boxes, flip_seed)
        image.set_shape((*size, 3))
        return image, {"boxes": image_boxes, "classes": image_classes}

    if augment:
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda example, s: load(*example, s), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.padded_batch(
        batch_size,
        padded_shapes=((*size, 3), {"boxes": (max_boxes, 4), "classes": (max_boxes,)}),
        padding_values=(0.0, {"boxes": -1.0, "classes": -1}))
    if preprocessor is not None:
        ds = ds.map(lambda x, y: (preprocessor(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
