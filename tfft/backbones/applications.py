"""`keras.applications` CNNs as backbones (`keras_app:NAME`), plus image preprocessing.

Every `keras.applications` constructor is available by name (`MobileNetV2`,
`ResNet50`, `EfficientNetB0`, `VGG16`, `ConvNeXtTiny`, ...), built with
`include_top=False`. The returned `Backbone` has:

- `preprocessor`: an `ImagePreprocessor` that takes raw 0-255 images of any
  size (uint8 or float, `(H, W, 3)` or `(B, H, W, 3)`, grayscale `(..., 1)`
  too), resizes them to the backbone's input size and applies that family's own
  `preprocess_input` normalisation, with TensorFlow ops only, so it runs inside
  `tf.data` and inside exported SavedModels;
- `model`: maps the preprocessed batch `(B, H, W, 3)` to **pooled features
  `(B, C)`** (`pooling="avg"`, the default; `"max"` also pools) or, with
  `pooling=None`, to the last feature map `(B, h, w, C)`;
- `block_names`: the network's blocks bottom to top (MobileNetV2's `block_N`,
  ResNet's `convS_blockN`, EfficientNet's `block2a` ...), each a list of layer
  names; the stem joins the first block and the final 1x1 conv the last one.

Weights: `weights="imagenet"` (default) downloads and needs the network; it
fails in seconds offline with the local alternative in the message.
`weights=None` builds a randomly initialised network offline; a local `.h5` /
`.weights.h5` path loads those weights.
"""

import os
import re

import keras

from tfft.backbones.base import Backbone, BackboneInfo
from tfft.layers.image_preprocessor import NORMALISATIONS, ImagePreprocessor, _as_size
from tfft.utils.network import require_network

_BLOCK_PATTERNS = [
    re.compile(p)
    for p in (
        r"^(block_\d+)_",  # MobileNetV2
        r"^(expanded_conv(?:_\d+)?)_",  # MobileNetV2 first block, MobileNetV3
        r"^(conv\d+_block\d+)_",  # ResNet, ResNetV2, DenseNet
        r"^(pool\d+)_",  # DenseNet transitions
        r"^(block(?:35|17|8)_\d+)(?:_|$)",  # InceptionResNetV2
        r"^(mixed_\d+[a-z])(?:_|$)",  # InceptionResNetV2 reductions
        r"^(mixed\d+)(?:_\d+)?$",  # InceptionV3
        r"^(block\d+[a-z]?)_",  # EfficientNet(V2), VGG, Xception
        r"^(conv_(?:dw|pw)_\d+)(?:_|$)",  # MobileNet
        r"(stage_\d+_block_\d+)_",  # ConvNeXt
        r"^.*?(?:normal|reduction|adjust)_.*?_(stem_\d+|reduce_\d+|\d+)$",  # NASNet
    )
]


def _block_key(name):
    for index, pattern in enumerate(_BLOCK_PATTERNS):
        match = pattern.search(name)
        if match:
            key = match.group(1)
            # MobileNet's depthwise and pointwise halves form one block.
            return f"{index}:{re.sub(r'conv_(dw|pw)_', 'conv_', key)}"
    return None


def cnn_block_names(model):
    """Groups a CNN's layers into blocks, bottom to top, by layer-name pattern.

    Args:
        model: keras.Model. A functional CNN (keras.applications, KerasCV or
            KerasHub naming).

    Returns:
        A list of blocks, each a list of layer names. Blocks without weights
        merge into the next one. Empty when no layer name matches a known
        pattern.
    """
    groups = []  # [key, [names]]
    pending = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        key = _block_key(layer.name)
        if key is None:
            pending.append(layer.name)
            continue
        if groups and groups[-1][0] == key:
            groups[-1][1].extend([*pending, layer.name])
        else:
            groups.append([key, [*pending, layer.name]])
        pending = []
    if not groups:
        return []
    groups[-1][1].extend(pending)
    has_weights = {layer.name: bool(layer.weights) for layer in model.layers}
    blocks = []
    carry = []
    for _, names in groups:
        names = carry + names
        if any(has_weights.get(n) for n in names):
            blocks.append(names)
            carry = []
        else:
            carry = names
    if carry and blocks:
        blocks[-1].extend(carry)
    return blocks


