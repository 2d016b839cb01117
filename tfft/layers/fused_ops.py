"""GELU and layer normalisation with hand-written gradients, for training steps.

Written by hand because neither TensorFlow nor Keras has them: TensorFlow has
no GELU or layer-norm kernel (`tf.nn.gelu` and Keras' `layer_normalization`
are compositions of elementwise ops), and Keras uses a fused layer norm for
its torch backend only. On a CPU those compositions cost more than the
matrix products around them once the products run in bfloat16:

- GELU (tanh form, as KerasHub's BERT, GPT-2 and their kin use): TensorFlow's
  bfloat16 elementwise kernels on a CPU ran its forward and backward pass
  at about 60% of their float32 speed (17.1 vs 10.4 ms on 1,280 x 1,536).
  Here it runs in float32 inside (one cast in, one out) and its gradient is
  the closed form instead of autodiff through the forward composition.
- Layer normalisation: Keras already computes it in float32; the gradient
  here is the closed form (one pass for the input, two sums for gamma/beta)
  instead of autodiff through the mean, variance and rsqrt.

`fused_training_ops(model)` swaps them into a model's eligible layers for
the length of a `with` block (a train step's trace) and restores each
layer as it was, so the model's config, `.keras` files, exports and
predictions are untouched: only the traced training graph differs, and it
computes the same function (float32 error ~1e-6; in bfloat16 the GELU is
closer to the float32 result than the bfloat16 composite).
"""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf

from tfft._compat import sublayers

# sqrt(2 / pi) and the cubic coefficient of GELU's tanh approximation.
_SQRT_2_OVER_PI = 0.7978845608028654
_CUBIC = 0.044715


def gelu_tanh(x: Any) -> Any:
    """GELU, tanh approximation, computed in float32 with a closed-form gradient.

    The same function as `tf.nn.gelu(x, approximate=True)` and KerasHub's
    `gelu_approximate`; the result has `x`'s dtype.
    """
    with tf.name_scope("gelu_tanh"):
        return _gelu_tanh(x)


@tf.custom_gradient
def _gelu_tanh(x: Any) -> Any:
    x32 = tf.cast(x, tf.float32)
    tanh = tf.tanh(_SQRT_2_OVER_PI * (x32 + _CUBIC * x32 * x32 * x32))

    def grad(upstream):
        # Named, so profiles can tell these ops from others (the tape calls this unscoped).
        with tf.name_scope("gelu_tanh_grad"):
            slope = 0.5 * (1.0 + tanh) + 0.5 * x32 * (1.0 - tanh * tanh) * _SQRT_2_OVER_PI * (
                1.0 + 3.0 * _CUBIC * x32 * x32)
            return tf.cast(tf.cast(upstream, tf.float32) * slope, x.dtype)

    return tf.cast(0.5 * x32 * (1.0 + tanh), x.dtype), grad


def layer_norm_last_axis(x: Any, gamma: Any, beta: Any, epsilon: float) -> Any:
    """Layer normalisation over the last axis, float32 inside, closed-form gradient.

    Computes what `keras.ops.layer_normalization(x, gamma, beta, -1,
    epsilon)` does and returns `x`'s dtype.
    """

    @tf.custom_gradient
    def normalise(x, gamma, beta):
        x32 = tf.cast(x, tf.float32)
        mean, variance = tf.nn.moments(x32, axes=[-1], keepdims=True)
        inverse = tf.math.rsqrt(variance + epsilon)
        normalised = (x32 - mean) * inverse
        gamma32, beta32 = tf.cast(gamma, tf.float32), tf.cast(beta, tf.float32)

        def grad(upstream):
            with tf.name_scope("layer_norm_grad"):
                upstream = tf.cast(upstream, tf.float32)
                scaled = upstream * gamma32
                d_x = inverse * (scaled - tf.reduce_mean(scaled, axis=-1, keepdims=True)
                                 - normalised * tf.reduce_mean(scaled * normalised, axis=-1,
                                                               keepdims=True))
                outer = tf.range(tf.rank(upstream) - 1)
                return (tf.cast(d_x, x.dtype),
                        tf.cast(tf.reduce_sum(upstream * normalised, axis=outer), gamma.dtype),
                        tf.cast(tf.reduce_sum(upstream, axis=outer), beta.dtype))

        return tf.cast(normalised * gamma32 + beta32, x.dtype), grad

    return normalise(x, gamma, beta)


def _fused_layer_norm_call(self, inputs):
    axes = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
    rank = len(inputs.shape)
    if [axis % rank for axis in axes] != [rank - 1]:
        # Normalising over other axes: Keras' own call.
        return type(self).call(self, inputs)
    outputs = layer_norm_last_axis(inputs, tf.convert_to_tensor(self.gamma),
                                   tf.convert_to_tensor(self.beta), self.epsilon)
    return tf.cast(outputs, self.compute_dtype)


def _is_tanh_gelu(activation: Any) -> bool:
    # KerasHub's `gelu_approximate` (BERT, GPT-2, ALBERT, DistilBERT ...).
    return (getattr(activation, "__name__", None) == "gelu_approximate"
            and getattr(activation, "__module__", "").startswith("keras_hub."))


def fusable_layers(model: Any) -> tuple[list, list]:
    """The Dense layers with KerasHub's tanh GELU, and the plain LayerNormalizations."""
    dense, norms, seen, stack = [], [], set(), [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, keras.layers.Dense) and _is_tanh_gelu(layer.activation):
            dense.append(layer)
        elif (type(layer) is keras.layers.LayerNormalization and not layer.rms_scaling
              and layer.gamma is not None and layer.beta is not None):
            norms.append(layer)
        stack.extend(sublayers(layer))
    return dense, norms


# Models whose layers are swapped now: id -> [open blocks, what to restore].
# Replicas of a tf.distribute strategy trace their step in threads of their
# own: the first block to open swaps, the last to close restores.
_ACTIVE: dict[int, list] = {}
_LOCK = threading.Lock()


def _swap(model: Any) -> list:
    dense, norms = fusable_layers(model)
    restore = []
    for layer in dense:
        restore.append((layer, layer.activation))
        layer.activation = gelu_tanh
    for layer in norms:
        if "call" not in vars(layer):
            layer.call = types.MethodType(_fused_layer_norm_call, layer)
            restore.append((layer, None))
    return restore


def _restore(restore: list) -> None:
    for layer, activation in restore:
        if activation is None:
            del layer.call
        else:
            layer.activation = activation


@contextlib.contextmanager
def fused_training_ops(model: Any, enabled: bool = True) -> Iterator[int]:
    """Runs the block with `gelu_tanh` and `layer_norm_last_axis` in `model`'s layers.

    Meant around a train step's trace: the graph traced inside keeps the
    fused ops, and every layer is restored when the block ends (its config,
    saving and later traces see the original). Yields how many layers use
    the fused ops inside the block (0 when `enabled` is False).

    Example:

    >>> with tfft.layers.fused_training_ops(task):
    ...     graph = tf.function(task.train_step).get_concrete_function(spec)
    """
    if not enabled:
        yield 0
        return
    key = id(model)
    with _LOCK:
        if key in _ACTIVE:
            _ACTIVE[key][0] += 1
        else:
            _ACTIVE[key] = [1, _swap(model)]
        swapped = len(_ACTIVE[key][1])
    try:
        yield swapped
    finally:
        with _LOCK:
            _ACTIVE[key][0] -= 1
            if _ACTIVE[key][0] == 0:
                _restore(_ACTIVE.pop(key)[1])
