"""SavedModel export for serving, with preprocessing inside the graph.

`export_saved_model(model, "saved_models/NAME")` writes TF Serving's layout
`saved_models/NAME/<version>/` (versions 1, 2, ...) whose signatures take raw
inputs and return predictions:

- text (`modality="text"`): `serving_default(inputs: tf.string [None])`,
  tokenised in the graph by the backbone's preprocessor, each request run at
  its own longest sequence rather than the preprocessor's fixed length (when
  the model takes sequences of any length; see `trim_to_longest`);
- images (`modality="image"`): `serving_default(inputs: tf.string [None])` of
  encoded JPEG/PNG/GIF/BMP bytes, and `serving_arrays(images: tf.uint8
  [None, None, None, 3])` of raw pixel arrays; both resize and normalise with
  the backbone's `ImagePreprocessor` in the graph.

Outputs by task:

- `multiclass`: `probabilities` float32 `[None, C]`, `class_ids` int64
  `[None]`, `class_names` string `[None]`;
- `binary`: the same with `C = 2` (`[1 - p, p]`);
- `multilabel`: `probabilities` float32 `[None, C]`, `predictions` int32
  multi-hot `[None, C]` (p >= `threshold`, 0.5 unless given);
- `regression`: `value` float32 `[None, outputs]`.

Signature inputs are typed: calling `serving_default` with numbers instead of
strings (or `serving_arrays` with floats instead of uint8) fails with a
TypeError/ValueError from TensorFlow that names the expected dtype; TF
Serving answers such requests with an INVALID_ARGUMENT error.

Writes are atomic: the version is written and verified (reloaded in a fresh
Python process and compared with the in-memory model) in a hidden temporary
directory beside it, then renamed into place, so a failure leaves existing
versions untouched and nothing half-written. The rename never replaces a
version another export moved there meanwhile: an automatically chosen version
moves on to the next free one, an explicitly named one raises
`FileExistsError`. The finished version folder and its files get the modes the
umask gives (0755/0644 under umask 022), so TF Serving running as another user
can read them. The verification process runs in a temporary working directory,
so modules lying in the caller's working directory (a stray `keras.py`) are
never imported by it. `tfft_metadata.json` in each
version records class names, task, the backbone, the preprocessing settings,
tfft/TensorFlow/Keras versions and the evaluation report when given.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import sys
import tempfile
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft._compat import write_export_archive
from tfft.adapt.lora import has_lora, merge_lora
from tfft.export.fresh_process import SERVING_IMPORTS
from tfft.export.generate import export_generate_model
from tfft.models.causal_lm import CausalLMTask
from tfft.utils.files import (
    private_staging,
    rename_directory_exclusive,
    replace_directory,
)
from tfft.utils.tfdata import XLA_WIDTH_MULTIPLE, takes_any_length, trim_to_longest
from tfft.utils.version import __version__

logger = logging.getLogger(__name__)

METADATA_FILE = "tfft_metadata.json"
TEXT_INPUT = "inputs"
ARRAY_INPUT = "images"
ARRAY_SIGNATURE = "serving_arrays"
OUTPUT_KEYS = ("probabilities", "class_ids", "class_names")
EXPORT_TASKS = ("binary", "multiclass", "multilabel", "regression")
MODALITIES = ("text", "image")
MULTILABEL_THRESHOLD = 0.5


class ExportError(RuntimeError):
    """An export failed verification or could not be written."""


def list_versions(directory: str) -> list[int]:
    """The integer versions under `directory`, ascending (empty when none)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory)
                  if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def next_version(directory: str) -> int:
    """The next integer version under `directory` (1 when there is none)."""
    return max(list_versions(directory), default=0) + 1


def output_names(task: str, class_names: list[str] | None = None) -> list[str]:
    """The output keys of `serving_default` for `task`."""
    if task == "regression":
        return ["value"]
    if task == "multilabel":
        return ["probabilities", "predictions"]
    return list(OUTPUT_KEYS if class_names else OUTPUT_KEYS[:2])


def _model_output_units(model):
    try:
        shape = model.output_shape
    except (AttributeError, ValueError):
        return None  # a subclassed model that was never called symbolically
    if isinstance(shape, (list, dict)):
        raise ValueError(
            "export_saved_model() serves models with a single output tensor. Received a model with "
            f"outputs shaped {shape}."
        )
    return shape[-1]


