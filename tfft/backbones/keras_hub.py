"""KerasHub (keras-nlp) backbones: presets by name and local preset directories.

Local directories may be in KerasHub's own format (`config.json` +
`metadata.json`) or Hugging Face's (`config.json` + `model.safetensors`);
KerasHub's converters read both. The offline all-MiniLM-L6-v2 sentence encoder
is a first-class entry (`keras_hub:all_minilm_l6_v2`, alias `minilm`).
"""

import difflib
import json
import os

import keras

from tfft import _compat, assets
from tfft.backbones.applications import cnn_block_names
from tfft.backbones.base import Backbone, BackboneInfo
from tfft.layers.image_preprocessor import ImagePreprocessor, _as_size
from tfft.utils.network import require_network
from tfft.utils.walk import walk_layers

MINILM = "all_minilm_l6_v2"

# Presets users load online; metadata is what the preset cards publish.
CATALOG = [
    BackboneInfo(
        name=MINILM, source="keras_hub", modality="text", family="transformer",
        spec=f"keras_hub:{MINILM}", params=22_713_216, feature_dim=384, input_size=128,
        preprocessing="BERT WordPiece (uncased), [CLS] ... [SEP], padding mask",
        output_key="sequence_output", mask_key="padding_mask", offline=True,
        description="all-MiniLM-L6-v2 sentence encoder, 6 layers, 384 wide (offline)",
    ),
    BackboneInfo(
        name="bert_tiny_en_uncased", source="keras_hub", modality="text",
        spec="keras_hub:bert_tiny_en_uncased", params=4_385_920, feature_dim=128,
        input_size=512, preprocessing="BERT WordPiece (uncased)",
        output_key="sequence_output", mask_key="padding_mask",
        description="BERT tiny, 2 layers, 128 wide",
    ),
    BackboneInfo(
        name="bert_small_en_uncased", source="keras_hub", modality="text",
        spec="keras_hub:bert_small_en_uncased", params=28_763_648, feature_dim=512,
        input_size=512, preprocessing="BERT WordPiece (uncased)",
        output_key="sequence_output", mask_key="padding_mask",
        description="BERT small, 4 layers, 512 wide",
    ),
    BackboneInfo(
        name="bert_base_en_uncased", source="keras_hub", modality="text",
        spec="keras_hub:bert_base_en_uncased", params=109_482_240, feature_dim=768,
        input_size=512, preprocessing="BERT WordPiece (uncased)",
        output_key="sequence_output", mask_key="padding_mask",
        description="BERT base, 12 layers, 768 wide",
    ),
    BackboneInfo(
        name="distil_bert_base_en_uncased", source="keras_hub", modality="text",
        spec="keras_hub:distil_bert_base_en_uncased", params=66_362_880,
        feature_dim=768, input_size=512, preprocessing="WordPiece (uncased)",
        output_key="sequence_output", mask_key="padding_mask",
        description="DistilBERT base, 6 layers, 768 wide",
    ),
]


def known_backbones():
    return list(CATALOG)


def register_text_ops() -> bool:
    """Registers TensorFlow Text's ops with TensorFlow, for loading text exports.

    KerasHub tokenizers (WordPiece, BPE, SentencePiece) run TensorFlow Text
    ops such as `RegexSplitWithOffsets`, so every SavedModel that holds one
    needs them registered before `tf.saved_model.load`. Call this first in
    every code path that loads an export.

    Returns:
        True when the ops are registered; False when the `tensorflow-text`
        package is not installed (image exports load without it).
    """
    try:
        import tensorflow_text  # noqa: F401  (importing it registers the ops)
    except ImportError:
        return False
    return True


def missing_text_ops_hint(error: BaseException) -> str | None:
    """The fix for a load `error` caused by unregistered TensorFlow Text ops, else None."""
    if "Op type not registered" not in str(error):
        return None
    return (
        "the SavedModel uses TensorFlow Text ops (a KerasHub tokenizer) that are not "
        "registered: install tfft's text extra with `pip install \"tfft[text]\"` "
        "(tensorflow-text, the same version as TensorFlow) and load it again."
    )


def resolve_local_preset(name, hint="a KerasHub preset name such as 'bert_base_en_uncased'"):
    """Tells a local preset folder from a preset name.

    Returns:
        `(path_or_name, is_local)`. A folder must hold a `config.json`; a
        path-like name that does not exist is an error (naming `hint` as the
        alternative) rather than a download attempt.
    """
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        if not os.path.exists(os.path.join(expanded, "config.json")):
            raise ValueError(
                f"{expanded!r} is not a KerasHub or Hugging Face preset directory: "
                "expected a config.json (plus metadata.json for KerasHub presets, or "
                "model.safetensors for Hugging Face checkpoints)."
            )
        return expanded, True
    if os.sep in name or name.startswith("."):
        raise ValueError(
            f"The local preset directory {name!r} does not exist. Pass an existing "
            f"directory, or {hint}."
        )
    return name, False


