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
- Dropout: the same keep mask as Keras' (the layer's seed generator, the
  same random op), its gradient one select instead of autodiff's
  broadcast-aware pair of products with their shape bookkeeping.
- Attention (`keras.layers.MultiHeadAttention`'s scaled dot product, mask,
  softmax, dropout): the forward ops Keras runs, the backward pass written
  out (four matrix products and the softmax gradient in float32) instead
  of autodiff through transposes, broadcasting batch products and selects.
  With these two MiniLM's train graph has 3,380 nodes instead of 4,032 (GELU
  and layer norm alone); a graph's size is what tracing it and TensorFlow's
  graph optimisation cost (most of the first step's ~3 s on a CPU), and
  every node is a kernel to launch.

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
from typing import Any, NamedTuple

import keras
import tensorflow as tf

from tfft._compat import sublayers
from tfft.layers.shared_blocks import SharedTrace, repeated_blocks, shared_call

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
            # d/dx = 0.5 (1 + t) + x (1 - t^2) (0.5 c + 1.5 c k x^2), t the forward's
            # tanh: the constants folded and (1 - t^2) times its factor as one
            # TanhGrad kernel, 9 elementwise passes over the activation instead of 12.
            inner = x32 * (0.5 * _SQRT_2_OVER_PI + 1.5 * _SQRT_2_OVER_PI * _CUBIC * (x32 * x32))
            slope = (0.5 + 0.5 * tanh) + tf.raw_ops.TanhGrad(y=tanh, dy=inner)
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


# TensorFlow's "auto_select" random algorithm, which `tf.random.stateless_uniform` uses.
_AUTO_SELECT = 3


def draw_seed(seed_generator: Any) -> Any:
    """The int32 seed Keras' TensorFlow backend draws from `seed_generator` (advancing it)."""
    seed = seed_generator.next()
    if seed.dtype != tf.int32:
        # What Keras does: its seed state is int64, TensorFlow's stateless ops want int32.
        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
    return seed


def dropout_keep_mask(shape: Any, rate: float, seed: Any, dtype: Any) -> Any:
    """The keep mask `keras.random.dropout` draws for `seed` (from `draw_seed`).

    Bit for bit Keras' mask for the same seed, without the no-op rescaling
    `tf.random.stateless_uniform` adds to a [0, 1) draw.
    """
    key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=seed)
    uniform = tf.raw_ops.StatelessRandomUniformV2(shape=shape, key=key, counter=counter,
                                                  alg=_AUTO_SELECT, dtype=dtype)
    return uniform >= tf.constant(rate, dtype)


def masked_scale(x: Any, keep: Any, scale: float) -> Any:
    """`where(keep, x * scale, 0)` with a one-select gradient (dropout's apply step)."""

    @tf.custom_gradient
    def apply(x):
        factor, zero = tf.constant(scale, x.dtype), tf.zeros((), x.dtype)

        def grad(upstream):
            with tf.name_scope("dropout_grad"):
                return tf.where(keep, upstream * factor, zero)

        return tf.where(keep, x * factor, zero), grad

    return apply(x)


def _fused_dropout_call(self, inputs, training=False):
    if training is not True or not 0.0 < self.rate < 1.0 or self.noise_shape is not None:
        # Inference, no-op or all-zero rates, or a broadcast mask: Keras' own call.
        return type(self).call(self, inputs, training=training)
    with tf.name_scope("fused_dropout"):
        keep = dropout_keep_mask(tf.shape(inputs), self.rate, draw_seed(self.seed_generator),
                                 inputs.dtype)
        return masked_scale(inputs, keep, 1.0 / (1.0 - self.rate))


def dot_product_attention(query: Any, key: Any, value: Any, mask: Any = None,
                          scale: float = 1.0, dropout: float = 0.0, seed: Any = None) -> Any:
    """Scaled dot-product attention with a hand-written backward pass.

    What `keras.layers.MultiHeadAttention` computes for one attention axis
    in training: `softmax(mask(q k^T * scale))`, masked positions zeroed
    after the softmax, dropout of the probabilities, times `v`.

    Args:
        query: `[batch, target, heads, dim]`.
        key, value: `[batch, source, heads, dim]`.
        mask: bool, broadcastable to `[batch, heads, target, source]`; False
            positions are not attended to. None: all are.
        scale: float. Multiplies the query (Keras: `1 / sqrt(key_dim)`).
        dropout: float in [0, 1). Dropout rate of the attention probabilities.
        seed: int32 `[2]` seed of the dropout mask (`draw_seed`); needed when
            `dropout` > 0.

    Returns:
        `[batch, target, heads, dim]` in `query`'s dtype.
    """
    if dropout and seed is None:
        raise ValueError("dot_product_attention needs a seed when dropout > 0.")
    with tf.name_scope("fused_attention"):
        return _attention(query, key, value, mask, scale, dropout, seed)


