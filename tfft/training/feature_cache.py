"""Frozen-feature caching: feature extraction at the cost of one backbone pass.

With a frozen backbone called in inference mode, its pooled features never
change, yet a plain `fit` recomputes them every epoch. `fit_cached`
computes them once (kept on disk as `.npy` files, memory-mapped when read)
and trains the head on them; the head layer is shared with the full model, so
the result is the ordinary model and predicts on raw inputs as before.

A cache entry is keyed by everything that changes the features, read from the
model itself (`cache_key`): the backbone (class, per-layer configuration,
weights, output key, dtype policy), the preprocessor (class, configuration,
weights and vocabulary files: a tokenizer's vocabulary content, the sequence
length, an image size and normalisation), the pooling layer's configuration,
the padding-mask input and a fingerprint of the data. Entries live under
`$TFFT_CACHE_DIR/features` (default `~/.cache/tfft/features`); `list_cached()`
and `clear_cache()` manage them, and `clear_cache()` only ever deletes what
tfft wrote there. A broken entry (truncated or missing files, an unreadable
key file) is a miss: it is recomputed and replaced in one rename, with one
warning in the log.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import marshal
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft import assets
from tfft.adapt.freeze import find_backbone_layer
from tfft.distribute import prepare_model
from tfft.training.callbacks import DivergenceGuard
from tfft.training.presets import TASK_PRESETS, task_metrics
from tfft.training.tracing import predict_batches
from tfft.utils.files import staged_directory, write_json_atomic
from tfft.utils.walk import walk_layers

logger = logging.getLogger(__name__)

# Bumped when the key's contents change, so entries keyed the old way are never read.
KEY_VERSION = 2
FEATURES_FILE = "features.npy"
KEY_FILE = "key.json"
ENTRY_FILES = frozenset({FEATURES_FILE, KEY_FILE})
# What tfft writes under a cache root, and nothing else is ever deleted there:
# entries (the key, 32 hex digits), `staged_directory`'s staging folders
# (".tmp-<key>-" + 8 `tempfile` characters) and its replaced-entry folders (".old-...").
_STORE_ATTEMPTS = 3
_KEY_NAME = re.compile(r"[0-9a-f]{32}")
_STAGING_NAME = re.compile(r"\.tmp-([0-9a-f]{32})-[a-z0-9_]{8}")
_OLD_NAME = re.compile(r"\.old-[a-z0-9_]{8}")
_STAGING_FILE = re.compile(r"\.tmp-(key\.json|features\.npy)-[a-z0-9_]+")


class CacheRefusedError(ValueError):
    """Caching would give wrong results for this model or data."""


def cache_root(directory=None):
    """`directory`, else $TFFT_FEATURE_CACHE_DIR, else `$TFFT_CACHE_DIR/features`."""
    directory = directory or os.environ.get("TFFT_FEATURE_CACHE_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        return directory
    return assets.cache_dir("features")


def feature_model(model):
    """The part of a tfft model up to the pooled features (shares weights)."""
    return keras.Model(model.inputs, model.get_layer("pooling").output)


def check_cacheable(model, augment=None):
    """Raises `CacheRefusedError` when cached features would be wrong."""
    backbone = find_backbone_layer(model)
    trainable = [w.path for w in backbone.trainable_weights]
    if trainable:
        raise CacheRefusedError(
            "Cannot cache backbone features: the backbone has trainable weights "
            f"({len(trainable)}, e.g. {trainable[0]!r}), so its features change during "
            "training. Use freeze='feature_extraction', or train without the cache."
        )
    if augment is not None:
        raise CacheRefusedError(
            "Cannot cache backbone features with random augmentation: each epoch must see "
            "new augmented inputs. Drop `augment` or train without the cache."
        )


# -- the key ----------------------------------------------------------------------


def weights_fingerprint(layer):
    """Hashes a layer's weights in order: shapes, dtypes and values.

    Names are left out on purpose: Keras numbers auto-generated names per
    process (`bert_backbone_1`), so the same weights rebuilt would miss.
    """
    digest = hashlib.sha256()
    for weight in layer.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def data_fingerprint(x):
    """Hashes raw inputs in order: strings, arrays, or dicts of arrays."""
    digest = hashlib.sha256()
    if isinstance(x, dict):
        for key in sorted(x):
            digest.update(key.encode())
            digest.update(data_fingerprint(x[key]).encode())
        return digest.hexdigest()
    array = np.asarray(x)
    if array.dtype.kind in "OUS":
        for item in array.ravel():
            value = item if isinstance(item, bytes) else str(item).encode("utf-8")
            digest.update(len(value).to_bytes(8, "little"))
            digest.update(value)
    else:
        digest.update(str(array.shape).encode() + str(array.dtype).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _qualified_name(obj):
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def _json_default(value):
    """JSON for config values json cannot encode, with no memory addresses in it."""
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        return {"array": hashlib.sha256(array.tobytes()).hexdigest(),
                "shape": list(array.shape), "dtype": str(array.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": hashlib.sha256(bytes(value)).hexdigest()}
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return repr(value)


def _without_names(config):
    """A config without the per-process parts of nested layer configs.

    Keras numbers auto-generated layer names per process (`dense_3`) and a
    layer's `trainable` flag does not change what it computes, so both leave
    every dict that holds a layer config (one with both keys). A dtype
    policy's `{"name": "float32"}` stays.
    """
    if isinstance(config, Mapping):
        drop = {"name", "trainable"} if {"name", "trainable"} <= set(config) else set()
        return {k: _without_names(v) for k, v in config.items() if k not in drop}
    if isinstance(config, (list, tuple)):
        return [_without_names(v) for v in config]
    return config


def _layer_config(layer):
    """A layer's own configuration, without its name and trainable flag.

    A functional model's config lists its layers by (per-process) name; those
    layers are described one by one instead, so only the class is kept.
    """
    if isinstance(layer, keras.Model) and type(layer).get_config.__module__.startswith("keras."):
        return None
    try:
        config = dict(layer.get_config())
    except NotImplementedError:
        # A custom layer with no config: its class and weights still key it.
        return None
    config.pop("name", None)
    config.pop("trainable", None)
    return _without_names(config)


def architecture_fingerprint(model: keras.layers.Layer) -> str:
    """Hashes the class and configuration of every layer inside `model`, in order.

    Weights alone miss settings that change the features without changing a
    weight's shape: a layer-norm epsilon, an activation, the number of
    attention heads of the same width.
    """
    described = [[_qualified_name(type(layer)), _layer_config(layer)]
                 for layer in walk_layers(model)]
    blob = json.dumps(described, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()


def assets_fingerprint(layer: keras.layers.Layer) -> str | None:
    """Hashes the asset files of the layers inside `layer` (a tokenizer's vocabulary).

    A KerasHub tokenizer keeps its vocabulary (WordPiece `vocabulary.txt`,
    BPE vocabulary and merges, a SentencePiece proto) out of `get_config()`;
    its `save_assets` writes it. Returns None when no layer has assets.
    """
    savers = [sub for sub in walk_layers(layer) if callable(getattr(sub, "save_assets", None))]
    if not savers:
        return None
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="tfft-assets-") as folder:
        for index, sub in enumerate(savers):
            target = os.path.join(folder, str(index))
            os.makedirs(target)
            sub.save_assets(target)
            digest.update(f"{index}:{_qualified_name(type(sub))}".encode())
            for base, dirs, files in os.walk(target):
                dirs.sort()
                for name in sorted(files):
                    path = os.path.join(base, name)
                    digest.update(os.path.relpath(path, target).encode() + b"\0")
                    with open(path, "rb") as f:
                        digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def preprocessor_fingerprint(preprocessor: Any) -> dict[str, Any] | None:
    """What of a preprocessor changes the features: class, config, weights, vocabulary.

    A Keras layer (a KerasHub text preprocessor and its tokenizer, an
    `ImagePreprocessor`, `Rescaling`, a `HubLayer`) is described by its class,
    its configuration (sequence length, truncation, tokenizer settings, image
    size, scale and offset ...), its weights and the hash of its asset files
    (the vocabulary). A plain function is described by its qualified name and
    its bytecode; settings it reads from elsewhere are not seen, so pass them
    as `preprocessing=`.
    """
    if preprocessor is None:
        return None
    if isinstance(preprocessor, keras.layers.Layer):
        return {
            "class": _qualified_name(type(preprocessor)),
            "config": _layer_config(preprocessor),
            "weights": weights_fingerprint(preprocessor) if preprocessor.weights else None,
            "assets": assets_fingerprint(preprocessor),
        }
    code = getattr(preprocessor, "__code__", None)
    return {
        "callable": _qualified_name(preprocessor),
        "code": None if code is None else hashlib.sha256(marshal.dumps(code)).hexdigest(),
    }


def cache_key(model: keras.Model, x: Any, preprocessing: Any = None) -> tuple[str, dict]:
    """The key of `model`'s features on raw inputs `x`.

    Everything that changes the features is read from `model` itself:
    `preprocessing` is only an extra, JSON-able description for settings the
    model does not carry (a custom `make_dataset`).

    Args:
        model: keras.Model. A `tfft.Task` (or a model with layers `"backbone"`
            and `"pooling"`); its `preprocessor` and `backbone_info` are read
            when it has them.
        x: raw inputs (array of strings, images, or dict of arrays).
        preprocessing: JSON-able extra settings, or None.

    Returns:
        `(key, parts)`: a 32-character hex key and the dict it hashes
        (backbone class, architecture and weights, output key, dtype policy,
        padding-mask input, pooling config, preprocessor, extra preprocessing
        settings, data fingerprint) plus the backbone's display name, which
        is not hashed.
    """
    backbone = find_backbone_layer(model)
    info = getattr(model, "backbone_info", None)
    pooling = model.get_layer("pooling")
    parts = {
        "version": KEY_VERSION,
        "backbone": backbone.backbone.name,
        "backbone_class": type(backbone.backbone).__name__,
        "backbone_type": _qualified_name(type(backbone.backbone)),
        "architecture": architecture_fingerprint(backbone.backbone),
        "weights": weights_fingerprint(backbone),
        "output_key": getattr(backbone, "output_key", None),
        "dtype_policy": backbone.dtype_policy.name,
        # A Task feeds this backbone input to the pooling as its padding mask.
        "mask_key": getattr(info, "mask_key", None),
        "pooling": {"class": _qualified_name(type(pooling)), **_layer_config(pooling)},
        "preprocessor": preprocessor_fingerprint(getattr(model, "preprocessor", None)),
        "preprocessing": preprocessing,
        "data": data_fingerprint(x),
    }
    # The display name stays out of the key (see `weights_fingerprint`).
    keyed = {k: v for k, v in parts.items() if k != "backbone"}
    blob = json.dumps(keyed, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:32], parts


# -- entries ------------------------------------------------------------------------


def _num_examples(x):
    if isinstance(x, Mapping):
        return len(x[sorted(x)[0]]) if x else 0
    return len(x)


def _read_entry(entry, key, rows):
    """`(features, None)` for a sound entry, `(None, reason)` for a broken one, `(None, None)`."""
    if not os.path.lexists(entry):
        return None, None
    try:
        with open(os.path.join(entry, KEY_FILE), encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        return None, f"{KEY_FILE} is missing"
    except (OSError, ValueError) as error:
        return None, f"{KEY_FILE} is unreadable ({error})"
    if not isinstance(meta, dict) or meta.get("key") != key:
        return None, f"{KEY_FILE} does not describe this entry"
    try:
        features = np.load(os.path.join(entry, FEATURES_FILE), mmap_mode="r",
                           allow_pickle=False)
    except FileNotFoundError:
        return None, f"{FEATURES_FILE} is missing"
    except (OSError, ValueError, EOFError) as error:
        return None, f"{FEATURES_FILE} is unreadable ({error})"
    shape = meta.get("shape")
    if (not isinstance(shape, list) or list(features.shape) != shape or shape[:1] != [rows]
            or str(features.dtype) != meta.get("dtype")):
        return None, (f"{FEATURES_FILE} holds {features.dtype} {list(features.shape)}, "
                      f"expected {meta.get('dtype')} {shape} with {rows} rows")
    return features, None


def _is_sound(entry, key, rows):
    return _read_entry(entry, key, rows)[0] is not None


def _store_entry(entry, key, features, parts):
    """Writes an entry in a staging folder and renames it into place in one step.

    Several processes may fill the same entry at once: the first sound copy
    wins and the others keep their computed features without failing; a
    broken entry in the way is replaced.
    """
    rows = len(features)
    sound = functools.partial(_is_sound, key=key, rows=rows)
    meta = {**parts, "key": key, "shape": list(features.shape), "dtype": str(features.dtype),
            "created": time.time()}
    for attempt in range(_STORE_ATTEMPTS):
        if os.path.lexists(entry) and not sound(entry):
            _discard(entry)
        try:
            with staged_directory(entry, is_complete=sound) as staging:
                np.save(os.path.join(staging, FEATURES_FILE), features, allow_pickle=False)
                write_json_atomic(os.path.join(staging, KEY_FILE), meta, default=_json_default)
            return
        except OSError:
            # Lost a race (the entry moved or appeared under us): fine once a sound
            # copy is there; another writer's broken copy in the way is replaced again.
            if sound(entry):
                return
            if attempt == _STORE_ATTEMPTS - 1:
                raise


def _discard(entry):
    """Moves a broken entry aside in one rename (into a staging-named folder), then deletes it."""
    trash = tempfile.mkdtemp(dir=os.path.dirname(entry), prefix=f".tmp-{os.path.basename(entry)}-")
    try:
        # Another process may have moved it first: then there is nothing to do.
        with contextlib.suppress(FileNotFoundError):
            os.rename(entry, os.path.join(trash, "v"))
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def is_cached(model: keras.Model, x: Any, preprocessing: Any = None,
              directory: str | None = None) -> bool:
    """Whether a sound cache entry holds `model`'s features on `x` (nothing is computed)."""
    key, _ = cache_key(model, x, preprocessing)
    return _is_sound(os.path.join(cache_root(directory), key), key, _num_examples(x))


def compute_features(model, dataset, verbose="auto"):
    """Runs the backbone and pooling once over a batched `tf.data.Dataset` (one trace)."""
    return predict_batches(feature_model(model), dataset, verbose=verbose)


def cached_features(
    model: keras.Model,
    x: Any,
    make_dataset: Callable[[Any], tf.data.Dataset],
    preprocessing: Any = None,
    directory: str | None = None,
    verbose: str | int = "auto",
    augment: Any = None,
) -> tuple[np.ndarray, bool]:
    """Features of raw inputs `x`, from the cache or computed once and stored.

    Refuses (`CacheRefusedError`) when the backbone has trainable weights or
    `augment` is given: cached features would then be wrong. A broken entry
    (truncated or missing files, an unreadable key file) counts as a miss:
    the features are recomputed and the entry replaced, with a warning.

    Args:
        model: keras.Model built by `tfft.build_model`, backbone frozen. The
            key is read from it (see `cache_key`).
        x: raw inputs (array of strings, images, or dict of arrays).
        make_dataset: callable `x -> tf.data.Dataset` of preprocessed batches.
        preprocessing: JSON-able extra settings for the key, for a
            `make_dataset` that does more than `model.preprocessor`; not
            needed otherwise. Defaults to None.
        directory: str. Cache root. Defaults to `$TFFT_CACHE_DIR/features`.
        verbose: Keras verbosity of the backbone pass.
        augment: a random augmentation the caller would apply, or None.

    Returns:
        `(features, hit)`: a float array `(len(x), dim)` (memory-mapped from
        disk on a hit) and whether it came from the cache.
    """
    check_cacheable(model, augment)
    key, parts = cache_key(model, x, preprocessing)
    entry = os.path.join(cache_root(directory), key)
    features, problem = _read_entry(entry, key, _num_examples(x))
    if features is not None:
        return features, True
    if problem is not None:
        logger.warning("Feature cache entry %s is broken (%s); recomputing and replacing it.",
                       entry, problem)
    features = compute_features(model, make_dataset(x), verbose=verbose)
    _store_entry(entry, key, features, parts)
    return features, False


# -- managing the cache -----------------------------------------------------------------


def _is_entry(path):
    """A folder tfft wrote as an entry: its key file in it and nothing but entry files."""
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    names = os.listdir(path)
    return (KEY_FILE in names and set(names) <= ENTRY_FILES
            and all(os.path.isfile(os.path.join(path, n)) for n in names))


def _holds_only_entry_files(path):
    """A real folder holding nothing but (partly written) entry files."""
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    return all((n in ENTRY_FILES or _STAGING_FILE.fullmatch(n))
               and os.path.isfile(os.path.join(path, n)) and not os.path.islink(
                   os.path.join(path, n))
               for n in os.listdir(path))


def _is_own_temporary(name, path):
    """A staging, discarded-entry or replaced-entry folder tfft left behind."""
    staging = _STAGING_NAME.fullmatch(name)
    if staging and not os.path.islink(path) and os.path.isdir(path):
        # `staged_directory`'s staging folder (entry files, or a folder named after the
        # key that holds them), or a broken entry moved aside (`v`, see `_discard`).
        names = os.listdir(path)
        if len(names) == 1 and names[0] in ("v", staging.group(1)):
            return _holds_only_entry_files(os.path.join(path, names[0]))
        return _holds_only_entry_files(path)
    if _OLD_NAME.fullmatch(name) and not os.path.islink(path) and os.path.isdir(path):
        # `staged_directory` moves the entry it replaces to `.old-*/v` before deleting it.
        names = os.listdir(path)
        return set(names) <= {"v"} and (not names
                                         or _holds_only_entry_files(os.path.join(path, "v")))
    return False


def list_cached(directory: str | None = None) -> list[dict[str, Any]]:
    """Lists cache entries: `[{"key", "backbone", "shape", "bytes", ...}]`.

    A broken entry is listed with `"broken"`: why it will be recomputed.
    """
    root = cache_root(directory)
    entries = []
    for key in sorted(os.listdir(root)):
        path = os.path.join(root, key)
        if not _KEY_NAME.fullmatch(key) or not _is_entry(path):
            continue
        size = sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))
        try:
            with open(os.path.join(path, KEY_FILE), encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError) as error:
            entries.append({"key": key, "bytes": size, "broken": f"{KEY_FILE}: {error}"})
            continue
        meta = meta if isinstance(meta, dict) else {}
        shape = meta.get("shape")
        rows = shape[0] if isinstance(shape, list) and shape else None
        _, problem = _read_entry(path, key, rows)
        entries.append({**meta, "key": key, "bytes": size,
                        **({"broken": problem} if problem else {})})
    return entries


