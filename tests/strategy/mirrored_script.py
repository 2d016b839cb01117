"""Trains the same tfft model on one device and on MirroredStrategy over two CPUs.

Run by test_strategy.py in a fresh process: the CPU must be split into logical
devices before TensorFlow initialises them. Writes `<out>/<kind>.npz` with the
initial, single-device and mirrored weights for each model kind.
"""

import json
import sys

import keras
import numpy as np
import tensorflow as tf

import tfft
from tfft import distribute
from tfft.distribute import distribute_dataset, get_strategy

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

GLOBAL_BATCH = 16
STEPS_PER_EPOCH = 3


def tiny_cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Conv2D(6, 3)(x), name="tiny_cnn")


def tiny_bert():
    import keras_hub

    keras.utils.set_random_seed(0)
    return keras_hub.models.BertBackbone(
        vocabulary_size=30, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
        max_sequence_length=12, dropout=0.0,
    )


def data(kind, n):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, n)
    if kind == "cnn":
        return rng.normal(size=(n, 8, 8, 3)).astype("float32"), y
    mask = np.ones((n, 12), dtype="int32")
    for i in range(n):
        mask[i, rng.integers(3, 12):] = 0
    x = {
        "token_ids": rng.integers(5, 30, (n, 12)).astype("int32") * mask,
        "segment_ids": np.zeros((n, 12), dtype="int32"),
        # bool, as KerasHub preprocessors give it: Keras averages the first
        # batch across replicas to build the model, which a bool cannot take
        # without tfft's KerasMirroredStrategy.
        "padding_mask": mask.astype(bool),
    }
    return x, y


def train(kind, strategy, initial):
    make = tiny_cnn if kind == "cnn" else tiny_bert
    with strategy.scope():
        backbone = make()
    model = tfft.build_model(backbone, num_classes=3, freeze="full", dropout=0.0,
                             compile=False, strategy=strategy)
    if initial is not None:
        model.set_weights(initial)
    with strategy.scope():
        model.compile(optimizer=keras.optimizers.SGD(0.2),
                      loss="sparse_categorical_crossentropy")
    x, y = data(kind, GLOBAL_BATCH * STEPS_PER_EPOCH)
    ds = distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)), strategy, global_batch_size=GLOBAL_BATCH
    )
    model.fit(ds, epochs=2, verbose=0)
    return model


def helper_checks(strategy):
    """The batch and learning-rate helpers on a real two-replica strategy."""
    checks = {
        "global_batch": distribute.global_batch_size(8, strategy),
        "per_replica": distribute.per_replica_batch_size(16, strategy),
        "lr_linear": distribute.scale_learning_rate(0.1, strategy),
        "lr_sqrt": distribute.scale_learning_rate(0.1, strategy, rule="sqrt"),
        "lr_none": distribute.scale_learning_rate(0.1, strategy, rule=None),
    }
    for name, call in {
        "odd_global": lambda: distribute.per_replica_batch_size(15, strategy),
        "odd_dataset": lambda: distribute_dataset(
            tf.data.Dataset.range(30).batch(15, drop_remainder=True), strategy),
        "odd_batching": lambda: distribute_dataset(
            tf.data.Dataset.range(30), strategy, global_batch_size=7),
    }.items():
        try:
            call()
            checks[name] = None
        except distribute.StrategyError as error:
            checks[name] = str(error)
    return checks


def main(out_dir, kinds):
    mirrored = get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    single = tf.distribute.get_strategy()
    with open(f"{out_dir}/checks.json", "w") as f:
        json.dump(helper_checks(mirrored), f)
    for kind in kinds:
        # Same starting point for both: one set of initial weights.
        initial = _initial(kind)
        reference = train(kind, single, initial)
        other = train(kind, mirrored, initial)
        arrays = {}
        for i, (w0, ws, wm) in enumerate(zip(initial, reference.get_weights(),
                                              other.get_weights(), strict=True)):
            arrays[f"initial_{i}"], arrays[f"single_{i}"], arrays[f"mirrored_{i}"] = w0, ws, wm
        arrays["replicas"] = np.array(mirrored.num_replicas_in_sync)
        arrays["variable_type"] = np.array(type(other.weights[0]._value).__name__)
        np.savez(f"{out_dir}/{kind}.npz", **arrays)


_INITIAL = {}


def _initial(kind):
    if kind not in _INITIAL:
        make = tiny_cnn if kind == "cnn" else tiny_bert
        model = tfft.build_model(make(), num_classes=3, freeze="full", dropout=0.0,
                                 compile=False)
        _INITIAL[kind] = model.get_weights()
    return _INITIAL[kind]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","))
