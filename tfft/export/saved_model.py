"""SavedModel export for serving, with preprocessing inside the graph.

`export(model, "saved_models/NAME")` writes TF Serving's layout
`saved_models/NAME/<version>/` whose `serving_default` signature takes raw
inputs (`tf.string` texts, tokenised in the graph; or encoded image bytes) and
returns class probabilities, class ids and class names (or the regression
value). Writes are atomic: the version is built and verified in a temporary
directory beside it, then renamed into place, so a failure leaves existing
versions untouched and nothing half-written.
"""

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

METADATA_FILE = "tfft_metadata.json"
TEXT_INPUT = "inputs"
OUTPUT_KEYS = ("probabilities", "class_ids", "class_names")


class ExportError(RuntimeError):
    """An export failed verification or could not be written."""


def next_version(directory):
    """The next integer version under `directory` (1 when there is none)."""
    if not os.path.isdir(directory):
        return 1
    versions = [int(d) for d in os.listdir(directory) if d.isdigit()]
    return max(versions, default=0) + 1


def _serving_fn(model, preprocessor, modality, task, class_names, image_size=None):
    names = tf.constant(list(class_names or []), dtype=tf.string)

    def outputs_from(scores):
        scores = tf.cast(scores, tf.float32)
        if task == "regression":
            return {"value": scores}
        if task == "binary":
            scores = tf.concat([1.0 - scores, scores], axis=-1)
        if task == "multilabel":
            return {"probabilities": scores}
        ids = tf.argmax(scores, axis=-1)
        result = {"probabilities": scores, "class_ids": ids}
        if class_names:
            result["class_names"] = tf.gather(names, ids)
        return result

    if modality == "text":
        def serve(inputs):
            features = preprocessor(inputs) if preprocessor is not None else inputs
            return outputs_from(model(features, training=False))

        return serve, [tf.TensorSpec([None], tf.string, name=TEXT_INPUT)]

    def decode(image_bytes):
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        return tf.image.resize(tf.cast(image, tf.float32), image_size)

    def serve_images(inputs):
        images = tf.map_fn(decode, inputs, fn_output_signature=tf.float32)
        features = preprocessor(images) if preprocessor is not None else images
        return outputs_from(model(features, training=False))

    return serve_images, [tf.TensorSpec([None], tf.string, name=TEXT_INPUT)]


def export(model, directory, preprocessor=None, class_names=None, task="multiclass",
           modality="text", version=None, overwrite=False, metadata=None,
           sample_inputs=None, verify=True, image_size=(224, 224)):
    """Exports `model` with its preprocessing as a versioned SavedModel.

    Args:
        model: keras.Model. The trained model.
        directory: str. Model directory, e.g. `"saved_models/bbc_news"`; the
            version goes below it.
        preprocessor: keras.Layer. Raw inputs -> model inputs (e.g. a KerasHub
            text preprocessor); defaults to `model.tfft_backbone.preprocessor`.
        class_names: list of str. Required for classification exports.
        task: str. `"binary"`, `"multiclass"`, `"multilabel"` or `"regression"`.
        modality: str. `"text"` (input: `tf.string` texts) or `"image"`
            (input: encoded JPEG/PNG bytes, resized to `image_size`).
        version: int. Version number; defaults to the next free one.
        overwrite: bool. Replace an existing version. Defaults to False.
        metadata: dict. Extra JSON metadata (backbone spec, evaluation report).
        sample_inputs: list. Raw inputs used to verify the export in a fresh
            process against the in-memory model.
        verify: bool. Reload in a fresh process and compare. Defaults to True.

    Returns:
        The version directory written.
    """
    if task in ("binary", "multiclass") and not class_names:
        raise ValueError(
            f"A {task} export needs class_names so the server can return them. "
            "Pass class_names=[...] (one per model output)."
        )
    if version is not None and (not isinstance(version, int) or version < 1):
        raise ValueError(f"version must be a positive int. Received: version={version!r}")
    if preprocessor is None and getattr(model, "tfft_backbone", None) is not None:
        preprocessor = model.tfft_backbone.preprocessor
    directory = os.path.abspath(directory)
    version = version or next_version(directory)
    target = os.path.join(directory, str(version))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(
            f"The export version {target!r} already exists. Pass overwrite=True "
            "(--overwrite) to replace it, or leave version unset to write the next one."
        )
    os.makedirs(directory, exist_ok=True)
    staging = tempfile.mkdtemp(dir=directory, prefix=f".tmp-{version}-")
    try:
        fn, signature = _serving_fn(model, preprocessor, modality, task, class_names,
                                    image_size)
        archive = keras.export.ExportArchive()
        archive.track(model)
        if preprocessor is not None:
            archive.track(preprocessor)
        archive.add_endpoint("serving_default", fn, input_signature=signature)
        archive.write_out(staging, verbose=False)
        info = {
            "class_names": list(class_names or []),
            "task": task,
            "modality": modality,
            "signature": {"name": "serving_default", "input": TEXT_INPUT,
                          "outputs": _output_names(task, class_names)},
            "preprocessor": type(preprocessor).__name__ if preprocessor is not None else None,
            "tfft_version": _tfft_version(),
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            **(metadata or {}),
        }
        with open(os.path.join(staging, METADATA_FILE), "w") as f:
            json.dump(info, f, indent=2, default=_json_default)
        if verify and sample_inputs is not None:
            expected = fn(tf.constant(sample_inputs))
            verify_in_fresh_process(staging, sample_inputs, expected)
        if os.path.exists(target):
            old = tempfile.mkdtemp(dir=directory, prefix=f".old-{version}-")
            os.rename(target, os.path.join(old, "v"))
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _output_names(task, class_names):
    if task == "regression":
        return ["value"]
    if task == "multilabel":
        return ["probabilities"]
    return list(OUTPUT_KEYS if class_names else OUTPUT_KEYS[:2])


