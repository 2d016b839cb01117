"""Frozen-feature caching: feature extraction at the cost of one backbone pass.

With a frozen backbone called in inference mode, its pooled features never
change, yet a plain `fit` recomputes them every epoch. `fit_head_cached`
computes them once (kept on disk as `.npy` files, memory-mapped when read)
and trains the head on them; the head layer is shared with the full model, so
the result is the ordinary model and predicts on raw inputs as before.

A cache entry is keyed by the backbone's identity and weights, the
preprocessing settings and a fingerprint of the data, so a change in any of
them never reuses stale features. Entries live under `$TFFT_CACHE_DIR/features`
(default `~/.cache/tfft/features`); `list_cached()` and `clear_cache()` manage
them.
"""

import hashlib
import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np

from tfft import assets
from tfft.freeze import find_backbone_layer


class CacheRefusedError(ValueError):
    """Caching would give wrong results for this model or data."""


def cache_root(directory=None):
    return directory or assets.cache_dir("features")


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
    digest = hashlib.sha256()
    for weight in layer.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
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
    """The key of `model`'s features on raw inputs `x`."""
    backbone = find_backbone_layer(model)
    parts = {
        "backbone": backbone.backbone.name,
        "backbone_class": type(backbone.backbone).__name__,
        "weights": weights_fingerprint(backbone),
        "pooling": model.get_layer("pooling").get_config().get("mode"),
        "preprocessing": preprocessing,
        "data": data_fingerprint(x),
    }
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32], parts


def compute_features(model, dataset, verbose="auto"):
    """Runs the backbone and pooling once over a batched `tf.data.Dataset`."""
    return feature_model(model).predict(dataset, verbose=verbose)


def cached_features(model, x, make_dataset, preprocessing=None, directory=None,
                    verbose="auto"):
    """Features of raw inputs `x`, from the cache or computed once and stored.

    Args:
        model: keras.Model built by `tfft.build_model`, backbone frozen.
        x: raw inputs (array of strings, images, or dict of arrays).
        make_dataset: callable `x -> tf.data.Dataset` of preprocessed batches.
        preprocessing: JSON-able description of preprocessing settings, part
            of the key.
        directory: str. Cache root. Defaults to `$TFFT_CACHE_DIR/features`.

    Returns:
        `(features, hit)`: a float array `(len(x), dim)` and whether it came
        from the cache.
    """
    key, parts = cache_key(model, x, preprocessing)
    root = cache_root(directory)
    entry = os.path.join(root, key)
    path = os.path.join(entry, "features.npy")
    if os.path.exists(path):
        return np.load(path, mmap_mode="r"), True
    features = compute_features(model, make_dataset(x), verbose=verbose)
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(dir=root, prefix=".tmp-")
    try:
        np.save(os.path.join(staging, "features.npy"), features)
        with open(os.path.join(staging, "key.json"), "w") as f:
            json.dump({**parts, "shape": list(features.shape), "created": time.time()}, f)
        os.replace(staging, entry)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not os.path.exists(path):
            raise
    return features, False


def list_cached(directory=None):
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


def clear_cache(directory=None):
    """Deletes every cache entry; returns how many were removed."""
    root = cache_root(directory)
    removed = 0
    for key in os.listdir(root):
        shutil.rmtree(os.path.join(root, key), ignore_errors=True)
        removed += not key.startswith(".")
    return removed


def head_model(model):
    """A model from pooled features to outputs that shares `model`'s head."""
    head = model.get_layer("head")
    dim = model.get_layer("pooling").output.shape[-1]
    return keras.Sequential([keras.Input((dim,)), head], name="cached_head")