def _check_arguments(model, task, modality, class_names):
    if task not in EXPORT_TASKS:
        raise ValueError(
            f"Unknown export task. Expected one of {list(EXPORT_TASKS)}. Received: task={task!r}"
        )
    if modality not in MODALITIES:
        raise ValueError(
            f"Unknown modality. Expected one of {list(MODALITIES)}. "
            f"Received: modality={modality!r}"
        )
    if isinstance(class_names, str):
        raise TypeError(
            "class_names must be a list of strings, one per class. Received the string "
            f"{class_names!r}; pass class_names={class_names.split(',')!r} instead."
        )
    if task in ("binary", "multiclass") and not class_names:
        raise ValueError(
            f"A {task} export needs class_names so the server can return them. "
            "Pass class_names=[...] (one per model output; two for binary). "
            f"Received: class_names={class_names!r}"
        )
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        units = _model_output_units(model)
        expected = 2 if task == "binary" else units
        if task != "regression" and units is not None and len(class_names) != expected:
            raise ValueError(
                f"class_names must have one name per class: the model's {task} output "
                f"gives {expected} classes. Received {len(class_names)} names: "
                f"{class_names[:10]}"
            )
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names must be unique. Received: {class_names}")
    return class_names


def _head_task(model):
    try:
        return getattr(model.get_layer("head"), "task", None) or "multiclass"
    except ValueError:
        return "multiclass"


def _ensure_built(preprocessor, modality):
    """Keras export needs built layers; KerasHub preprocessors build on first call."""
    if preprocessor is None or not isinstance(preprocessor, keras.layers.Layer):
        return
    if preprocessor.built:
        return
    if modality == "text":
        preprocessor(tf.constant(["tfft"]))
    else:
        preprocessor(tf.zeros((1, 8, 8, 3), tf.uint8))


def _serving_fns(model, preprocessor, modality, task, class_names, image_size=None,
                 threshold=MULTILABEL_THRESHOLD, jit_compile=False):
    """Returns `{signature_name: (fn, input_signature)}`."""
    names = tf.constant(list(class_names or []), dtype=tf.string)

    def outputs_from(scores):
        scores = tf.cast(scores, tf.float32)
        if task == "regression":
            return {"value": scores}
        if task == "multilabel":
            predictions = tf.cast(scores >= threshold, tf.int32)
            return {"probabilities": scores, "predictions": predictions}
        if task == "binary":
            scores = tf.concat([1.0 - scores, scores], axis=-1)
        ids = tf.argmax(scores, axis=-1)
        result = {"probabilities": scores, "class_ids": ids}
        if class_names:
            result["class_names"] = tf.gather(names, ids)
        return result

    def call(features):
        return model(features, training=False)

    if jit_compile:
        # XLA compiles the model once per input shape; the tokenizer's string
        # ops stay outside (XLA has no kernels for them).
        call = tf.function(call, jit_compile=True)

    def predict(features):
        return outputs_from(call(features))

    if modality == "text":
        trim = takes_any_length(model)
        multiple = XLA_WIDTH_MULTIPLE if jit_compile else 1

        def serve(inputs):
            features = preprocessor(inputs) if preprocessor is not None else inputs
            if trim:
                features = trim_to_longest(features, multiple)
            return predict(features)

        return {"serving_default": (serve, [tf.TensorSpec([None], tf.string, name=TEXT_INPUT)])}

    # Images: without a preprocessor the model gets float 0-255 pixels at
    # `image_size`; with one, the preprocessor resizes and normalises.
    def prepare(images):
        if preprocessor is not None:
            return preprocessor(images)
        return tf.image.resize(tf.cast(images, tf.float32), image_size)

    def decode(image_bytes):
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        # Each image is prepared alone so a batch may mix sizes.
        return prepare(image[tf.newaxis])[0]

    def serve_bytes(inputs):
        images = tf.map_fn(decode, inputs, fn_output_signature=tf.float32)
        return predict(images)

    def serve_arrays(images):
        return predict(prepare(images))

    return {
        "serving_default": (serve_bytes, [tf.TensorSpec([None], tf.string, name=TEXT_INPUT)]),
        ARRAY_SIGNATURE: (
            serve_arrays, [tf.TensorSpec([None, None, None, 3], tf.uint8, name=ARRAY_INPUT)]
        ),
    }