def _resolve(name):
    """Returns (preset or local dir, display name, is_local)."""
    if name in (MINILM, "minilm"):
        return assets.asset_path("minilm"), MINILM, True
    preset, local = resolve_local_preset(name)
    if not local:
        _check_preset_name(preset)
    display = os.path.basename(os.path.normpath(preset)) if local else preset
    return preset, display, local


def _check_preset_name(name):
    """Refuses a preset name KerasHub does not know, before any download is tried.

    KerasHub ships its preset index, so a misspelt name is told apart from a
    missing network offline. Handles (`kaggle://...`, `hf://...`) pass through.
    """
    import keras_hub

    if "://" in name:
        return
    known = {*keras_hub.models.Backbone.presets, *(info.name for info in CATALOG), "minilm"}
    if name in known:
        return
    close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.6)
    suggestion = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown KerasHub preset {name!r}.{suggestion} KerasHub {keras_hub.__version__} "
        "knows the names in `keras_hub.models.Backbone.presets`; a local preset folder "
        "(keras_hub:/path/to/preset_dir) or a handle (keras_hub:kaggle://... , "
        f"keras_hub:hf://...) also works. Received: keras_hub:{name}"
    )


def load(name, sequence_length=128, image_size=None, preprocessor=None, **kwargs):
    """Loads a KerasHub backbone (text or image) and its matching preprocessor.

    Text presets get their tokenizer (`TextClassifierPreprocessor`). Image
    presets and folders (ViT, DINOv2, ResNet, EfficientNet ...) get an
    `ImagePreprocessor` set from the preset's own image converter
    (`image_converter.json`, or a Hugging Face `preprocessor_config.json`),
    their family (`"vit"` for vision transformers, else `"cnn"`) and their
    blocks for `top_k` freezing and gradual unfreezing.

    Args:
        name: str. A KerasHub preset name, a local preset directory, or
            `all_minilm_l6_v2` / `minilm` for the offline sentence encoder.
        sequence_length: int. Tokens per example after packing (text).
            Defaults to 128.
        image_size: int or tuple of 2 ints. Input size of an image backbone;
            defaults to the size in the preset's config (518 for Hugging
            Face DINOv2 checkpoints). Vision transformers with interpolated
            position embeddings (DINOv2) take any multiple of the patch size.
        preprocessor: keras.Layer. Replaces the preset's preprocessor; needed
            for an image folder that records no normalisation.
        **kwargs: passed to `keras_hub.models.Backbone.from_preset`.

    Returns:
        A `Backbone`. Text: its model maps `{"token_ids", "segment_ids",
        "padding_mask"}` to a dict with `"sequence_output"`. Images: its model
        maps a `(B, H, W, 3)` batch to features; raw 0-255 images go through
        `backbone.preprocessor`.
    """
    import keras_hub

    preset, display, local = _resolve(name)
    modality = _preset_modality(preset, local)
    if image_size is not None:
        if modality == "text":
            raise ValueError(
                f"image_size applies to image backbones, but keras_hub:{name} is a text "
                f"model (use sequence_length). Received: image_size={image_size!r}"
            )
        height, width = _as_size(image_size, "image_size")
        kwargs["image_shape"] = (height, width, 3)
    if not local:
        require_network(
            "keras_hub", f"keras_hub:{name}",
            "keras_hub:/path/to/preset_dir (a KerasHub preset saved with "
            "`backbone.save_to_preset(dir)`, or a Hugging Face checkpoint folder).",
        )
    try:
        model = keras_hub.models.Backbone.from_preset(preset, **kwargs)
    except ValueError as error:
        if image_size is None:
            raise
        raise ValueError(
            f"keras_hub:{name} does not load at image_size={image_size!r}: its weights fit "
            "the preset's own input size only (ViT's position embeddings are fixed; "
            "DINOv2 interpolates them and takes any multiple of its patch size). Drop "
            f"image_size or pick a size the model supports. KerasHub said: {error}"
        ) from error
    if modality is None:
        modality = "image" if _image_input(model) is not None else "text"
    if modality == "image":
        return _image_backbone(model, name, preset, display, local, preprocessor)
    if preprocessor is None:
        preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
            preset, sequence_length=sequence_length
        )
    block_names = [
        layer.name for layer in model.layers if layer.name.startswith("transformer_layer_")
    ]
    hidden = getattr(model, "hidden_dim", None) or _config_value(preset, "hidden_size")
    tokenizer = getattr(preprocessor, "tokenizer", preprocessor)
    info = BackboneInfo(
        name=display, source="keras_hub", modality="text", family="transformer",
        spec=f"keras_hub:{name}", params=model.count_params(), feature_dim=int(hidden or 0),
        input_size=sequence_length,
        preprocessing=f"{type(tokenizer).__name__}, length {sequence_length}",
        output_key="sequence_output", mask_key="padding_mask", offline=local,
        description=f"{type(model).__name__} from {'local ' if local else ''}preset {name}",
    )
    return Backbone(model, info, preprocessor=preprocessor, block_names=block_names)


