"""Tiny text models with the tiny real BERT preprocessor, for feature-cache tests."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfft

TEXTS = np.array([
    "the team win the match", "shares and profit at the bank", "film star award",
    "the minister and the election vote", "phone software on the internet",
    "music star in a film", "the party vote", "computer game news", "market shares fall",
    "sport team in the game", "bank profit news", "the award for music",
])
LABELS = np.array([0, 1, 2, 1, 2, 2, 1, 0, 1, 0, 1, 2])


@pytest.fixture(scope="session")
def make_model(tiny_text_preprocessor):
    """Factory: a tiny BERT tfft classifier (dropout 0) with the tiny preprocessor.

    `sequence_length` or `vocabulary` give it a preprocessor of its own (same
    tokenizer settings otherwise); the backbone's weights depend on `seed` only.
    """
    import keras_hub

    def make(seed=0, freeze="feature_extraction", num_classes=3, sequence_length=None,
             vocabulary=None, normalize_features=False):
        preprocessor = tiny_text_preprocessor
        if sequence_length is not None or vocabulary is not None:
            # Named as the shared ones, as they would be in a fresh process.
            tokenizer = tiny_text_preprocessor.tokenizer
            if vocabulary is not None:
                tokenizer = keras_hub.models.BertTokenizer(vocabulary=list(vocabulary),
                                                           name=tokenizer.name)
            preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
                tokenizer, sequence_length=sequence_length or 16,
                name=tiny_text_preprocessor.name)
        keras.utils.set_random_seed(seed)
        bert = keras_hub.models.BertBackbone(
            vocabulary_size=tiny_text_preprocessor.tokenizer.vocabulary_size(),
            num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
            max_sequence_length=16,
        )
        backbone = tfft.load_backbone(bert)
        backbone.preprocessor = preprocessor
        return tfft.build_model(backbone, task="multiclass", num_classes=num_classes,
                                dropout=0.0, freeze=freeze, compile=False,
                                normalize_features=normalize_features)

    return make


@pytest.fixture(scope="session")
def make_dataset(tiny_text_preprocessor):
    """Raw texts -> batched, tokenised tf.data (optionally with labels)."""

    def make(x, y=None, batch_size=4):
        ds = tf.data.Dataset.from_tensor_slices(np.asarray(x))
        if y is not None:
            ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(np.asarray(y)))
            return ds.batch(batch_size).map(lambda a, b: (tiny_text_preprocessor(a), b))
        return ds.batch(batch_size).map(tiny_text_preprocessor)

    return make


@pytest.fixture
def texts():
    return TEXTS.copy()


@pytest.fixture
def labels():
    return LABELS.copy()
