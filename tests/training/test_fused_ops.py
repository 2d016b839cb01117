"""tfft's fused training ops: GELU, layer norm, dropout and attention (`tfft.layers.fused_ops`).

Each op is checked against what it replaces (value and every gradient), the
swap against the layers it touches (restored, config unchanged), and a
task's training with it against training without it, on a tiny BERT and on
the real MiniLM.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfft
from tfft.layers.fused_ops import (
    fusable_layers,
    fused_training_ops,
    gelu_tanh,
    layer_norm_last_axis,
)
from tfft.utils.tfdata import pipeline_options

from ..conftest import tiny_text_batch


def _value_and_gradient(fn, x, weights=()):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
        # A weighted sum, so every output element gets its own upstream gradient.
        upstream = tf.cast(tf.range(tf.size(y)), tf.float32) / tf.cast(tf.size(y), tf.float32)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.reshape(upstream, tf.shape(y)))
    return y, tape.gradient(loss, [x, *weights])


def test_gelu_tanh_equals_tf_gelu_and_its_gradient_in_float32():
    x = tf.constant(np.linspace(-8, 8, 4000).reshape(4, -1), tf.float32)
    fused, (fused_grad,) = _value_and_gradient(gelu_tanh, x)
    reference, (reference_grad,) = _value_and_gradient(
        lambda v: tf.nn.gelu(v, approximate=True), x)
    np.testing.assert_allclose(fused.numpy(), reference.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fused_grad.numpy(), reference_grad.numpy(), rtol=1e-5, atol=1e-6)


def test_gelu_tanh_in_bfloat16_is_nearer_float32_than_the_bfloat16_composite():
    x32 = tf.constant(np.random.default_rng(0).normal(0, 3, (64, 96)), tf.float32)
    x16 = tf.cast(x32, tf.bfloat16)
    exact = tf.nn.gelu(tf.cast(x16, tf.float32), approximate=True)
    fused = gelu_tanh(x16)
    composite = tf.nn.gelu(x16, approximate=True)
    assert fused.dtype == tf.bfloat16
    fused_error = float(tf.reduce_mean(tf.abs(tf.cast(fused, tf.float32) - exact)))
    composite_error = float(tf.reduce_mean(tf.abs(tf.cast(composite, tf.float32) - exact)))
    assert fused_error < composite_error


def test_layer_norm_last_axis_equals_keras_and_its_gradients():
    rng = np.random.default_rng(1)
    layer = keras.layers.LayerNormalization(epsilon=1e-12)
    layer.build((3, 5, 16))
    layer.gamma.assign(rng.normal(1.0, 0.2, 16).astype("float32"))
    layer.beta.assign(rng.normal(0.0, 0.2, 16).astype("float32"))
    x = tf.constant(rng.normal(0.5, 2.0, (3, 5, 16)), tf.float32)
    weights = [layer.gamma.value, layer.beta.value]

    fused, fused_grads = _value_and_gradient(
        lambda v: layer_norm_last_axis(v, layer.gamma.value, layer.beta.value, 1e-12), x, weights)
    reference, reference_grads = _value_and_gradient(layer, x, weights)
    np.testing.assert_allclose(fused.numpy(), reference.numpy(), rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(fused_grads, reference_grads, strict=True):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-5)


def _keras_dropout(rate, seed):
    layer = keras.layers.Dropout(rate, seed=seed)
    layer.build((None,))
    return layer


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_dropout_draws_keras_mask_and_passes_gradient_through_it(dtype):
    x = tf.cast(tf.reshape(tf.range(1, 3 * 7 * 16 + 1, dtype=tf.float32), (3, 7, 16)) / 50, dtype)
    fused, plain = _keras_dropout(0.3, seed=11), _keras_dropout(0.3, seed=11)
    for step in range(2):  # the second call: both seed generators advanced alike
        with fused_training_ops(fused):
            ours, (our_grad,) = _value_and_gradient(lambda v: fused(v, training=True), x)
        theirs, (their_grad,) = _value_and_gradient(lambda v: plain(v, training=True), x)
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=f"call {step}")
        np.testing.assert_array_equal(our_grad.numpy(), their_grad.numpy())
        dropped = float(tf.reduce_mean(tf.cast(ours == 0, tf.float32)))
        assert 0.2 < dropped < 0.4
    with fused_training_ops(fused):
        np.testing.assert_array_equal(fused(x, training=False).numpy(), x.numpy())


def _attention_pair(dropout, seed=5):
    # Weights from a fixed seed: the bfloat16 test's tolerance held for the weights
    # the suite's order happened to give, not for every draw the global RNG left.
    keras.utils.set_random_seed(seed)
    layers = []
    for _ in range(2):
        layer = keras.layers.MultiHeadAttention(num_heads=3, key_dim=4, dropout=dropout,
                                                seed=seed)
        layer.build((2, 6, 10), (2, 6, 10))
        layers.append(layer)
    layers[1].set_weights(layers[0].get_weights())
    return layers


def _attention_loss(layer, x, mask):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, x, attention_mask=mask, training=True)
        upstream = tf.reshape(tf.range(tf.size(y), dtype=tf.float32), tf.shape(y)) / 100.0
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    return y, tape.gradient(loss, [x, *layer.trainable_weights])


@pytest.mark.parametrize("dropout", [0.0, 0.25], ids=["no_dropout", "dropout"])
def test_fused_attention_equals_multi_head_attention_and_its_gradients(dropout):
    # Without dropout Keras runs its backend's dot_product_attention, which averages the
    # fully masked row instead of zeroing it: the swap must keep Keras' code there.
    x = tf.constant(np.random.default_rng(2).normal(0, 1, (2, 6, 10)), tf.float32)
    # Padding in the first example; the second's last query row attends to nothing.
    mask = np.ones((2, 6, 6), bool)
    mask[0, :, 4:] = False
    mask[1, 5, :] = False
    fused, plain = _attention_pair(dropout)
    with fused_training_ops(fused) as swapped:
        assert swapped == 2 and "_compute_attention" in vars(fused)  # and its dropout layer
        ours, our_grads = _attention_loss(fused, x, mask)
    assert "_compute_attention" not in vars(fused)
    theirs, their_grads = _attention_loss(plain, x, mask)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)
    for our_grad, their_grad in zip(our_grads, their_grads, strict=True):
        np.testing.assert_allclose(our_grad.numpy(), their_grad.numpy(), rtol=1e-4, atol=1e-5)


def test_fused_attention_in_bfloat16_stays_near_float32():
    x = tf.constant(np.random.default_rng(3).normal(0, 1, (2, 6, 10)), tf.float32)
    fused, plain = _attention_pair(0.1)
    with fused_training_ops(fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            q = tf.cast(fused._query_dense(x), tf.bfloat16)
            k = tf.cast(fused._key_dense(x), tf.bfloat16)
            v = tf.cast(fused._value_dense(x), tf.bfloat16)
            ours = fused._compute_attention(q, k, v, None, False)[0]
            loss = tf.reduce_sum(tf.cast(ours, tf.float32) ** 2)
        our_grad = tape.gradient(loss, x)
    assert ours.dtype == tf.bfloat16
    with tf.GradientTape() as tape:
        tape.watch(x)
        reference = plain._compute_attention(plain._query_dense(x), plain._key_dense(x),
                                             plain._value_dense(x), None, False)[0]
        loss = tf.reduce_sum(reference ** 2)
    reference_grad = tape.gradient(loss, x)
    np.testing.assert_allclose(tf.cast(ours, tf.float32).numpy(), reference.numpy(), atol=0.03)
    np.testing.assert_allclose(our_grad.numpy(), reference_grad.numpy(), atol=0.05, rtol=0.05)


def test_fused_training_ops_swaps_inside_the_block_and_restores_every_layer(tiny_bert):
    task = tfft.build_model(tiny_bert, num_classes=3)
    found = fusable_layers(task)
    # Tiny BERT, 3 layers: a GELU feed-forward and an attention layer each; two norms each
    # and the embeddings'; three dropouts each (the attention layer's own, after attention,
    # after the feed-forward), the embeddings' and the head's. The three blocks form one
    # group of repeated blocks.
    assert [len(layers) for layers in found] == [3, 7, 3, 11, 1]
    blocks = found.repeated_blocks[0]
    assert len(blocks) == 3
    dense, norms = found.gelu_dense, found.layer_norms
    activations = [layer.activation for layer in dense]
    config = task.get_config()
    batch = tiny_text_batch(n=4)
    before = task(batch, training=False).numpy()

    with fused_training_ops(task) as swapped:
        assert swapped == 27
        assert all(layer.activation is gelu_tanh for layer in dense)
        assert all("call" in vars(layer) for layer in norms + found.dropout + blocks)
        assert all("_compute_attention" in vars(layer) for layer in found.attention)
        with fused_training_ops(task) as again:  # nested (another replica's trace)
            assert again == 27
        assert all(layer.activation is gelu_tanh for layer in dense)
        inside = task(batch, training=False).numpy()

    assert [layer.activation for layer in dense] == activations
    assert not any("call" in vars(layer) for layer in norms + found.dropout + blocks)
    assert not any("_compute_attention" in vars(layer) for layer in found.attention)
    assert task.get_config() == config
    np.testing.assert_allclose(inside, before, rtol=1e-5, atol=1e-6)
    with fused_training_ops(task, enabled=False) as swapped:
        assert swapped == 0 and dense[0].activation is activations[0]
    with fused_training_ops(task, enabled=False, share_blocks=True) as swapped:
        assert swapped == 3 and dense[0].activation is activations[0]
        assert all("call" in vars(layer) for layer in blocks)
        assert not any("call" in vars(layer) for layer in norms)


def _train(make_task, fused_ops, batches, steps):
    task = make_task()
    task.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    task.fused_ops = fused_ops
    data = tf.data.Dataset.from_tensor_slices(batches).batch(8).take(steps)
    data = data.with_options(pipeline_options())
    keras.utils.set_random_seed(7)  # the same dropout masks both ways
    history = task.fit(data, epochs=1, verbose=0)
    spec = data.element_spec
    nodes = len(tf.function(task.train_step).get_concrete_function(spec).graph
                .as_graph_def().node)
    return task, history.history["loss"][0], nodes


def test_training_with_fused_ops_equals_training_without(new_tiny_text_backbone):
    def make():
        keras.utils.set_random_seed(0)
        return tfft.build_model(new_tiny_text_backbone(), num_classes=3, freeze="full")

    batch = tiny_text_batch(n=24, seed=3)
    labels = np.arange(24) % 3
    # None: the default, on since no GPU or TPU is visible here.
    fused, fused_loss, fused_nodes = _train(make, None, (batch, labels), steps=3)
    plain, plain_loss, plain_nodes = _train(make, False, (batch, labels), steps=3)
    assert fused_nodes < plain_nodes  # the default traced the fused ops
    assert fused_loss == pytest.approx(plain_loss, rel=1e-5)
    moved = 0
    for ours, theirs, start in zip(fused.weights, plain.weights, make().weights, strict=True):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-4, atol=1e-6,
                                   err_msg=ours.path)
        moved += not np.allclose(np.asarray(ours), np.asarray(start))
    assert moved > 20  # training changed the weights it compares


def test_fused_ops_optimise_the_train_step_in_one_grappler_round(new_tiny_text_backbone):
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context

    batch, labels = tiny_text_batch(n=8, seed=3), np.arange(8) % 3
    data = tf.data.Dataset.from_tensor_slices((batch, labels)).batch(8)
    seen = {}
    for fused_ops in (True, False):
        task = tfft.build_model(new_tiny_text_backbone(), num_classes=3, freeze="full")
        task.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        task.fused_ops = fused_ops
        step = task.train_step

        def recording(data, step=step, fused_ops=fused_ops):
            # Traced inside the train function's first call: the options it runs under.
            serialized = context.context().function_call_options.config_proto_serialized
            seen[fused_ops] = config_pb2.ConfigProto.FromString(serialized)
            return step(data)

        task.train_step = recording
        task.fit(data, epochs=1, verbose=0)
    rewriter = rewriter_config_pb2.RewriterConfig
    light = seen[True].graph_options.rewrite_options
    assert (light.meta_optimizer_iterations, light.layout_optimizer,
            light.memory_optimization) == (rewriter.ONE, rewriter.OFF, rewriter.NO_MEM_OPT)
    plain = seen[False].graph_options.rewrite_options
    assert plain.meta_optimizer_iterations == rewriter.DEFAULT_NUM_ITERS
    assert plain.layout_optimizer == rewriter.DEFAULT


@pytest.mark.slow
def test_real_minilm_trains_the_same_with_fused_ops(bbc):
    """The real all-MiniLM-L6-v2, three steps of 8 BBC articles at 64 tokens, both ways."""
    texts, labels = list(bbc.x[:24]), np.asarray(bbc.y[:24]) % 5

    def make():
        keras.utils.set_random_seed(0)
        return tfft.build_model("minilm", num_classes=5, freeze="full", sequence_length=64,
                                compile=False)

    first = make()
    features = first.preprocessor(tf.constant(texts))
    first_weights = [np.asarray(w) for w in first.weights]
    found = fusable_layers(first)
    # Six BERT layers (+ the embeddings' norm and dropout, and the head's dropout),
    # the six blocks one group of repeated blocks (traced once by `fit`'s step).
    assert [len(layers) for layers in found] == [6, 13, 6, 20, 1]
    assert len(found.repeated_blocks[0]) == 6
    del first

    fused, fused_loss, fused_nodes = _train(make, True, (features, labels), steps=3)
    plain, plain_loss, plain_nodes = _train(make, False, (features, labels), steps=3)
    assert fused_nodes < plain_nodes
    assert fused_loss == pytest.approx(plain_loss, rel=1e-4)
    moved = 0
    for ours, theirs, start in zip(fused.weights, plain.weights, first_weights, strict=True):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-3, atol=2e-6,
                                   err_msg=ours.path)
        moved += not np.allclose(np.asarray(ours), start)
    assert moved > 90
