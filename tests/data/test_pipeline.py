import itertools
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfft
import tfft.data as td
from tfft.backbones.base import Backbone, BackboneInfo


def _labels_of(dataset):
    return np.concatenate([y.numpy() for _, y in dataset])


def test_text_dataset_tokenises_batches(tiny_preprocessor, texts):
    data = td.LabeledData(texts, np.arange(len(texts)) % 2, ["a", "b"])
    dataset = td.make_dataset(data, preprocess=tiny_preprocessor, batch_size=4)
    x, y = next(iter(dataset))
    assert set(x) == {"token_ids", "segment_ids", "padding_mask"}
    assert x["token_ids"].shape == (4, 24)
    # [CLS] the movie was good [SEP]
    assert int(tf.reduce_sum(tf.cast(x["padding_mask"][0], tf.int32))) == 6
    assert y.numpy().tolist() == [0, 1, 0, 1]
    assert sum(int(b[1].shape[0]) for b in dataset) == len(texts)


def test_text_dataset_through_a_backbone(tiny_preprocessor, texts):
    model = keras.Sequential([keras.layers.Dense(1)])
    info = BackboneInfo(name="tiny", source="model", modality="text", input_size=24)
    backbone = Backbone(model, info, preprocessor=tiny_preprocessor)
    dataset = td.make_dataset((texts, np.zeros(len(texts), int)), backbone, batch_size=5)
    x, _ = next(iter(dataset))
    assert x["token_ids"].shape == (5, 24)


def test_shuffle_is_seeded_and_reshuffles_each_epoch():
    data = (np.arange(50, dtype=np.float32)[:, None, None], np.arange(50))
    first = td.make_dataset(data, batch_size=8, shuffle=True, seed=1)
    again = td.make_dataset(data, batch_size=8, shuffle=True, seed=1)
    epoch1, epoch2 = _labels_of(first), _labels_of(first)
    np.testing.assert_array_equal(epoch1, _labels_of(again))
    assert sorted(epoch1.tolist()) == list(range(50))
    assert not np.array_equal(epoch1, np.arange(50))
    assert not np.array_equal(epoch1, epoch2)
    ordered = td.make_dataset(data, batch_size=8)
    np.testing.assert_array_equal(_labels_of(ordered), np.arange(50))


def test_cache_preprocesses_once_and_keeps_shuffling():
    calls = []

    def preprocess(images):
        tf.py_function(lambda: calls.append(1) or 0, [], tf.int32)
        return images / 255.0

    data = (np.full((20, 2, 2), 255, np.uint8), np.arange(20))
    dataset = td.make_dataset(data, preprocess=preprocess, batch_size=5, cache=True,
                              shuffle=True, seed=0)
    epochs = [_labels_of(dataset) for _ in range(3)]
    assert len(calls) == 4  # 4 batches preprocessed in the first epoch only
    assert len(dataset) == 4
    assert not np.array_equal(epochs[1], epochs[2])
    x, _ = next(iter(dataset))
    np.testing.assert_allclose(x.numpy(), 1.0)


