"""Each private Keras/TensorFlow API in tfft._compat still works on the installed Keras.

A failure here means a Keras upgrade changed an internal tfft relies on: fix the
function in tfft/_compat.py that the test names.
"""

import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfft import _compat


def broke(function, what):
    return (
        f"tfft._compat.{function} no longer works with Keras {keras.__version__} "
        f"(TensorFlow {tf.__version__}): {what}. Update tfft/_compat.py."
    )


def _dense_model():
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2, name="dense")(keras.layers.Dense(4, name="hidden")(inputs))
    return keras.Model(inputs, outputs)


class Block(keras.layers.Layer):
    """A plain layer holding two layers as attributes, as a transformer block does."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = keras.layers.Dense(2, name="first")
        self.second = keras.layers.Dense(2, name="second")

    def call(self, x):
        return self.second(self.first(x))


def test_sublayers():
    model = _dense_model()
    assert [layer.name for layer in _compat.sublayers(model)][-2:] == ["hidden", "dense"], broke(
        "sublayers", "a functional model's `layers` changed"
    )
    block = Block()
    assert [layer.name for layer in _compat.sublayers(block)] == ["first", "second"], broke(
        "sublayers", "a plain layer no longer tracks its sublayers in `_layers`"
    )
    assert _compat.sublayers(keras.layers.Dense(1)) == [], broke(
        "sublayers", "a leaf layer reports sublayers"
    )


def test_track_layer_variable():
    layer = keras.layers.Layer(name="holder")
    variable = keras.Variable(np.ones(3, "float32"), name="extra")
    _compat.track_layer_variable(layer, variable)
    assert variable in layer.trainable_weights, broke(
        "track_layer_variable", "Layer._track_variable no longer adds to `weights`"
    )
    layer.trainable = False
    assert variable in layer.non_trainable_weights, broke(
        "track_layer_variable", "a tracked variable no longer follows `layer.trainable`"
    )


def test_dense_kernel_variable():
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    layer.enable_lora(2)
    kernel = _compat.dense_kernel_variable(layer)
    assert isinstance(kernel, keras.Variable) and tuple(kernel.shape) == (4, 3), broke(
        "dense_kernel_variable", "Dense no longer stores its kernel variable as `_kernel`"
    )
    layer.lora_kernel_b.assign(np.ones((2, 3), "float32"))
    assert not np.allclose(layer.kernel, kernel.numpy()), broke(
        "dense_kernel_variable", "with LoRA `kernel` no longer differs from the stored one"
    )


def test_variable_value_is_the_tf_variable():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        weight = keras.Variable(np.zeros(2, "float32"))
    value = _compat.variable_value(weight)
    assert isinstance(value, tf.Variable), broke(
        "variable_value", "a Keras variable no longer holds a tf.Variable in `_value`"
    )
    assert strategy.extended.variable_created_in_scope(value), broke(
        "variable_value", "the held tf.Variable is not the strategy's"
    )
    plain = tf.Variable(1.0)
    assert _compat.variable_value(plain) is plain


def test_optimizer_internals():
    variables = [keras.Variable(np.ones(2, "float32")), keras.Variable(np.ones(3, "float32"))]
    optimizer = keras.optimizers.Adam(0.1)
    assert not _compat.optimizer_knows(optimizer, variables[:1])
    optimizer.build(variables[:1])
    assert _compat.optimizer_knows(optimizer, variables[:1]), broke(
        "optimizer_knows", "`_trainable_variables_indices`/`_var_key` changed"
    )
    assert not _compat.optimizer_knows(optimizer, variables), broke(
        "optimizer_knows", "an unknown variable counts as known"
    )
    assert _compat.optimizer_knows(keras.optimizers.LossScaleOptimizer(optimizer),
                                   variables[:1])
    key = _compat.optimizer_variable_key(optimizer, variables[0])
    assert key == _compat.optimizer_variable_key(optimizer, variables[0]), broke(
        "optimizer_variable_key", "`_var_key` is not stable"
    )
    assert key != _compat.optimizer_variable_key(optimizer, variables[1])
    assert _compat.optimizer_built_variables(optimizer) == variables[:1], broke(
        "optimizer_built_variables", "`_trainable_variables` changed"
    )
    slot = keras.Variable(np.zeros(2, "float32"), name="slot")
    _compat.track_optimizer_variable(optimizer, slot)
    assert any(v is slot for v in optimizer.variables), broke(
        "track_optimizer_variable", "Optimizer._track_variable no longer adds to `variables`"
    )


def test_adam_variable_state():
    variables = [keras.Variable(np.ones(2, "float32"), name="kernel"),
                 keras.Variable(np.ones(3, "float32"), name="gamma")]
    optimizer = keras.optimizers.AdamW(0.1, weight_decay=0.1)
    optimizer.exclude_from_weight_decay(var_names=["gamma"])
    optimizer.build(variables)
    optimizer.apply([tf.ones(2), 2 * tf.ones(3)], variables)
    for variable, grad, decays in zip(variables, (1.0, 2.0), (True, False), strict=True):
        momentum, velocity, decay = _compat.adam_variable_state(optimizer, variable)
        # After one step: m = (1 - beta_1) g, v = (1 - beta_2) g^2.
        np.testing.assert_allclose(momentum.numpy(), 0.1 * grad, rtol=1e-5, err_msg=broke(
            "adam_variable_state", "`_momentums`/`_get_variable_index` changed"))
        np.testing.assert_allclose(velocity.numpy(), 0.001 * grad**2, rtol=1e-4, err_msg=broke(
            "adam_variable_state", "`_velocities` changed"))
        assert decay is decays, broke("adam_variable_state", "`_use_weight_decay` changed")


def test_set_symbolic_build_batch_builds_from_the_transformed_batch():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    seen = []

    def transform(batch):
        seen.append(batch)
        return batch

    with strategy.scope():
        model = _dense_model()
        model.compile("sgd", "mse")
    _compat.set_symbolic_build_batch(model, transform)
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert seen, broke(
        "set_symbolic_build_batch",
        "fit no longer builds through Trainer._maybe_symbolic_build(iterator=...)",
    )
    assert model.optimizer.built


def test_saving_loads_graph_layers_first():
    assert _compat.saving_loads_graph_layers_first(), broke(
        "saving_loads_graph_layers_first",
        "keras.saving no longer loads a Functional model's `layers` before its other "
        f"attributes (order: {_compat.saving_load_order(_dense_model())[:4]})",
    )


def test_saving_load_order_lists_attributes():
    order = _compat.saving_load_order(_dense_model())
    assert order[0] == "layers" and len(order) > 1, broke(
        "saving_load_order", f"saving_lib._walk_saveable changed (order: {order[:6]})"
    )


@pytest.mark.parametrize("name", [n for n in dir(_compat) if not n.startswith("_")
                                  and callable(getattr(_compat, n))
                                  and getattr(_compat, n).__module__ == "tfft._compat"])
def test_every_function_is_documented_and_tested(name):
    assert getattr(_compat, name).__doc__, f"tfft._compat.{name} needs a docstring"
    source = pathlib.Path(__file__).read_text()
    assert f"_compat.{name}(" in source, f"tfft._compat.{name} has no test in {__file__}"


def test_one_tf_variable_name_shares_the_tensorflow_name_inside_only():
    with _compat.one_tf_variable_name():
        first = keras.Variable(np.zeros(3, "float32"), name="first")
        second = keras.Variable(np.zeros(2, "float32"), name="second")
    third = keras.Variable(np.zeros(2, "float32"), name="third")
    assert (first.name, second.name, third.name) == ("first", "second", "third")
    assert first.value.name == second.value.name, broke(
        "one_tf_variable_name", f"{first.value.name} != {second.value.name}: "
        "tf.variable_creator_scope no longer sets the inner variable's name")
    assert third.value.name.startswith("third")
    first.assign([1.0, 2.0, 3.0])
    second.assign([4.0, 5.0])
    np.testing.assert_array_equal(first.numpy(), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(second.numpy(), [4.0, 5.0])


def test_write_export_archive_stores_each_variable_once(tmp_path):
    model = _dense_model()
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model.call,
                         input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    _compat.write_export_archive(archive, str(tmp_path / "export"))
    stored = sum(int(np.prod(shape)) for name, shape in
                 tf.train.list_variables(str(tmp_path / "export" / "variables" / "variables"))
                 if name != "_CHECKPOINTABLE_OBJECT_GRAPH")
    # keras-team/keras#23553: plain `write_out` stores 2 x count_params().
    assert stored == model.count_params(), broke(
        "write_export_archive", f"{stored} values stored for {model.count_params()} "
        "parameters: ExportArchive's `_tf_trackable` variable lists changed")
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    np.testing.assert_allclose(loaded.serve(x).numpy(), model(x).numpy(), rtol=1e-6)
    assert len(loaded.variables) == len(model.variables)


def test_write_export_archive_traces_no_default_serving_signature(tmp_path):
    traces = []

    class Counting(keras.layers.Layer):
        def call(self, x):
            traces.append(1)  # Python runs once per trace
            return x * 2.0

    def traces_while_writing(write):
        inputs = keras.Input((3,))
        model = keras.Model(inputs, Counting()(inputs))
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", model.call,
                             input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        before = len(traces)
        write(archive)
        return len(traces) - before, model

    plain, _ = traces_while_writing(
        lambda archive: archive.write_out(str(tmp_path / "plain"), verbose=False))
    ours, model = traces_while_writing(
        lambda archive: _compat.write_export_archive(archive, str(tmp_path / "export")))
    # write_out traces the endpoint outside the save and again inside it, and
    # Keras' walk for lookup tables traces the model's default serving signature.
    assert plain == 3
    assert ours == 1, broke(
        "write_export_archive", f"{ours} traces while writing, {plain} with write_out")
    assert model._default_save_signature is not None  # the property is back
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    x = np.ones((2, 3), "float32")
    np.testing.assert_allclose(loaded.serve(x).numpy(), 2 * x)  # NumPy in: a tf.function
    served = loaded.signatures["serving_default"](tf.constant(x))
    np.testing.assert_allclose(next(iter(served.values())).numpy(), 2 * x)

    # Endpoints saved as the concrete functions traced outside the save: one trace too.
    concrete, _ = traces_while_writing(lambda archive: _compat.write_export_archive(
        archive, str(tmp_path / "concrete"), concrete_endpoints=True))
    assert concrete == 1, broke(
        "write_export_archive", f"{concrete} traces with concrete_endpoints=True")
    serve = tf.saved_model.load(str(tmp_path / "concrete")).signatures["serve"]
    np.testing.assert_allclose(next(iter(serve(tf.constant(x)).values())).numpy(), 2 * x)


def test_graph_optimizer_light_sets_the_call_options_inside_only():
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context

    def rewrite_options():
        serialized = context.context().function_call_options.config_proto_serialized
        return config_pb2.ConfigProto.FromString(serialized).graph_options.rewrite_options

    rewriter = rewriter_config_pb2.RewriterConfig
    square = tf.function(lambda x: x * x)
    before = rewrite_options()
    assert before.meta_optimizer_iterations == rewriter.DEFAULT_NUM_ITERS
    with _compat.graph_optimizer_light():
        inside = rewrite_options()
        assert float(square(tf.constant(3.0))) == 9.0
    assert (inside.meta_optimizer_iterations, inside.layout_optimizer,
            inside.memory_optimization) == (rewriter.ONE, rewriter.OFF, rewriter.NO_MEM_OPT), broke(
        "graph_optimizer_light", "context.function_call_options no longer carries the config")
    assert (inside.constant_folding, inside.shape_optimization, inside.loop_optimization,
            inside.experimental_conditional_code_motion) == (rewriter.OFF,) * 4
    assert inside.disable_tfg_optimizer and inside.remapping == rewriter.DEFAULT
    assert rewrite_options() == before
    with _compat.graph_optimizer_light(remapper=False):
        assert rewrite_options().remapping == rewriter.OFF
        assert rewrite_options().meta_optimizer_iterations == rewriter.ONE
    with _compat.graph_optimizer_light():  # cached per setting
        assert rewrite_options().remapping == rewriter.DEFAULT

    # An option the user set stays as set.
    ctx = context.context()
    saved = ctx.function_call_options
    config = config_pb2.ConfigProto.FromString(saved.config_proto_serialized)
    config.graph_options.rewrite_options.layout_optimizer = rewriter.ON
    config.graph_options.rewrite_options.constant_folding = rewriter.ON
    ctx.function_call_options = context.FunctionCallOptions(config_proto=config)
    try:
        with _compat.graph_optimizer_light():
            assert rewrite_options().layout_optimizer == rewriter.ON
            assert rewrite_options().constant_folding == rewriter.ON
            assert rewrite_options().meta_optimizer_iterations == rewriter.ONE
    finally:
        ctx.function_call_options = saved
