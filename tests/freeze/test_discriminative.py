import keras
import numpy as np
import pytest
import tensorflow as tf

import tfft
from tfft.adapt.discriminative import LayerwiseOptimizer, layerwise_lr, layerwise_multipliers
from tfft.adapt.gradual import gradual_callback

LABELS = np.arange(16) % 3
DEPTHS = {  # depth below the head for the tiny BERT's variables (3 blocks)
    "head/logits/kernel": 0,
    "transformer_layer_2/self_attention_layer/query/kernel": 1,
    "transformer_layer_1/feedforward_output_dense/bias": 2,
    "transformer_layer_0/self_attention_layer/key/kernel": 3,
    "token_embedding/embeddings": 4,
    "embeddings_layer_norm/gamma": 4,
    "pooled_dense/kernel": 1,
}


def _build(backbone, optimizer=None):
    model = tfft.build_model(backbone, num_classes=3, freeze="full", dropout=0.0,
                             compile=False)
    return model


def _gradients(model, x, y, dense_only=False):
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=True))
    grads = tape.gradient(loss, model.trainable_weights)
    # Embedding lookups give sparse gradients; with repeated token ids Adam's sparse
    # update is not sign(summed gradient), so the Adam check skips them.
    return [None if dense_only and isinstance(g, tf.IndexedSlices)
            else tf.convert_to_tensor(g).numpy() for g in grads]


def test_multipliers_decay_from_the_head_down_the_blocks(bert_no_dropout):
    model = _build(bert_no_dropout)
    multipliers = layerwise_multipliers(model, decay=0.5)
    print({k: multipliers[k] for k in DEPTHS})
    assert set(multipliers) == {w.path for w in model.weights}
    for path, depth in DEPTHS.items():
        assert multipliers[path] == 0.5 ** depth, path


def test_sgd_step_is_lr_times_decay_power_times_gradient(bert_no_dropout, text_batch):
    model = _build(bert_no_dropout)
    optimizer = layerwise_lr(model, 0.1, decay=0.5, optimizer="sgd")
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    multipliers = layerwise_multipliers(model, decay=0.5)
    grads = _gradients(model, text_batch, LABELS)
    before = [w.numpy().copy() for w in model.trainable_weights]
    model.train_on_batch(text_batch, LABELS)
    checked = 0
    for w, g, b in zip(model.trainable_weights, grads, before, strict=True):
        expected = b - np.float32(0.1 * multipliers[w.path]) * g
        np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6, atol=1e-7, err_msg=w.path)
        big = np.abs(g) > 1e-4
        if big.any():
            ratio = (b - w.numpy())[big] / (0.1 * g[big])
            # float32 cancellation in (before - after) on weights near 1: a looser check.
            np.testing.assert_allclose(ratio, multipliers[w.path], rtol=1e-2, err_msg=w.path)
            checked += 1
    assert checked > 20
    assert len(optimizer.group_optimizers()) == 5  # head, 3 blocks, embeddings


def test_adam_first_step_moves_lower_blocks_less_by_the_decay(bert_no_dropout, text_batch):
    model = _build(bert_no_dropout)
    model.compile(optimizer=layerwise_lr(model, 1e-3, decay=0.5, optimizer="adam"),
                  loss="sparse_categorical_crossentropy")
    model.run_eagerly = True
    multipliers = layerwise_multipliers(model, decay=0.5)
    grads = _gradients(model, text_batch, LABELS, dense_only=True)
    before = [w.numpy().copy() for w in model.trainable_weights]
    model.train_on_batch(text_batch, LABELS)
    depths = set()
    for w, g, b in zip(model.trainable_weights, grads, before, strict=True):
        if g is None:
            continue
        big = np.abs(g) > 1e-3
        if not big.any():
            continue
        # Adam's first step is lr * g / (|g| + eps / sqrt(1 - beta_2)): lr * sign(g) where
        # |g| >> 3e-6 (within 0.3% here, plus float32 rounding on weights near 1).
        step = (b - w.numpy())[big]
        np.testing.assert_allclose(step, 1e-3 * multipliers[w.path] * np.sign(g[big]),
                                   rtol=1e-2, err_msg=w.path)
        depths.add(multipliers[w.path])
    assert depths == {1.0, 0.5, 0.25, 0.125, 0.0625}


