"""The `tfhub:` backbone source: TF Hub handles and local TF2 SavedModels as backbones."""

import os

import keras
import tensorflow as tf

from tfft.backbones.base import Backbone, BackboneInfo
from tfft.layers.hub_layer import HubLayer, is_url

# -- the `tfhub:` backbone source ----------------------------------------------

_BERT_OUTPUTS = "pooled_output [batch, 768], sequence_output [batch, seq, 768]"

CATALOG = [
    BackboneInfo(
        name="bert_en_uncased_L-12_H-768_A-12", source="tfhub", modality="text",
        family="transformer",
        spec="tfhub:https://tfhub.dev/tensorflow/bert_en_uncased_L-12_H-768_A-12/3",
        params=109_482_240, feature_dim=768, input_size=128,
        preprocessing=(
            "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3 (WordPiece, uncased, "
            "length 128; needs tensorflow-text)"
        ),
        output_key="pooled_output", mask_key="input_mask",
        description=f"BERT base uncased (TF Hub), 12 layers, 768 wide; {_BERT_OUTPUTS}",
    ),
    BackboneInfo(
        name="small_bert_en_uncased_L-2_H-128_A-2", source="tfhub", modality="text",
        family="transformer",
        spec="tfhub:https://tfhub.dev/tensorflow/small_bert/bert_en_uncased_L-2_H-128_A-2/1",
        params=4_385_920, feature_dim=128, input_size=128,
        preprocessing=(
            "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3 (WordPiece, uncased, "
            "length 128; needs tensorflow-text)"
        ),
        output_key="pooled_output", mask_key="input_mask",
        description="Small BERT uncased (TF Hub), 2 layers, 128 wide: quick experiments",
    ),
    BackboneInfo(
        name="universal_sentence_encoder", source="tfhub", modality="text",
        family="transformer",
        spec="tfhub:https://tfhub.dev/google/universal-sentence-encoder/4",
        params=0, feature_dim=512, input_size=None,
        preprocessing="none: takes raw strings, tokenizes inside (no XLA)",
        description="Universal Sentence Encoder v4 (DAN), strings in, 512-d embeddings out",
    ),
    BackboneInfo(
        name="mobilenet_v2_100_224_feature_vector", source="tfhub", modality="image",
        family="cnn",
        spec="tfhub:https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5",
        params=2_257_984, feature_dim=1280, input_size=(224, 224),
        preprocessing="RGB floats in [0, 1] (divide 0-255 pixels by 255)",
        description="MobileNet V2 1.0 ImageNet feature vector (TF Hub), 1280-d",
    ),
    BackboneInfo(
        name="efficientnet_b0_feature_vector", source="tfhub", modality="image",
        family="cnn",
        spec="tfhub:https://tfhub.dev/tensorflow/efficientnet/b0/feature-vector/1",
        params=4_049_564, feature_dim=1280, input_size=(224, 224),
        preprocessing="RGB floats in [0, 1] (divide 0-255 pixels by 255)",
        description="EfficientNet B0 ImageNet feature vector (TF Hub), 1280-d",
    ),
    BackboneInfo(
        name="efficientnet_v2_imagenet1k_b0_feature_vector", source="tfhub",
        modality="image", family="cnn",
        spec=(
            "tfhub:https://tfhub.dev/google/imagenet/efficientnet_v2_imagenet1k_b0/"
            "feature_vector/2"
        ),
        params=5_919_312, feature_dim=1280, input_size=(224, 224),
        preprocessing="RGB floats in [0, 1] (divide 0-255 pixels by 255)",
        description="EfficientNetV2 B0 ImageNet-1k feature vector (TF Hub), 1280-d",
    ),
]
_BY_HANDLE = {info.spec.partition(":")[2]: info for info in CATALOG}
_BY_NAME = {info.name: info for info in CATALOG}


def known_backbones():
    """Well-known TF Hub models, loaded online with `tfhub:<URL>`.

    Parameter counts are those of the matching Keras/KerasHub architecture; 0
    means not known before loading.
    """
    return list(CATALOG)


def _keras_input(spec, name):
    shape = tuple(spec.shape[1:]) if spec.shape.rank else ()
    return keras.Input(shape=shape, dtype=spec.dtype.name, name=name)


def _model_inputs(spec):
    """Keras inputs mirroring a SavedModel's input spec, or None if unknown."""
    if isinstance(spec, tf.TensorSpec) and spec.shape.rank:
        return _keras_input(spec, spec.name or "inputs")
    if isinstance(spec, dict) and spec and all(
        isinstance(s, tf.TensorSpec) and s.shape.rank for s in spec.values()
    ):
        return {key: _keras_input(s, key) for key, s in spec.items()}
    return None


def _guess_modality(spec):
    first = tf.nest.flatten(spec)[0] if spec is not None else None
    if isinstance(first, tf.TensorSpec) and first.shape.rank == 4:
        return "image"
    return "text"


