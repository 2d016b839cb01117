import keras
import numpy as np
import pytest
import tensorflow as tf

import tfft
from tfft.training.feature_cache import compute_features, feature_model
from tfft.training.recipes import fine_tune
from tfft.training.tracing import (
    build_for_training,
    make_single_train_function,
    predict_batches,
    remapper_has_work,
)

LABELS = np.arange(16) % 3


def test_fine_tune_traces_each_stage_train_step_once(tiny_bert, text_batch,
                                                     count_train_step_traces):
    model = tfft.build_model(tiny_bert, num_classes=3)
    traces = count_train_step_traces(model)
    histories = fine_tune(model, (text_batch, LABELS), epochs=1, freeze_epochs=1,
                          unfreeze="full", lr=1e-3, batch_size=8, verbose=0)
    # Built lazily, the optimizer's variables appear inside the first trace and
    # tf.function traces the whole train step a second time.
    assert len(traces) == 2
    for _, history in histories:
        accuracy = history.history["sparse_categorical_accuracy"][0]
        assert 0.0 <= accuracy <= 1.0


def test_build_for_training_keeps_fit_results_identical(count_train_step_traces):
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
    early_traces = count_train_step_traces(early)
    build_for_training(early, data.element_spec)
    lazy_history = lazy.fit(data, epochs=2, verbose=0).history
    early_history = early.fit(data, epochs=2, verbose=0).history
    assert len(early_traces) == 1
    assert lazy_history.keys() == early_history.keys()
    for key, values in lazy_history.items():
        np.testing.assert_allclose(early_history[key], values, rtol=1e-6)
    for a, b in zip(lazy.get_weights(), early.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def _tiny_dense_model(**compile_kwargs):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(5, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["sparse_categorical_accuracy"], **compile_kwargs)
    return model


def test_single_train_function_trains_as_keras_nested_function_in_one_graph():
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = LABELS.astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    ours, keras_own = _tiny_dense_model(), _tiny_dense_model()
    ours.train_function = function = make_single_train_function(ours)  # fit keeps it
    ours_history = ours.fit(data, epochs=2, verbose=0).history
    keras_history = keras_own.fit(data, epochs=2, verbose=0).history
    assert ours.train_function is function
    assert ours_history.keys() == keras_history.keys()
    for key, values in keras_history.items():
        np.testing.assert_allclose(ours_history[key], values, rtol=1e-6)
    # train_on_batch passes a list of one batch instead of an iterator.
    ours_logs = ours.train_on_batch(x[:8], y[:8], return_dict=True)
    keras_logs = keras_own.train_on_batch(x[:8], y[:8], return_dict=True)
    for key, value in keras_logs.items():
        np.testing.assert_allclose(ours_logs[key], value, rtol=1e-6)
    for a, b in zip(ours.get_weights(), keras_own.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # One graph: the optimizer's updates are in it, not in a nested function call.
    ops = {op.type for op in function.traced.get_concrete_function(iter(data)).graph
           .get_operations()}
    assert "AssignAddVariableOp" in ops  # the optimizer's step counter
    assert not ops & {"StatefulPartitionedCall", "PartitionedCall"}


@pytest.mark.parametrize("setting", [{"jit_compile": True}, {"steps_per_execution": 2},
                                     {"run_eagerly": True}], ids=["xla", "steps", "eager"])
def test_single_train_function_leaves_other_settings_to_keras(setting):
    assert make_single_train_function(_tiny_dense_model(**setting)) is None


def _traced_step(model, x, y):
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    build_for_training(model, data.element_spec)
    return make_single_train_function(model).traced.get_concrete_function(iter(data))


class _BiasAddDense(keras.layers.Layer):
    """A TF1-style dense layer: MatMul, then BiasAdd."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 4))
        self.bias = self.add_weight(shape=(4,), initializer="zeros")

    def call(self, inputs):
        return tf.nn.bias_add(tf.matmul(inputs, self.kernel), self.bias)


@pytest.mark.parametrize("layers", [1, 4], ids=["head", "dense-stack"])
def test_remapper_has_work_counts_dense_bias_chains(layers):
    inputs = keras.Input((4,))
    outputs = inputs
    for _ in range(layers):
        outputs = _BiasAddDense()(outputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    x = np.ones((8, 4), "float32")
    assert remapper_has_work(_traced_step(model, x, x)) is (layers == 4)


def test_remapper_has_work_for_cnns_not_for_a_transformer_task(tiny_cnn, tiny_text_backbone,
                                                               text_batch, monkeypatch):
    cnn = tfft.build_model(tiny_cnn, num_classes=3)
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    assert remapper_has_work(_traced_step(cnn, images, LABELS[:8]))
    text = tfft.build_model(tiny_text_backbone, num_classes=3)
    tokens = {k: v[:8] for k, v in text_batch.items()}
    assert not remapper_has_work(_traced_step(text, tokens, LABELS[:8]))

    # On CPUs the task then optimises its step without the remapper.
    import tfft.models.task as task_module

    settings, light = [], task_module.graph_optimizer_light

    def recorded(remapper=True):
        settings.append(remapper)
        return light(remapper)

    monkeypatch.setattr(task_module, "graph_optimizer_light", recorded)
    fresh = tfft.build_model(tiny_text_backbone, num_classes=3)
    fresh.fused_ops = True
    fresh.fit(tokens, LABELS[:8], batch_size=4, epochs=1, verbose=0)
    # Traced under the default light options, then both steps run without it.
    assert settings == [True, False, False]


def test_build_for_training_slots_keep_keras_names_and_save_and_restore(tmp_path):
    # Built early, the slots share one TensorFlow-level name (eager TensorFlow
    # makes one kernel per variable name); Keras' names, what saving goes by, stay.
    def make():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(5, activation="relu", name="hidden")(inputs)
        outputs = keras.layers.Dense(3, activation="softmax", name="out")(hidden)
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=tfft.training.FusedAdamW(0.01, weight_decay=0.01),
                      loss="sparse_categorical_crossentropy")
        return model

    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, LABELS.astype("int32"))).batch(8)
    lazy, early = make(), make()
    build_for_training(early, data.element_spec)
    lazy.fit(data, epochs=2, verbose=0)
    early.fit(data, epochs=2, verbose=0)
    slots = [v for v in early.optimizer.variables if "_momentum" in v.path or "_velocity" in v.path]
    assert len(slots) == 8
    assert len({v.value.name for v in slots}) == 1
    assert [v.path for v in early.optimizer.variables] == \
        [v.path for v in lazy.optimizer.variables]
    for a, b in zip(lazy.optimizer.variables, early.optimizer.variables, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6)

    early.save(tmp_path / "early.keras")
    loaded = keras.saving.load_model(tmp_path / "early.keras")
    checkpoint = tf.train.Checkpoint(model=early, optimizer=early.optimizer)
    path = checkpoint.write(str(tmp_path / "ckpt"))
    restored = make()
    build_for_training(restored, data.element_spec)
    tf.train.Checkpoint(model=restored, optimizer=restored.optimizer).read(path) \
        .assert_existing_objects_matched()
    for other in (loaded, restored):
        assert [v.path for v in other.optimizer.variables] == \
            [v.path for v in early.optimizer.variables]
        for a, b in zip(early.optimizer.variables, other.optimizer.variables, strict=True):
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


def test_feature_cache_computes_features_in_one_trace(tiny_bert, text_batch):
    model = tfft.build_model(tiny_bert, num_classes=3)
    pooling = model.get_layer("pooling")
    call = pooling.call
    traced = []

    def counted(*args, **kwargs):
        traced.append(1)
        return call(*args, **kwargs)

    # Width 16, then width 9 with a smaller last batch: Keras' predict traced
    # its predict function twice for this, once per shape before relaxing.
    wide = {k: v[:8] for k, v in text_batch.items()}
    narrow = {k: v[8:11, :9] for k, v in text_batch.items()}
    dataset = tf.data.Dataset.from_generator(
        lambda: iter([wide, narrow]),
        output_signature={k: tf.TensorSpec([None, None], tf.int32) for k in wide},
    )
    pooling.call = counted
    got = compute_features(model, dataset, verbose=0)
    pooling.call = call
    assert len(traced) == 1
    features = feature_model(model)
    want = np.concatenate([features.predict_on_batch(wide), features.predict_on_batch(narrow)])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_predict_batches_equals_predict_with_targets_and_refuses_empty():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    x = np.arange(15, dtype="float32").reshape(5, 3)
    data = tf.data.Dataset.from_tensor_slices((x, np.zeros(5))).batch(2)
    np.testing.assert_allclose(predict_batches(model, data, verbose=0),
                               model.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match="empty dataset"):
        predict_batches(model, data.take(0), verbose=0)


@pytest.mark.parametrize("raw", [False, True], ids=["token-arrays", "raw-text"])
def test_task_fit_traces_its_train_step_once(tiny_text_backbone, text_batch, raw,
                                            count_train_step_traces):
    model = tfft.build_model(tiny_text_backbone, num_classes=3)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["sparse_categorical_accuracy"])
    traces = count_train_step_traces(model)
    x = ["the team won the match", "the minister and the vote", "shares in the bank"] * 4
    if not raw:
        x = {k: v[:12] for k, v in text_batch.items()}
    history = model.fit(x, LABELS[:12], batch_size=4, epochs=2, verbose=0)
    # Without the variables built first, tf.function traces the step twice.
    assert len(traces) == 1
    assert len(history.history["loss"]) == 2


def test_task_predict_on_raw_texts_traces_once_across_calls(tiny_text_backbone):
    model = tfft.build_model(tiny_text_backbone, num_classes=3)
    step, traces = model.predict_step, []

    def counted(data):
        traces.append(1)  # Python runs once per trace
        return step(data)

    model.predict_step = counted
    texts = ["the team won the match", "the minister and the vote", "shares in the bank",
             "a film star won an award", "the software and the internet"]
    # Batches of 2, 2 and 1 (two shapes), then batches of 3 and 2 in a second call.
    first = model.predict(texts, batch_size=2, verbose=0)
    second = model.predict(texts, batch_size=3, verbose=0)
    # Keras alone traces for the first batch's shape and again for the last one.
    assert len(traces) == 1
    want = model.predict_on_batch(texts)
    np.testing.assert_allclose(first, want, atol=1e-6)
    np.testing.assert_allclose(second, want, atol=1e-6)
