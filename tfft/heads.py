"""Task layers that go on top of a backbone: pooling and task heads."""

import keras
from keras import ops

TASKS = ("binary", "multiclass", "multilabel", "regression", "token_classification")
POOLING_MODES = ("mean", "max", "cls", "none")


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
    """Freezes every leaf layer of `model` whose weights are all in `frozen_paths`."""
    stack = [model]
    while stack:
        layer = stack.pop()
        children = list(getattr(layer, "_layers", None) or getattr(layer, "layers", []) or [])
        if children:
            stack.extend(children)
            continue
        paths = {w.path for w in layer.weights}
        if paths and paths <= frozen_paths:
            layer.trainable = False


@keras.saving.register_keras_serializable(package="tfft")
class Pooling(keras.layers.Layer):
    """Pools backbone features to one vector per example.

    Rank-3 inputs `(batch, tokens, dim)` are pooled over tokens, honouring an
    optional padding `mask` `(batch, tokens)`; rank-4 feature maps
    `(batch, h, w, c)` are averaged (or maxed) over space; rank-2 inputs pass
    through.

    Args:
        mode: str. `"mean"`, `"max"`, `"cls"` (first token) or `"none"`.
            Defaults to `"mean"`.
        normalize: bool. L2-normalise the pooled vector (sentence-embedding
            style; a head on top then scores cosine similarities). Defaults to
            False.
    """

    def __init__(self, mode="mean", normalize=False, **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLING_MODES:
            raise ValueError(
                f"Unknown pooling mode. Expected one of {list(POOLING_MODES)}. "
                f"Received: mode={mode!r}"
            )
        self.mode = mode
        self.normalize = normalize
        self.supports_masking = True

    def call(self, inputs, mask=None):
        pooled = self._pool(inputs, mask)
        if self.normalize:
            pooled = pooled / ops.maximum(
                ops.sqrt(ops.sum(ops.square(pooled), axis=-1, keepdims=True)),
                ops.cast(1e-12, pooled.dtype),
            )
        return pooled

    def _pool(self, inputs, mask):
        rank = len(inputs.shape)
        if self.mode == "none" or rank == 2:
            return inputs
        if rank == 4:
            reduce = ops.mean if self.mode != "max" else ops.max
            return reduce(inputs, axis=(1, 2))
        if rank != 3:
            raise ValueError(
                f"Pooling expects features of rank 2, 3 or 4. Received shape {inputs.shape}"
            )
        if self.mode == "cls":
            return inputs[:, 0, :]
        if mask is None:
            mask = ops.ones(ops.shape(inputs)[:2], dtype=inputs.dtype)
        mask = ops.cast(mask, inputs.dtype)[:, :, None]
        if self.mode == "max":
            very_negative = ops.cast(-1e4, inputs.dtype)
            return ops.max(inputs * mask + (1.0 - mask) * very_negative, axis=1)
        total = ops.sum(inputs * mask, axis=1)
        return total / ops.maximum(ops.sum(mask, axis=1), ops.cast(1.0, inputs.dtype))

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        if self.mode == "none" or len(input_shape) == 2:
            return input_shape
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "normalize": self.normalize}


@keras.saving.register_keras_serializable(package="tfft")
class TaskHead(keras.layers.Layer):
    """A task layer: optional hidden layer, dropout, and the output layer.

    Args:
        task: str. One of `TASKS`.
        num_classes: int. Classes (outputs for regression). Binary uses one
            sigmoid unit.
        dropout: float. Dropout rate before the output layer. Defaults to 0.1.
        hidden_units: int. Width of an optional hidden layer. Defaults to None.
        hidden_activation: str. Its activation. Defaults to `"gelu"`.

    Outputs are float32 even under a mixed-precision policy, so losses and
    probabilities stay numerically safe.
    """

    def __init__(self, task="multiclass", num_classes=2, dropout=0.1, hidden_units=None,
                 hidden_activation="gelu", **kwargs):
        super().__init__(**kwargs)
        if task not in TASKS:
            raise ValueError(
                f"Unknown task. Expected one of {list(TASKS)}. Received: task={task!r}"
            )
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"num_classes must be a positive int. Received: num_classes={num_classes!r}"
            )
        if task in ("multiclass", "token_classification") and num_classes < 2:
            raise ValueError(
                f"task={task!r} needs num_classes >= 2. Received: num_classes={num_classes}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
        self.task = task
        self.num_classes = num_classes
        self.dropout = dropout
        self.hidden_units = hidden_units
        self.hidden_activation = hidden_activation
        self.hidden = (
            keras.layers.Dense(hidden_units, activation=hidden_activation, name="hidden")
            if hidden_units else None
        )
        self.drop = keras.layers.Dropout(dropout)
        units = 1 if task == "binary" else num_classes
        activation = {
            "binary": "sigmoid", "multiclass": "softmax", "multilabel": "sigmoid",
            "regression": None, "token_classification": "softmax",
        }[task]
        self.output_layer = keras.layers.Dense(
            units, activation=activation, dtype="float32", name="logits"
        )

    @property
    def output_units(self):
        return 1 if self.task == "binary" else self.num_classes

    def build(self, input_shape):
        shape = tuple(input_shape)
        if self.hidden is not None:
            self.hidden.build(shape)
            shape = shape[:-1] + (self.hidden_units,)
        self.output_layer.build(shape)
        self.built = True

    def call(self, inputs, training=None):
        x = inputs
        if self.hidden is not None:
            x = self.hidden(x)
        x = self.drop(x, training=training)
        return self.output_layer(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_units,)

    def get_config(self):
        return {
            **super().get_config(),
            "task": self.task,
            "num_classes": self.num_classes,
            "dropout": self.dropout,
            "hidden_units": self.hidden_units,
            "hidden_activation": self.hidden_activation,
        }
