"""KerasCV image backbones (`keras_cv:NAME`).

NAME is one of:

- a backbone class with an explicit config, e.g. `keras_cv:MobileNetV3Backbone`
  with `stackwise_expansion=..., stackwise_filters=..., ...` as keyword
  arguments: builds offline, randomly initialised;
- a preset, e.g. `keras_cv:mobilenet_v3_small_imagenet` or
  `keras_cv:resnet50_v2_imagenet`: downloads config and weights;
- an alias class, e.g. `keras_cv:ResNet18V2Backbone`: KerasCV fetches its
  preset config from the network, so it needs the network as well;
- a local preset directory saved with KerasCV's `save_to_preset`: offline.

Downloads are checked first and fail in seconds offline, naming the local
alternatives. The backbone's feature map is pooled, so `Backbone.model` maps
`(B, H, W, 3)` to `(B, C)` features (`pooling=None` keeps `(B, h, w, C)`).
KerasCV backbones built with `include_rescaling=True` (the default here) take
0-255 pixels, so the preprocessor only resizes; without it, it also scales to
[0, 1].
"""

import inspect
import json
import os

import keras

from tfft.backbones.applications import cnn_block_names
from tfft.backbones.base import Backbone, BackboneInfo
from tfft.layers.image_preprocessor import NORMALISATIONS, ImagePreprocessor, _as_size
from tfft.utils.network import require_network

# Not single-image classification backbones: point clouds, video, detection pyramids.
# The first entry is the shared base class, skipped itself but not its subclasses.
_EXCLUDED = ("Backbone", "CenterPillarBackbone", "VideoSwinBackbone", "YOLOV8Backbone")

# (preset, params from the KerasCV preset card (0: not published), feature_dim, description)
_CATALOG_FIGURES = [
    ("mobilenet_v3_small_imagenet", 933_502, 576, "MobileNetV3 small, ImageNet"),
    ("mobilenet_v3_large_imagenet", 2_994_518, 960, "MobileNetV3 large, ImageNet"),
    ("resnet50_imagenet", 23_561_152, 2048, "ResNet-50 v1, ImageNet"),
    ("resnet50_v2_imagenet", 23_564_800, 2048, "ResNet-50 v2, ImageNet"),
    ("efficientnetv2_b0_imagenet", 5_919_312, 1280, "EfficientNetV2-B0, ImageNet"),
    ("efficientnetv2_b1_imagenet", 6_931_124, 1280, "EfficientNetV2-B1, ImageNet"),
    ("efficientnetv2_b2_imagenet", 8_769_374, 1408, "EfficientNetV2-B2, ImageNet"),
    ("efficientnetv2_s_imagenet", 20_331_360, 1280, "EfficientNetV2-S, ImageNet"),
    ("densenet121_imagenet", 0, 1024, "DenseNet-121, ImageNet"),
    ("csp_darknet_tiny_imagenet", 2_380_416, 384, "CSPDarkNet tiny, ImageNet"),
    ("csp_darknet_l_imagenet", 27_111_424, 1024, "CSPDarkNet L, ImageNet"),
]


def known_backbones():
    return [
        BackboneInfo(
            name=name, source="keras_cv", modality="image", family="cnn",
            spec=f"keras_cv:{name}", params=params, feature_dim=dim, input_size=(224, 224),
            preprocessing="resize to 224x224, rescaling inside the model",
            description=description,
        )
        for name, params, dim, description in _CATALOG_FIGURES
    ]


def _import_keras_cv():
    try:
        import keras_cv
    except ImportError:
        raise ImportError(
            "keras_cv backbones need tfft's cv extra (KerasCV 0.9): "
            "`pip install \"tfft[cv]\"`."
        ) from None
    return keras_cv


def _classes(keras_cv):
    """Returns ({base class name: class}, {alias class name: class})."""
    excluded = tuple(
        getattr(keras_cv.models, name) for name in _EXCLUDED[1:] if hasattr(keras_cv.models, name)
    )
    bases, aliases = {}, {}
    for name in dir(keras_cv.models):
        obj = getattr(keras_cv.models, name)
        if not (name.endswith("Backbone") and inspect.isclass(obj)):
            continue
        if obj is keras_cv.models.Backbone or issubclass(obj, excluded):
            continue
        (aliases if "aliases" in obj.__module__ else bases)[name] = obj
    return bases, aliases


def _presets(bases):
    """Returns {preset name: (base class, download handle)}."""
    found = {}
    for cls in bases.values():
        for preset, entry in cls.presets.items():
            found[preset] = (cls, entry.get("kaggle_handle", ""))
    return found


def _accepts(cls, argument):
    """Whether a backbone (or alias) class takes `argument`."""
    method = cls.__new__ if "aliases" in cls.__module__ else cls.__init__
    return argument in inspect.signature(method).parameters


def _saved_config_has(directory, key):
    try:
        with open(os.path.join(directory, "config.json")) as f:
            return key in json.load(f).get("config", {})
    except (OSError, ValueError):
        return False


def _download_url(handle):
    # KerasCV hosts some presets on Kaggle and some on Google Cloud Storage.
    if handle.startswith("gs://"):
        return "https://storage.googleapis.com/" + handle[len("gs://"):]
    return None