def test_images_resized_to_backbone_and_gray_to_rgb():
    inputs = keras.Input((6, 6, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    info = BackboneInfo(name="cnn", source="model", modality="image", input_size=(6, 6))
    backbone = Backbone(model, info, preprocessor=lambda x: x / 127.5 - 1.0)
    images = np.full((3, 4, 4), 255, np.uint8)
    dataset = td.make_dataset((images, np.array([0, 1, 0])), backbone, batch_size=3)
    x, _ = next(iter(dataset))
    assert x.shape == (3, 6, 6, 3)
    np.testing.assert_allclose(x.numpy(), 1.0, atol=1e-6)
    assert model.predict(dataset, verbose=0).shape == (3, 3)


def test_augmentation_only_on_training_datasets():
    images = np.tile(np.arange(4, dtype=np.uint8)[None, None, :, None], (16, 4, 1, 1))
    flip = keras.layers.RandomFlip("horizontal", seed=0)
    data = (images, np.zeros(16, int))
    train = td.make_dataset(data, batch_size=16, shuffle=True, augment=flip)
    flipped = next(iter(train))[0].numpy()[..., 0, :, 0]
    assert (flipped[:, 0] == 3).any() and (flipped[:, 0] == 0).any()
    evaluation = td.make_dataset(data, batch_size=16, augment=flip)
    np.testing.assert_array_equal(next(iter(evaluation))[0].numpy()[..., 0, :, 0],
                                  np.tile(np.arange(4), (16, 1)))
    with pytest.raises(ValueError, match="image data only"):
        td.make_dataset((np.array(["a"], dtype=object), [0]), augment=flip, training=True)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        td.make_dataset((np.zeros((2, 2)), [0, 1]), batch_size=0)
    with pytest.raises(TypeError, match="LabeledData or an \\(x, y\\) tuple"):
        td.make_dataset([1, 2, 3])
    with pytest.raises(ValueError, match="needs a text preprocessor"):
        td.make_text_dataset((np.array(["a"], dtype=object), [0]), bucketing=True)
    with pytest.raises(ValueError, match="strictly increasing"):
        td.bucket_by_length(tf.data.Dataset.range(3).map(lambda i: (tf.fill([i], i), i)),
                            bucket_boundaries=[8, 4])


def test_bucketing_pads_each_batch_to_its_longest(tiny_preprocessor, texts):
    data = td.LabeledData(texts, np.arange(len(texts)), [])
    dataset = td.make_text_dataset(data, preprocessor=tiny_preprocessor, batch_size=4,
                                   bucketing=True, bucket_boundaries=[4, 8])
    seen = []
    for x, y in dataset:
        lengths = tf.reduce_sum(tf.cast(x["padding_mask"], tf.int32), axis=1).numpy()
        assert x["token_ids"].shape[1] == lengths.max() < 24
        assert x["segment_ids"].shape == x["token_ids"].shape
        seen.extend(y.numpy().tolist())
    assert sorted(seen) == list(range(len(texts)))
    # The batch count is known up front (Keras shows progress, no "ran out of data").
    batches = sum(1 for _ in dataset)
    assert len(dataset) == batches
    dropped = td.make_text_dataset(data, preprocessor=tiny_preprocessor, batch_size=4,
                                   bucketing=True, bucket_boundaries=[4, 8],
                                   drop_remainder=True)
    assert len(dropped) == sum(1 for _ in dropped) < batches


def _lengths(x):
    return tf.reduce_sum(tf.cast(x["padding_mask"], tf.int32), axis=1).numpy()


def test_sorted_pools_batch_each_pool_in_length_order(tiny_preprocessor, texts):
    data = td.LabeledData(texts, np.arange(len(texts)), [])
    # Pools of 2 batches of 4: the first pool is examples 0-7, whose token
    # lengths are 6, 3, 15, 3, 12, 4, 6, 6.
    dataset = td.make_text_dataset(data, preprocessor=tiny_preprocessor, batch_size=4,
                                   bucketing=True, pool_batches=2)
    batches = [(x, y.numpy()) for x, y in dataset]
    assert [sorted(y.tolist()) for _, y in batches[:2]] == [[0, 1, 3, 5], [2, 4, 6, 7]]
    for x, _ in batches:
        lengths = _lengths(x)
        assert x["token_ids"].shape[1] == lengths.max()
        assert x["segment_ids"].shape == x["token_ids"].shape
    assert sorted(np.concatenate([y for _, y in batches]).tolist()) == list(range(len(texts)))
    assert len(dataset) == len(batches) == 6
    dropped = td.make_text_dataset(data, preprocessor=tiny_preprocessor, batch_size=4,
                                   bucketing=True, drop_remainder=True)
    assert len(dropped) == sum(1 for _ in dropped) == 5


def test_sorted_pools_reshuffle_and_keep_batches_of_near_equal_length(tiny_preprocessor,
                                                                       texts):
    data = td.LabeledData(texts, np.arange(len(texts)), [])
    # One pool holds every example: the batches cut its length order into runs.
    dataset = td.make_text_dataset(data, preprocessor=tiny_preprocessor, batch_size=4,
                                   bucketing=True, shuffle=True, seed=3, pool_batches=8)
    epochs = []
    for _ in range(2):
        ranges, labels = [], []
        for x, y in dataset:
            lengths = _lengths(x)
            ranges.append((lengths.min(), lengths.max()))
            labels.extend(y.numpy().tolist())
        ranges.sort()
        assert all(high <= low for (_, high), (low, _) in itertools.pairwise(ranges))
        assert sorted(labels) == list(range(len(texts)))
        epochs.append(labels)
    assert epochs[0] != epochs[1]
    with pytest.raises(ValueError, match="pool_batches"):
        td.make_text_dataset(data, preprocessor=tiny_preprocessor, bucketing=True,
                             pool_batches=0)


def test_training_datasets_run_without_the_autotuning_thread(tiny_preprocessor, texts):
    """tf.data's autotuning thread stalled the end of `fit` (see `pipeline_options`)."""
    data = td.LabeledData(texts, np.arange(len(texts)) % 2, ["a", "b"])
    made = [
        td.make_dataset(data, preprocess=tiny_preprocessor),
        td.make_text_dataset(data, preprocessor=tiny_preprocessor, bucketing=True),
        td.make_text_dataset(data, preprocessor=tiny_preprocessor, bucketing=True,
                             bucket_boundaries=[4, 8]),
    ]
    for dataset in made:
        assert dataset.options().autotune.enabled is False
        assert dataset.options().deterministic is True
        assert dataset.options().experimental_warm_start is True


class _FileRecorder(keras.layers.Layer):
    """A preprocessor layer that records which file its `__call__` runs from."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.files = []

    def __call__(self, texts):
        # AutoGraph runs a converted function from a generated file of its own.
        self.files.append(sys._getframe().f_code.co_filename)
        return self.inner(texts)


def test_keras_layer_preprocessors_are_traced_without_autograph(tiny_preprocessor, texts):
    data = td.LabeledData(texts, np.arange(len(texts)) % 2, ["a", "b"])
    recorder = _FileRecorder(tiny_preprocessor)
    fixed = td.make_dataset(data, preprocess=recorder, batch_size=4)
    pooled = td.make_text_dataset(data, preprocessor=recorder, batch_size=4, bucketing=True)
    bucketed = td.make_text_dataset(data, preprocessor=recorder, batch_size=4, bucketing=True,
                                    bucket_boundaries=[4, 8])
    assert recorder.files and set(recorder.files) == {__file__}
    expected = td.make_dataset(data, preprocess=tiny_preprocessor, batch_size=4)
    for (x, y), (x0, y0) in zip(fixed, expected, strict=True):
        np.testing.assert_array_equal(x["token_ids"], x0["token_ids"])
        np.testing.assert_array_equal(y, y0)
    assert sum(int(y.shape[0]) for _, y in pooled) == len(texts)
    assert sum(int(y.shape[0]) for _, y in bucketed) == len(texts)


def test_plain_function_preprocessors_keep_autograph(tiny_preprocessor, texts):
    def preprocess(batch):
        features = dict(tiny_preprocessor(batch))
        # A Python `if` on a tensor: only AutoGraph turns it into graph control flow.
        if tf.reduce_any(features["padding_mask"][:, 0]):
            features["segment_ids"] = features["segment_ids"] + 1
        return features

    data = td.LabeledData(texts, np.arange(len(texts)) % 2, ["a", "b"])
    for dataset in (td.make_dataset(data, preprocess=preprocess, batch_size=4),
                    td.make_text_dataset(data, preprocessor=preprocess, batch_size=4,
                                         bucketing=True)):
        x, _ = next(iter(dataset))
        assert int(tf.reduce_min(x["segment_ids"])) == 1


def test_pipeline_options_start_the_pipeline_when_the_iterator_is_made():
    """Warm start: batches are prepared while `fit` traces its step, before the first next()."""
    prepared = []

    def prepare(i):
        prepared.append(int(i))
        return i

    dataset = tf.data.Dataset.range(8).with_options(td.pipeline_options()).map(
        lambda i: tf.py_function(prepare, [i], tf.int64), num_parallel_calls=2).prefetch(2)
    iterator = iter(dataset)
    deadline = time.monotonic() + 10
    while not prepared and time.monotonic() < deadline:
        time.sleep(0.05)
    assert prepared, "nothing was prepared before the first next()"
    assert [int(next(iterator)) for _ in range(8)] == list(range(8))


class MaskedMean(keras.layers.Layer):
    def call(self, sequence, mask):
        mask = keras.ops.cast(mask, sequence.dtype)[..., None]
        return keras.ops.sum(sequence * mask, axis=1) / keras.ops.sum(mask, axis=1)


@pytest.mark.parametrize("boundaries", [None, [4, 8]], ids=["sorted_pools", "buckets"])
def test_bucketing_predictions_equal_fixed_length(tiny_preprocessor, texts, vocab, boundaries):
    import keras_hub

    keras.utils.set_random_seed(0)
    bert = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocab), num_layers=2, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=24,
    )
    inputs = {
        "token_ids": keras.Input((None,), dtype="int32", name="token_ids"),
        "segment_ids": keras.Input((None,), dtype="int32", name="segment_ids"),
        "padding_mask": keras.Input((None,), dtype="bool", name="padding_mask"),
    }
    pooled = MaskedMean()(bert(inputs)["sequence_output"], inputs["padding_mask"])
    model = keras.Model(inputs, keras.layers.Dense(3)(pooled))

    # Labels are example indices, so predictions can be matched after reordering.
    data = td.LabeledData(texts, np.arange(len(texts)), [])

    def predictions(dataset):
        out = np.zeros((len(texts), 3), np.float32)
        widths = set()
        for x, index in dataset:
            widths.add(int(x["token_ids"].shape[1]))
            out[index.numpy()] = model(x, training=False).numpy()
        return out, widths

    fixed, fixed_widths = predictions(
        td.make_text_dataset(data, preprocessor=tiny_preprocessor, batch_size=4))
    bucketed, bucket_widths = predictions(
        td.make_text_dataset(data, preprocessor=tiny_preprocessor, batch_size=4,
                             bucketing=True, bucket_boundaries=boundaries, shuffle=True,
                             pool_batches=2))
    assert fixed_widths == {24} and max(bucket_widths) < 24 and len(bucket_widths) > 1
    np.testing.assert_allclose(bucketed, fixed, atol=1e-5)
    assert np.abs(fixed).max() > 1e-3  # the comparison is not between zeros


@pytest.mark.slow
def test_real_vision_backbone_pipeline_on_lfw():
    backbone = tfft.load_backbone("offline:efficientnet_lite0")
    faces = td.load_lfw_subset().take(np.r_[0:4, 100:104])
    flip = keras.layers.RandomFlip("horizontal", seed=0)
    train = td.make_dataset(faces, backbone, batch_size=8, shuffle=True, augment=flip)
    x, y = next(iter(train))
    # 25x25 grayscale -> the backbone's 224x224 RGB, normalised by its preprocessor (mean=std=0.5).
    assert x.shape == (8, 224, 224, 3)
    assert -1.01 <= float(tf.reduce_min(x)) < 0 < float(tf.reduce_max(x)) <= 1.01
    assert sorted(y.numpy().tolist()) == [0] * 4 + [1] * 4
    features = backbone.model.predict(td.make_dataset(faces, backbone, batch_size=8), verbose=0)
    assert features.shape == (8, backbone.info.feature_dim)


def test_bucketing_with_cache_and_shuffle_covers_every_example(tiny_preprocessor, texts):
    data = td.LabeledData(texts, np.arange(len(texts)), [])
    dataset = td.make_text_dataset(data, preprocessor=tiny_preprocessor, batch_size=4,
                                   bucketing=True, cache=True, shuffle=True, seed=2)
    epochs = [_labels_of(dataset) for _ in range(2)]
    for labels in epochs:
        assert sorted(labels.tolist()) == list(range(len(texts)))
    assert not np.array_equal(epochs[0], epochs[1])


def test_multi_hot_labels_and_nondeterministic_order():
    targets, names = td.multi_hot([["a"], ["a", "b"], ["b"], []])
    data = td.LabeledData(np.arange(4, dtype=np.float32)[:, None, None], targets, names)
    dataset = td.make_dataset(data, batch_size=2, deterministic=False)
    y = np.concatenate([b.numpy() for _, b in dataset])
    assert y.dtype == np.float32 and y.shape == (4, 2)
    assert sorted(map(tuple, y.tolist())) == sorted(map(tuple, targets.tolist()))


def test_continuous_epochs_repeats_a_dataset_of_known_size_only():
    from tfft.utils.tfdata import continuous_epochs

    dataset = tf.data.Dataset.range(10).batch(4)
    repeated, steps = continuous_epochs(dataset)
    assert steps == 3
    assert int(repeated.cardinality()) == tf.data.INFINITE_CARDINALITY
    # Pass after pass, the same three batches (the last one short).
    assert [len(b) for b in itertools.islice(repeated.as_numpy_iterator(), 6)] == [4, 4, 2] * 2
    unknown = tf.data.Dataset.range(10).filter(lambda i: i > 2)
    for x, given in ((dataset, 2), (unknown, None), (dataset.repeat(), None),
                     (dataset.take(0), None), (np.zeros((8, 2)), None)):
        assert continuous_epochs(x, given) == (x, given)


def test_with_pipeline_options_fills_in_only_what_the_dataset_left_unset():
    from tfft.utils.tfdata import with_pipeline_options

    unset = with_pipeline_options(tf.data.Dataset.range(4).map(lambda i: i + 1)).options()
    assert unset.autotune.enabled is False and unset.experimental_warm_start is True
    own = tf.data.Options()
    own.autotune.enabled, own.deterministic = True, False
    chosen = tf.data.Dataset.range(4).with_options(own).map(lambda i: i + 1)
    options = with_pipeline_options(chosen).options()
    assert options.autotune.enabled is True and options.deterministic is False
    assert options.experimental_warm_start is True
    assert list(with_pipeline_options(chosen).as_numpy_iterator()) == [1, 2, 3, 4]
