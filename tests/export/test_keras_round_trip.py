"""`.keras` save and reload of every kind of model tfft builds."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfft
from tfft.layers import HubLayer


class _TinyFeatureModel(tf.Module):
    """A TF2 SavedModel: vectors (None, 5) -> features (None, 4), with variables."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.kernel = tf.Variable(rng.normal(size=(5, 4)).astype("float32"), name="kernel")
        self.bias = tf.Variable(rng.normal(size=(4,)).astype("float32"), name="bias")

    @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32)])
    def __call__(self, x):
        return tf.nn.tanh(tf.matmul(x, self.kernel) + self.bias)


def _train_head_one_step(model, x, y, loss):
    model.compile(keras.optimizers.SGD(0.5), loss)
    before = np.array(model.get_layer("head").output_layer.kernel.numpy())
    model.train_on_batch(x, y)
    after = model.get_layer("head").output_layer.kernel.numpy()
    assert not np.allclose(before, after)  # the reload below must carry trained values


def test_text_functional_model(make_text_model, tiny_text_preprocessor, assert_round_trip):
    model = make_text_model()
    assert not isinstance(model, keras.Sequential)
    x = {k: np.asarray(v) for k, v in tiny_text_preprocessor(
        tf.constant(["the team win", "bank profit", "film star award"])).items()}
    _train_head_one_step(model, x, np.array([0, 1, 2]), "sparse_categorical_crossentropy")
    reloaded = assert_round_trip(model, x, atol=1e-6)
    assert isinstance(reloaded.get_layer("backbone"), tfft.BackboneLayer)
    assert reloaded.get_layer("head").num_classes == 3
    assert reloaded.get_layer("backbone").block_names == \
        model.get_layer("backbone").block_names
    # Frozen stays frozen: feature extraction leaves only the head trainable.
    assert len(reloaded.trainable_weights) == len(model.trainable_weights)


def test_cnn_sequential_model(cnn_backbone, assert_round_trip):
    task = tfft.build_model(cnn_backbone, task="binary", num_classes=1,
                            freeze="top_k:2", compile=False)
    model = task.to_sequential()
    assert isinstance(model, keras.Sequential)
    raw = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("uint8")
    x = np.asarray(task.preprocessor(raw))
    _train_head_one_step(model, x, np.array([0, 1, 1, 0], "float32"), "binary_crossentropy")
    reloaded = assert_round_trip(model, x, atol=1e-5)
    assert isinstance(reloaded, keras.Sequential)
    def names(m):
        return [w.path.removeprefix(m.name + "/") for w in m.trainable_weights]

    assert names(reloaded) == names(model)
    assert any(name.startswith("block_16") for name in names(reloaded))
    assert reloaded.get_layer("pooling").mode == "mean"


def test_hub_layer_model(tmp_path, assert_round_trip):
    handle = str(tmp_path / "hub_savedmodel")
    tf.saved_model.save(_TinyFeatureModel(), handle)
    model = tfft.build_model(tfft.load_backbone(f"tfhub:{handle}"), task="multiclass",
                             num_classes=3,
                             compile=False)
    x = np.random.default_rng(1).normal(size=(6, 5)).astype("float32")
    _train_head_one_step(model, x, np.array([0, 1, 2, 0, 1, 2]),
                         "sparse_categorical_crossentropy")
    reloaded = assert_round_trip(model, x, atol=1e-6)
    hub = [layer for layer in reloaded._flatten_layers() if isinstance(layer, HubLayer)]
    assert len(hub) == 1 and hub[0].handle == handle


def test_bare_hub_layer_in_sequential(tmp_path, assert_round_trip):
    handle = str(tmp_path / "hub_savedmodel")
    tf.saved_model.save(_TinyFeatureModel(), handle)
    model = keras.Sequential([keras.Input((5,)), HubLayer(handle, trainable=True),
                              keras.layers.Dense(2)])
    x = np.random.default_rng(2).normal(size=(3, 5)).astype("float32")
    model.compile(keras.optimizers.Adam(0.1), "mse")
    model.train_on_batch(x, np.ones((3, 2), "float32"))
    reloaded = assert_round_trip(model, x, atol=1e-6)
    np.testing.assert_allclose(reloaded.layers[0].weights[0].numpy(),
                               model.layers[0].weights[0].numpy())
    with pytest.raises(AssertionError):  # the fine-tuned kernel moved from the file's
        np.testing.assert_allclose(model.layers[0].weights[0].numpy(),
                                   _TinyFeatureModel().kernel.numpy())
