"""The cache key covers everything that changes the features, read from the model alone.

Each test computes features through the cache with no `preprocessing=` argument
(as the main job does: `make_dataset=task.make_dataset`) and checks that a
model whose features differ never gets another model's entry.
"""

import keras
import numpy as np
import pytest

import tfft
from tfft.layers import NORMALISATIONS, ImagePreprocessor
from tfft.training import feature_cache

TEXTS = np.array([
    "the team win the match", "shares and profit at the bank", "film star award",
    "the minister and the election vote", "phone software on the internet",
    "music star in a film", "the party vote", "computer game news",
])
# Longer than 3 word pieces: a 5-token sequence ([CLS] 3 pieces [SEP]) truncates them.
LONG = np.array([t for t in TEXTS if len(t.split()) > 3])


def uncached(model, x):
    """The features computed directly (one eager call), never through a cache."""
    features = feature_cache.feature_model(model)(model.preprocessor(x), training=False)
    return keras.ops.convert_to_numpy(features)


def through_cache(model, x, root):
    return feature_cache.cached_features(model, x, model.make_dataset, directory=root,
                                         verbose=0)


def test_two_sequence_lengths_get_two_entries_and_their_own_features(make_model, tmp_path):
    root = str(tmp_path)
    long_model, short_model = make_model(seed=0), make_model(seed=0, sequence_length=5)
    assert (feature_cache.weights_fingerprint(long_model.backbone_layer)
            == feature_cache.weights_fingerprint(short_model.backbone_layer))
    at_16, hit_16 = through_cache(long_model, LONG, root)
    at_5, hit_5 = through_cache(short_model, LONG, root)
    assert not hit_16 and not hit_5  # the 5-token model does not reuse the 16-token features
    np.testing.assert_allclose(at_5, uncached(short_model, LONG), atol=1e-6)
    assert np.max(np.abs(at_5 - at_16)) > 1e-3
    entries = feature_cache.list_cached(root)
    assert sorted(e["preprocessor"]["config"]["sequence_length"] for e in entries) == [5, 16]
    # The main job's route: fit_cached with the task's make_dataset, no preprocessing=.
    history = feature_cache.fit_cached(short_model, LONG, np.zeros(len(LONG), int),
                                       make_dataset=short_model.make_dataset, epochs=1,
                                       directory=root, verbose=0)
    assert history.cache_hits == (True, None)
    assert len(feature_cache.list_cached(root)) == 2


def test_same_model_twice_is_a_hit_without_any_argument(make_model, tmp_path):
    root = str(tmp_path)
    first, hit = through_cache(make_model(seed=0), TEXTS, root)
    again, hit_again = through_cache(make_model(seed=0), TEXTS, root)  # rebuilt: new names
    assert (hit, hit_again) == (False, True)
    np.testing.assert_array_equal(np.asarray(again), first)
    assert feature_cache.is_cached(make_model(seed=0), TEXTS, directory=root)


def test_tokenizer_vocabulary_content_is_part_of_the_key(make_model, tiny_text_preprocessor,
                                                         tmp_path):
    root = str(tmp_path)
    vocabulary = tiny_text_preprocessor.tokenizer.get_vocabulary()
    # Same size, same specials, same tokenizer config: only the word -> id map differs.
    shuffled = vocabulary[:5] + vocabulary[5:][::-1]
    model, other = make_model(seed=0), make_model(seed=0, vocabulary=shuffled)
    assert model.preprocessor.get_config() == other.preprocessor.get_config()
    through_cache(model, TEXTS, root)
    features, hit = through_cache(other, TEXTS, root)
    assert not hit
    np.testing.assert_allclose(features, uncached(other, TEXTS), atol=1e-6)
    assert np.max(np.abs(features - uncached(model, TEXTS))) > 1e-3


def test_pooling_normalize_gets_its_own_entry(make_model, tmp_path):
    root = str(tmp_path)
    plain, hit = through_cache(make_model(seed=0), TEXTS, root)
    normalized, hit_normalized = through_cache(make_model(seed=0, normalize_features=True),
                                               TEXTS, root)
    assert (hit, hit_normalized) == (False, False)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=-1), 1.0, atol=1e-5)
    assert np.max(np.abs(np.linalg.norm(plain, axis=-1) - 1.0)) > 1e-2
    keys = {e["key"]: e["pooling"]["normalize"] for e in feature_cache.list_cached(root)}
    assert sorted(keys.values()) == [False, True]


def test_a_layer_setting_outside_the_weights_changes_the_key(make_model, tmp_path):
    root = str(tmp_path)
    model = make_model(seed=0)
    before, _ = through_cache(model, TEXTS, root)
    # Same weights, another layer-norm epsilon: other features.
    model.backbone.get_layer("embeddings_layer_norm").epsilon = 0.5
    after, hit = through_cache(model, TEXTS, root)
    assert not hit
    np.testing.assert_allclose(after, uncached(model, TEXTS), atol=1e-6)
    assert np.max(np.abs(after - before)) > 1e-4


@pytest.mark.parametrize("extra", [None, {"len": 16}])
def test_preprocessing_argument_still_adds_to_the_key(make_model, extra):
    model = make_model(seed=0)
    key, parts = feature_cache.cache_key(model, TEXTS, extra)
    assert parts["preprocessing"] == extra
    assert key != feature_cache.cache_key(model, TEXTS, {"len": 8})[0]


def test_image_size_and_normalisation_are_part_of_the_key(tiny_cnn):
    def key(size, normalisation):
        backbone = tfft.load_backbone(tiny_cnn)
        backbone.preprocessor = ImagePreprocessor(size, **NORMALISATIONS[normalisation])
        model = tfft.build_model(backbone, task="multiclass", num_classes=2, compile=False)
        return feature_cache.cache_key(model, images)[0]

    images = np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3)).astype("uint8")
    keys = [key((32, 32), "tf"), key((32, 32), "torch"), key((24, 24), "tf")]
    assert len(set(keys)) == 3
    assert key((32, 32), "tf") == keys[0]  # a new preprocessor with the same settings hits