def clear_cache(directory: str | None = None, key: str | None = None) -> int:
    """Deletes tfft's cache entries (or only `key`); returns how many were removed.

    Only what tfft wrote is deleted: entry folders (named by their 32-digit
    key, holding its key file and features and nothing else) and the staging
    folders tfft leaves behind when interrupted. Anything else under the root
    (your files and folders, when the root is a shared folder) stays.

    Args:
        directory: str. Cache root. Defaults to `$TFFT_CACHE_DIR/features`.
        key: str. One entry's key (as in `list_cached()`), or None for all.
    """
    root = cache_root(directory)
    if key is not None:
        if not isinstance(key, str) or not _KEY_NAME.fullmatch(key):
            raise ValueError(
                "A cache key is 32 lowercase hex digits, as `list_cached()` gives. "
                f"Received: key={key!r}"
            )
        path = os.path.join(root, key)
        if not _is_entry(path):
            return 0
        shutil.rmtree(path)
        return 1
    removed = 0
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if _KEY_NAME.fullmatch(name) and _is_entry(path):
            shutil.rmtree(path)
            removed += 1
        elif _is_own_temporary(name, path):
            shutil.rmtree(path, ignore_errors=True)
    return removed


def head_model(model):
    """A model from pooled features to outputs that shares `model`'s head."""
    head = model.get_layer("head")
    dim = model.get_layer("pooling").output.shape[-1]
    return keras.Sequential([keras.Input((dim,)), head], name="cached_head")