def _default_sample_inputs(modality):
    if modality == "text":
        return np.array(["tfft export check", "a second, longer example sentence"])
    rng = np.random.default_rng(0)
    return np.array([
        encode_image(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((40, 30), (24, 36))
    ], dtype=object)


def encode_image(array: Any, format: str = "png") -> bytes:
    """Encodes a uint8 `(H, W, 3)` array as PNG or JPEG bytes."""
    array = np.asarray(array, dtype=np.uint8)
    if format == "png":
        return tf.io.encode_png(array).numpy()
    if format == "jpeg":
        return tf.io.encode_jpeg(array, quality=95).numpy()
    raise ValueError(f"Unknown image format. Expected 'png' or 'jpeg'. Received: {format!r}")


def _describe(obj):
    if obj is None:
        return None
    info = {"class": f"{type(obj).__module__}.{type(obj).__name__}"}
    if hasattr(obj, "get_config"):
        try:
            info["config"] = json.loads(json.dumps(obj.get_config(), default=str))
        except (TypeError, ValueError, NotImplementedError):
            info["config"] = None
    if hasattr(obj, "describe"):
        info["description"] = obj.describe()
    sequence_length = getattr(obj, "sequence_length", None)
    if sequence_length is not None:
        info["sequence_length"] = int(sequence_length)
    return info


def _backbone_metadata(model):
    info = getattr(model, "backbone_info", None)
    return info.to_dict() if info is not None else None


# Model classes with an exporter of their own (image bytes in, boxes or masks out):
# `tfft.export.detection` and `tfft.export.segmentation` register theirs on import.
_TASK_EXPORTERS: dict[type, Any] = {}


def register_task_exporter(model_class: type, exporter: Any) -> None:
    """Makes `export_saved_model` hand instances of `model_class` to `exporter`.

    Args:
        model_class: type. E.g. `tfft.models.detection.DetectionTask`.
        exporter: callable `(model, directory, verify_with=, replace=) -> str`
            writing one SavedModel folder.
    """
    _TASK_EXPORTERS[model_class] = exporter


def _export_task(exporter, model, directory, version, overwrite, sample_inputs, verify):
    """A detection/segmentation task exported to `directory/<version>` by its own exporter."""
    if version is not None and (
        not isinstance(version, int) or isinstance(version, bool) or version < 1
    ):
        raise ValueError(f"version must be a positive int. Received: version={version!r}")
    directory = os.path.abspath(directory)
    target = os.path.join(directory, str(version or next_version(directory)))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"The export version {target!r} already exists. Pass "
                              "overwrite=True to replace it, or leave version unset.")
    verify_with = None
    if verify:
        height, width = model.image_size
        verify_with = list(sample_inputs) if sample_inputs else [
            encode_image(np.full((height, width, 3), 128, np.uint8)),
            encode_image(np.random.default_rng(0).integers(0, 256, (height, width, 3),
                                                           dtype=np.uint8))]
    return exporter(model, target, verify_with=verify_with, replace=overwrite)