def _tfft_version():
    import tfft

    return tfft.__version__


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


_VERIFY_SCRIPT = r"""
import sys, numpy as np
try:
    import tensorflow_text  # noqa: F401  registers the tokenizer ops
except ImportError:
    pass
import tensorflow as tf
path, inputs_file, out_file = sys.argv[1:4]
loaded = tf.saved_model.load(path)
inputs = np.load(inputs_file, allow_pickle=False)
outputs = loaded.signatures["serving_default"](tf.constant(inputs))
def plain(value):
    value = value.numpy()
    return value.astype(str) if value.dtype == object else value
np.savez(out_file, **{k: plain(v) for k, v in outputs.items()})
"""


def load_serving_outputs_in_fresh_process(path, sample_inputs, timeout=600):
    """Loads the SavedModel at `path` in a new Python process and runs it."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs_file = os.path.join(tmp, "inputs.npy")
        out_file = os.path.join(tmp, "outputs.npz")
        np.save(inputs_file, np.asarray(sample_inputs))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.run(
            [sys.executable, "-c", _VERIFY_SCRIPT, path, inputs_file, out_file],
            capture_output=True, text=True, timeout=timeout, env=env,
        )
        if proc.returncode != 0:
            raise ExportError(
                f"The SavedModel at {path!r} failed to load in a fresh process:\n"
                f"{proc.stderr[-2000:]}"
            )
        with np.load(out_file) as data:
            return {k: data[k] for k in data.files}


def verify_in_fresh_process(path, sample_inputs, expected, atol=1e-5):
    """Checks the reloaded SavedModel reproduces `expected` on `sample_inputs`."""
    got = load_serving_outputs_in_fresh_process(path, sample_inputs)
    for key, value in expected.items():
        value = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        if value.dtype == object:
            value = np.char.decode(value.astype(bytes), "utf-8")
        if key not in got:
            raise ExportError(f"The reloaded SavedModel lacks the output {key!r}.")
        if value.dtype.kind in "fc":
            diff = float(np.max(np.abs(got[key] - value))) if value.size else 0.0
            if diff > atol:
                raise ExportError(
                    f"The reloaded SavedModel's {key!r} differs from the in-memory model "
                    f"by {diff:.2e} (allowed {atol:.0e})."
                )
        elif not np.array_equal(got[key], value):
            raise ExportError(f"The reloaded SavedModel's {key!r} differs from the in-memory one.")
    return got
