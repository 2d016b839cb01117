"""Image SavedModel export: encoded bytes and uint8 arrays in, the backbone's
ImagePreprocessor inside the graph."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfft.export import export_saved_model, saved_model
from tfft.export.saved_model import encode_image, load_serving_outputs_in_fresh_process

CLASSES = ["cat", "dog", "fox"]


def keras_probabilities(model, images):
    """The in-memory model on each image preprocessed alone (sizes may differ)."""
    pre = model.preprocessor
    batch = np.concatenate([np.asarray(pre(image[None])) for image in images])
    return np.asarray(model(batch, training=False))


@pytest.fixture(scope="module")
def exported(image_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("img") / "animals"
    image_model.class_names = CLASSES
    # The task knows its modality (image backbone), preprocessor and class names.
    path = export_saved_model(image_model, str(directory))
    return image_model, path


def test_encoded_png_and_jpeg_bytes_of_mixed_sizes(exported, images):
    model, path = exported
    serve = tf.saved_model.load(path).signatures["serving_default"]
    for fmt in ("png", "jpeg"):
        encoded = [encode_image(image, fmt) for image in images]
        decoded = [tf.io.decode_image(e, channels=3).numpy() for e in encoded]
        got = serve(tf.constant(encoded))
        want = keras_probabilities(model, decoded)
        np.testing.assert_allclose(got["probabilities"].numpy(), want, atol=1e-5)
        assert [n.decode() for n in got["class_names"].numpy()] == [
            CLASSES[i] for i in want.argmax(-1)]
    # The random images must not all get the same scores, or the check is void.
    assert len(set(want.argmax(-1).tolist())) > 1 or np.ptp(want[:, 0]) > 1e-3


def test_uint8_arrays_signature_in_a_fresh_process(exported):
    model, path = exported
    batch = np.random.default_rng(3).integers(0, 256, (3, 40, 28, 3)).astype("uint8")
    got = load_serving_outputs_in_fresh_process(path, batch, signature="serving_arrays")
    want = keras_probabilities(model, list(batch))
    np.testing.assert_allclose(got["probabilities"], want, atol=1e-5)
    assert list(got["class_names"]) == [CLASSES[i] for i in want.argmax(-1)]
    # The same pictures as lossless PNG bytes give the same answer.
    serve = tf.saved_model.load(path).signatures["serving_default"]
    by_bytes = serve(tf.constant([encode_image(image) for image in batch]))
    np.testing.assert_allclose(by_bytes["probabilities"].numpy(), got["probabilities"],
                               atol=1e-5)


def test_signatures_and_metadata(exported):
    _, path = exported
    loaded = tf.saved_model.load(path)
    assert sorted(loaded.signatures) == ["serving_arrays", "serving_default"]
    arrays = loaded.signatures["serving_arrays"]
    spec = arrays.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 3]
    meta = saved_model.read_metadata(path)
    assert meta["modality"] == "image"
    assert meta["signatures"]["serving_arrays"] == {
        "input": "images", "dtype": "uint8", "shape": [None, None, None, 3]}
    assert meta["preprocessor"] == "ImagePreprocessor"
    assert meta["preprocessing"]["config"]["image_size"] == [32, 32]
    assert "normalise: tf" in meta["preprocessing"]["description"]
    assert meta["backbone"]["spec"] == "keras_app:MobileNetV2"
    assert os.listdir(os.path.dirname(path)) == ["1"]


def test_wrong_dtypes_are_refused(exported):
    _, path = exported
    loaded = tf.saved_model.load(path)
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError),
                       match="uint8"):
        loaded.signatures["serving_arrays"](tf.zeros((1, 8, 8, 3), tf.float32))
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError),
                       match="string"):
        loaded.signatures["serving_default"](tf.zeros((1,), tf.int32))
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["serving_default"](tf.constant([b"not an image"]))