def preprocessor_for(name, sequence_length=None, image_size=None):
    """The preprocessor of KerasHub preset `name`, without loading its weights.

    Args:
        name: str. As for `load`: a preset name, a local preset folder, or
            `minilm`.
        sequence_length: int or None. Text presets. Defaults to 128.
        image_size: int, tuple of 2 ints or None. Image presets. Defaults to
            the size in the preset's config.

    Returns:
        `(preprocessor, modality)`: a KerasHub `TextClassifierPreprocessor`
        and `"text"`, or a tfft `ImagePreprocessor` with the preset's own
        normalisation and `"image"`.
    """
    import keras_hub

    preset, _, local = _resolve(name)
    if _preset_modality(preset, local) == "image":
        size = _preset_image_size(preset, local) if image_size is None else image_size
        if size is None:
            raise ValueError(
                f"keras_hub:{name} records no input size in its config.json: pass "
                "image_size=..."
            )
        return _image_preprocessor(name, preset, local, _as_size(size, "image_size")), "image"
    return keras_hub.models.TextClassifierPreprocessor.from_preset(
        preset, sequence_length=sequence_length or 128
    ), "text"


def _preset_image_size(preset, local):
    """(height, width) from a local image preset's config.json, else None."""
    if not local:
        return None
    with open(os.path.join(preset, "config.json")) as f:
        config = json.load(f)
    arguments = config.get("config") if isinstance(config.get("config"), dict) else None
    if arguments is not None and arguments.get("image_shape"):
        height, width = arguments["image_shape"][:2]
        return int(height), int(width)
    size = config.get("image_size")   # Hugging Face's format: an int
    if isinstance(size, int):
        return size, size
    return None


def _preset_modality(preset, local):
    """"image" or "text" from a local folder's config.json or the catalog; None if unknown."""
    if not local:
        known = {info.name: info.modality for info in CATALOG}
        return known.get(preset)
    with open(os.path.join(preset, "config.json")) as f:
        config = json.load(f)
    if isinstance(config.get("config"), dict) and "class_name" in config:
        # KerasHub's own format: the backbone's constructor arguments.
        arguments = config["config"]
        return "image" if "image_shape" in arguments and "vocabulary_size" not in arguments \
            else "text"
    # Hugging Face's format.
    return "image" if "image_size" in config and "vocab_size" not in config else "text"


def _image_input(model):
    """The backbone's image input (a rank-4 tensor), or None for other models."""
    inputs = model.input
    if isinstance(inputs, dict):
        inputs = inputs.get("images") if len(inputs) == 1 else None
    if inputs is None or isinstance(inputs, (list, tuple)) or len(inputs.shape) != 4:
        return None
    return inputs


def _image_backbone(model, name, preset, display, local, preprocessor):
    image_input = _image_input(model)
    if image_input is None:
        raise ValueError(
            f"keras_hub:{name} looks like an image model, but {type(model).__name__} takes "
            f"{model.input}, not one (B, H, W, 3) image batch."
        )
    height, width = int(image_input.shape[1]), int(image_input.shape[2])
    if isinstance(model.input, dict):
        # tfft's image preprocessors give one tensor; KerasHub vision transformers
        # take {"images": ...}.
        images = keras.Input((height, width, 3), name="images")
        model = keras.Model(images, model({"images": images}), name=f"{model.name}_images")
    if preprocessor is None:
        preprocessor = _image_preprocessor(name, preset, local, (height, width))
    blocks = transformer_block_names(model)
    family = "vit" if blocks or _has_attention(model) else "cnn"
    if family == "cnn":
        blocks = cnn_block_names(model)
    features = model.output
    describe = getattr(preprocessor, "describe", None)
    info = BackboneInfo(
        name=display, source="keras_hub", modality="image", family=family,
        spec=f"keras_hub:{name}", params=model.count_params(),
        feature_dim=int(features.shape[-1]), input_size=(height, width),
        preprocessing=describe() if describe else type(preprocessor).__name__, offline=local,
        description=f"{family.upper()} {type(model).__name__} from "
        f"{'local ' if local else ''}preset {name}, {height}x{width} inputs",
    )
    return Backbone(model, info, preprocessor=preprocessor, block_names=blocks)


