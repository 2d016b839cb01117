"""Adapters from a model to `batch -> scores`: Keras models, callables, SavedModel signatures.

A SavedModel reloaded with `tf.saved_model.load` is called through its
`serving_default` signature, whose inputs are fitted to the signature's
`TensorSpec`s (dtype, rank, PNG-encoded images for image exports).
"""

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf


def predict_fn(model) -> Callable[[Any], np.ndarray]:
    """Returns `batch -> np.ndarray` for a Keras model, a reloaded SavedModel or a callable.

    Args:
        model: a Keras model; a SavedModel reloaded with `tf.saved_model.load`
            (its `serving_default` signature, output `probabilities` or its
            only output); or a callable returning scores or such a dict.
    """

    signatures = getattr(model, "signatures", None)
    if signatures is not None and not isinstance(model, keras.Model):
        if "serving_default" not in signatures:
            raise ValueError(
                "The SavedModel has no 'serving_default' signature. Available "
                f"signatures: {sorted(signatures.keys())}"
            )
        signature = signatures["serving_default"]
        _, input_specs = signature.structured_input_signature
        output_key = scored_output(signature)

        def predict(x):
            if isinstance(x, dict):
                missing = sorted(set(input_specs) - set(x))
                if missing:
                    raise ValueError(
                        f"The serving signature needs inputs {sorted(input_specs)}; the "
                        f"batch lacks {missing}."
                    )
                feed = {k: fit_spec(x[k], input_specs[k]) for k in input_specs}
            else:
                if len(input_specs) != 1:
                    raise ValueError(
                        "The serving signature takes several inputs "
                        f"{sorted(input_specs)}; give x as a dict with those keys."
                    )
                (name, spec), = input_specs.items()
                feed = {name: fit_spec(x, spec)}
            return signature(**feed)[output_key].numpy()

        return predict

    if isinstance(model, keras.Model) or hasattr(model, "predict_on_batch"):
        call = model.predict_on_batch
    elif callable(model):
        # Layers such as keras.layers.TFSMLayer, tf.Modules and plain functions.
        call = model
    else:
        raise TypeError(
            "model must be a Keras model, a SavedModel loaded with tf.saved_model.load "
            "(with a 'serving_default' signature) or a callable returning scores. "
            f"Received: {type(model).__name__}"
        )

    def predict(x):
        out = call(x)
        if isinstance(out, dict):
            if "probabilities" in out:
                out = out["probabilities"]
            elif len(out) == 1:
                out = next(iter(out.values()))
            else:
                raise ValueError(
                    "The model returns several outputs and none is named "
                    f"'probabilities'. Outputs: {sorted(out)}"
                )
        return tf.convert_to_tensor(out).numpy()

    return predict


def scored_output(signature) -> str:
    """The output of a serving `signature` that holds the scores.

    `probabilities`, or the signature's only output.

    Raises:
        ValueError: several outputs, none named `probabilities`.
    """
    output_keys = sorted(signature.structured_outputs.keys())
    if "probabilities" in output_keys:
        return "probabilities"
    if len(output_keys) == 1:
        return output_keys[0]
    raise ValueError(
        "The serving signature returns several outputs and none is named "
        f"'probabilities'. Outputs: {output_keys}"
    )


def fit_spec(x, spec: tf.TensorSpec) -> tf.Tensor:
    """Casts and reshapes one input batch to the signature's `tf.TensorSpec`."""

    x = tf.convert_to_tensor(x)
    if spec.dtype == tf.string and x.dtype == tf.uint8 and x.shape.rank in (3, 4):
        # Image exports take encoded bytes; PNG keeps the pixels exact.
        if x.shape.rank == 3:
            x = x[..., tf.newaxis]
        x = tf.map_fn(tf.io.encode_png, x, fn_output_signature=tf.string)
    if (x.dtype == tf.string) != (spec.dtype == tf.string):
        raise TypeError(
            f"The serving signature's input {spec.name!r} takes {spec.dtype.name} but the "
            f"data holds {x.dtype.name}. Pass raw inputs of the kind the export expects."
        )
    if x.dtype != spec.dtype:
        x = tf.cast(x, spec.dtype)
    rank = spec.shape.rank
    if rank is not None:
        if rank == x.shape.rank + 1 and spec.shape[-1] == 1:
            x = tf.expand_dims(x, -1)
        elif rank == x.shape.rank - 1 and x.shape[-1] == 1:
            x = tf.squeeze(x, -1)
    return x
