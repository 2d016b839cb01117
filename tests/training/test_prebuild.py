import keras
import numpy as np
import tensorflow as tf

import tfft
from tfft.training.prebuild import build_for_training
from tfft.training.recipes import fine_tune

LABELS = np.arange(16) % 3


def _count_traces(model):
    """Counts how often fit traces the model's train step (a Python call per trace)."""
    calls = []
    step = model.train_step

    def counted(data):
        calls.append(1)
        return step(data)

    model.train_step = counted
    return calls


def test_fine_tune_traces_each_stage_train_step_once(tiny_bert, text_batch):
    model = tfft.build_model(tiny_bert, num_classes=3)
    traces = _count_traces(model)
    histories = fine_tune(model, (text_batch, LABELS), epochs=1, freeze_epochs=1,
                          unfreeze="full", lr=1e-3, batch_size=8, verbose=0)
    # Built lazily, the optimizer's variables appear inside the first trace and
    # tf.function traces the whole train step a second time.
    assert len(traces) == 2
    for _, history in histories:
        accuracy = history.history["sparse_categorical_accuracy"][0]
        assert 0.0 <= accuracy <= 1.0


def test_build_for_training_keeps_fit_results_identical():
    def make():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["sparse_categorical_accuracy"])
        return model

    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, LABELS.astype("int32"))).batch(8)
    lazy, early = make(), make()
    early_traces = _count_traces(early)
    build_for_training(early, data.element_spec)
    lazy_history = lazy.fit(data, epochs=2, verbose=0).history
    early_history = early.fit(data, epochs=2, verbose=0).history
    assert len(early_traces) == 1
    assert lazy_history.keys() == early_history.keys()
    for key, values in lazy_history.items():
        np.testing.assert_allclose(early_history[key], values, rtol=1e-6)
    for a, b in zip(lazy.get_weights(), early.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