def transformer_block_names(model):
    """Names of a vision transformer's blocks, bottom to top; [] for other models.

    KerasHub encoders keep their blocks in a list attribute of one encoder
    layer (DINOv2's `encoder.layers`, ViT's `encoder.encoder_layers`, next to
    the encoder's final norm). A block is a sublayer that holds an attention
    layer without being one; the blocks are those of the layer holding the
    most of them, all of one class (on a tie the later one in the walk, so a
    one-block encoder beats the model holding it). `top_k` and gradual
    unfreezing reach them through `walk_layers(..., reach=names)`.
    """
    best = []
    for layer in walk_layers(model):
        blocks = [child for child in _compat.sublayers(layer)
                  if not _is_attention(child) and _has_attention(child)]
        if blocks and len({type(block) for block in blocks}) == 1 and len(blocks) >= len(best):
            best = blocks
    return [block.name for block in best]


def _is_attention(layer):
    return isinstance(layer, keras.layers.MultiHeadAttention) or \
        type(layer).__name__.endswith("Attention")


def _has_attention(model):
    return any(_is_attention(layer) for layer in walk_layers(model))


def _image_preprocessor(name, preset, local, size):
    """An `ImagePreprocessor` with the preset's own normalisation, resizing to `size`."""
    import keras_hub

    if not local or os.path.exists(os.path.join(preset, "image_converter.json")):
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
        if converter is not None:
            return image_preprocessor_from_converter(converter, size)
    hf_config = os.path.join(preset, "preprocessor_config.json")
    if local and os.path.exists(hf_config):
        with open(hf_config) as f:
            return image_preprocessor_from_hf_config(json.load(f), size)
    raise ValueError(
        f"keras_hub:{name} is an image model, but its preset records no image "
        "normalisation (no image_converter.json, no Hugging Face preprocessor_config.json), "
        "so tfft cannot tell how to scale its pixels. Pass preprocessor=, e.g. "
        f"preprocessor=tfft.ImagePreprocessor({size}, **tfft.layers.NORMALISATIONS['torch']) "
        "(ImageNet mean/std: DINOv2) or NORMALISATIONS['tf'] ([-1, 1]: Google's ViT)."
    )


def image_preprocessor_from_converter(converter, size):
    """tfft's `ImagePreprocessor` doing what a KerasHub `ImageConverter` does, at `size`."""
    return ImagePreprocessor(
        size,
        scale=1.0 if converter.scale is None else _plain(converter.scale),
        offset=0.0 if converter.offset is None else _plain(converter.offset),
        interpolation=converter.interpolation, antialias=bool(converter.antialias),
        crop_to_aspect_ratio=bool(converter.crop_to_aspect_ratio),
    )


# PIL resampling codes in Hugging Face image processor configs.
_HF_RESAMPLE = {0: "nearest", 1: "lanczos3", 2: "bilinear", 3: "bicubic"}


def image_preprocessor_from_hf_config(config, size):
    """tfft's `ImagePreprocessor` from a Hugging Face `preprocessor_config.json` dict.

    `(pixel * rescale_factor - mean) / std` per channel, with a centre crop
    when the processor crops (`do_center_crop`).
    """
    rescale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) \
        else 1.0
    mean, std = [0.0] * 3, [1.0] * 3
    if config.get("do_normalize", True):
        mean = _three(config.get("image_mean", 0.5), "image_mean")
        std = _three(config.get("image_std", 0.5), "image_std")
    return ImagePreprocessor(
        size,
        scale=[rescale / s for s in std],
        offset=[-m / s for m, s in zip(mean, std, strict=True)],
        interpolation=_HF_RESAMPLE.get(config.get("resample", 2), "bilinear"),
        crop_to_aspect_ratio=bool(config.get("do_center_crop", False)),
    )


def _three(value, key):
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * 3
    if len(values) != 3:
        raise ValueError(
            f"preprocessor_config.json: {key} must be one number or 3. Received: {value!r}"
        )
    return values


def _plain(value):
    """A float or a list of floats from a converter's scale/offset (lists, tuples, arrays)."""
    if isinstance(value, (int, float)):
        return float(value)
    return [float(v) for v in value]


def _config_value(preset, key):
    path = os.path.join(preset, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f).get(key)
    return None
