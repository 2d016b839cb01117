"""LiteRT (TensorFlow Lite) conversion for image models, with a parity check.

`to_tflite(model, "model.tflite")` converts a float32 Keras model with
`tf.lite.TFLiteConverter` (through a SavedModel), runs the `.tflite` file in
the TFLite interpreter on sample inputs and compares it with the Keras model;
a difference above `atol` raises `ExportError` and writes nothing.

The `.tflite` model takes the Keras model's inputs (for tfft image models:
images already resized and normalised by the backbone's `ImagePreprocessor`,
`float32 [batch, H, W, 3]`). With `include_preprocessing=True` it takes raw
`uint8 [batch, H, W, 3]` images of the backbone's input size instead and
normalises them inside (resizing stays outside: TFLite lacks the antialiased
resize op).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft._compat import write_export_archive
from tfft.export.saved_model import ExportError
from tfft.utils.files import write_bytes_atomic


def _input_spec(model, batch_size):
    inputs = model.inputs
    if len(inputs) != 1:
        raise ValueError(
            "to_tflite converts models with one image input. Received a model with "
            f"{len(inputs)} inputs: {[i.name for i in inputs]}"
        )
    shape = tuple(inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ValueError(
            "to_tflite needs a fixed input size (height, width, channels). Received input "
            f"shape {inputs[0].shape}; build the model with a fixed input size."
        )
    return shape


def _normaliser(preprocessor):
    """The scale/offset/channel-order part of an ImagePreprocessor, as a function."""
    scale = tf.constant(preprocessor.scale, tf.float32)
    offset = tf.constant(preprocessor.offset, tf.float32)
    bgr = preprocessor.channel_order == "bgr"

    def normalise(images):
        x = tf.cast(images, tf.float32)
        if bgr:
            x = x[..., ::-1]
        return x * scale + offset

    return normalise


def to_tflite(model: keras.Model, path: str, preprocessor: keras.layers.Layer | None = None,
              include_preprocessing: bool = False, sample_inputs: Any = None,
              atol: float = 1e-4, batch_size: int | None = None,
              optimizations: list | None = None) -> str:
    """Converts a float32 Keras image model to a `.tflite` file and checks parity.

    Args:
        model: keras.Model. The model, float32, one fixed-size image input.
        path: str. Output `.tflite` file.
        preprocessor: `ImagePreprocessor`. Used with `include_preprocessing`;
            defaults to `model.preprocessor` (a `tfft.Task`'s).
        include_preprocessing: bool. Take raw uint8 images of the model's input
            size and normalise inside the TFLite graph. Defaults to False.
        sample_inputs: array. Inputs for the parity check (the `.tflite`
            model's inputs); defaults to 4 random images.
        atol: float. Largest allowed absolute difference from the Keras
            model. Defaults to 1e-4.
        batch_size: int. A batch size to fix in the `.tflite` model; None
            keeps it dynamic (the interpreter resizes its input to each
            batch). Defaults to None.
        optimizations: list of `tf.lite.Optimize`. E.g.
            `[tf.lite.Optimize.DEFAULT]` for dynamic-range quantisation; raise
            `atol` accordingly. Defaults to none (float32).

    Returns:
        dict: `path`, `bytes`, `max_abs_diff` of the parity check.

    Example:

    >>> info = tfft.export.to_tflite(model, "model.tflite")
    >>> interpreter = tf.lite.Interpreter(info["path"])
    """
    if keras.config.dtype_policy().name != "float32" or model.dtype_policy.name != "float32":
        raise ValueError(
            "to_tflite converts float32 models. Received a model under the dtype policy "
            f"{model.dtype_policy.name!r}; rebuild it under keras.config.set_dtype_policy"
            "('float32') (or use optimizations= for quantised output)."
        )
    shape = _input_spec(model, batch_size)
    if include_preprocessing:
        if preprocessor is None:
            preprocessor = getattr(model, "preprocessor", None)
        if preprocessor is None or not hasattr(preprocessor, "scale"):
            raise ValueError(
                "include_preprocessing=True needs an ImagePreprocessor (scale, offset, "
                f"channel_order). Received: preprocessor={type(preprocessor).__name__}"
            )
        normalise = _normaliser(preprocessor)
        spec = tf.TensorSpec((batch_size, *shape), tf.uint8, name="images")

        def serve(images):
            return model(normalise(images), training=False)
    else:
        spec = tf.TensorSpec((batch_size, *shape), tf.float32, name="inputs")

        def serve(inputs):
            return model(inputs, training=False)

    # Through a SavedModel: the converter freezes Keras 3 variables from there
    # (a concrete function keeps them as unread resource variables).
    with tempfile.TemporaryDirectory() as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", serve, input_signature=[spec])
        write_export_archive(archive, tmp)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serve"])
        if optimizations:
            converter.optimizations = list(optimizations)
        flatbuffer = converter.convert()

    if sample_inputs is None:
        rng = np.random.default_rng(0)
        raw = rng.integers(0, 256, (4, *shape)).astype(np.uint8)
        if include_preprocessing:
            sample_inputs = raw
        else:
            pre = preprocessor or getattr(model, "preprocessor", None)
            sample_inputs = (np.asarray(pre(raw)) if pre is not None
                             else raw.astype(np.float32) / 255.0)
    sample_inputs = np.asarray(sample_inputs)
    got = run_tflite(flatbuffer, sample_inputs)
    want = np.asarray(serve(tf.constant(sample_inputs, dtype=spec.dtype)))
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    if not diff <= atol:
        raise ExportError(
            f"The TFLite model differs from the Keras model by {diff:.2e} (allowed "
            f"{atol:.0e}); nothing was written to {path!r}."
        )
    write_bytes_atomic(path, flatbuffer)
    return {"path": os.path.abspath(path), "bytes": len(flatbuffer), "max_abs_diff": diff}


def run_tflite(model: str | bytes, inputs: Any) -> np.ndarray:
    """Runs a `.tflite` file (path) or flatbuffer (bytes) on a batch of inputs.

    The interpreter's input is resized to the batch, so any batch size works.
    """
    source = ({"model_content": bytes(model)} if isinstance(model, (bytes, bytearray))
              else {"model_path": os.fspath(model)})
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = None
    if Interpreter is not None:
        interpreter = Interpreter(**source)
    else:
        with warnings.catch_warnings():
            # TensorFlow's interpreter announces its move to ai_edge_litert; it
            # still runs the same kernels.
            warnings.filterwarnings("ignore", message=r"(?s).*tf.lite.Interpreter is deprecated")
            interpreter = tf.lite.Interpreter(**source)
    inputs = np.asarray(inputs)
    detail = interpreter.get_input_details()[0]
    if inputs.dtype != detail["dtype"]:
        raise TypeError(
            f"The TFLite model takes {np.dtype(detail['dtype']).name} inputs. Received "
            f"{inputs.dtype.name}."
        )
    if list(detail["shape"]) != list(inputs.shape):
        interpreter.resize_tensor_input(detail["index"], list(inputs.shape), strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], inputs)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
