"""Freezing recipes on the real all-MiniLM-L6-v2: fine_tune, gradual unfreezing,
layer-wise rates and the trainable counts the README prints.

One backbone (sequence length 32) is loaded for the module: it is the real
22.7M-parameter model, not a tiny config, so block grouping, depths and counts
are those a user gets. It is not the session's `minilm` fixture, because the
tests here train it. Every training run is a handful of steps on 16-32 BBC News
articles; what is asserted is which weights moved, not accuracy.
"""

import hashlib
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfft
from tfft.adapt.discriminative import LayerwiseOptimizer

pytestmark = pytest.mark.slow

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
BLOCKS = [f"transformer_layer_{i}" for i in range(6)]
# Groups of the model's weights by the first part of their path.
EMBEDDINGS = ("token_embedding", "position_embedding", "segment_embedding",
              "embeddings_layer_norm")
HEAD_PARAMS = 384 * 5 + 5
BLOCK_PARAMS = 1_774_464  # one MiniLM transformer layer (384 wide, 1536 feed-forward)


@pytest.fixture(scope="module")
def backbone():
    return tfft.load_backbone("minilm", sequence_length=32)


@pytest.fixture(scope="module")
def articles(bbc):
    # 32 articles, the five classes interleaved (the first 16 hold every class).
    rng = np.random.default_rng(0)
    picks = [rng.choice(np.flatnonzero(bbc.y == c), 7, replace=False) for c in range(5)]
    order = np.stack(picks, axis=1).ravel()[:32]
    return np.asarray([str(t) for t in bbc.x[order]]), bbc.y[order].astype("int32")


def _group(path):
    first = path.split("/")[0]
    if first in BLOCKS or first == "head":
        return first
    if first in EMBEDDINGS:
        return "embeddings"
    if first == "pooled_dense":
        return "pooler"
    raise AssertionError(f"unexpected weight {path!r}")


def _fingerprints(model):
    """`{path: digest}` of every weight: equal digests mean bitwise-equal values."""
    return {w.path: hashlib.blake2b(np.ascontiguousarray(w.numpy()).tobytes(),
                                    digest_size=16).digest() for w in model.weights}


def _moved(before, after):
    """`{group: (moved weights, all weights)}` between two fingerprints."""
    result = {}
    for path, digest in before.items():
        moved, total = result.get(_group(path), (0, 0))
        result[_group(path)] = (moved + (digest != after[path]), total + 1)
    return result


def _assert_moved(before, after, groups, when):
    """Every weight of `groups` moved; every other weight is bitwise unchanged."""
    for group, (moved, total) in _moved(before, after).items():
        if group in groups:
            assert moved == total, f"{when}: {total - moved} of {total} {group} weights stuck"
        else:
            assert moved == 0, f"{when}: {moved} {group} weights moved but are frozen"


def _readme_figure(prefix):
    """The number the README prints right after `prefix`."""
    with open(README, encoding="utf-8") as f:
        text = " ".join(f.read().split())
    match = re.search(re.escape(prefix) + r"([\d,]+)", text)
    assert match, f"README no longer states the MiniLM count after {prefix!r}"
    return int(match.group(1).replace(",", ""))


def test_readme_trainable_counts_hold_on_the_real_minilm(backbone):
    # The README's configuration: five BBC classes, MiniLM's default pooling.
    task = tfft.build_model(backbone, num_classes=5, freeze="full", compile=False)
    full = tfft.trainable_summary(task)
    assert full["trainable"] == 22_567_301 == _readme_figure("`full` trains ")
    # Everything but the pooler (CLS dense, unused by mean pooling) trains.
    assert full["frozen"] == 384 * 384 + 384
    task.freeze("top_k:2")
    top2 = tfft.trainable_summary(task)
    assert top2["trainable"] == 3_550_853 == _readme_figure("`top_k:2` ")
    assert top2["trainable"] == 2 * BLOCK_PARAMS + HEAD_PARAMS
    trainable_groups = {_group(w.path) for w in task.trainable_weights}
    assert trainable_groups == {"head", "transformer_layer_4", "transformer_layer_5"}
    task.freeze("feature_extraction")
    head_only = tfft.trainable_summary(task)
    assert head_only["trainable"] == HEAD_PARAMS
    assert head_only["trainable"] == _readme_figure("the frozen head ")
    # Frozen: the whole backbone, pooler included (22,565,376 + 147,840).
    assert str(head_only) == "1,925 trainable / 22,713,216 frozen parameters (0.01% trainable)"


class _Eager(keras.callbacks.Callback):
    """Runs each `fit` eagerly: tracing MiniLM's train step costs more than these few steps.

    The compiled path of `fine_tune` on the real MiniLM runs in the main job's
    session fixture (`finetune_run`); here only what moves is checked.
    """

    def on_train_begin(self, logs=None):
        self.model.run_eagerly = True
        self.model.make_train_function(force=True)


class _StageProbe(keras.callbacks.Callback):
    """Fingerprints every weight at the start and end of each `fit`."""

    def __init__(self):
        super().__init__()
        self.starts, self.ends, self.trainable, self.optimizers = [], [], [], []

    def on_train_begin(self, logs=None):
        self.starts.append(_fingerprints(self.model))
        self.trainable.append(tfft.trainable_summary(self.model)["trainable"])
        self.optimizers.append(self.model.optimizer)

    def on_train_end(self, logs=None):
        self.ends.append(_fingerprints(self.model))


