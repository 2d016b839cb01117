import keras
import numpy as np
import pytest

import tfft
from tfft.adapt.freeze import find_backbone_layer, parse_freeze
from tfft.adapt.gradual import Gradual, GradualUnfreezing, gradual_callback

HEAD, LAYER, POOLER = 27, 600, 72
LABELS = np.arange(16) % 3


def _find(variables, suffix):
    return next(v for v in variables if v.path.endswith(suffix))


def test_gradual_starts_with_only_the_head_trainable(tiny_bert, text_batch,
                                                     assert_step_changes_only_trainable):
    model = tfft.build_model(tiny_bert, num_classes=3, freeze="gradual")
    counts = tfft.trainable_summary(model)
    print("gradual", counts)
    assert counts["trainable"] == HEAD
    assert not find_backbone_layer(model).trainable
    assert_step_changes_only_trainable(model, text_batch, LABELS)
    assert parse_freeze("gradual:2") == Gradual(every_epochs=2)
    assert Gradual(2).to_dict() == {"policy": "gradual", "every_epochs": 2, "every_steps": None,
                                    "start": 0, "max_blocks": None}
    assert tfft.FreezePolicy.from_dict(Gradual(2, max_blocks=1).to_dict()) == Gradual(
        2, max_blocks=1)
    with pytest.raises(ValueError, match="Unknown option"):
        tfft.FreezePolicy.from_dict({"policy": "gradual", "every": 2})


class _Probe(keras.callbacks.Callback):
    """Records weights and Adam moments at each epoch's start and end."""

    def __init__(self, watched):
        super().__init__()
        self.watched = watched
        self.begin, self.end, self.moments_begin, self.moments_end = [], [], [], []

    def _moment(self):
        return np.array(_find(self.model.optimizer.variables,
                              "head_logits_kernel_momentum").numpy())

    def on_epoch_begin(self, epoch, logs=None):
        self.begin.append({k: np.array(v.numpy()) for k, v in self.watched.items()})
        self.moments_begin.append(self._moment())

    def on_epoch_end(self, epoch, logs=None):
        self.end.append({k: np.array(v.numpy()) for k, v in self.watched.items()})
        self.moments_end.append(self._moment())


def test_gradual_opens_blocks_top_down_at_the_right_epochs_and_keeps_optimizer_state(
        tiny_bert, text_batch):
    model = tfft.build_model(tiny_bert, num_classes=3, freeze="gradual", preset="head")
    # Eager keeps five stages fast; the compiled train step is checked on the CNN below.
    model.run_eagerly = True
    optimizer = model.optimizer
    watched = {
        "layer_2": _find(model.weights, "transformer_layer_2/self_attention_layer/query/kernel"),
        "layer_1": _find(model.weights, "transformer_layer_1/self_attention_layer/query/kernel"),
        "layer_0": _find(model.weights, "transformer_layer_0/self_attention_layer/query/kernel"),
        "embedding": _find(model.weights, "token_embedding/embeddings"),
        "head": _find(model.weights, "head/logits/kernel"),
    }
    callback = gradual_callback(model, verbose=0)
    probe = _Probe(watched)
    model.fit(text_batch, LABELS, epochs=5, batch_size=8, verbose=0,
              callbacks=[callback, probe])
    print(callback.changes)
    assert [c["epoch"] for c in callback.changes] == [1, 2, 3, 4]
    assert [c["block"] for c in callback.changes] == [
        "transformer_layer_2", "transformer_layer_1", "transformer_layer_0", "rest"]
    total = tiny_bert.count_params() + HEAD
    assert [c["trainable"] for c in callback.changes] == [
        HEAD + LAYER, HEAD + 2 * LAYER, HEAD + 3 * LAYER, total - POOLER]
    # A block moves only from the epoch it is opened in.
    opened = {"layer_2": 1, "layer_1": 2, "layer_0": 3, "embedding": 4, "head": 0}
    for name, epoch in opened.items():
        for e in range(5):
            changed = not np.array_equal(probe.begin[e][name], probe.end[e][name])
            assert changed == (e >= epoch), (name, e)
    # One optimizer all along: the head's Adam moments survive every change.
    assert model.optimizer is optimizer
    assert int(optimizer.iterations.numpy()) == 10
    for e in range(1, 5):
        assert np.any(probe.moments_end[e - 1])
        np.testing.assert_array_equal(probe.moments_begin[e], probe.moments_end[e - 1])


