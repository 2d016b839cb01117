"""Frozen-feature caching: feature extraction at the cost of one backbone pass.

With a frozen backbone called in inference mode, its pooled features never
change, yet a plain `fit` recomputes them every epoch. `fit_cached`
computes them once (kept on disk as `.npy` files, memory-mapped when read)
and trains the head on them; the head layer is shared with the full model, so
the result is the ordinary model and predicts on raw inputs as before.

A cache entry is keyed by the backbone's identity and weights, the
preprocessing settings and a fingerprint of the data, so a change in any of
them never reuses stale features. Entries live under `$TFFT_CACHE_DIR/features`
(default `~/.cache/tfft/features`); `list_cached()` and `clear_cache()` manage
them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft import assets
from tfft.adapt.freeze import find_backbone_layer
from tfft.distribute import prepare_model
from tfft.training.presets import TASK_PRESETS, task_metrics
from tfft.utils.files import staged_directory


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


def cache_key(model, x, preprocessing=None):
    """The key of `model`'s features on raw inputs `x`.

    Returns:
        `(key, parts)`: a 32-character hex key and the dict it hashes
        (backbone name, class and weights, output key, dtype policy, pooling,
        preprocessing settings, data fingerprint).
    """
    backbone = find_backbone_layer(model)
    parts = {
        "backbone": backbone.backbone.name,
        "backbone_class": type(backbone.backbone).__name__,
        "weights": weights_fingerprint(backbone),
        "output_key": getattr(backbone, "output_key", None),
        "dtype_policy": backbone.dtype_policy.name,
        "pooling": model.get_layer("pooling").get_config().get("mode"),
        "preprocessing": preprocessing,
        "data": data_fingerprint(x),
    }
    # The display name stays out of the key (see `weights_fingerprint`).
    keyed = {k: v for k, v in parts.items() if k != "backbone"}
    blob = json.dumps(keyed, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32], parts


def compute_features(model, dataset, verbose="auto"):
    """Runs the backbone and pooling once over a batched `tf.data.Dataset`."""
    return feature_model(model).predict(dataset, verbose=verbose)


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
    `augment` is given: cached features would then be wrong.

    Args:
        model: keras.Model built by `tfft.build_model`, backbone frozen.
        x: raw inputs (array of strings, images, or dict of arrays).
        make_dataset: callable `x -> tf.data.Dataset` of preprocessed batches.
        preprocessing: JSON-able description of preprocessing settings, part
            of the key.
        directory: str. Cache root. Defaults to `$TFFT_CACHE_DIR/features`.
        verbose: Keras verbosity of the backbone pass.
        augment: a random augmentation the caller would apply, or None.

    Returns:
        `(features, hit)`: a float array `(len(x), dim)` (memory-mapped from
        disk on a hit) and whether it came from the cache.
    """
    check_cacheable(model, augment)
    key, parts = cache_key(model, x, preprocessing)
    root = cache_root(directory)
    entry = os.path.join(root, key)
    path = os.path.join(entry, "features.npy")
    if os.path.exists(path):
        return np.load(path, mmap_mode="r"), True
    features = compute_features(model, make_dataset(x), verbose=verbose)
    # Several processes may fill the same entry at once: the first complete copy wins.
    with staged_directory(entry, is_complete=_entry_complete) as staging:
        np.save(os.path.join(staging, "features.npy"), features)
        meta = {**parts, "shape": list(features.shape), "created": time.time()}
        with open(os.path.join(staging, "key.json"), "w") as f:
            json.dump(meta, f)
    return features, False


def _entry_complete(entry):
    return os.path.exists(os.path.join(entry, "features.npy"))


def list_cached(directory: str | None = None) -> list[dict[str, Any]]:
    """Lists cache entries: `[{"key", "backbone", "shape", "bytes", ...}]`."""
    root = cache_root(directory)
    entries = []
    for key in sorted(os.listdir(root)):
        meta_path = os.path.join(root, key, "key.json")
        if key.startswith(".") or not os.path.exists(meta_path):
            continue
        with open(meta_path) as f:
            meta = json.load(f)
        size = os.path.getsize(os.path.join(root, key, "features.npy"))
        entries.append({"key": key, "bytes": size, **meta})
    return entries


def clear_cache(directory: str | None = None, key: str | None = None) -> int:
    """Deletes every cache entry (or only `key`); returns how many were removed."""
    root = cache_root(directory)
    if key is not None:
        path = os.path.join(root, key)
        if key.startswith(".") or os.sep in key or not os.path.isdir(path):
            return 0
        shutil.rmtree(path)
        return 1
    removed = 0
    for name in os.listdir(root):
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        removed += not name.startswith(".")
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
        preprocessing: JSON-able preprocessing settings, part of the cache
            key. Defaults to the config of `model.preprocessor` when
            `make_dataset` defaults to `model.make_dataset`.
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
        preprocessor = getattr(model, "preprocessor", None)
        if preprocessing is None and preprocessor is not None:
            preprocessing = {"preprocessor": preprocessor.get_config()}
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
    history = head.fit(**train_arg, validation_data=val_arg, epochs=epochs,
                       callbacks=None if callbacks is None else list(callbacks),
                       verbose=verbose)
    history.cache_hits = (hit_train, hit_val)
    history.feature_seconds = feature_seconds
    return history
