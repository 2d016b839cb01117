"""Cached frozen-backbone features: same model as the uncached path, never stale."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfft.training import feature_cache
from tfft.training.feature_cache import CacheRefusedError


def predict_raw(model, x, make_dataset):
    return model.predict(make_dataset(x), verbose=0)


def test_head_on_cached_features_equals_uncached_training(make_model, make_dataset, texts,
                                                          labels, tmp_path):
    plain = make_model(seed=0)
    before = predict_raw(plain, texts, make_dataset)
    plain.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    plain.fit(make_dataset(texts, labels, batch_size=4), epochs=3, verbose=0)
    want = predict_raw(plain, texts, make_dataset)
    assert np.max(np.abs(want - before)) > 1e-2  # training changed the model

    # In memory, then streamed from the memory-mapped cache files (a hit by then).
    for in_memory, hits in ((True, (False, False)), (False, (True, True))):
        cached = make_model(seed=0)
        np.testing.assert_allclose(predict_raw(cached, texts, make_dataset), before,
                                   atol=1e-7)
        history = feature_cache.fit_cached(
            cached, texts, labels, validation_data=(texts[:4], labels[:4]),
            make_dataset=make_dataset, epochs=3, batch_size=4,
            optimizer=keras.optimizers.Adam(0.05), shuffle=False, in_memory=in_memory,
            directory=str(tmp_path), verbose=0,
        )
        np.testing.assert_allclose(predict_raw(cached, texts, make_dataset), want, atol=1e-5)
        assert history.cache_hits == hits
        assert len(history.history["loss"]) == 3 and "val_loss" in history.history


def test_cache_hits_when_nothing_changed_and_skips_the_backbone(make_model, make_dataset,
                                                                texts, tmp_path):
    model = make_model(seed=0)
    calls = []

    def counting(x):
        calls.append(len(x))
        return make_dataset(x)

    first, hit = feature_cache.cached_features(model, texts, counting, {"len": 16},
                                               directory=str(tmp_path), verbose=0)
    assert not hit and calls == [len(texts)]
    assert first.shape == (len(texts), 8)
    # A different model object with the same weights and settings reuses the entry.
    again, hit = feature_cache.cached_features(make_model(seed=0), texts, counting,
                                               {"len": 16}, directory=str(tmp_path),
                                               verbose=0)
    assert hit and calls == [len(texts)]
    assert isinstance(again, np.memmap)  # read from disk, memory-mapped
    np.testing.assert_array_equal(np.asarray(again), first)
    expected = keras.Model(model.inputs, model.get_layer("pooling").output).predict(
        make_dataset(texts), verbose=0)
    np.testing.assert_allclose(first, expected, atol=1e-6)


def test_key_changes_with_weights_preprocessing_and_data(make_model, texts):
    model = make_model(seed=0)
    key, parts = feature_cache.cache_key(model, texts, {"sequence_length": 16})
    assert key == feature_cache.cache_key(make_model(seed=0), texts.copy(),
                                          {"sequence_length": 16})[0]
    assert parts["pooling"]["mode"] == "mean" and parts["output_key"] == "sequence_output"

    other_prep = feature_cache.cache_key(model, texts, {"sequence_length": 8})[0]
    other_data = feature_cache.cache_key(model, np.append(texts[:-1], "changed"),
                                         {"sequence_length": 16})[0]
    reordered = feature_cache.cache_key(model, texts[::-1], {"sequence_length": 16})[0]
    other_seed = feature_cache.cache_key(make_model(seed=1), texts,
                                         {"sequence_length": 16})[0]
    weight = model.get_layer("backbone").backbone.weights[3]
    weight.assign(weight.numpy() + 1e-3)
    other_weights = feature_cache.cache_key(model, texts, {"sequence_length": 16})[0]
    keys = [key, other_prep, other_data, reordered, other_seed, other_weights]
    assert len(set(keys)) == len(keys)


def test_changed_backbone_weights_never_reuse_stale_features(make_model, make_dataset,
                                                             texts, tmp_path):
    model = make_model(seed=0)
    first, _ = feature_cache.cached_features(model, texts, make_dataset,
                                             directory=str(tmp_path), verbose=0)
    embeddings = model.get_layer("backbone").backbone.get_layer("token_embedding")
    embeddings.embeddings.assign(embeddings.embeddings.numpy() * 1.5)
    second, hit = feature_cache.cached_features(model, texts, make_dataset,
                                                directory=str(tmp_path), verbose=0)
    assert not hit
    assert np.max(np.abs(second - first)) > 1e-3
    assert len(feature_cache.list_cached(str(tmp_path))) == 2


def test_list_and_clear_entries(make_model, make_dataset, texts, tmp_path):
    model = make_model(seed=0)
    root = str(tmp_path)
    assert feature_cache.list_cached(root) == []
    feature_cache.cached_features(model, texts, make_dataset, directory=root, verbose=0)
    feature_cache.cached_features(model, texts[:5], make_dataset, directory=root, verbose=0)
    entries = feature_cache.list_cached(root)
    assert sorted(e["shape"][0] for e in entries) == [5, len(texts)]
    assert all(e["bytes"] > 0 and e["backbone_class"] == "BertBackbone" for e in entries)
    small = next(e["key"] for e in entries if e["shape"][0] == 5)
    assert feature_cache.clear_cache(root, key=small) == 1
    assert [e["shape"][0] for e in feature_cache.list_cached(root)] == [len(texts)]
    assert feature_cache.clear_cache(root, key="0" * 32) == 0
    with pytest.raises(ValueError, match="32 lowercase hex"):
        feature_cache.clear_cache(root, key="no-such-key")
    assert feature_cache.clear_cache(root) == 1
    assert feature_cache.list_cached(root) == []


def test_refuses_trainable_backbone_or_augmentation(make_model, make_dataset, texts, labels,
                                                    tmp_path):
    trainable = make_model(seed=0, freeze="top_k:1")
    with pytest.raises(CacheRefusedError, match="trainable weights"):
        feature_cache.cached_features(trainable, texts, make_dataset, directory=str(tmp_path))
    with pytest.raises(CacheRefusedError, match="trainable weights"):
        feature_cache.fit_cached(trainable, texts, labels, make_dataset=make_dataset,
                                 directory=str(tmp_path))
    frozen = make_model(seed=0)
    with pytest.raises(CacheRefusedError, match="augmentation"):
        feature_cache.cached_features(frozen, texts, make_dataset, directory=str(tmp_path),
                                      augment=keras.layers.RandomFlip())
    assert issubclass(CacheRefusedError, ValueError)
    assert feature_cache.list_cached(str(tmp_path)) == []
    # A plain keras.Model (no Task.make_dataset) needs make_dataset.
    plain = keras.Model(frozen.inputs, frozen.outputs)
    with pytest.raises(TypeError, match="make_dataset"):
        feature_cache.fit_cached(plain, texts, labels, directory=str(tmp_path))


def test_features_dataset_streams_memory_mapped_rows(tmp_path):
    features = np.arange(50 * 3, dtype="float32").reshape(50, 3)
    path = str(tmp_path / "features.npy")
    np.save(path, features)
    mapped = np.load(path, mmap_mode="r")
    labels = np.arange(50) % 4
    batches = list(feature_cache.features_dataset(mapped, labels, batch_size=16))
    assert [int(x.shape[0]) for x, _ in batches] == [16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), features)
    shuffled = list(feature_cache.features_dataset(mapped, labels, batch_size=16,
                                                   shuffle=True, seed=1))
    x = np.concatenate([b[0] for b in shuffled])
    y = np.concatenate([b[1] for b in shuffled])
    assert not np.array_equal(x, features)  # reordered ...
    np.testing.assert_array_equal(np.sort(x[:, 0]), features[:, 0])  # ... every row once
    np.testing.assert_array_equal(y, (x[:, 0] // 3).astype(int) % 4)  # labels follow rows
    unlabeled = next(iter(feature_cache.features_dataset(mapped, batch_size=8)))
    assert isinstance(unlabeled, tf.Tensor) and unlabeled.shape == (8, 3)


def test_fit_cached_defaults_to_the_tasks_own_pipeline_and_keys_its_preprocessor(
        make_model, make_dataset, texts, labels, tmp_path):
    explicit = make_model(seed=0)
    feature_cache.fit_cached(explicit, texts, labels, make_dataset=make_dataset, epochs=2,
                             batch_size=4, optimizer=keras.optimizers.Adam(0.05),
                             shuffle=False, directory=str(tmp_path / "a"), verbose=0)
    task = make_model(seed=0)  # a tfft.Task: it has make_dataset and a preprocessor
    history = feature_cache.fit_cached(task, texts, labels, epochs=2, batch_size=4,
                                       optimizer=keras.optimizers.Adam(0.05), shuffle=False,
                                       directory=str(tmp_path / "b"), verbose=0)
    assert history.cache_hits == (False, None)
    np.testing.assert_allclose(predict_raw(task, texts, make_dataset),
                               predict_raw(explicit, texts, make_dataset), atol=1e-5)
    [entry] = feature_cache.list_cached(str(tmp_path / "b"))
    # The preprocessor's settings are part of the key: another sequence length never hits.
    assert entry["preprocessor"]["config"]["sequence_length"] == 16
    again = feature_cache.fit_cached(make_model(seed=0), texts, labels, epochs=1,
                                     directory=str(tmp_path / "b"), verbose=0)
    assert again.cache_hits == (True, None)


def test_fit_cached_compiles_the_head_inside_the_given_strategy(make_model, texts, labels,
                                                                tmp_path):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        task = make_model(seed=0)
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            seen.append(self.model.optimizer)

    feature_cache.fit_cached(task, texts, labels, epochs=1, callbacks=[Probe()],
                             directory=str(tmp_path), strategy=strategy, verbose=0)
    in_scope = strategy.extended.variable_created_in_scope
    assert seen and all(in_scope(v.value) for v in seen[0].variables)
    assert not in_scope(keras.optimizers.Adam().iterations.value)


def test_fit_cached_stops_a_diverging_head(make_model, texts, labels, tmp_path):
    """The head stage has the same divergence guard as `fine_tune`'s stages."""
    from tfft.training import TrainingDivergedError

    task = make_model(seed=0)
    with pytest.raises(TrainingDivergedError, match="learning rate") as info:
        feature_cache.fit_cached(task, texts, labels, epochs=3, batch_size=2,
                                 optimizer=keras.optimizers.SGD(1e30), shuffle=False,
                                 directory=str(tmp_path), verbose=0)
    assert "at epoch 1," in str(info.value)   # stopped in the first epoch, not after it