def load(name, input_size=224, pooling="avg", include_rescaling=True, **kwargs):
    """Loads a KerasCV image backbone.

    Args:
        name: str. A backbone class with explicit config kwargs, a preset, an
            alias class or a local preset directory (see the module docstring).
        input_size: int or tuple of 2 ints. Model input size. Defaults to 224.
        pooling: str or None. `"avg"`, `"max"` or None (feature map).
            Defaults to `"avg"`.
        include_rescaling: bool. Rescale 0-255 inputs inside the model.
            Defaults to True.
        **kwargs: the backbone's config (explicit classes) or config
            overrides (presets).

    Example:

    >>> backbone = tfft.load_backbone(
    ...     "keras_cv:MobileNetV3Backbone", stackwise_expansion=[1, 4],
    ...     stackwise_filters=[8, 16], stackwise_kernel_size=[3, 3],
    ...     stackwise_stride=[2, 2], stackwise_se_ratio=[0.25, None],
    ...     stackwise_activation=["relu", "hard_swish"], input_size=64)
    """
    keras_cv = _import_keras_cv()
    if pooling not in ("avg", "max", None):
        raise ValueError(
            f"Unknown pooling. Expected 'avg', 'max' or None. Received: pooling={pooling!r}"
        )
    height, width = _as_size(input_size, "input_size")
    spec = f"keras_cv:{name}"
    bases, aliases = _classes(keras_cv)
    presets = _presets(bases)
    common = {"input_shape": (height, width, 3), "include_rescaling": include_rescaling}
    local_hint = (
        "a local KerasCV preset directory (keras_cv:/path/to/preset, saved with "
        "keras_cv.utils.preset_utils.save_to_preset), or an explicit config such as "
        "keras_cv:MobileNetV3Backbone with its stackwise_* keyword arguments."
    )
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        if not _saved_config_has(expanded, "include_rescaling"):
            common.pop("include_rescaling")
        model = keras_cv.models.Backbone.from_preset(expanded, **common, **kwargs)
        offline = True
    elif name in bases:
        cls = bases[name]
        if not _accepts(cls, "include_rescaling"):
            common.pop("include_rescaling")
        try:
            model = cls(**common, **kwargs)
        except TypeError as error:
            raise TypeError(
                f"{spec} builds from an explicit config: pass its arguments as keyword "
                f"arguments, or load a preset instead ({sorted(cls.presets)}). "
                f"Received: {sorted(kwargs)} ({error})"
            ) from None
        offline = True
    elif name in aliases or name in presets:
        cls = aliases[name] if name in aliases else presets[name][0]
        handles = [entry.get("kaggle_handle", "") for entry in cls.presets.values()]
        handle = presets[name][1] if name in presets else (handles or [""])[0]
        require_network("keras_cv", spec, local_hint, url=_download_url(handle))
        if not _accepts(cls, "include_rescaling"):
            common.pop("include_rescaling")
        if name in aliases:
            model = cls(**common, **kwargs)
        else:
            model = cls.from_preset(name, **common, **kwargs)
        offline = False
    elif os.sep in name or name.startswith("."):
        raise ValueError(
            f"The local KerasCV preset directory {name!r} does not exist. Pass an "
            f"existing directory, or one of the presets {sorted(presets)}."
        )
    else:
        raise ValueError(
            "Unknown KerasCV backbone. Expected a backbone class "
            f"{sorted(bases)}, an alias {sorted(aliases)}, a preset {sorted(presets)} "
            f"or a local preset directory. Received: {spec}"
        )
    return _wrap(model, name, spec, (height, width), pooling, offline)


def _wrap(model, name, spec, size, pooling, offline):
    outputs = model.outputs
    if len(outputs) != 1 or len(outputs[0].shape) != 4:
        raise ValueError(
            f"{spec} does not output a single (B, h, w, C) feature map, so it cannot "
            f"serve as an image-classification backbone. Received outputs: "
            f"{[tuple(o.shape) for o in outputs]}"
        )
    block_names = cnn_block_names(model)
    inputs = keras.Input(shape=(*size, 3), name="images")
    features = model(inputs)
    if pooling == "avg":
        features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    elif pooling == "max":
        features = keras.layers.GlobalMaxPooling2D(name="max_pool")(features)
    wrapped = keras.Model(inputs, features, name=f"{model.name}_features")
    rescales = getattr(model, "include_rescaling", True)
    preprocessor = ImagePreprocessor(size, **NORMALISATIONS["none" if rescales else "unit"])
    info = BackboneInfo(
        name=os.path.basename(os.path.normpath(name)), source="keras_cv", modality="image",
        family="cnn", spec=spec, params=wrapped.count_params(),
        feature_dim=int(wrapped.output_shape[-1]), input_size=tuple(size),
        preprocessing=preprocessor.describe()
        + (" (rescaling inside the model)" if rescales else ""),
        offline=offline,
        description=f"KerasCV {type(model).__name__}, output "
        f"{'(B, h, w, C) feature map' if pooling is None else f'{pooling}-pooled (B, C)'}",
    )
    return Backbone(wrapped, info, preprocessor=preprocessor, block_names=block_names)
