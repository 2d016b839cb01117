"""`Pooling`: backbone features to one vector per example."""

import keras
from keras import ops

POOLING_MODES = ("mean", "max", "cls", "none")


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
