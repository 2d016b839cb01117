"""Repeated blocks traced once (`tfft.layers.shared_blocks`).

Which layers are grouped, and that a step traced with one shared trace per
group computes what the step traced block by block computes: loss,
gradients, dropout seed states, losses added inside the blocks, in float32
and in mixed bfloat16, on a tiny BERT and a small custom block (the real
MiniLM is in `test_fused_ops.py`).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfft
from tfft.layers.fused_ops import fused_training_ops
from tfft.layers.shared_blocks import repeated_blocks
from tfft.utils.tfdata import pipeline_options

from ..conftest import make_tiny_bert, tiny_text_batch


def _transformer_layers(backbone):
    return [layer for layer in backbone.layers if layer.name.startswith("transformer_layer")]


def test_repeated_blocks_groups_identical_composite_siblings_only():
    bert = make_tiny_bert(num_layers=3)
    blocks = _transformer_layers(bert)
    groups = repeated_blocks(bert)
    # The three encoder blocks; not their dense, norm or dropout sublayers (not
    # composite), nor the query/key/value projections inside (inside a group).
    assert [[layer.name for layer in group] for group in groups] == [
        [layer.name for layer in blocks]]

    blocks[2].trainable = False  # another signature: no longer computable by the same trace
    assert [[layer.name for layer in group] for group in repeated_blocks(bert)] == [
        [blocks[0].name, blocks[1].name]]
    blocks[1].trainable = False  # now the two frozen blocks are one group, the first alone
    assert [[layer.name for layer in group] for group in repeated_blocks(bert)] == [
        [blocks[1].name, blocks[2].name]]

    assert repeated_blocks(make_tiny_bert(num_layers=1)) == []


class _Block(keras.layers.Layer):
    """A composite block with dropout and a loss added in its call."""

    def __init__(self, units=8, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.inner = keras.layers.Dense(units, activation="tanh",
                                        activity_regularizer=keras.regularizers.L2(0.1))
        self.dropout = keras.layers.Dropout(0.3)
        self.outer = keras.layers.Dense(units)

    def build(self, input_shape):
        self.inner.build(input_shape)
        self.dropout.build(input_shape)
        self.outer.build((*input_shape[:-1], self.units))

    def call(self, x, training=None):
        return x + self.outer(self.dropout(self.inner(x), training=training))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _block_model(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    x = inputs
    for i in range(3):
        x = _Block(name=f"block_{i}")(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def _step(model, x, share):
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            y = model(x, training=True)
            extra = tf.add_n(model.losses)
            loss = tf.reduce_mean(tf.square(y)) + extra
        return loss, extra, tape.gradient(loss, model.trainable_weights)

    with fused_training_ops(model, enabled=False, share_blocks=share):
        graph = step.get_concrete_function(tf.TensorSpec((None, 8))).graph
        loss, extra, grads = step(x)
    return graph, loss, extra, grads


def test_shared_trace_keeps_losses_seed_states_and_gradients_of_every_block():
    x = tf.constant(np.random.default_rng(0).normal(size=(16, 8)), tf.float32)
    shared_model, plain_model = _block_model(1), _block_model(1)
    assert len(repeated_blocks(shared_model)) == 1
    graph, loss, extra, grads = _step(shared_model, x, share=True)
    _, plain_loss, plain_extra, plain_grads = _step(plain_model, x, share=False)

    calls = [op for op in graph.get_operations()
             if op.type in ("StatefulPartitionedCall", "PartitionedCall")]
    forward = [op for op in calls if "/block_" in op.name]
    backward = [op for op in calls if op not in forward]
    # One call per block to the one traced function, one per block to its gradient.
    assert len(forward) == 3 and len({op.get_attr("f").name for op in forward}) == 1
    assert len(backward) == 3 and len({op.get_attr("f").name for op in backward}) == 1
    assert float(extra) > 0  # each block's activity regulariser loss came out of the trace
    np.testing.assert_allclose(float(extra), float(plain_extra), rtol=1e-6)
    np.testing.assert_allclose(float(loss), float(plain_loss), rtol=1e-6)
    for ours, theirs, weight in zip(grads, plain_grads, plain_model.trainable_weights,
                                    strict=True):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-7,
                                   err_msg=weight.path)
    # Every block drew its own dropout mask and advanced its own seed state.
    states = [np.asarray(v) for v in shared_model.non_trainable_variables]
    plain_states = [np.asarray(v) for v in plain_model.non_trainable_variables]
    assert len(states) == 3 and len({tuple(s) for s in states}) == 3
    for ours, theirs in zip(states, plain_states, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    # Outside the block, every layer has its own call again.
    assert not any("call" in vars(layer) for layer in shared_model.layers)


def _train(new_backbone, share_blocks, steps=3):
    keras.utils.set_random_seed(0)
    task = tfft.build_model(new_backbone(), num_classes=3, freeze="full")
    task.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    task.fused_ops, task.share_blocks = True, share_blocks
    batch, labels = tiny_text_batch(n=24, seed=3), np.arange(24) % 3
    data = tf.data.Dataset.from_tensor_slices((batch, labels)).batch(8).take(steps)
    data = data.with_options(pipeline_options())
    keras.utils.set_random_seed(7)  # the same dropout masks both ways
    history = task.fit(data, epochs=1, verbose=0)
    with fused_training_ops(task, True, share_blocks):
        graph = tf.function(task.train_step).get_concrete_function(data.element_spec).graph
    return task, history.history["loss"][0], len(graph.as_graph_def().node)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_task_trains_the_same_with_shared_blocks(new_tiny_text_backbone, policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        shared, shared_loss, shared_nodes = _train(new_tiny_text_backbone, True)
        plain, plain_loss, plain_nodes = _train(new_tiny_text_backbone, False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # Three blocks traced once instead of three times.
    assert shared_nodes < 0.75 * plain_nodes
    assert shared_loss == pytest.approx(plain_loss, rel=1e-5)
    keras.utils.set_random_seed(0)
    start_weights = tfft.build_model(new_tiny_text_backbone(), num_classes=3).weights
    moved = 0
    for ours, theirs, start in zip(shared.weights, plain.weights, start_weights, strict=True):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=1e-6,
                                   err_msg=ours.path)
        moved += not np.allclose(np.asarray(ours), np.asarray(start))
    assert moved > 20


class _CapturingBlock(_Block):
    """A block whose call reads a `tf.Variable` Keras does not track."""

    def __init__(self, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.offset = offset

    def build(self, input_shape):
        super().build(input_shape)
        self.untracked = [tf.Variable(tf.fill((self.units,), self.offset), trainable=False)]

    def call(self, x, training=None):
        return super().call(x, training=training) + self.untracked[0]


def test_blocks_whose_trace_captures_a_variable_are_traced_one_by_one():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8,))
    # Same config, different untracked offsets: one trace cannot compute both.
    blocks = [_CapturingBlock(name="first"), _CapturingBlock(name="second")]
    blocks[1].offset = 1.0
    x = inputs
    for block in blocks:
        x = block(x)
    model = keras.Model(inputs, x)
    assert len(repeated_blocks(model)) == 1
    data = tf.constant(np.random.default_rng(1).normal(size=(4, 8)), tf.float32)
    expected = model(data, training=False)

    @tf.function
    def forward(data):
        return model(data, training=False)

    with fused_training_ops(model, enabled=False, share_blocks=True):
        shared = forward(data)
        calls = [op for op in forward.get_concrete_function(data).graph.get_operations()
                 if op.type in ("StatefulPartitionedCall", "PartitionedCall")]
    np.testing.assert_allclose(shared.numpy(), expected.numpy(), rtol=1e-6)
    assert calls == []  # fell back: each block traced its own call


class _NoConfigBlock(_Block):
    """A block whose `get_config` cannot be made (a required argument Keras cannot store)."""

    def __init__(self, activation_fn, **kwargs):
        super().__init__(**kwargs)
        self.activation_fn = activation_fn

    def get_config(self):
        raise NotImplementedError("no config")


def test_blocks_without_a_config_are_not_grouped():
    inputs = keras.Input((8,))
    x = _NoConfigBlock(tf.nn.relu)(_NoConfigBlock(tf.nn.relu)(inputs))
    model = keras.Model(inputs, x)
    assert repeated_blocks(model) == []


def test_an_xla_step_compiles_once_with_blocks_left_unshared():
    # With the shared calls in it, XLA compiled a jit_compile step again at
    # every step (MiniLM on a 2-core CPU: 4-5 s per step instead of 0.26 s).
    # XLA's own log counts the compilations; 4 steps of one shape run here.
    import os
    import re
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import numpy as np
        import tfft
        from tests.conftest import make_tiny_bert, tiny_text_batch

        task = tfft.build_model(tfft.load_backbone(make_tiny_bert()), num_classes=3,
                                compile=False)
        task.fused_ops, task.share_blocks = True, True
        task.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                     jit_compile=True)
        task.fit(tiny_text_batch(n=32), np.arange(32) % 3, batch_size=8, verbose=0)
        print("shared:", task._share_blocks_on())
    """)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "0",
           "TF_CPP_VMODULE": "device_compilation_profiler=2"}
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = [int(n) for n in re.findall(r"Compiled __inference_one_step_on_data\w* (\d+) times",
                                         done.stderr)]
    assert counts == [1], counts
    assert "shared: False" in done.stdout
