"""KerasHub (keras-nlp) backbones: presets by name and local preset directories.

Local directories may be in KerasHub's own format (`config.json` +
`metadata.json`) or Hugging Face's (`config.json` + `model.safetensors`);
KerasHub's converters read both. The offline all-MiniLM-L6-v2 sentence encoder
is a first-class entry (`keras_hub:all_minilm_l6_v2`, alias `minilm`).
"""

import difflib
import json
import os

from tfft import assets
from tfft.backbones.base import Backbone, BackboneInfo
from tfft.utils.network import require_network

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
        "registered: install them with `pip install tensorflow-text` (the same version "
        "as TensorFlow) and load it again."
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


def load(name, sequence_length=128, **kwargs):
    """Loads a KerasHub text backbone and its matching preprocessor.

    Args:
        name: str. A KerasHub preset name, a local preset directory, or
            `all_minilm_l6_v2` / `minilm` for the offline sentence encoder.
        sequence_length: int. Tokens per example after packing. Defaults to 128.
        **kwargs: passed to `keras_hub.models.Backbone.from_preset`.

    Returns:
        A `Backbone` whose model maps `{"token_ids", "segment_ids",
        "padding_mask"}` to a dict with `"sequence_output"`.
    """
    import keras_hub

    preset, display, local = _resolve(name)
    if not local:
        require_network(
            "keras_hub", f"keras_hub:{name}",
            "keras_hub:/path/to/preset_dir (a KerasHub preset saved with "
            "`backbone.save_to_preset(dir)`, or a Hugging Face checkpoint folder).",
        )
    model = keras_hub.models.Backbone.from_preset(preset, **kwargs)
    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        preset, sequence_length=sequence_length
    )
    block_names = [
        layer.name for layer in model.layers if layer.name.startswith("transformer_layer_")
    ]
    hidden = getattr(model, "hidden_dim", None) or _config_value(preset, "hidden_size")
    info = BackboneInfo(
        name=display, source="keras_hub", modality="text", family="transformer",
        spec=f"keras_hub:{name}", params=model.count_params(), feature_dim=int(hidden or 0),
        input_size=sequence_length,
        preprocessing=f"{type(preprocessor.tokenizer).__name__}, length {sequence_length}",
        output_key="sequence_output", mask_key="padding_mask", offline=local,
        description=f"{type(model).__name__} from {'local ' if local else ''}preset {name}",
    )
    return Backbone(model, info, preprocessor=preprocessor, block_names=block_names)


def _config_value(preset, key):
    path = os.path.join(preset, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f).get(key)
    return None
