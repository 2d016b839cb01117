"""Dense vision jobs: `tfft finetune --task object_detection|semantic_segmentation`.

Object detection trains on a box file (`boxes.csv`, JSON rows or COCO JSON,
read by `tfft.data.boxes.read_boxes`); semantic segmentation on a folder of
images with PNG masks (`masks/` beside it, or `mask_dir`). Both train in two
stages (`tfft.models.segmentation.fit_two_stage`): the head on the frozen
backbone (BatchNorm in inference mode), then the top blocks unfrozen at a
lower learning rate. The test split (`test_data`, or a seeded share carved
from the training images) is scored (detection: COCO mAP@0.5, mAP@[.5:.95],
AP@0.5 per class; segmentation: mean IoU and IoU per class), `report.json`
and a PNG picture go into the run folder, and the SavedModel (image bytes in)
is exported and checked in a fresh process. Settings and data are checked
before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft.data.boxes import BoxData, detection_dataset, read_boxes
from tfft.data.masks import (
    crop_with_mask,
    flip_with_mask,
    list_segmentation_files,
    resize_with_mask,
)
from tfft.data.splits import carve_split
from tfft.evaluation.detection import evaluate_detection, plot_detections
from tfft.evaluation.segmentation import evaluate_segmentation, plot_segmentation
from tfft.export.detection import export_detection
from tfft.export.segmentation import export_segmentation
from tfft.jobs.config import DENSE_VISION_TASKS, DETECTION_TASK
from tfft.jobs.state import new_run_dir
from tfft.models.detection import build_detection_model
from tfft.models.segmentation import build_segmentation_model, fit_two_stage
from tfft.utils.checks import check_split_fractions
from tfft.utils.files import write_json_atomic

DENSE_TASKS = DENSE_VISION_TASKS
DEFAULT_DENSE_BACKBONE = "offline:efficientnet_lite0"


def parse_image_size(text: str | tuple | list) -> tuple[int, int]:
    """`"96x128"` (height x width), `"96"` or `(96, 128)` -> `(96, 128)`."""
    if isinstance(text, (tuple, list)):
        parts = list(text)
    else:
        parts = str(text).lower().split("x")
        if len(parts) == 1:
            parts = parts * 2
    try:
        height, width = (int(p) for p in parts)
    except (TypeError, ValueError):
        height = width = 0
    if height < 32 or width < 32:
        raise ValueError(f"image_size: expected HxW with both sides >= 32 (e.g. 128x128). "
                         f"Received: {text!r}")
    return height, width


@dataclasses.dataclass(frozen=True)
class DenseVisionJobConfig:
    """Settings of an object-detection or semantic-segmentation job.

    Args:
        task: str. `"object_detection"` or `"semantic_segmentation"`.
        data: str. Detection: a `.csv`/`.json` box file (or COCO JSON).
            Segmentation: a folder of images.
        mask_dir: str. Segmentation masks (PNG, named like the images).
            Defaults to `masks` beside `data`.
        val_data, test_data: str. Held-out files/folders of the same kind;
            default to seeded shares of `data`.
        test_mask_dir, val_mask_dir: str. Their mask folders (segmentation).
        backbone: str. Image backbone. Defaults to `"offline:efficientnet_lite0"`.
        class_names: list of str. Detection: the object classes in model
            order (default: the file's, sorted). Segmentation: one name per
            mask id, background first (default: `class_0 ...` up to the
            largest id in the training masks).
        image_size: (height, width). Model input size. Defaults to (128, 128).
        epochs: int. Epochs per stage. Defaults to 2.
        fine_tune_epochs: int or None. Stage-2 epochs; defaults to `epochs`.
        batch_size: int. Defaults to 16.
        learning_rate: float. Stage-1 (head) rate. Defaults to 3e-3.
        fine_tune_learning_rate: float. Stage-2 rate. Defaults to 1e-3.
        unfreeze: str. Stage-2 freeze policy. Defaults to
            `"top_k_frozen_batch_norm:2"` (top 2 blocks, BatchNorm frozen).
        val_fraction, test_fraction: float. Shares carved from `data`.
        max_examples: int. Use at most this many training images.
        seed: int. Split, shuffle and augmentation seed. Defaults to 0.
        export_dir: str. SavedModel folder; defaults to `run_dir/saved_model`.
        run_dir: str. Report and pictures; defaults to a new `runs/...`.
    """

    task: str
    data: str
    mask_dir: str | None = None
    val_data: str | None = None
    test_data: str | None = None
    val_mask_dir: str | None = None
    test_mask_dir: str | None = None
    backbone: str = DEFAULT_DENSE_BACKBONE
    class_names: tuple | None = None
    image_size: tuple = (128, 128)
    epochs: int = 2
    fine_tune_epochs: int | None = None
    batch_size: int = 16
    learning_rate: float = 3e-3
    fine_tune_learning_rate: float = 1e-3
    unfreeze: str = "top_k_frozen_batch_norm:2"
    val_fraction: float = 0.0
    test_fraction: float = 0.2
    max_examples: int | None = None
    seed: int = 0
    export_dir: str | None = None
    run_dir: str | None = None

    def __post_init__(self):
        if self.task not in DENSE_TASKS:
            raise ValueError(f"task: expected one of {list(DENSE_TASKS)}. Received: "
                             f"task={self.task!r}")
        if not isinstance(self.data, str) or not self.data:
            raise ValueError(f"data: expected a path. Received: data={self.data!r}")
        object.__setattr__(self, "image_size", parse_image_size(self.image_size))
        if self.class_names is not None:
            names = self.class_names
            if isinstance(names, str):
                names = [n.strip() for n in names.split(",")]
            names = tuple(str(n) for n in names)
            if not names or any(not n for n in names) or len(set(names)) != len(names):
                raise ValueError(f"class_names: expected distinct non-empty names. Received: "
                                 f"{self.class_names!r}")
            object.__setattr__(self, "class_names", names)
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1. Received: {value!r}")
        for name in ("fine_tune_epochs", "max_examples"):
            value = getattr(self, name)
            low = 0 if name == "fine_tune_epochs" else 1
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < low):
                raise ValueError(f"{name}: expected an integer >= {low}. Received: {value!r}")
        for name in ("learning_rate", "fine_tune_learning_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name}: expected a number > 0. Received: {value!r}")
        check_split_fractions(self.val_fraction, self.test_fraction, "images")
        if self.test_data is None and self.test_fraction == 0:
            raise ValueError("test_fraction: 0 without test_data leaves nothing to score.")
        if self.task == DETECTION_TASK and (self.mask_dir or self.test_mask_dir
                                            or self.val_mask_dir):
            raise ValueError("mask_dir: only for task='semantic_segmentation'; detection reads "
                             "boxes from its data file.")
        from tfft.adapt import parse_freeze

        parse_freeze(self.unfreeze)
        for name in ("export_dir", "run_dir"):
            path = getattr(self, name)
            if path is not None and os.path.exists(path) and not os.path.isdir(path):
                raise ValueError(f"{name}: {path!r} is a file, not a directory.")
        if self.export_dir is not None and os.path.isdir(self.export_dir) and os.listdir(
                self.export_dir):
            raise ValueError(f"export_dir: {self.export_dir!r} exists and is not empty; "
                             "choose a new folder.")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["image_size"] = list(self.image_size)
        out["class_names"] = None if self.class_names is None else list(self.class_names)
        return out


@dataclasses.dataclass
class _Images:
    """Segmentation images and masks (paths)."""

    images: list
    masks: list

    def __len__(self):
        return len(self.images)


def _subset(data, index):
    index = [int(i) for i in index]
    if isinstance(data, BoxData):
        return dataclasses.replace(
            data, image_paths=[data.image_paths[i] for i in index],
            boxes=[data.boxes[i] for i in index], classes=[data.classes[i] for i in index],
            image_sizes=[data.image_sizes[i] for i in index])
    return _Images([data.images[i] for i in index], [data.masks[i] for i in index])


def _read_masks(image_dir, mask_dir, num_classes):
    images, masks = list_segmentation_files(image_dir, mask_dir, num_classes)
    return _Images(images, masks)


def _largest_id(masks):
    from PIL import Image

    largest = 0
    for path in masks:
        with Image.open(path) as mask:
            largest = max(largest, int(np.asarray(mask).max()))
    return largest


def _read_splits(config):
    """Reads and checks all data (raising on bad rows/files) and splits it."""
    if config.task == DETECTION_TASK:
        names = None if config.class_names is None else list(config.class_names)
        train = read_boxes(config.data, class_names=names)
        val = (read_boxes(config.val_data, class_names=train.class_names)
               if config.val_data else None)
        test = (read_boxes(config.test_data, class_names=train.class_names)
                if config.test_data else None)
        class_names = list(train.class_names)
    else:
        num = None if config.class_names is None else len(config.class_names)
        train = _read_masks(config.data, config.mask_dir, num)
        if num is None:
            num = max(_largest_id(train.masks) + 1, 2)
        val = (_read_masks(config.val_data, config.val_mask_dir, num)
               if config.val_data else None)
        test = (_read_masks(config.test_data, config.test_mask_dir, num)
                if config.test_data else None)
        class_names = (list(config.class_names) if config.class_names
                       else [f"class_{k}" for k in range(num)])
    # Dense tasks always keep at least one test image.
    rest, val_idx, test_idx = carve_split(
        len(train), config.val_fraction, config.test_fraction, config.seed,
        carve_val=val is None, carve_test=test is None, min_test=1,
        max_train=config.max_examples)
    if test_idx is not None:
        test = _subset(train, np.sort(test_idx))
    if val_idx is not None:
        val = _subset(train, np.sort(val_idx))
    if len(rest) == 0:
        raise ValueError(f"data: no training images are left after the split. Received "
                         f"{len(train)} images in {config.data!r}.")
    return _subset(train, rest), val, test, class_names


def _segmentation_dataset(data, size, batch_size, shuffle, augment, seed):
    """`(images, masks)` batches from the listed files (as `segmentation_dataset` makes them)."""
    from PIL import Image

    def read(image_path, mask_path):
        image = tf.io.decode_image(tf.io.read_file(image_path), channels=3,
                                   expand_animations=False)
        mask = tf.numpy_function(
            lambda p: np.asarray(Image.open(p.decode()), dtype=np.int32), [mask_path], tf.int32,
            stateful=False)
        mask = tf.reshape(mask, tf.shape(image)[:2])
        return image, mask

    def prepare(image, mask, seeds):
        if augment:
            crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seeds, 2))
            image, mask = crop_with_mask(image, mask, crop_seed, 0.6)
        image, mask = resize_with_mask(image, mask, size)
        image.set_shape((*size, 3))
        mask.set_shape(size)
        if augment:
            image, mask = flip_with_mask(image, mask, flip_seed)
        return image, mask

    ds = tf.data.Dataset.from_tensor_slices((data.images, data.masks))
    if shuffle:
        ds = ds.shuffle(len(data), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds)).map(lambda pair, s: prepare(pair[0], pair[1], s),
                                              num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def load_segmentation_images(data: Any, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Images (float32 0-255, resized as the export resizes) and masks (nearest) at `size`."""
    images, masks = [], []
    ds = _segmentation_dataset(data, size, 32, shuffle=False, augment=False, seed=0)
    for image, mask in ds:
        images.append(image.numpy())
        masks.append(mask.numpy())
    return np.concatenate(images), np.concatenate(masks)


def _round(value):
    return None if value is None else round(float(value), 4)


def run_dense_vision_job(config: DenseVisionJobConfig | dict, verbose: str | int = 0
                         ) -> dict[str, Any]:
    """Runs a detection or segmentation fine-tuning job; returns the report (also `report.json`).

    Args:
        config: DenseVisionJobConfig or a dict of its fields.
        verbose: Keras `fit` verbosity. Defaults to 0 (progress lines only).

    Returns:
        The report dict (`report.json`'s content) plus `"model"`, the trained task.
    """
    if isinstance(config, dict):
        config = DenseVisionJobConfig(**config)
    train, val, test, class_names = _read_splits(config)  # bad data fails before any write
    detection = config.task == DETECTION_TASK
    size = config.image_size
    started = time.time()
    keras.utils.set_random_seed(config.seed)
    if detection:
        task = build_detection_model(config.backbone, num_classes=len(class_names),
                                     image_size=size, learning_rate=config.learning_rate,
                                     class_names=class_names)
        data = detection_dataset(train, image_size=size, batch_size=config.batch_size,
                                 shuffle=True, augment=True, seed=config.seed)
    else:
        task = build_segmentation_model(config.backbone, num_classes=len(class_names),
                                        image_size=size, learning_rate=config.learning_rate,
                                        class_names=class_names)
        data = _segmentation_dataset(train, size, config.batch_size, shuffle=True,
                                     augment=True, seed=config.seed)
    what = "object detection" if detection else "semantic segmentation"
    print(f"tfft finetune: {what} on {config.backbone} at {size[0]}x{size[1]}: "
          f"{len(train)} training, {0 if val is None else len(val)} validation, "
          f"{len(test)} test images; classes {class_names}")
    run_dir = config.run_dir or new_run_dir("runs")
    os.makedirs(run_dir, exist_ok=True)
    write_json_atomic(os.path.join(run_dir, "config.json"), config.to_dict())

    def on_stage(name, epochs):
        print(f"tfft finetune: stage {name}: {epochs} epoch(s)")

    tuned = config.epochs if config.fine_tune_epochs is None else config.fine_tune_epochs
    losses = fit_two_stage(task, data,
                           config.epochs, tuned, config.fine_tune_learning_rate,
                           unfreeze=config.unfreeze, verbose=verbose, on_stage=on_stage)
    print(f"tfft finetune: training losses {[round(v, 4) for v in losses]}")
    report: dict[str, Any] = {
        "task": config.task, "backbone_spec": config.backbone, "run_dir": run_dir,
        "class_names": class_names, "image_size": list(size), "train_images": len(train),
        "val_images": 0 if val is None else len(val), "test_images": len(test),
        "losses": [round(v, 4) for v in losses]}
    if detection:
        images, boxes = test.load(size)
        scored = evaluate_detection(task, images, boxes, test.classes,
                                    batch_size=config.batch_size)
        report["test"] = {"map50": _round(scored["map50"]),
                          "map50_95": _round(scored["map50_95"]),
                          "per_class_ap50": {k: _round(v)
                                             for k, v in scored["per_class_ap50"].items()}}
        shown = task.predict_detections(images[:6])
        report["picture"] = plot_detections(images[:6], shown,
                                            os.path.join(run_dir, "detections.png"),
                                            class_names, true_boxes=boxes[:6])
        samples = [tf.io.read_file(p).numpy() for p in test.image_paths[:2]]
    else:
        images, masks = load_segmentation_images(test, size)
        scored = evaluate_segmentation(task, images, masks, batch_size=config.batch_size)
        report["test"] = {"mean_iou": _round(scored["mean_iou"]),
                          "per_class_iou": {k: _round(v)
                                            for k, v in scored["per_class_iou"].items()}}
        report["picture"] = plot_segmentation(images[:6], masks[:6],
                                              task.predict_masks(images[:6]),
                                              os.path.join(run_dir, "masks.png"),
                                              len(class_names), class_names)
        samples = [tf.io.read_file(p).numpy() for p in test.images[:2]]
    print(f"tfft finetune: test {json.dumps(report['test'])}; picture {report['picture']}")
    export_dir = config.export_dir or os.path.join(run_dir, "saved_model")
    exporter = export_detection if detection else export_segmentation
    report["export_path"] = exporter(task, export_dir, verify_with=samples,
                                     replace=os.path.isdir(export_dir))
    print(f"tfft finetune: exported to {report['export_path']} (checked in a fresh process)")
    report["seconds"] = round(time.time() - started, 1)
    write_json_atomic(os.path.join(run_dir, "report.json"), json.loads(json.dumps(report)))
    report["model"] = task
    return report