# keras.applications module -> normalisation mode of its `preprocess_input`.
_FAMILY_NORMALISATION = {
    "convnext": "none",
    "densenet": "torch",
    "efficientnet": "none",
    "efficientnet_v2": "none",
    "inception_resnet_v2": "tf",
    "inception_v3": "tf",
    "mobilenet": "tf",
    "mobilenet_v2": "tf",
    "mobilenet_v3": "none",
    "nasnet": "tf",
    "resnet": "caffe",
    "resnet_v2": "tf",
    "vgg16": "caffe",
    "vgg19": "caffe",
    "xception": "tf",
}
# With `include_preprocessing=False` these families expect what their
# preprocessing layers would have produced.
_WITHOUT_BUILT_IN_PREPROCESSING = {
    "convnext": "torch",
    "efficientnet_v2": "tf",
    "mobilenet_v3": "tf",
}
_DEFAULT_SIZES = {
    "EfficientNetB1": 240, "EfficientNetB2": 260, "EfficientNetB3": 300,
    "EfficientNetB4": 380, "EfficientNetB5": 456, "EfficientNetB6": 528,
    "EfficientNetB7": 600, "EfficientNetV2B1": 240, "EfficientNetV2B2": 260,
    "EfficientNetV2B3": 300, "EfficientNetV2S": 384, "EfficientNetV2M": 480,
    "EfficientNetV2L": 480, "InceptionResNetV2": 299, "InceptionV3": 299,
    "NASNetLarge": 331, "Xception": 299,
}


def _catalog_entry(name, params, feature_dim, size, description):
    return BackboneInfo(
        name=name, source="keras_app", modality="image", family="cnn",
        spec=f"keras_app:{name}", params=params, feature_dim=feature_dim,
        input_size=(size, size),
        preprocessing=f"resize to {size}x{size}, "
        f"{_FAMILY_NORMALISATION[_family_of(name)]} normalisation",
        description=description,
    )


def _family_of(name):
    return getattr(keras.applications, name).__module__.rsplit(".", 1)[-1]


# Figures from building each with weights=None, include_top=False, pooling="avg".
CATALOG_FIGURES = [
    ("MobileNet", 3_228_864, 1024, 224, "MobileNet v1 (alpha 1.0)"),
    ("MobileNetV2", 2_257_984, 1280, 224, "MobileNetV2 (alpha 1.0), 16 inverted-residual blocks"),
    ("MobileNetV3Small", 939_120, 576, 224, "MobileNetV3 small, normalises inside"),
    ("MobileNetV3Large", 2_996_352, 960, 224, "MobileNetV3 large, normalises inside"),
    ("EfficientNetB0", 4_049_571, 1280, 224, "EfficientNet-B0, normalises inside"),
    ("EfficientNetV2B0", 5_919_312, 1280, 224, "EfficientNetV2-B0, normalises inside"),
    ("ResNet50", 23_587_712, 2048, 224, "ResNet-50 v1 (Caffe-style BGR input)"),
    ("ResNet50V2", 23_564_800, 2048, 224, "ResNet-50 v2 (pre-activation)"),
    ("DenseNet121", 7_037_504, 1024, 224, "DenseNet-121"),
    ("VGG16", 14_714_688, 512, 224, "VGG-16 conv base (Caffe-style BGR input)"),
    ("InceptionV3", 21_802_784, 2048, 299, "Inception v3"),
    ("Xception", 20_861_480, 2048, 299, "Xception"),
    ("ConvNeXtTiny", 27_820_128, 768, 224, "ConvNeXt-Tiny, normalises inside"),
    ("NASNetMobile", 4_269_716, 1056, 224, "NASNet-A mobile"),
]


def known_backbones():
    return [_catalog_entry(*row) for row in CATALOG_FIGURES]


def available_names():
    """Names of every `keras.applications` constructor, sorted."""
    return sorted(
        name
        for name in dir(keras.applications)
        if name[:1].isupper() and callable(getattr(keras.applications, name))
    )


def preprocessor_for(name, input_size=None, include_preprocessing=True, **resize_options):
    """Returns the `ImagePreprocessor` matching `keras.applications.NAME`.

    Args:
        name: str. A `keras.applications` constructor name.
        input_size: int or tuple. Output size; the model's default when None.
        include_preprocessing: bool. Whether the model normalises inside
            itself (ConvNeXt, EfficientNetV2, MobileNetV3 only).
        **resize_options: `interpolation`, `antialias`, `crop_to_aspect_ratio`.
    """
    family = _family_of(_check_name(name))
    mode = _FAMILY_NORMALISATION[family]
    if not include_preprocessing and family in _WITHOUT_BUILT_IN_PREPROCESSING:
        mode = _WITHOUT_BUILT_IN_PREPROCESSING[family]
    size = _as_size(input_size or _DEFAULT_SIZES.get(name, 224), "input_size")
    return ImagePreprocessor(size, **NORMALISATIONS[mode], **resize_options)