def features_dataset(
    features: np.ndarray,
    labels: Any = None,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int | None = 0,
) -> tf.data.Dataset:
    """A batched `tf.data.Dataset` reading rows of a (memory-mapped) feature array.

    Rows are read batch by batch, so features larger than memory (an `np.load(...,
    mmap_mode="r")` array from the cache) are never loaded whole.

    Args:
        features: array `(n, dim)`, e.g. from `cached_features`.
        labels: array of `n` targets, or None.
        batch_size: int. Rows per batch. Defaults to 32.
        shuffle: bool. Reshuffle the row order every epoch. Defaults to False.
        seed: int. Shuffle seed.
    """
    n = len(features)
    dim = features.shape[1:]
    labels = None if labels is None else np.asarray(labels)
    order = tf.data.Dataset.range(n)
    if shuffle:
        order = order.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    order = order.batch(batch_size)

    def rows(indices):
        # Sorted reads are sequential on disk; the batch keeps the shuffled order.
        sort = np.argsort(indices)
        batch = np.empty((len(indices), *dim), dtype="float32")
        batch[sort] = features[indices[sort]]
        return batch

    def read(indices):
        x = tf.numpy_function(rows, [indices], tf.float32)
        x.set_shape((None, *dim))
        if labels is None:
            return x
        y = tf.gather(tf.constant(labels), indices)
        return x, y

    return order.map(read).prefetch(tf.data.AUTOTUNE)