def export_saved_model(model: keras.Model, directory: str,
                       preprocessor: keras.layers.Layer | None = None,
                       class_names: list[str] | None = None, task: str | None = None,
                       modality: str | None = None, version: int | None = None,
                       overwrite: bool = False, metadata: dict | None = None,
                       sample_inputs: Any = None, verify: bool = True,
                       image_size: tuple[int, int] = (224, 224), evaluation: Any = None,
                       atol: float = 1e-5, threshold: float = MULTILABEL_THRESHOLD,
                       jit_compile: bool = False) -> str:
    """Exports `model` with its preprocessing as a versioned SavedModel.

    Args:
        model: keras.Model. The trained model.
        directory: str. Model directory, e.g. `"saved_models/bbc_news"`; the
            version goes below it.
        preprocessor: keras.Layer. Raw inputs -> model inputs (a KerasHub
            text preprocessor, or an `ImagePreprocessor`); defaults to
            `model.preprocessor` (a `tfft.Task`'s).
        class_names: list of str. Required for binary (2 names) and
            multiclass (one per output) exports; optional for multilabel.
            Defaults to `model.class_names` (a `tfft.Task`'s).
        task: str. `"binary"`, `"multiclass"`, `"multilabel"` or `"regression"`.
            Defaults to the task of the model's `"head"` layer (tfft models),
            else `"multiclass"`.
        modality: str. `"text"` (input: `tf.string` texts) or `"image"`
            (inputs: encoded image bytes, or uint8 arrays via
            `serving_arrays`). Defaults to the backbone's modality
            (`model.backbone_info`), else `"text"`.
        version: int. Version number; defaults to the next free one, chosen
            again at the final rename if another export took it meanwhile.
        overwrite: bool. Replace an existing version (with an explicit
            `version`; an automatically chosen version never replaces one).
            Without it, an explicit version that another export wrote while
            this one ran raises `FileExistsError`. Defaults to False.
        metadata: dict. Extra JSON metadata (backbone spec, dataset ...).
        sample_inputs: list. Raw inputs (texts, or encoded image bytes) used to
            verify the export in a fresh process against the in-memory model;
            defaults to two built-in examples.
        verify: bool. Reload in a fresh process and compare. Defaults to True.
        image_size: tuple. Resize target for images when there is no
            preprocessor. Defaults to `(224, 224)`.
        evaluation: dict or report with `to_dict()`. Stored in the metadata
            under `"evaluation"`.
        atol: float. Largest allowed difference in the verification.
        threshold: float. Multilabel decision threshold: `predictions` marks
            the labels whose probability is at least this. Recorded in the
            metadata. Defaults to 0.5.
        jit_compile: bool. Run the model part of each request through XLA
            (the tokenizer and image decoding stay outside). On CPU this cuts
            TensorFlow's per-op overhead (MiniLM, one 8-word request: 6.7 ms
            instead of 9.4 ms, `benchmarks/serving.py`), but XLA compiles
            about 1 s per new request shape, so text widths are rounded up
            to multiples of `XLA_WIDTH_MULTIPLE` (16): at most
            `sequence_length / 16` compilations per batch size, each paid by
            the first request of its shape. Recorded in the metadata.
            Defaults to False.

    Returns:
        The version directory written.

    Example:

    >>> path = tfft.export_saved_model(model, "saved_models/bbc_news", class_names=names)
    >>> serve = tf.saved_model.load(path).signatures["serving_default"]
    >>> serve(tf.constant(["Shares rose after the profit report"]))["class_names"]

    A `tfft.CausalLMTask` is exported with a `generate` signature instead
    (`tfft.export.generate.export_generate_model`; `sample_inputs` are its
    verification prompts). A `DetectionTask` or `SegmentationTask` goes to
    `tfft.export.detection.export_detection` / `tfft.export.segmentation.
    export_segmentation` (image bytes in, boxes or a mask out), written to
    `directory/<version>`; `sample_inputs` (encoded images) verify it in a
    fresh process when `verify`.
    """
    for model_class, exporter in _TASK_EXPORTERS.items():
        if isinstance(model, model_class):
            return _export_task(exporter, model, directory, version, overwrite, sample_inputs,
                                verify)
    if isinstance(model, CausalLMTask):
        return export_generate_model(model, directory, version=version, overwrite=overwrite,
                                     metadata=metadata, sample_prompts=sample_inputs,
                                     verify=verify)
    task = task or _head_task(model)
    if class_names is None:
        class_names = getattr(model, "class_names", None)
    if modality is None:
        info = getattr(model, "backbone_info", None)
        modality = info.modality if info is not None else "text"
    class_names = _check_arguments(model, task, modality, class_names)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
            0.0 < threshold < 1.0):
        raise ValueError(f"threshold must be a number in (0, 1). Received: {threshold!r}")
    if version is not None and (
        not isinstance(version, int) or isinstance(version, bool) or version < 1
    ):
        raise ValueError(f"version must be a positive int. Received: version={version!r}")
    if has_lora(model):
        # Serve plain kernels (kernel + A @ B * scale): same outputs, no adapter ops.
        model = merge_lora(model)
    if preprocessor is None:
        preprocessor = getattr(model, "preprocessor", None)
    _ensure_built(preprocessor, modality)
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"The export directory {directory!r} is a file, not a directory.")
    automatic = version is None
    version = version or next_version(directory)
    target = os.path.join(directory, str(version))
    if not automatic and os.path.exists(target) and not overwrite:
        raise FileExistsError(
            f"The export version {target!r} already exists. Pass overwrite=True "
            "(--overwrite) to replace it, or leave version unset to write the next one "
            f"({next_version(directory)})."
        )
    if evaluation is not None and hasattr(evaluation, "to_dict"):
        evaluation = evaluation.to_dict()
    with private_staging(target) as staging:
        fns = _serving_fns(model, preprocessor, modality, task, class_names, image_size,
                           float(threshold), jit_compile=bool(jit_compile))
        archive = keras.export.ExportArchive()
        archive.track(model)
        if isinstance(preprocessor, keras.layers.Layer):
            archive.track(preprocessor)
        for name, (fn, signature) in fns.items():
            archive.add_endpoint(name, fn, input_signature=signature)
        write_export_archive(archive, staging)
        signatures = {
            name: {"input": signature[0].name, "dtype": signature[0].dtype.name,
                   "shape": signature[0].shape.as_list()}
            for name, (_, signature) in fns.items()
        }
        info = {
            "class_names": list(class_names or []),
            "task": task,
            "modality": modality,
            **({"threshold": float(threshold)} if task == "multilabel" else {}),
            "signature": {"name": "serving_default", "input": TEXT_INPUT,
                          "outputs": output_names(task, class_names)},
            "signatures": signatures,
            "backbone": _backbone_metadata(model),
            "preprocessor": type(preprocessor).__name__ if preprocessor is not None else None,
            "preprocessing": _describe(preprocessor),
            "version": version,
            "jit_compile": bool(jit_compile),
            "tfft_version": __version__,
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        if evaluation is not None:
            info["evaluation"] = evaluation
        info.update(metadata or {})
        _write_metadata(staging, info)
        if verify:
            if sample_inputs is None:
                sample_inputs = _default_sample_inputs(modality)
            serve = fns["serving_default"][0]
            expected = serve(tf.constant(_as_input_array(sample_inputs)))
            verify_in_fresh_process(staging, sample_inputs, expected, atol=atol)
        return _move_version_into_place(staging, directory, info, automatic,
                                        overwrite and not automatic)


def _write_metadata(folder, info):
    with open(os.path.join(folder, METADATA_FILE), "w") as f:
        json.dump(info, f, indent=2, default=_json_default)


def _move_version_into_place(staging, directory, info, automatic, overwrite):
    """Renames the finished `staging` folder to `directory/<info["version"]>`.

    The version was chosen before the (long) export and verification; another
    export may have taken it since. The rename itself refuses to replace it, so
    nothing is lost: an automatic version moves on to the next free one (the
    metadata follows), an explicit one raises.
    """
    while True:
        version = info["version"]
        target = os.path.join(directory, str(version))
        if overwrite:
            return replace_directory(staging, target)
        try:
            return rename_directory_exclusive(staging, target)
        except FileExistsError:
            if not automatic:
                raise FileExistsError(
                    f"The export version {target!r} was written by another export while this "
                    "one ran; nothing was replaced and this export was not written. Pass another "
                    "version, overwrite=True (--overwrite) to replace it, or leave version "
                    f"unset to write the next free one ({next_version(directory)})."
                ) from None
        info["version"] = max(version + 1, next_version(directory))
        logger.info("Export version %d was taken meanwhile; writing version %d instead.",
                     version, info["version"])
        _write_metadata(staging, info)


def read_metadata(path: str) -> dict:
    """Reads `tfft_metadata.json` of an exported version directory."""
    meta_path = os.path.join(path, METADATA_FILE)
    if not os.path.exists(meta_path):
        raise ValueError(
            f"{path!r} has no {METADATA_FILE}: expected a version directory written by "
            "tfft.export (e.g. saved_models/NAME/1)."
        )
    with open(meta_path) as f:
        return json.load(f)


def _as_input_array(sample_inputs):
    array = np.asarray(sample_inputs, dtype=object)
    return np.array([s if isinstance(s, bytes) else str(s).encode("utf-8") for s in array],
                    dtype=object)


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


_VERIFY_SCRIPT = SERVING_IMPORTS + r"""
path, inputs_file, out_file, signature = sys.argv[1:5]
loaded = tf.saved_model.load(path)
with np.load(inputs_file, allow_pickle=False) as data:
    inputs = data["inputs"]
if inputs.dtype.kind == "S" and signature == "serving_default":
    # np.bytes_ strips trailing NULs; lengths restore the exact bytes.
    lengths = np.load(inputs_file)["lengths"]
    inputs = np.array([bytes(v).ljust(n, b"\0") for v, n in zip(inputs, lengths)], object)
outputs = loaded.signatures[signature](tf.constant(inputs))
def plain(value):
    value = value.numpy()
    return value.astype(str) if value.dtype == object else value
np.savez(out_file, **{k: plain(v) for k, v in outputs.items()})
"""


def _fresh_process_env():
    """The environment of the verification process: this one, minus the working directory.

    `python -c` puts the working directory first on `sys.path`, so a stray
    `keras.py` or `numpy.py` there would be imported instead of the real
    package. The process runs in an empty temporary folder with
    `PYTHONSAFEPATH` (Python 3.11+: no working directory on `sys.path`);
    installed packages (including an editable tfft) come from site-packages
    as before, and relative `PYTHONPATH` entries keep pointing where they
    pointed from the caller's folder.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONSAFEPATH": "1"}
    python_path = [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if python_path:
        env["PYTHONPATH"] = os.pathsep.join(python_path)
    else:
        env.pop("PYTHONPATH", None)
    return env


def load_serving_outputs_in_fresh_process(path: str, sample_inputs: Any, timeout: int = 600,
                                          signature: str = "serving_default") -> dict:
    """Loads the SavedModel at `path` in a new Python process and runs it.

    Args:
        path: str. A version directory.
        sample_inputs: texts, encoded image bytes, or (for `serving_arrays`) a
            uint8 array of images.
        timeout: float. Seconds before the process is killed.
        signature: str. The signature to call.

    Returns:
        `{output name: numpy array}` (strings decoded to `str`).

    The process imports only installed packages: it runs in an empty
    temporary folder, never the caller's working directory.
    """
    with tempfile.TemporaryDirectory() as tmp:
        inputs_file = os.path.join(tmp, "inputs.npz")
        out_file = os.path.join(tmp, "outputs.npz")
        if signature == "serving_default":
            raw = _as_input_array(sample_inputs)
            np.savez(inputs_file, inputs=raw.astype(bytes),
                     lengths=np.array([len(v) for v in raw]))
        else:
            np.savez(inputs_file, inputs=np.asarray(sample_inputs))
        proc = subprocess.run(
            [sys.executable, "-c", _VERIFY_SCRIPT, os.path.abspath(path), inputs_file,
             out_file, signature],
            capture_output=True, text=True, timeout=timeout, env=_fresh_process_env(),
            cwd=tmp,
        )
        if proc.returncode != 0:
            raise ExportError(
                f"The SavedModel at {path!r} failed to load in a fresh process:\n"
                f"{proc.stderr[-2000:]}"
            )
        with np.load(out_file) as data:
            return {k: data[k] for k in data.files}


def verify_in_fresh_process(path: str, sample_inputs: Any, expected: dict, atol: float = 1e-5,
                            signature: str = "serving_default") -> dict:
    """Checks the reloaded SavedModel reproduces `expected` on `sample_inputs`."""
    got = load_serving_outputs_in_fresh_process(path, sample_inputs, signature=signature)
    for key, value in expected.items():
        value = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        if value.dtype == object:
            value = np.char.decode(value.astype(bytes), "utf-8")
        if key not in got:
            raise ExportError(f"The reloaded SavedModel lacks the output {key!r}.")
        if value.dtype.kind in "fc":
            diff = float(np.max(np.abs(got[key] - value))) if value.size else 0.0
            if not diff <= atol:
                raise ExportError(
                    f"The reloaded SavedModel's {key!r} differs from the in-memory model "
                    f"by {diff:.2e} (allowed {atol:.0e})."
                )
        elif not np.array_equal(got[key], value):
            raise ExportError(f"The reloaded SavedModel's {key!r} differs from the in-memory one.")
    return got

