"""`top_k_frozen_batch_norm`: top-k fine-tuning with the backbone's BatchNorm kept pretrained."""

import keras
import numpy as np

import tfft
from tfft.adapt.freeze import TopK, TopKFrozenBatchNorm, find_backbone_layer, parse_freeze
from tfft.utils.walk import walk_layers


def _inner(task):
    return find_backbone_layer(task).backbone


def _batch_norms(task):
    return [layer for layer in walk_layers(_inner(task))
            if isinstance(layer, keras.layers.BatchNormalization)]


def test_top_blocks_train_but_their_batch_norm_stays_pretrained(cnn_backbone, images):
    x, y = images
    task = tfft.build_model(cnn_backbone, task="multiclass", num_classes=2,
                            freeze="top_k_frozen_batch_norm:1", compile=False)
    assert isinstance(task.freeze_policy, TopKFrozenBatchNorm)
    assert parse_freeze("top_k_frozen_batch_norm:1") == TopKFrozenBatchNorm(1)
    norms = _batch_norms(task)
    before = [[w.numpy().copy() for w in n.weights] for n in norms]
    kernels = {w.path: w.numpy().copy() for w in _inner(task).trainable_weights}
    assert kernels, "the top block's convolutions must train"
    task.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    task.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for norm, old in zip(norms, before, strict=True):
        assert not norm.trainable
        for w, value in zip(norm.weights, old, strict=True):  # gamma, beta, moving stats
            np.testing.assert_array_equal(w.numpy(), value, err_msg=w.path)
    moved = [p for p in kernels if not np.array_equal(
        kernels[p], next(w for w in _inner(task).weights if w.path == p).numpy())]
    assert moved, "no convolution of the top block moved"


def test_plain_top_k_trains_the_same_blocks_batch_norm(cnn_backbone):
    """The contrast: plain top_k leaves the top block's BatchNorm trainable."""
    task = tfft.build_model(cnn_backbone, task="multiclass", num_classes=2,
                            freeze=TopK(1), compile=False)
    assert any(norm.trainable for norm in _batch_norms(task))
