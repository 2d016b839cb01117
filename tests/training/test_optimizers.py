import keras
import numpy as np
import pytest
import tensorflow as tf

from tfft.training.optimizers import FusedAdamW
from tfft.training.presets import OPTIMIZER_PRESETS, make_optimizer


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="gelu", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="out")(
        keras.layers.LayerNormalization(name="norm")(hidden))
    return keras.Model(inputs, outputs)


def _train(optimizer, exclude=None, epochs=3):
    model = _model()
    if exclude:
        optimizer.exclude_from_weight_decay(var_names=exclude)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, 64)
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, shuffle=False)
    return model


@pytest.mark.parametrize("exclude", [None, ["norm"]], ids=["decay-all", "exclude-norm"])
def test_fused_adamw_matches_keras_adamw(exclude):
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=4, decay_rate=0.5)
    kwargs = {"weight_decay": 0.1, "clipnorm": 1.0}
    ours = _train(FusedAdamW(schedule, **kwargs), exclude)
    theirs = _train(keras.optimizers.AdamW(schedule, **kwargs), exclude)
    untrained = _model()
    for a, b, start in zip(ours.weights, theirs.weights, untrained.weights, strict=True):
        # Training moved the weights, and both optimizers moved them alike.
        assert not np.allclose(b.numpy(), start.numpy())
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_fused_adamw_decay_multiplies_by_one_minus_lr_times_decay():
    # A zero gradient leaves Adam's step at zero: only the decay moves the variable.
    start = np.random.default_rng(0).normal(size=(8, 8)).astype("float32")
    ours = keras.Variable(start)
    theirs = keras.Variable(start)
    keep = np.float32(1) - np.float32(0.01) * np.float32(0.3)

    def two_steps(optimizer, variable):
        optimizer.build([variable])
        apply = tf.function(lambda: optimizer.apply_gradients([(tf.zeros((8, 8)), variable)]))
        apply()
        apply()

    two_steps(FusedAdamW(0.01, weight_decay=0.3), ours)
    two_steps(keras.optimizers.AdamW(0.01, weight_decay=0.3), theirs)
    np.testing.assert_array_equal(ours.numpy(), start * keep * keep)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)


def test_fused_adamw_traces_a_smaller_graph():
    def nodes(optimizer):
        model = _model()
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
        model.optimizer.build(model.trainable_variables)
        spec = (tf.TensorSpec((None, 6), tf.float32), tf.TensorSpec((None,), tf.int64))
        graph = tf.function(model.train_step).get_concrete_function(spec).graph
        return len(graph.as_graph_def().node)

    # 6 variables: Keras' AdamW spends ~25 nodes on each, the fused update ~5.
    assert nodes(FusedAdamW(1e-3, weight_decay=0.01)) < nodes(
        keras.optimizers.AdamW(1e-3, weight_decay=0.01)) - 6 * 15


def test_fused_adamw_round_trips_its_config_and_refuses_bad_decay():
    optimizer = FusedAdamW(3e-4, weight_decay=0.05, epsilon=1e-8)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(again, FusedAdamW) and isinstance(again, keras.optimizers.AdamW)
    assert again.decoupled_weight_decay == 0.05
    assert again.get_config() == optimizer.get_config()
    with pytest.raises(ValueError, match="weight_decay must be a float >= 0"):
        FusedAdamW(weight_decay=-1.0)
    with pytest.raises(ValueError, match="Received: weight_decay=None"):
        FusedAdamW(weight_decay=None)


def test_transformer_preset_builds_fused_adamw():
    optimizer = make_optimizer(OPTIMIZER_PRESETS["transformer"], total_steps=10)
    assert isinstance(optimizer, FusedAdamW)
    assert optimizer.decoupled_weight_decay == OPTIMIZER_PRESETS["transformer"]["weight_decay"]
    assert optimizer.clipnorm == 1.0