def fit_cached(
    model: keras.Model,
    x_train: Any,
    y_train: Any,
    validation_data: tuple[Any, Any] | None = None,
    make_dataset: Callable[[Any], tf.data.Dataset] | None = None,
    epochs: int = 1,
    batch_size: int = 32,
    optimizer: keras.optimizers.Optimizer | str | None = None,
    loss: Any = None,
    metrics: list | None = None,
    preprocessing: Any = None,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    shuffle: bool = True,
    seed: int = 0,
    in_memory: bool = True,
    directory: str | None = None,
    augment: Any = None,
    verbose: str | int = "auto",
    strategy: tf.distribute.Strategy | None = None,
) -> keras.callbacks.History:
    """Trains `model`'s head on cached backbone features, in one call.

    The backbone runs once per example (or not at all on a cache hit); the
    head trains on the features for `epochs`. The head layer is shared, so
    `model` itself is trained and predicts on raw inputs afterwards. This is
    the head stage of the main job (`tfft.run_job`); `tfft.fine_tune(...,
    freeze_epochs=0)` continues from it with the backbone opened.

    Args:
        model: keras.Model. A `tfft.Task` (or a model with layers
            `"backbone"`, `"pooling"` and `"head"`), backbone frozen.
        x_train: raw training inputs (strings, images, or dict of arrays).
        y_train: training targets.
        validation_data: `(x_val, y_val)` raw inputs and targets, or None.
        make_dataset: callable `x -> tf.data.Dataset` of preprocessed,
            batched inputs (no labels), used for the one backbone pass.
            Defaults to `model.make_dataset` when the model has one (a
            `tfft.Task`).
        epochs: int. Head epochs. Defaults to 1.
        batch_size: int. Head batch size (global under a multi-replica
            `strategy`). Defaults to 32.
        optimizer: Keras optimizer or name. Defaults to Adam(1e-3). Under a
            `strategy`, create an optimizer object inside `strategy.scope()`.
        loss: Keras loss. Defaults to the task preset of the model's head.
        metrics: list of Keras metrics. Default to the task preset's.
        preprocessing: JSON-able extra settings for the cache key, for a
            `make_dataset` that does more than `model.preprocessor`. Not
            needed otherwise: the key covers the model's preprocessor,
            pooling and backbone by itself (see `cache_key`).
        callbacks: list of Keras callbacks for the head's `fit` (they see
            the head model, which shares the head's weights).
        shuffle: bool. Shuffle rows each epoch. Defaults to True.
        seed: int. Shuffle seed for the disk-backed path. Defaults to 0.
        in_memory: bool. Load features into memory (default) or stream them
            from the memory-mapped cache files.
        directory: str. Cache root. Defaults to `$TFFT_CACHE_DIR/features`.
        augment: refused when not None (see `cached_features`).
        verbose: Keras verbosity.
        strategy: tf.distribute.Strategy. Compiles and trains the head
            inside its scope, across its replicas; the model must have been
            built in it (`tfft.build_model(..., strategy=strategy)`).
            Defaults to the current strategy.

    Returns:
        The head's `keras.callbacks.History`, with `cache_hits` (train,
        validation) and `feature_seconds` attributes.

    Example:

    >>> task = tfft.build_model("minilm", num_classes=5)
    >>> history = tfft.fit_cached(task, train.x, train.y, (val.x, val.y), epochs=10)
    >>> history.cache_hits   # (False, False) the first time, (True, True) after
    """
    if make_dataset is None:
        make_dataset = getattr(model, "make_dataset", None)
    if make_dataset is None or not callable(make_dataset):
        raise TypeError(
            "fit_cached needs make_dataset: a callable mapping raw inputs to a batched "
            "tf.data.Dataset of model inputs (a tfft.Task provides its own). Received: "
            f"make_dataset={make_dataset!r}"
        )
    if strategy is not None and not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(
            f"strategy must be a tf.distribute.Strategy (see tfft.get_strategy). Received: "
            f"{type(strategy).__name__}"
        )
    strategy = strategy or tf.distribute.get_strategy()
    check_cacheable(model, augment)
    started = time.time()
    train_f, hit_train = cached_features(model, x_train, make_dataset, preprocessing,
                                         directory=directory, verbose=verbose)
    val_f = hit_val = None
    if validation_data is not None:
        x_val, y_val = validation_data
        val_f, hit_val = cached_features(model, x_val, make_dataset, preprocessing,
                                         directory=directory, verbose=verbose)
    feature_seconds = time.time() - started
    head_layer = model.get_layer("head")
    task = getattr(head_layer, "task", "multiclass")
    with strategy.scope():
        head = head_model(model)
        head.compile(
            optimizer=optimizer or keras.optimizers.Adam(1e-3),
            loss=loss or TASK_PRESETS[task]["loss"],
            metrics=metrics if metrics is not None else task_metrics(
                task, getattr(head_layer, "num_classes", None)),
        )
    prepare_model(head, strategy)
    if in_memory:
        train_arg = dict(x=np.asarray(train_f), y=np.asarray(y_train), batch_size=batch_size,
                         shuffle=shuffle)
        val_arg = None if val_f is None else (np.asarray(val_f), np.asarray(y_val))
    else:
        # The dataset shuffles itself; fit's own shuffle only applies to arrays.
        train_arg = dict(x=features_dataset(train_f, y_train, batch_size, shuffle, seed),
                         shuffle=False)
        val_arg = None if val_f is None else features_dataset(val_f, y_val, batch_size)
    callbacks = list(callbacks or [])
    if not any(isinstance(c, DivergenceGuard) for c in callbacks):
        # As in fine_tune: a loss that explodes stops the head's training too.
        callbacks.append(DivergenceGuard())
    history = head.fit(**train_arg, validation_data=val_arg, epochs=epochs,
                       callbacks=callbacks, verbose=verbose)
    history.cache_hits = (hit_train, hit_val)
    history.feature_seconds = feature_seconds
    return history
