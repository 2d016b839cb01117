"""`BackboneLayer`: calls a backbone, in inference mode whenever none of its weights train."""

import keras

from tfft.utils.walk import walk_layers


@keras.saving.register_keras_serializable(package="tfft")
class BackboneLayer(keras.layers.Layer):
    """Calls a backbone, in inference mode whenever none of its weights train.

    Keras 3 keeps frozen BatchNorm layers in inference mode, but a frozen
    backbone's dropout still runs during `fit`. Feature extraction must see
    the same features every epoch (and the feature cache relies on it), so
    this wrapper passes `training=False` while the backbone is fully frozen.

    Args:
        backbone: keras.Model. The backbone model.
        output_key: str. Key to pick from a dict output, or None.
        block_names: list. The backbone's blocks bottom to top (layer names,
            or lists of names per block), for `top_k` freezing and gradual
            unfreezing. Kept in the config so a reloaded model can be frozen
            the same way.
    """

    def __init__(self, backbone, output_key=None, block_names=None, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.output_key = output_key
        self.block_names = [b if isinstance(b, str) else list(b) for b in block_names or []]

    def build(self, input_shape):
        self.built = True

    def unused_layer_names(self):
        """Backbone layers that do not feed `output_key` (e.g. BERT's pooler).

        Freeze policies keep them frozen: they get no gradient.
        """
        outputs = getattr(self.backbone, "output", None)
        if self.output_key is None or not isinstance(outputs, dict):
            return set()
        used = keras.Model(self.backbone.input, outputs[self.output_key]).layers
        return {layer.name for layer in self.backbone.layers} - {layer.name for layer in used}

    def call(self, inputs, training=None):
        trains = any(w.trainable for w in self.backbone.weights) and self.trainable
        outputs = self.backbone(inputs, training=bool(training) and trains)
        if self.output_key is not None:
            outputs = outputs[self.output_key]
        return outputs

    def compute_output_spec(self, inputs, training=None):
        outputs = self.backbone.compute_output_spec(inputs)
        if self.output_key is not None:
            outputs = outputs[self.output_key]
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.saving.serialize_keras_object(self.backbone),
            output_key=self.output_key,
            block_names=self.block_names,
            # Backbones such as KerasHub's rebuild their layers from config, which
            # forgets per-layer trainable flags (top_k, regex, LoRA); keep them here.
            frozen_weights=sorted(w.path for w in self.backbone.weights if not w.trainable),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        frozen = set(config.pop("frozen_weights", []))
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        layer = cls(**config)
        if frozen:
            _restore_frozen(layer.backbone, frozen)
        return layer


def _restore_frozen(model, frozen_paths):
    """Freezes the weights of `model` whose paths are in `frozen_paths`.

    Layers whose weights are all frozen get `trainable=False` (a frozen
    BatchNorm then stays in inference mode); then each remaining frozen weight
    is frozen on its own, since a layer may hold weights of its own beside its
    sublayers (DINOv2's embeddings keep `cls_token` next to the patch
    projection) and only some of them may have been frozen.
    """
    for layer in walk_layers(model):
        paths = {w.path for w in layer.weights}
        if paths and paths <= frozen_paths:
            layer.trainable = False
    for weight in model.weights:
        if weight.path in frozen_paths:
            weight.trainable = False
