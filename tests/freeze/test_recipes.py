import keras
import numpy as np
import pytest
import tensorflow as tf

import tfft
from tfft.adapt.discriminative import LayerwiseOptimizer
from tfft.training.recipes import fine_tune

HEAD, LAYER = 27, 600
LABELS = np.arange(16) % 3


class _Stages(keras.callbacks.Callback):
    """Records the optimizer and weights at the start and end of each fit."""

    def __init__(self, watched):
        super().__init__()
        self.watched = watched
        self.starts, self.ends, self.optimizers, self.trainable = [], [], [], []

    def on_train_begin(self, logs=None):
        self.starts.append({k: np.array(v.numpy()) for k, v in self.watched.items()})
        self.optimizers.append(self.model.optimizer)
        self.trainable.append(tfft.trainable_summary(self.model)["trainable"])

    def on_train_end(self, logs=None):
        self.ends.append({k: np.array(v.numpy()) for k, v in self.watched.items()})

    def moved(self, stage, name):
        return not np.array_equal(self.starts[stage][name], self.ends[stage][name])


def test_fine_tune_trains_the_head_then_the_top_block_with_a_lower_rate(tiny_bert, text_batch):
    model = tfft.build_model(tiny_bert, num_classes=3)
    weights = {w.path: w for w in model.weights}
    probe = _Stages({
        "head": weights["head/logits/kernel"],
        "top": weights["transformer_layer_2/self_attention_layer/query/kernel"],
        "lower": weights["transformer_layer_1/self_attention_layer/query/kernel"],
    })
    histories = fine_tune(model, (text_batch, LABELS), val=(text_batch, LABELS), epochs=1,
                          freeze_epochs=1, unfreeze="top_k:1", lr=1e-3, batch_size=8,
                          callbacks=[probe], verbose=0)
    assert [name for name, _ in histories] == ["head", "fine_tune"]
    for _, history in histories:
        assert len(history.history["loss"]) == 1 and "val_loss" in history.history
    assert probe.trainable == [HEAD, HEAD + LAYER]
    assert probe.moved(0, "head") and not probe.moved(0, "top") and not probe.moved(0, "lower")
    assert probe.moved(1, "head") and probe.moved(1, "top") and not probe.moved(1, "lower")
    head_opt, tune_opt = probe.optimizers
    assert head_opt is not tune_opt
    assert isinstance(head_opt, keras.optimizers.Adam)
    assert float(head_opt.learning_rate) == pytest.approx(1e-3)
    assert isinstance(tune_opt, keras.optimizers.AdamW)
    # Linear decay over exactly this stage's steps: 16 examples / 8 = 2 steps, 1 epoch.
    schedule = tune_opt._learning_rate
    assert schedule.get_config()["decay_steps"] == 2
    assert schedule.get_config()["initial_learning_rate"] == pytest.approx(1e-4)


def test_fine_tune_a_cnn_uses_the_cnn_preset_on_a_dataset(cnn_backbone, images):
    model = tfft.build_model(cnn_backbone, num_classes=2)
    data = tf.data.Dataset.from_tensor_slices(images).batch(8)
    histories = fine_tune(model, data, epochs=1, freeze_epochs=0, unfreeze="top_k:1",
                          verbose=0)
    assert [name for name, _ in histories] == ["fine_tune"]
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert optimizer._learning_rate.get_config()["decay_steps"] == 2
    assert int(optimizer.iterations.numpy()) == 2


def test_fine_tune_with_gradual_unfreezing_and_layerwise_rates(tiny_bert, text_batch):
    model = tfft.build_model(tiny_bert, num_classes=3)
    top = next(w for w in model.weights if w.path.startswith("transformer_layer_2/"))
    probe = _Stages({"top": top})
    histories = fine_tune(model, (text_batch, LABELS), epochs=2, freeze_epochs=0,
                          unfreeze="gradual", lr_decay=0.5, batch_size=16, callbacks=[probe],
                          verbose=0)
    assert len(histories[0][1].history["loss"]) == 2
    assert isinstance(model.optimizer, LayerwiseOptimizer)
    assert probe.moved(0, "top")
    assert tfft.trainable_summary(model)["trainable"] == HEAD + LAYER


@pytest.mark.parametrize("kwargs, error, message", [
    ({"epochs": -1}, ValueError, "epochs must be a non-negative integer. Received: epochs=-1"),
    ({"epochs": 0, "freeze_epochs": 0}, ValueError, "epochs \\+ freeze_epochs > 0"),
    ({"freeze_epochs": 1.5}, ValueError, "freeze_epochs must be a non-negative integer"),
    ({"unfreeze": "feature_extraction"}, ValueError, "must unfreeze something"),
    ({"unfreeze": "top_k:9"}, ValueError, "top_k asks for 9 blocks"),
    ({"unfreeze": "unfreeze_all"}, ValueError, "Unknown freeze policy"),
    ({"lr": 0}, ValueError, "lr must be a positive number or None. Received: lr=0"),
    ({"base_lr_divisor": -2}, ValueError, "base_lr_divisor must be a positive"),
    ({"verbose": 3}, ValueError, "verbose must be one of"),
    ({"callbacks": keras.callbacks.History()}, TypeError, "callbacks must be a list"),
    ({"preset": "fast"}, ValueError, "Unknown preset"),
    ({"lr_decay": 2.0}, ValueError, "decay must be a number"),
    ({"train": [1, 2, 3]}, TypeError, "must be a tf.data.Dataset"),
    ({"train": tf.data.Dataset.range(3).repeat()}, ValueError, "repeats forever"),
])
def test_fine_tune_rejects_bad_arguments_before_training(kwargs, error, message, tiny_bert,
                                                         text_batch):
    model = tfft.build_model(tiny_bert, num_classes=3)
    before = [np.array(w.numpy()) for w in model.weights]
    kwargs = {"train": (text_batch, LABELS), **kwargs}
    with pytest.raises(error, match=message):
        fine_tune(model, **kwargs)
    assert int(model.optimizer.iterations.numpy()) == 0
    for w, b in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(w.numpy(), b)


