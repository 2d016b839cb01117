"""Fixtures for the freeze tests: a dropout-free tiny BERT, a tiny CNN with blocks."""

import keras
import numpy as np
import pytest

import tfft

VOCAB_SIZE = 37  # len(tests/conftest.py VOCAB)


@pytest.fixture
def bert_no_dropout():
    """The tiny BERT without dropout, so a training step is deterministic."""
    import keras_hub

    keras.utils.set_random_seed(0)
    return keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB_SIZE, num_layers=3, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=16, dropout=0.0,
    )


@pytest.fixture
def cnn_backbone(tiny_cnn):
    """The tiny MobileNetV2 as a tfft Backbone with its blocks grouped."""
    from tfft.backbones.applications import cnn_block_names

    return tfft.load_backbone(tiny_cnn, block_names=cnn_block_names(tiny_cnn))


@pytest.fixture
def images():
    rng = np.random.default_rng(1)
    return rng.uniform(0, 1, (16, 32, 32, 3)).astype("float32") * 5, np.arange(16) % 2