def test_gradual_every_steps_and_max_blocks(tiny_bert, text_batch):
    model = tfft.build_model(tiny_bert, num_classes=3,
                             freeze=Gradual(every_steps=1, start=1, max_blocks=2))
    model.run_eagerly = True
    callback = GradualUnfreezing(model, model.freeze_policy, verbose=0)
    model.fit(text_batch, LABELS, epochs=1, batch_size=4, verbose=0, callbacks=[callback])
    print(callback.changes)
    assert [(c["step"], c["block"]) for c in callback.changes] == [
        (2, "transformer_layer_2"), (3, "transformer_layer_1")]
    assert tfft.trainable_summary(model)["trainable"] == HEAD + 2 * LAYER


def test_gradual_in_compiled_fit_keeps_frozen_batchnorm_statistics(cnn_backbone, images):
    # Graph mode: the change must reach the compiled train step.
    model = tfft.build_model(cnn_backbone, num_classes=2, freeze="gradual", preset="head")
    top = set(find_backbone_layer(model).block_names[-1])
    kernels = [w for w in model.trainable_weights + model.non_trainable_weights
               if w.path.endswith("kernel") and w.path.split("/")[0] in top]
    kernels_before = [np.array(w.numpy()) for w in kernels]
    stats = [w for w in model.weights if "moving" in w.path]
    in_top = [w.path.split("/")[0] in top for w in stats]
    assert any(in_top) and not all(in_top)
    before = [np.array(w.numpy()) for w in stats]
    x, y = images
    callback = gradual_callback(model, verbose=0)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[callback])
    assert not callback.changes
    for w, b in zip(stats + kernels, before + kernels_before, strict=True):
        np.testing.assert_array_equal(w.numpy(), b, err_msg=w.path)
    model.fit(x, y, epochs=2, initial_epoch=1, batch_size=8, verbose=0, callbacks=[callback])
    assert len(callback.changes) == 1 and callback.changes[0]["block"] in top
    for w, b, is_top in zip(stats, before, in_top, strict=True):
        assert np.array_equal(w.numpy(), b) != is_top, w.path
    assert kernels and all(not np.array_equal(w.numpy(), b)
                           for w, b in zip(kernels, kernels_before, strict=True))


def test_gradual_replaces_an_optimizer_built_on_the_head_only(tiny_bert, text_batch):
    model = tfft.build_model(tiny_bert, num_classes=3, freeze="gradual")
    model.run_eagerly = True
    model.optimizer.build(model.trainable_variables)
    callback = gradual_callback(model, verbose=0)
    model.fit(text_batch, LABELS, epochs=2, batch_size=8, verbose=0, callbacks=[callback])
    assert len(callback.changes) == 1
    model.fit(text_batch, LABELS, epochs=1, batch_size=8, verbose=0)
    stale = tfft.build_model(tiny_bert, num_classes=3, freeze="gradual")
    stale.run_eagerly = True
    stale.train_on_batch(text_batch, LABELS)
    with pytest.raises(ValueError, match="already trained on other variables"):
        stale.fit(text_batch, LABELS, epochs=1, verbose=0, callbacks=[gradual_callback(stale)])


@pytest.mark.parametrize("make, error, message", [
    (lambda: Gradual(every_epochs=0), ValueError, "every_epochs >= 1"),
    (lambda: Gradual(every_steps=0), ValueError, "every_steps=None or a positive int"),
    (lambda: Gradual(start=-1), ValueError, "non-negative int start"),
    (lambda: parse_freeze("gradual:x"), ValueError, "needs an integer"),
])
def test_bad_gradual_settings_are_rejected(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_gradual_errors_on_models(tiny_bert):
    inputs = keras.Input((8, 8, 3))
    blockless = keras.Model(inputs, keras.layers.Dense(4, name="mix")(inputs))
    with pytest.raises(ValueError, match="declares no blocks"):
        tfft.build_model(blockless, num_classes=2, freeze="gradual")
    with pytest.raises(ValueError, match="max_blocks=9"):
        tfft.build_model(tiny_bert, num_classes=3, freeze=Gradual(max_blocks=9))
    model = tfft.build_model(tiny_bert, num_classes=3, freeze="top_k:1")
    with pytest.raises(ValueError, match="needs a model frozen with a gradual policy"):
        gradual_callback(model)
    with pytest.raises(TypeError, match="needs a Gradual policy"):
        GradualUnfreezing(model, "full")