def test_fine_tune_trains_the_head_then_exactly_the_top_two_blocks(backbone, articles):
    x, y = articles
    # The README's call: head on the frozen backbone, then top_k:2 with layer-wise rates.
    task = tfft.build_model(backbone, num_classes=5, sequence_length=32)
    probe = _StageProbe()
    histories = tfft.fine_tune(task, (x, y), epochs=1, freeze_epochs=1, unfreeze="top_k:2",
                               lr_decay=0.8, batch_size=16, callbacks=[_Eager(), probe],
                               verbose=0)
    assert [name for name, _ in histories] == ["head", "fine_tune"]
    assert all(np.isfinite(h.history["loss"]).all() for _, h in histories)
    assert probe.trainable == [HEAD_PARAMS, 2 * BLOCK_PARAMS + HEAD_PARAMS]
    _assert_moved(probe.starts[0], probe.ends[0], {"head"}, "head stage")
    _assert_moved(probe.starts[1], probe.ends[1],
                  {"head", "transformer_layer_4", "transformer_layer_5"}, "fine_tune stage")
    optimizer = probe.optimizers[1]
    assert isinstance(optimizer, LayerwiseOptimizer)
    assert int(optimizer.iterations.numpy()) == 2  # 32 articles / 16, one epoch
    rates = {_group(v.path): optimizer.multiplier(v) for v in task.trainable_weights}
    assert rates == {"head": 1.0, "transformer_layer_5": 0.8,
                     "transformer_layer_4": pytest.approx(0.64)}


class _EpochProbe(keras.callbacks.Callback):
    """Fingerprints every weight at the start and end of each epoch."""

    def __init__(self):
        super().__init__()
        self.begin, self.end = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.begin.append(_fingerprints(self.model))

    def on_epoch_end(self, epoch, logs=None):
        self.end.append(_fingerprints(self.model))


def test_gradual_unfreezing_opens_the_real_blocks_top_first_by_epoch(backbone, articles):
    x, y = articles[0][:16], articles[1][:16]
    # The README's gradual recipe: own compile, one optimizer clock per block.
    task = tfft.build_model(backbone, num_classes=5, sequence_length=32, freeze="gradual",
                            compile=False)
    task.compile(optimizer=tfft.layerwise_lr(task, 1e-3, decay=1.0),
                 loss="sparse_categorical_crossentropy")
    # One step per epoch: eager skips re-tracing MiniLM at every stage.
    task.run_eagerly = True
    callback = tfft.gradual_callback(task, verbose=0)
    probe = _EpochProbe()
    task.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[callback, probe])
    assert [(c["epoch"], c["block"]) for c in callback.changes] == [
        (1, "transformer_layer_5"), (2, "transformer_layer_4")]
    assert [c["trainable"] for c in callback.changes] == [
        HEAD_PARAMS + BLOCK_PARAMS, HEAD_PARAMS + 2 * BLOCK_PARAMS]
    opened = [{"head"}, {"head", "transformer_layer_5"},
              {"head", "transformer_layer_5", "transformer_layer_4"}]
    for epoch, groups in enumerate(opened):
        _assert_moved(probe.begin[epoch], probe.end[epoch], groups, f"epoch {epoch}")
    clocks = sorted(int(o.iterations.numpy()) for _, o in task.optimizer.group_optimizers())
    assert clocks[-3:] == [1, 2, 3]  # layer 4 trained once, layer 5 twice, the head thrice


def test_layerwise_sgd_step_shrinks_by_the_decay_down_the_real_blocks(backbone, articles):
    x, y = articles[0][:16], articles[1][:16]
    task = tfft.build_model(backbone, num_classes=5, sequence_length=32, freeze="full",
                            compile=False)
    optimizer = tfft.layerwise_lr(task, 1.0, decay=0.5, optimizer="sgd")
    inputs, labels = next(iter(task.make_dataset(x, y, batch_size=16)))
    variables = task.trainable_weights
    with tf.GradientTape() as tape:
        scores = task(inputs, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(labels, scores)
    grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, variables)]
    before = [v.numpy().copy() for v in variables]
    # The same gradients the train step would pass (dropout masks included).
    optimizer.apply([tf.convert_to_tensor(g) for g in grads], variables)
    steps, norms = {}, {}
    for v, g, b in zip(variables, grads, before, strict=True):
        group = _group(v.path)
        np.testing.assert_allclose(v.numpy(), b - np.float32(optimizer.multiplier(v)) * g,
                                   rtol=1e-5, atol=1e-6, err_msg=v.path)
        steps[group] = steps.get(group, 0.0) + float(np.sum((b - v.numpy()) ** 2))
        norms[group] = norms.get(group, 0.0) + float(np.sum(g.astype("float64") ** 2))
    # Update norm / gradient norm per block: 1 for the head, halved per block below.
    ratio = {group: np.sqrt(steps[group] / norms[group]) for group in steps}
    order = ["head", *reversed(BLOCKS), "embeddings"]
    assert sorted(ratio) == sorted(order)
    np.testing.assert_allclose([ratio[g] for g in order], [0.5 ** d for d in range(8)],
                               rtol=1e-3)
    assert all(norms[g] > 0 for g in order)
    rates = sorted(float(o.learning_rate) for _, o in optimizer.group_optimizers())
    np.testing.assert_allclose(rates, sorted(0.5 ** d for d in range(8)), rtol=1e-6)
