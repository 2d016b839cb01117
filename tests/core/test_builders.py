import keras
import numpy as np
import pytest
import tensorflow as tf

import tfft
from tfft.layers import TASKS
from tfft.models.builder import check_labels


def _labels(task, n, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    if task == "binary":
        return rng.integers(0, 2, n)
    if task == "multilabel":
        return rng.integers(0, 2, (n, num_classes))
    if task == "regression":
        return rng.normal(size=(n, num_classes)).astype("float32")
    if task == "token_classification":
        return rng.integers(0, num_classes, (n, 16))
    return rng.integers(0, num_classes, n)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_head_builds_fits_and_round_trips(task, tiny_bert, text_batch,
                                                     assert_round_trip):
    model = tfft.build_model(tiny_bert, task=task, num_classes=3, freeze="full")
    assert isinstance(model, tfft.Task) and model.task == task
    y = _labels(task, 16, 3)
    history = model.fit(text_batch, y, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    out = model.predict(text_batch, verbose=0)
    expected_units = 1 if task == "binary" else 3
    expected = (16, 16, 3) if task == "token_classification" else (16, expected_units)
    assert out.shape == expected
    assert out.dtype == np.float32
    if task in ("multiclass", "token_classification"):
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    assert_round_trip(model, text_batch)


def test_single_input_backbone_gives_the_seed_recipe_sequential(tiny_cnn, assert_round_trip):
    task = tfft.build_model(tiny_cnn, task="multiclass", num_classes=4)
    assert isinstance(task, tfft.Task)
    model = task.to_sequential()
    assert isinstance(model, keras.Sequential)
    assert [layer.name for layer in model.layers] == ["backbone", "pooling", "head"]
    x = np.random.default_rng(0).uniform(0, 1, (8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 4
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    head_before = task.head.output_layer.kernel.numpy().copy()
    model.fit(ds, epochs=1, verbose=0)
    # The Sequential shares the task's layers: training one trains the other.
    assert not np.array_equal(task.head.output_layer.kernel.numpy(), head_before)
    np.testing.assert_allclose(model.predict(x, verbose=0), task.predict(x, verbose=0),
                               atol=1e-6)
    assert_round_trip(task, x)


def test_multi_input_backbone_has_no_sequential_form(tiny_bert):
    task = tfft.build_model(tiny_bert, num_classes=2)
    with pytest.raises(ValueError, match="one input"):
        task.to_sequential()


def test_head_options_hidden_layer_pooling_and_dropout(tiny_bert, text_batch):
    model = tfft.build_model(tiny_bert, num_classes=2, hidden_units=5, pooling="cls",
                             dropout=0.3)
    head = model.get_layer("head")
    assert head.hidden.units == 5 and head.dropout == 0.3
    assert model.get_layer("pooling").mode == "cls"
    assert model.predict(text_batch, verbose=0).shape == (16, 2)


def test_masked_mean_pooling_ignores_padding():
    pool = tfft.Pooling("mean")
    x = np.arange(2 * 3 * 2, dtype="float32").reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    out = keras.ops.convert_to_numpy(pool(x, mask=mask))
    np.testing.assert_allclose(out, [x[0, :2].mean(0), x[1, 0]])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"task": "ranking"}, "Unknown task"),
        ({"num_classes": 0}, "num_classes must be a positive int"),
        ({"task": "multiclass", "num_classes": 1}, "needs num_classes >= 2"),
        ({"freeze": "half"}, "Unknown freeze policy"),
        ({"preset": "turbo", "freeze": "full"}, "Unknown compile preset"),
        ({"pooling": "median"}, "Unknown pooling mode"),
    ],
)
def test_bad_builder_arguments_fail_before_training(kwargs, message, tiny_bert):
    with pytest.raises(ValueError, match=message):
        tfft.build_model(tiny_bert, **{"num_classes": 3, **kwargs})


def test_labels_that_do_not_fit_are_rejected():
    with pytest.raises(ValueError, match=r"Labels must be in \[0, 3\).*\[3, 7\]"):
        check_labels([0, 1, 3, 7], "multiclass", 3)
    with pytest.raises(ValueError, match="integer class ids"):
        check_labels(["a", "b"], "multiclass", 3)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        check_labels(np.zeros((5, 3)), "multilabel", 4)
    with pytest.raises(ValueError, match="empty"):
        check_labels([], "binary", 2)
    check_labels([0, 1, 2], "multiclass", 3)


def test_backbone_with_unpoolable_output_is_rejected():
    inputs = keras.Input((4, 4, 4, 2))
    odd = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    with pytest.raises(ValueError, match="cannot be pooled"):
        tfft.build_model(odd, num_classes=2)


def test_an_image_keras_model_without_preprocessor_warns_naming_preprocessor(tiny_cnn):
    """Issue 25 item 6: raw images would only be resized, never normalised; say so."""
    with pytest.warns(UserWarning, match=r"preprocessor=") as caught:
        task = tfft.build_model(tiny_cnn, task="multiclass", num_classes=2, compile=False)
    assert task.preprocessor is None
    warning = next(w for w in caught if "preprocessor=" in str(w.message))
    # It points at the user's line, not inside tfft, and names the presets.
    assert warning.filename == __file__
    assert "'caffe'" in str(warning.message) and "(32, 32)" in str(warning.message)


def test_no_preprocessor_warning_when_one_is_given_or_the_model_normalises(tiny_cnn):
    import warnings

    from tfft.layers import NORMALISATIONS, ImagePreprocessor

    caffe = ImagePreprocessor((32, 32), **NORMALISATIONS["caffe"])
    inputs = keras.Input((16, 16, 3))
    rescaling = keras.Model(inputs, keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(
        1 / 255.0)(inputs)), name="normalises_inside")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task = tfft.build_model(tiny_cnn, task="multiclass", num_classes=2, compile=False,
                                preprocessor=caffe)
        tfft.load_backbone(rescaling)
    assert task.preprocessor is caffe
    # The task normalises raw 0-255 images the Caffe way (BGR minus the ImageNet mean).
    pixel = np.full((1, 32, 32, 3), [255, 0, 0], "uint8")
    np.testing.assert_allclose(np.asarray(task.preprocessor(pixel))[0, 0, 0],
                               [-103.939, -116.779, 255 - 123.68], rtol=1e-5)
