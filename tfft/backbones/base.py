"""The `Backbone` object every source adapter returns."""

import dataclasses

import keras

from tfft.utils.walk import walk_layers

MODALITIES = ("text", "image")


@dataclasses.dataclass(frozen=True)
class BackboneInfo:
    """Metadata about a backbone, used by builders, presets and model selection.

    Args:
        name: str. Short name, e.g. `"all_minilm_l6_v2"`.
        source: str. Adapter that loads it: `"keras_hub"`, `"tfhub"`,
            `"keras_app"`, `"keras_cv"`, `"model"`.
        modality: str. `"text"` or `"image"`.
        family: str. `"transformer"` (text), `"vit"` (vision transformers:
            ViT, DINOv2) or `"cnn"`; picks the compile preset (`"vit"` takes the
            transformer's).
        spec: str. The spec that loads it again.
        params: int. Parameter count, or 0 when unknown before loading.
        feature_dim: int. Width of the features the head receives.
        input_size: tuple or int. `(height, width)` for images, the sequence
            length for text.
        preprocessing: str. What the preprocessor does to raw inputs.
        output_key: str. Key of the features in a dict output, or None.
        mask_key: str. Input key of the padding mask for masked pooling, or None.
        description: str. One line for listings.
        offline: bool. Loads without network access.
    """

    name: str
    source: str
    modality: str
    family: str = "transformer"
    spec: str = ""
    params: int = 0
    feature_dim: int = 0
    input_size: object = None
    preprocessing: str = ""
    output_key: str = None
    mask_key: str = None
    description: str = ""
    offline: bool = False

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(
                f"Unknown modality. Expected one of {list(MODALITIES)}. "
                f"Received: modality={self.modality!r}"
            )

    def to_dict(self):
        data = dataclasses.asdict(self)
        if isinstance(data["input_size"], tuple):
            data["input_size"] = list(data["input_size"])
        return data


class Backbone:
    """A pretrained feature extractor with its matching preprocessing.

    Args:
        model: keras.Model. Maps preprocessed inputs (a tensor, or a dict such
            as token ids + padding mask) to features.
        info: BackboneInfo. Metadata.
        preprocessor: keras.Layer or callable. Maps raw inputs (strings,
            0-255 images) to `model`'s inputs; runs inside `tf.data` and inside
            exported SavedModels. None when the model takes raw inputs.
        block_names: list of str. Names of `model`'s layers that form its
            blocks, bottom to top (transformer layers, CNN stages); used by
            `top_k` freezing and gradual unfreezing. Each entry may also be a
            list of names forming one block.
    """

    def __init__(self, model, info, preprocessor=None, block_names=None):
        if not isinstance(model, keras.layers.Layer):
            raise TypeError(
                "Backbone.model must be a keras.Model or keras.Layer. "
                f"Received: model={type(model).__name__}"
            )
        self.model = model
        self.info = info
        self.preprocessor = preprocessor
        self.block_names = list(block_names or [])

    @property
    def name(self):
        return self.info.name

    @property
    def modality(self):
        return self.info.modality

    def blocks(self):
        """Returns the backbone's blocks bottom to top, each a list of layers."""
        entries = [[entry] if isinstance(entry, str) else list(entry)
                   for entry in self.block_names]
        # reach: KerasHub ViT keeps its blocks inside its encoder layer, not a model.
        by_name = {layer.name: layer for layer in
                   walk_layers(self.model, nested=False, reach=[n for e in entries for n in e])}
        groups = [[by_name[n] for n in names if n in by_name] for names in entries]
        return [g for g in groups if g]

    def preprocess(self, raw):
        """Maps raw inputs to the model's inputs (identity without a preprocessor)."""
        return self.preprocessor(raw) if self.preprocessor is not None else raw

    def __repr__(self):
        return (
            f"<Backbone {self.info.name} source={self.info.source} "
            f"modality={self.info.modality} params={self.model.count_params():,}>"
        )


def _all_layers(model):
    # Still imported by tfft.adapt.freeze; it moves to tfft.utils.walk.walk_layers.
    return list(walk_layers(model, nested=False))