def _check_name(name):
    names = available_names()
    if name not in names:
        raise ValueError(
            f"Unknown keras.applications model. Expected one of {names}. "
            f"Received: keras_app:{name}"
        )
    return name


def _check_weights(name, weights):
    if weights is None:
        return None
    if not isinstance(weights, str):
        raise TypeError(
            "weights must be 'imagenet', None or a local weights file path. "
            f"Received: weights of type {type(weights).__name__}"
        )
    if weights == "imagenet":
        require_network(
            "keras_app", f"keras_app:{name}",
            f'tfft.load_backbone("keras_app:{name}", weights="/path/to/{name}_notop.h5") '
            "(ImageNet weights without the top, downloaded elsewhere), or weights=None "
            "for a randomly initialised network.",
        )
        return weights
    path = os.path.expanduser(weights)
    if not os.path.isfile(path):
        raise ValueError(
            "weights must be 'imagenet', None or an existing weights file "
            f"(.h5 / .weights.h5). Received: weights={weights!r}, which does not exist"
        )
    return path


def load(name, weights="imagenet", input_size=None, pooling="avg", **kwargs):
    """Loads a `keras.applications` CNN (without its top) as a backbone.

    Args:
        name: str. Constructor name, e.g. `"MobileNetV2"`, `"ResNet50"`.
        weights: str or None. `"imagenet"` (downloads; needs the network),
            None (random initialisation) or a local weights file path.
            Defaults to `"imagenet"`.
        input_size: int or tuple of 2 ints. Model input size; the model's
            default (224, or 299 for Inception/Xception, ...) when None.
        pooling: str or None. `"avg"` or `"max"` give `(B, C)` features;
            None gives the `(B, h, w, C)` feature map. Defaults to `"avg"`.
        **kwargs: more constructor arguments, e.g. `alpha=0.35`; and the
            preprocessor's `interpolation`, `antialias`, `crop_to_aspect_ratio`.

    Returns:
        A `Backbone`; raw 0-255 images go through `backbone.preprocessor`.

    Example:

    >>> backbone = tfft.load_backbone("keras_app:MobileNetV2", weights=None,
    ...                               alpha=0.35, input_size=96)
    >>> backbone.model(backbone.preprocess(np.zeros((1, 120, 90, 3)))).shape
    TensorShape([1, 1280])
    """
    _check_name(name)
    if pooling not in ("avg", "max", None):
        raise ValueError(
            f"Unknown pooling. Expected 'avg', 'max' or None. Received: pooling={pooling!r}"
        )
    resize_options = {
        k: kwargs.pop(k) for k in ("interpolation", "antialias", "crop_to_aspect_ratio")
        if k in kwargs
    }
    for reserved in ("include_top", "input_shape", "input_tensor"):
        if reserved in kwargs:
            raise ValueError(
                f"keras_app backbones are built with include_top=False and an input of "
                f"input_size; {reserved} cannot be set. Received: {reserved}={kwargs[reserved]!r}"
            )
    preprocessor = preprocessor_for(
        name, input_size, kwargs.get("include_preprocessing", True), **resize_options
    )
    weights = _check_weights(name, weights)
    height, width = preprocessor.image_size
    model = getattr(keras.applications, name)(
        include_top=False, weights=weights, input_shape=(height, width, 3),
        pooling=pooling, **kwargs,
    )
    info = BackboneInfo(
        name=name, source="keras_app", modality="image", family="cnn",
        spec=f"keras_app:{name}", params=model.count_params(),
        feature_dim=int(model.output_shape[-1]), input_size=(height, width),
        preprocessing=preprocessor.describe(), offline=weights != "imagenet",
        description=f"keras.applications.{name}, weights={_weights_label(weights)}, "
        f"output {'(B, h, w, C) feature map' if pooling is None else f'{pooling}-pooled (B, C)'}",
    )
    return Backbone(model, info, preprocessor=preprocessor, block_names=cnn_block_names(model))


def _weights_label(weights):
    if weights in (None, "imagenet"):
        return str(weights)
    return os.path.basename(weights)
