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
    ({"epochs": -1}, ValueError, "epochs must be an int >= 0"),
    ({"epochs": 0, "freeze_epochs": 0}, ValueError, "epochs \\+ freeze_epochs > 0"),
    ({"freeze_epochs": 1.5}, ValueError, "freeze_epochs must be an int"),
    ({"unfreeze": "feature_extraction"}, ValueError, "must unfreeze something"),
    ({"unfreeze": "top_k:9"}, ValueError, "top_k asks for 9 blocks"),
    ({"unfreeze": "unfreeze_all"}, ValueError, "Unknown freeze policy"),
    ({"lr": 0}, ValueError, "lr must be None or a positive number"),
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
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


def test_fine_tune_needs_a_tfft_model(text_batch):
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match="no tfft backbone layer"):
        fine_tune(plain, (np.zeros((4, 4)), np.zeros(4, "int32")))