def _attention(query, key, value, mask, scale, rate, seed):
    dtype = query.dtype
    zero = tf.zeros((), dtype)
    heads_first = tf.constant([0, 2, 1, 3])
    query_scale = tf.constant(scale, dtype)
    keep_scale = tf.constant(1.0 / (1.0 - rate), dtype)

    @tf.custom_gradient
    def attend(query, key, value):
        q = tf.transpose(query * query_scale, heads_first)
        k = tf.transpose(key, heads_first)
        v = tf.transpose(value, heads_first)
        scores = tf.matmul(q, k, transpose_b=True)
        if mask is not None:
            # Keras' masked softmax: a large negative score, then zeros (a row with
            # nothing to attend to gives zeros, not a uniform average).
            scores = tf.where(mask, scores, tf.constant(-3e4 if dtype == tf.float16 else -1e9,
                                                        dtype))
        probs = tf.nn.softmax(scores, axis=-1)
        if mask is not None:
            probs = tf.where(mask, probs, zero)
        keep = None
        if rate:
            keep = dropout_keep_mask(tf.shape(probs), rate, seed, dtype)
        dropped = probs if keep is None else tf.where(keep, probs * keep_scale, zero)
        output = tf.transpose(tf.matmul(dropped, v), heads_first)

        def grad(upstream):
            with tf.name_scope("fused_attention_grad"):
                d_output = tf.transpose(upstream, heads_first)
                d_value = tf.matmul(dropped, d_output, transpose_a=True)
                d_probs = tf.matmul(d_output, v, transpose_b=True)
                if keep is not None:
                    d_probs = tf.where(keep, d_probs * keep_scale, zero)
                # Softmax: p * (dp - sum(dp * p)); masked positions have p = 0, so
                # their score gradient is 0 without another select.
                p32, dp32 = tf.cast(probs, tf.float32), tf.cast(d_probs, tf.float32)
                d_scores = tf.cast(
                    p32 * (dp32 - tf.reduce_sum(dp32 * p32, axis=-1, keepdims=True)), dtype)
                d_query = tf.matmul(d_scores, k) * query_scale
                d_key = tf.matmul(d_scores, q, transpose_a=True)
                return (tf.transpose(d_query, heads_first), tf.transpose(d_key, heads_first),
                        tf.transpose(d_value, heads_first))

        return output, grad

    return attend(query, key, value)


def _fused_compute_attention(self, query, key, value, attention_mask=None, training=None,
                             return_attention_scores=False, use_causal_mask=False):
    rate = self._dropout
    if (return_attention_scores or use_causal_mask or len(query.shape) != 4
            or tuple(self._attention_axes) != (1,)
            or not (training is None or isinstance(training, bool))
            or not 0.0 < rate < 1.0):
        # Scores wanted, a causal mask, other attention axes, a symbolic
        # `training`, or no dropout (Keras then calls its backend's
        # `dot_product_attention`, which averages a row with nothing to attend
        # to instead of zeroing it): Keras' own computation.
        return type(self)._compute_attention(
            self, query, key, value, attention_mask=attention_mask, training=training,
            return_attention_scores=return_attention_scores, use_causal_mask=use_causal_mask)
    mask = None
    if attention_mask is not None:
        mask = tf.cast(attention_mask, tf.bool)
        if len(mask.shape) == 3:
            mask = mask[:, None]  # [batch, 1, target, source]: every head
    seed = None
    if training:
        with tf.name_scope("fused_attention"):
            seed = draw_seed(self._dropout_layer.seed_generator)
    output = dot_product_attention(query, key, value, mask, self._inverse_sqrt_key_dim,
                                   rate if training else 0.0, seed)
    return output, None


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


