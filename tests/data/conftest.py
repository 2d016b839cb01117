"""Fixtures for tfft.data tests: a session TFDS data dir and a tiny BERT preprocessor."""

import numpy as np
import pytest

import tfft  # noqa: F401  (sets the Keras backend first)

VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "the", "a", "movie", "was", "good", "bad", "very", "not", "at", "all", "fun", "boring",
    "plot", "and", "end", "great", "film",
]


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """One TFDS data_dir per session, so each real dataset is prepared once."""
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def vocab():
    return list(VOCAB)


@pytest.fixture(scope="session")
def tiny_preprocessor():
    import keras_hub

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB)
    return keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=24)


@pytest.fixture
def texts():
    base = [
        "the movie was good",
        "bad",
        "the plot was very very boring and not fun at all the end",
        "a",
        "good good good good good good good good good good",
        "great film",
        "not bad at all",
    ]
    return np.array(base * 3, dtype=object)
