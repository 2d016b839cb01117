"""Shared helpers for the evaluation tests."""

import json
import os

import pytest
import tensorflow as tf

from tfft.evaluation import cli


def _keyword_export(path, patterns, metadata=None, scale=3.0, shift=0.0,
                    activation=tf.nn.softmax):
    """Saves a SavedModel whose serving_default scores raw texts by keyword counts.

    Output k is `activation(scale * count_k + shift)`, where count_k counts the
    words matching the regular expression `patterns[k]`. With `metadata`, writes
    it as the export's tfft metadata file. Returns the path.
    """
    patterns = list(patterns)

    class Keywords(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def serve(self, inputs):
            words = tf.strings.split(tf.strings.lower(inputs))
            counts = [tf.reduce_sum(tf.cast(tf.strings.regex_full_match(words, p), tf.float32),
                                    axis=-1) for p in patterns]
            return {"probabilities": activation(scale * tf.stack(counts, axis=-1) + shift)}

    module = Keywords()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    if metadata is not None:
        with open(os.path.join(path, cli.METADATA_FILE), "w") as f:
            json.dump(metadata, f)
    return path


@pytest.fixture(scope="session")
def keyword_export():
    """`keyword_export(path, patterns, metadata=None, scale=3.0, shift=0.0, activation=softmax)`."""
    return _keyword_export