def _mlp_backbone():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = inputs
    for i in range(3):
        x = keras.layers.Dense(8, activation="relu", name=f"block_{i}")(x)
    model = keras.Model(inputs, x, name="mlp")
    return tfft.load_backbone(model, block_names=["block_0", "block_1", "block_2"])


def test_layerwise_model_saves_and_reloads_with_optimizer_state(tmp_path):
    # A functional backbone keeps its layers' trainable flags in the .keras config, so
    # the reloaded optimizer is built on the same variables (see the report on KerasHub).
    model = _build(_mlp_backbone())
    text_batch = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    schedule = keras.optimizers.schedules.PolynomialDecay(1e-3, decay_steps=10,
                                                          end_learning_rate=0.0)
    model.compile(optimizer=layerwise_lr(model, schedule, decay=0.5, optimizer="adamw",
                                         weight_decay=0.01),
                  loss="sparse_categorical_crossentropy")
    model.run_eagerly = True
    model.train_on_batch(text_batch, LABELS)
    rates = {factor: float(opt.learning_rate) for factor, opt in
             model.optimizer.group_optimizers()}
    for factor, rate in rates.items():
        np.testing.assert_allclose(rate, schedule(1) * factor, rtol=1e-6)
    path = str(tmp_path / "layerwise.keras")
    model.save(path)
    saved = model.predict(text_batch, verbose=0)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded.optimizer, LayerwiseOptimizer)
    assert reloaded.optimizer.multipliers == model.optimizer.multipliers
    assert len(reloaded.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(reloaded.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    reloaded.run_eagerly = True
    reloaded.train_on_batch(text_batch, LABELS)
    model.train_on_batch(text_batch, LABELS)
    np.testing.assert_allclose(reloaded.predict(text_batch, verbose=0),
                               model.predict(text_batch, verbose=0), atol=1e-5)
    plain = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(plain.predict(text_batch, verbose=0), saved, atol=1e-6)


def test_setting_the_learning_rate_scales_every_group(bert_no_dropout, text_batch):
    model = _build(bert_no_dropout)
    model.compile(optimizer=layerwise_lr(model, 0.1, decay=0.5, optimizer="sgd"),
                  loss="sparse_categorical_crossentropy")
    model.run_eagerly = True
    model.train_on_batch(text_batch, LABELS)
    model.optimizer.learning_rate = 0.01
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)
    for factor, optimizer in model.optimizer.group_optimizers():
        assert float(optimizer.learning_rate) == pytest.approx(0.01 * factor)


def test_layerwise_rates_work_with_gradual_unfreezing(tiny_bert, text_batch):
    model = tfft.build_model(tiny_bert, num_classes=3, freeze="gradual", compile=False)
    model.compile(optimizer=layerwise_lr(model, 1e-2, decay=0.5),
                  loss="sparse_categorical_crossentropy")
    model.run_eagerly = True
    top = next(w for w in model.weights if w.path.startswith("transformer_layer_2/"))
    before = top.numpy().copy()
    callback = gradual_callback(model, verbose=0)
    model.fit(text_batch, LABELS, epochs=1, batch_size=16, verbose=0, callbacks=[callback])
    np.testing.assert_array_equal(top.numpy(), before)
    model.fit(text_batch, LABELS, epochs=2, initial_epoch=1, batch_size=16, verbose=0,
              callbacks=[callback])
    assert not np.array_equal(top.numpy(), before)
    # The top block's group started its own Adam clock when it first trained.
    group = dict((f, o) for f, o in model.optimizer.group_optimizers())
    assert int(group[1.0].iterations.numpy()) == 2 and int(group[0.5].iterations.numpy()) == 1


@pytest.mark.parametrize("call, error, message", [
    (lambda m: layerwise_multipliers(m, decay=0), ValueError,
     r"decay must be a number in \(0, 1\]"),
    (lambda m: layerwise_multipliers(m, decay=1.5), ValueError, "decay must be"),
    (lambda m: layerwise_lr(m, 0.1, optimizer="nope"), ValueError, "Could not make the optimizer"),
    (lambda m: layerwise_lr(m, 0.1, optimizer=keras.optimizers.SGD()), TypeError,
     "takes an optimizer name"),
    (lambda m: LayerwiseOptimizer("adam", {"x": -1.0}), ValueError, "non-negative"),
    (lambda m: LayerwiseOptimizer("adam", clipnorm=1.0), TypeError, "from the wrapped optimizer"),
    (lambda m: LayerwiseOptimizer(LayerwiseOptimizer("adam")), TypeError, "cannot wrap"),
])
def test_bad_layerwise_arguments_are_rejected(call, error, message, tiny_bert):
    model = _build(tiny_bert)
    with pytest.raises(error, match=message):
        call(model)


def _blockless_cnn():
    """A user model whose layer names follow no known block pattern."""
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.Dense(4, name="mix")(inputs), name="blockless")


