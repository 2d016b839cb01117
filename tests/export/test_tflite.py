"""LiteRT (TFLite) conversion of image models with a parity check."""

import os

import keras
import numpy as np
import pytest

from tfft.export import ExportError, run_tflite, to_tflite


@pytest.fixture(scope="module")
def converted(image_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tflite") / "animals.tflite")
    return to_tflite(image_model, path)


def test_tflite_matches_keras(image_model, converted):
    assert converted["max_abs_diff"] <= 1e-4
    assert os.path.getsize(converted["path"]) == converted["bytes"] > 100_000
    raw = np.random.default_rng(11).integers(0, 256, (5, 32, 32, 3)).astype("uint8")
    x = np.asarray(image_model.preprocessor(raw))
    want = np.asarray(image_model(x, training=False))
    got = run_tflite(converted["path"], x)
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.ptp(want, axis=0).max() > 1e-2  # outputs vary, so the check can fail


def test_tflite_with_normalisation_inside(image_model, tmp_path):
    info = to_tflite(image_model, str(tmp_path / "raw.tflite"), include_preprocessing=True)
    raw = np.random.default_rng(12).integers(0, 256, (3, 32, 32, 3)).astype("uint8")
    want = np.asarray(image_model(np.asarray(image_model.preprocessor(raw)), training=False))
    np.testing.assert_allclose(run_tflite(info["path"], raw), want, atol=1e-4)
    with pytest.raises(TypeError, match="uint8"):
        run_tflite(info["path"], raw.astype("float32"))


def test_parity_failure_writes_nothing(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    path = tmp_path / "strict.tflite"
    # A float32 model never matches to the last bit after conversion.
    with pytest.raises(ExportError, match="differs from the Keras model"):
        to_tflite(model, str(path), atol=0.0)
    assert os.listdir(tmp_path) == []
    assert to_tflite(model, str(path), atol=1e-4)["max_abs_diff"] <= 1e-4
    assert os.listdir(tmp_path) == ["strict.tflite"]


def test_dynamic_input_size_is_refused(tmp_path):
    model = keras.Sequential([keras.Input((None, None, 3)),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="fixed input size"):
        to_tflite(model, str(tmp_path / "m.tflite"))


def test_text_models_are_refused(make_text_model, tmp_path):
    with pytest.raises(ValueError, match="one image input"):
        to_tflite(make_text_model(), str(tmp_path / "m.tflite"))