def test_fine_tune_needs_a_tfft_model(text_batch):
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match="no tfft backbone layer"):
        fine_tune(plain, (np.zeros((4, 4)), np.zeros(4, "int32")))


class _LearningRates(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        rate = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        self.rates.append(float(rate))


def test_fine_tune_alone_keeps_frozen_blocks_bitwise_and_peaks_at_fine_tune_lr(tiny_bert,
                                                                                text_batch):
    model = tfft.build_model(tiny_bert, num_classes=3)
    before = {w.path: np.array(w.numpy()) for w in model.weights}
    rates = _LearningRates()
    histories = fine_tune(model, (text_batch, LABELS), epochs=3, freeze_epochs=0,
                          unfreeze="top_k:1", lr=1.0, fine_tune_lr=2e-3, batch_size=4,
                          callbacks=[rates], verbose=0)
    assert [name for name, _ in histories] == ["fine_tune"]
    assert histories[0][1].resumed_from_epoch == 0
    after = {w.path: np.array(w.numpy()) for w in model.weights}
    lower = [p for p in before if p.startswith(("transformer_layer_0/", "transformer_layer_1/",
                                                "token_embedding", "embeddings_"))]
    top = [p for p in before if p.startswith("transformer_layer_2/")]
    assert len(lower) > 20 and len(top) > 10
    for path in lower:
        assert np.array_equal(before[path], after[path]), f"frozen weight moved: {path}"
    for path in [*top, "head/logits/kernel"]:
        assert not np.array_equal(before[path], after[path]), f"trainable weight stuck: {path}"
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    # The transformer preset peaks at fine_tune_lr (not lr / 10): 16 examples / 4 = 4 steps
    # x 3 epochs = 12; one warmup step, then linear decay that reaches 0 at step 12.
    peak = 2e-3
    expected = [peak] + [peak * (1 - (step - 1) / 11) for step in range(1, 12)]
    np.testing.assert_allclose(rates.rates, expected, rtol=1e-5)


class _Killed(Exception):
    pass


class _KillAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Killed()


def _tiny_task(seed=0):
    """The tiny BERT (dropout on) as a task; same seed, same initial weights."""
    import keras_hub

    keras.utils.set_random_seed(seed)
    bert = keras_hub.models.BertBackbone(
        vocabulary_size=37, num_layers=3, num_heads=2, hidden_dim=8, intermediate_dim=16,
        max_sequence_length=16,
    )
    return tfft.build_model(bert, num_classes=3)


def test_fine_tune_resumed_after_a_kill_ends_where_an_uninterrupted_run_ends(text_batch,
                                                                             tmp_path):
    kwargs = dict(epochs=3, freeze_epochs=0, unfreeze="top_k:1", fine_tune_lr=1e-2,
                  batch_size=4, seed=5, verbose=0)
    reference = _tiny_task()
    fine_tune(reference, (text_batch, LABELS), backup_dir=str(tmp_path / "ref"), **kwargs)

    killed = _tiny_task()
    with pytest.raises(_Killed):
        fine_tune(killed, (text_batch, LABELS), backup_dir=str(tmp_path / "run"),
                  callbacks=[_KillAtEpoch(2)], **kwargs)
    assert (tmp_path / "run" / "fine_tune" / "training_metadata.json").exists()

    resumed = _tiny_task()  # a fresh process would start from the same initial weights
    [(_, history)] = fine_tune(resumed, (text_batch, LABELS),
                               backup_dir=str(tmp_path / "run"), **kwargs)
    assert history.resumed_from_epoch == 2
    assert len(history.history["loss"]) == 1  # only the last epoch ran again
    assert not (tmp_path / "run" / "fine_tune").exists()  # a clean finish drops the backup
    want = {w.path: w.numpy() for w in reference.weights}
    for w in resumed.weights:
        np.testing.assert_allclose(w.numpy(), want[w.path], atol=1e-6, err_msg=w.path)
    # The kill happened after 2 of 3 epochs: the resumed run really trained the third.
    top = "transformer_layer_2/self_attention_layer/query/kernel"
    assert not np.allclose({w.path: w.numpy() for w in killed.weights}[top], want[top])


def test_fine_tune_compiles_inside_the_given_strategy(text_batch):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = _tiny_task()
    fine_tune(model, (text_batch, LABELS), epochs=1, freeze_epochs=0, unfreeze="top_k:1",
              batch_size=8, strategy=strategy, verbose=0)
    in_scope = strategy.extended.variable_created_in_scope
    assert in_scope(model.optimizer.iterations.value)
    assert all(in_scope(v.value) for v in model.optimizer.variables)
    outside = keras.optimizers.Adam()  # the check tells the two apart
    assert not in_scope(outside.iterations.value)
    assert int(model.optimizer.iterations.numpy()) == 2
