"""Serving export of a `DetectionTask`: image bytes in, boxes, classes and scores out."""

from __future__ import annotations

import json
import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft.export.saved_model import (
    ExportError,
    register_task_exporter,
    verify_in_fresh_process,
)
from tfft.models.detection import DetectionTask
from tfft.utils.files import staged_directory

DETECTION_METADATA_FILE = "tfft_detection.json"


def _serving_module(model):
    height, width = model.image_size

    def decode(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        size = tf.cast(tf.shape(image)[:2], tf.float32)
        image = tf.image.resize(tf.cast(image, tf.float32), (height, width),
                                method="bilinear", antialias=True)
        image.set_shape((height, width, 3))
        return image, size

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(image_bytes):
        images, sizes = tf.map_fn(
            decode, image_bytes,
            fn_output_signature=(tf.TensorSpec((height, width, 3), tf.float32),
                                 tf.TensorSpec((2,), tf.float32)))
        found = model.decode_detections(model(images, training=False))
        # Back to each image's own pixels: x by its width, y by its height.
        scale = tf.stack([sizes[:, 1] / width, sizes[:, 0] / height] * 2, axis=-1)
        return {"boxes": found["boxes"] * scale[:, None, :], "classes": found["classes"],
                "scores": found["scores"], "num_detections": found["num_detections"]}

    module = tf.Module()
    module.model = model
    module.serve = serve
    return module, serve


def detection_serving_outputs(model: keras.Model, image_bytes: Any) -> dict:
    """What the export returns, computed by the in-memory model (for verification)."""
    _, serve = _serving_module(model)
    outputs = serve(tf.constant(np.asarray(image_bytes, dtype=object)))
    return {key: value.numpy() for key, value in outputs.items()}


def export_detection(model: keras.Model, directory: str | os.PathLike,
                     verify_with: Any = None, replace: bool = False) -> str:
    """Exports a `DetectionTask` as a SavedModel taking PNG/JPEG bytes.

    The `serving_default` signature takes `image_bytes` (a `(n,)` string
    tensor of PNG or JPEG files of any size), resizes each image to the
    model's `image_size`, runs the model and per-class non-max suppression,
    and returns, best first, `boxes` (`(n, d, 4)` float32 `x1, y1, x2, y2` in
    pixels of each original image), `classes` (`(n, d)` int32, -1 past the
    image's detections), `scores` (`(n, d)` float32, 0 past them) and
    `num_detections` (`(n,)` int32); `d` is the task's `max_detections`. A
    `tfft_detection.json` beside it names the classes and the settings.

    Written to a private staging folder and renamed into place; when
    `verify_with` (a list of encoded images) is given, the SavedModel is
    loaded in a fresh Python process first and must reproduce the in-memory
    model's classes and counts exactly and its boxes and scores within 1e-4,
    or nothing is written.

    Args:
        model: DetectionTask.
        directory: str. The folder to create.
        verify_with: list of bytes or None. Encoded images to verify on.
        replace: bool. Replace an existing folder. Defaults to False.

    Returns:
        `directory`.

    Example:

    >>> export_detection(task, "exports/det/1", verify_with=[encode_image(img)])
    """
    module, serve = _serving_module(model)
    directory = os.fspath(directory)
    # Computed first: an undecodable sample fails here, before anything is written.
    expected = None if verify_with is None else detection_serving_outputs(model, verify_with)
    with staged_directory(directory, replace=replace) as staging:
        tf.saved_model.save(module, staging, signatures={"serving_default": serve})
        with open(os.path.join(staging, DETECTION_METADATA_FILE), "w") as f:
            json.dump({"task": "object_detection", "class_names": model.class_names,
                       "image_size": list(model.image_size),
                       "settings": model.settings,
                       "outputs": {"boxes": "x1, y1, x2, y2 in pixels of the input image",
                                   "classes": "class id (index into class_names), -1 past "
                                              "num_detections",
                                   "scores": "sigmoid class score, 0 past num_detections",
                                   "num_detections": "detections per image"}}, f, indent=2)
        if verify_with is not None:
            try:
                verify_in_fresh_process(staging, list(verify_with), expected, atol=1e-4)
            except ExportError as error:
                raise ExportError(f"Detection export not written: {error}") from None
    return directory


register_task_exporter(DetectionTask, export_detection)