def load(
    name, trainable=False, signature=None, output_key=None, modality=None,
    preprocessor="auto", **kwargs,
):
    """Loads a TF Hub model or local TF2 SavedModel as a `tfft.Backbone`.

    Args:
        name: str. An https URL (e.g. `https://tfhub.dev/google/imagenet/
            mobilenet_v2_100_224/feature_vector/5`), a name from
            `known_backbones()`, or a local SavedModel directory. URLs download
            once into `tfft.assets.cache_dir("tfhub")` (under `TFFT_CACHE_DIR`),
            or into `TFHUB_CACHE_DIR` when that is set; `http://` is refused.
        trainable: bool. Passed to `HubLayer`. Defaults to `False`.
        signature: str. Passed to `HubLayer`. Defaults to `None`.
        output_key: str. Passed to `HubLayer`; `None` keeps dict outputs whole.
        modality: str. `"text"` or `"image"`; guessed from the input spec when
            `None` (rank-4 inputs are images).
        preprocessor: `"auto"`, None, or a callable. `"auto"` uses the catalogue
            entry's preprocessing (a `Rescaling(1/255)` for its image models, the
            TF Hub BERT preprocess model for its BERT encoders) and None for
            other handles. Defaults to `"auto"`.
        **kwargs: more `HubLayer` arguments (`arguments`, `tags`, `name`).

    Returns:
        A `Backbone`. Its model is a functional `keras.Model` around a
        `HubLayer` when the SavedModel publishes its input shapes, else the
        `HubLayer` itself. A SavedModel is opaque, so it has no `block_names`:
        freeze or unfreeze it as a whole.
    """
    handle = _BY_NAME[name].spec.partition(":")[2] if name in _BY_NAME else name
    catalog = _BY_HANDLE.get(handle)
    if preprocessor == "auto":
        # Before the encoder download: a missing tensorflow-text fails fast.
        preprocessor = _auto_preprocessor(catalog)
    layer = HubLayer(
        handle, trainable=trainable, signature=signature, output_key=output_key, **kwargs
    )
    spec = layer.input_structure
    inputs = _model_inputs(spec)
    if inputs is not None:
        model = keras.Model(inputs, layer(inputs), name=f"{layer.name}_model")
    else:
        model = layer
    local = not is_url(handle)
    feature_dim = catalog.feature_dim if catalog is not None else _feature_dim(layer, output_key)
    modality = modality or (catalog.modality if catalog else _guess_modality(spec))
    first = tf.nest.flatten(spec)[0] if spec is not None else None
    input_size = None
    if catalog is not None:
        input_size = catalog.input_size
    elif isinstance(first, tf.TensorSpec) and first.shape.rank == 4:
        input_size = tuple(first.shape[1:3]) if all(first.shape[1:3]) else None
    elif isinstance(first, tf.TensorSpec) and first.shape.rank == 2 and first.shape[1]:
        input_size = int(first.shape[1])
    display = catalog.name if catalog else os.path.basename(os.path.normpath(handle))
    info = BackboneInfo(
        name=display, source="tfhub", modality=modality,
        family=catalog.family if catalog else ("cnn" if modality == "image" else "transformer"),
        spec=f"tfhub:{handle}", params=model.count_params() if model.built else 0,
        feature_dim=int(feature_dim or 0), input_size=input_size,
        preprocessing=catalog.preprocessing if catalog else "",
        output_key=None if output_key else _dict_feature_key(layer),
        mask_key="input_mask" if isinstance(spec, dict) and "input_mask" in spec else None,
        description=(catalog.description if catalog else f"TF2 SavedModel from {handle}"),
        offline=local,
    )
    return Backbone(model, info, preprocessor=preprocessor)


def _dict_feature_key(layer):
    outputs = layer.output_structure()
    if isinstance(outputs, dict) and layer.output_key is None:
        for key in ("pooled_output", "default", "sequence_output"):
            if key in outputs:
                return key
    return None


def _feature_dim(layer, output_key):
    outputs = layer.output_structure()
    if isinstance(outputs, dict):
        key = output_key or _dict_feature_key(layer)
        outputs = outputs.get(key) if key else None
    shape = getattr(outputs, "shape", None)
    if shape is not None and shape.rank and shape[-1] is not None:
        return int(shape[-1])
    return 0


def _auto_preprocessor(catalog):
    if catalog is None:
        return None
    if catalog.modality == "image":
        return keras.layers.Rescaling(1.0 / 255)
    if catalog.preprocessing.startswith("https://"):
        try:
            import tensorflow_text  # noqa: F401  (registers the ops the model uses)
        except ImportError:
            raise ImportError(
                f"The TF Hub BERT preprocess model for {catalog.name!r} needs tfft's text "
                "extra (tensorflow-text): `pip install \"tfft[text]\"` (it pulls the "
                "`tensorflow` package; pick one TensorFlow package), or pass "
                "preprocessor=None and feed input_word_ids/input_mask/input_type_ids."
            ) from None
        return HubLayer(catalog.preprocessing.split()[0], name="bert_preprocess")
    return None