def test_layerwise_needs_blocks_and_an_unbuilt_optimizer():
    model = tfft.build_model(_blockless_cnn(), num_classes=2, freeze="full", compile=False)
    with pytest.raises(ValueError, match="declares no blocks"):
        layerwise_multipliers(model)
    built = keras.optimizers.Adam()
    built.build(model.trainable_variables[:1])
    with pytest.raises(ValueError, match="not built yet"):
        LayerwiseOptimizer(built, {})


class _FirstStep(keras.callbacks.Callback):
    """At epoch 1 (after the top block opens) records its weights and gradient."""

    def __init__(self, variable, x, y):
        super().__init__()
        self.variable, self.x, self.y = variable, x, y

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            self.before = self.variable.numpy().copy()
            index = [id(w) for w in self.model.trainable_weights].index(id(self.variable))
            self.grad = _gradients(self.model, self.x, self.y)[index]


@pytest.mark.parametrize("kind, clock", [
    # Own clock per block: the first step of a newly opened block is Adam's first step.
    ("layerwise", 1),
    # One shared Keras Adam: zero moments but the bias correction of global step 2
    # (0.74x the fresh step here; up to 3.2x late in training).
    ("shared", 2),
])
def test_a_block_opened_late_gets_a_fresh_adam_clock_only_with_layerwise(
        kind, clock, bert_no_dropout, text_batch):
    model = tfft.build_model(bert_no_dropout, num_classes=3, freeze="gradual", dropout=0.0,
                             compile=False)
    optimizer = (layerwise_lr(model, 1e-2, decay=1.0) if kind == "layerwise"
                 else keras.optimizers.Adam(1e-2))
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    model.run_eagerly = True
    top = next(w for w in model.weights
               if w.path == "transformer_layer_2/feedforward_output_dense/kernel")
    probe = _FirstStep(top, text_batch, LABELS)
    model.fit(text_batch, LABELS, epochs=2, batch_size=16, verbose=0,
              callbacks=[gradual_callback(model, verbose=0), probe])
    g = probe.grad.astype("float64")
    assert np.abs(g).max() > 1e-4
    # Keras Adam after one update from zero moments at step `clock`.
    rate = 1e-2 * np.sqrt(1 - 0.999 ** clock) / (1 - 0.9 ** clock)
    expected = rate * 0.1 * g / (np.sqrt(0.001 * g ** 2) + 1e-7)
    np.testing.assert_allclose(probe.before - top.numpy(), expected, rtol=1e-3, atol=1e-8)
    if kind == "layerwise":
        assert len(optimizer.group_optimizers()) == 5


def test_depths_follow_blocks_inside_a_nested_model():
    # Like the offline EfficientNet-Lite0: the blocks sit in an inner functional model.
    inner = _mlp_backbone().model
    inputs = keras.Input((6,))
    outer = keras.Model(inputs, keras.layers.Dense(4, name="top_dense")(inner(inputs)),
                        name="wrapped")
    model = _build(tfft.load_backbone(outer, block_names=["block_0", "block_1", "block_2"]))
    depths = tfft.adapt.discriminative.block_depths(model)
    for index in range(3):
        block = inner.get_layer(f"block_{index}")
        assert {depths[w.path] for w in block.weights} == {3 - index}, block.name
    # Above the top block: the top block's depth; the head trains at the full rate.
    assert {depths[w.path] for w in outer.get_layer("top_dense").weights} == {1}
    assert {depths[w.path] for w in model.weights if w.path.startswith("head/")} == {0}
