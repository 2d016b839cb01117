"""Serving export of a `SegmentationTask`: image bytes in, a class-id mask out."""

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
from tfft.models.segmentation import SegmentationTask
from tfft.utils.files import staged_directory

SEGMENTATION_METADATA_FILE = "tfft_segmentation.json"


def _serving_module(model):
    height, width = model.image_size

    def decode(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image = tf.image.resize(tf.cast(image, tf.float32), (height, width),
                                method="bilinear", antialias=True)
        image.set_shape((height, width, 3))
        return image

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(image_bytes):
        images = tf.map_fn(decode, image_bytes,
                           fn_output_signature=tf.TensorSpec((height, width, 3), tf.float32))
        logits = model(images, training=False)
        probabilities = tf.nn.softmax(logits, axis=-1)
        return {"mask": tf.argmax(logits, axis=-1, output_type=tf.int32),
                "scores": tf.reduce_max(probabilities, axis=-1)}

    module = tf.Module()
    module.model = model
    module.serve = serve
    return module, serve


def segmentation_serving_outputs(model: keras.Model, image_bytes: Any) -> dict:
    """What the export returns, computed by the in-memory model (for verification)."""
    _, serve = _serving_module(model)
    outputs = serve(tf.constant(np.asarray(image_bytes, dtype=object)))
    return {key: value.numpy() for key, value in outputs.items()}


def export_segmentation(model: keras.Model, directory: str | os.PathLike,
                        verify_with: Any = None, replace: bool = False) -> str:
    """Exports a `SegmentationTask` as a SavedModel taking PNG/JPEG bytes.

    The `serving_default` signature takes `image_bytes` (a `(n,)` string
    tensor of PNG or JPEG files of any size), resizes each image to the
    model's `image_size` and returns `mask` (`(n, h, w)` int32 class ids) and
    `scores` (`(n, h, w)` float32, the winning class's probability). A
    `tfft_segmentation.json` beside it names the classes and the size.

    Written to a staging folder and renamed into place; when `verify_with`
    (a list of encoded images) is given, the SavedModel is loaded in a fresh
    Python process first and must reproduce the in-memory model's masks
    exactly (scores within 1e-4), or nothing is written.

    Args:
        model: SegmentationTask.
        directory: str. The folder to create.
        verify_with: list of bytes or None. Encoded images to verify on.
        replace: bool. Replace an existing folder. Defaults to False.

    Returns:
        `directory`.

    Example:

    >>> export_segmentation(task, "exports/seg/1", verify_with=[encode_image(img)])
    """
    module, serve = _serving_module(model)
    directory = os.fspath(directory)
    # Computed first: an undecodable sample fails here, before anything is written.
    expected = None if verify_with is None else segmentation_serving_outputs(model, verify_with)
    with staged_directory(directory, replace=replace) as staging:
        tf.saved_model.save(module, staging, signatures={"serving_default": serve})
        with open(os.path.join(staging, SEGMENTATION_METADATA_FILE), "w") as f:
            json.dump({"task": "semantic_segmentation", "class_names": model.class_names,
                       "image_size": list(model.image_size),
                       "outputs": {"mask": "class id per pixel at image_size",
                                   "scores": "probability of that class"}}, f, indent=2)
        if verify_with is not None:
            try:
                verify_in_fresh_process(staging, list(verify_with), expected, atol=1e-4)
            except ExportError as error:
                raise ExportError(f"Segmentation export not written: {error}") from None
    return directory


register_task_exporter(SegmentationTask, export_segmentation)