class FusableLayers(NamedTuple):
    """A model's layers `fused_training_ops` swaps, by kind."""

    gelu_dense: list
    layer_norms: list
    attention: list
    dropout: list
    #: Groups of identical blocks traced once (`tfft.layers.repeated_blocks`,
    #: `tfft.layers.shared_blocks`).
    repeated_blocks: list


def fusable_layers(model: Any) -> FusableLayers:
    """The layers of `model` that `fused_training_ops` swaps.

    Dense layers with KerasHub's tanh GELU, plain `LayerNormalization`s
    (last axis, with scale and centre), plain `MultiHeadAttention`s (their
    attention step) and plain `Dropout`s. Subclasses are left alone: they
    may compute something else. `repeated_blocks` lists the groups of
    identical blocks whose `call` one trace serves (see
    `tfft.layers.shared_blocks`).
    """
    found, seen, stack = FusableLayers([], [], [], [], repeated_blocks(model)), set(), [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, keras.layers.Dense) and _is_tanh_gelu(layer.activation):
            found.gelu_dense.append(layer)
        elif (type(layer) is keras.layers.LayerNormalization and not layer.rms_scaling
              and layer.gamma is not None and layer.beta is not None):
            found.layer_norms.append(layer)
        elif type(layer) is keras.layers.MultiHeadAttention:
            found.attention.append(layer)
        elif type(layer) is keras.layers.Dropout:
            found.dropout.append(layer)
        stack.extend(sublayers(layer))
    return found


# Models whose layers are swapped now: id -> [open blocks, what to restore].
# Replicas of a tf.distribute strategy trace their step in threads of their
# own: the first block to open swaps, the last to close restores.
_ACTIVE: dict[int, list] = {}
_LOCK = threading.Lock()


def _swap(model: Any, fuse: bool, share: bool) -> list:
    found = fusable_layers(model)
    if not fuse:
        found = found._replace(gelu_dense=[], layer_norms=[], attention=[], dropout=[])
    restore = []
    for layer in found.gelu_dense:
        restore.append((layer, "activation", layer.activation))
        layer.activation = gelu_tanh
    methods = [(found.layer_norms, "call", _fused_layer_norm_call),
               (found.dropout, "call", _fused_dropout_call),
               (found.attention, "_compute_attention", _fused_compute_attention)]
    for layers, name, method in methods:
        for layer in layers:
            if name not in vars(layer):  # not already replaced on this instance
                setattr(layer, name, types.MethodType(method, layer))
                restore.append((layer, name, None))
    # After the swaps above: the one trace of a group runs its first block's
    # sublayers, fused ops included.
    for group in found.repeated_blocks if share else []:
        call = shared_call(SharedTrace(group[0]))
        for layer in group:
            layer.call = types.MethodType(call, layer)
            restore.append((layer, "call", None))
    return restore


def _restore(restore: list) -> None:
    for layer, name, value in restore:
        if value is None:
            delattr(layer, name)
        else:
            setattr(layer, name, value)


@contextlib.contextmanager
def fused_training_ops(model: Any, enabled: bool = True,
                       share_blocks: bool | None = None) -> Iterator[int]:
    """Runs the block with tfft's fused ops in `model`'s layers (see `fusable_layers`).

    Meant around a train step's trace: the graph traced inside keeps the
    fused ops, and every layer is restored when the block ends (its config,
    saving and later traces see the original). `share_blocks` (default: as
    `enabled`) also traces each group of `model`'s repeated identical blocks
    once (`tfft.layers.repeated_blocks`); leave it off for a step XLA
    compiles (`jit_compile=True`), which XLA then compiled again at every
    step (`Task` does). Yields how many layers are swapped inside the block
    (0 when both are off).

    Example:

    >>> with tfft.layers.fused_training_ops(task):
    ...     graph = tf.function(task.train_step).get_concrete_function(spec)
    """
    share = enabled if share_blocks is None else share_blocks
    if not enabled and not share:
        yield 0
        return
    key = id(model)
    with _LOCK:
        if key in _ACTIVE:
            _ACTIVE[key][0] += 1
        else:
            _ACTIVE[key] = [1, _swap(model, enabled, share)]
        swapped = len(_ACTIVE[key][1])
    try:
        yield swapped
    finally:
        with _LOCK:
            _ACTIVE[key][0] -= 1
            if _ACTIVE[key][0] == 0:
                _restore(_ACTIVE.pop(key)[1])
