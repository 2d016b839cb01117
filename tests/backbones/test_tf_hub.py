"""HubLayer and the `tfhub:` source, on tiny SavedModels written here in each format."""

import tfft  # noqa: I001  (sets the Keras backend first)

import socket

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfft.backbones import tf_hub
from tfft.utils.network import NetworkUnavailableError
from tfft.layers import HubLayer

VOCAB = ["good", "bad", "great", "awful", "fine"]
SEQ = 5


# -- SavedModels in each format ---------------------------------------------------


class _VectorBN(tf.Module):
    """Dense -> BatchNorm -> ReLU; the TF Hub reusable-SavedModel API."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.kernel = tf.Variable(rng.normal(size=(4, 6)).astype("float32"), name="dense/kernel")
        self.bias = tf.Variable(np.zeros(6, "float32"), name="dense/bias")
        self.gamma = tf.Variable(np.ones(6, "float32"), name="bn/gamma")
        self.beta = tf.Variable(np.zeros(6, "float32"), name="bn/beta")
        self.moving_mean = tf.Variable(
            np.zeros(6, "float32"), trainable=False, name="bn/moving_mean"
        )
        self.moving_variance = tf.Variable(
            np.ones(6, "float32"), trainable=False, name="bn/moving_variance"
        )

    @tf.function
    def __call__(self, x, training=False):
        h = tf.matmul(x, self.kernel) + self.bias
        if training:
            mean, variance = tf.nn.moments(h, axes=[0])
            self.moving_mean.assign(0.9 * self.moving_mean + 0.1 * mean)
            self.moving_variance.assign(0.9 * self.moving_variance + 0.1 * variance)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        h = tf.nn.batch_normalization(h, mean, variance, self.beta, self.gamma, 1e-3)
        return tf.nn.relu(h)


def _write_vector_bn(path):
    module = _VectorBN()
    for training in (True, False):
        module.__call__.get_concrete_function(tf.TensorSpec([None, 4], tf.float32), training)
    # The reusable-SavedModel attributes TF Hub defines.
    root = tf.train.Checkpoint(module=module)
    root.__call__ = module.__call__
    root.variables = list(module.variables)
    root.trainable_variables = list(module.trainable_variables)
    root.regularization_losses = [
        tf.function(lambda: 0.01 * tf.reduce_sum(tf.square(module.kernel)), input_signature=[])
    ]
    tf.saved_model.save(root, path)


class _TinyCNN(tf.Module):
    """Images in; dropout in training; a `pool` option passed through `arguments`."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(4)
        self.kernel = tf.Variable(rng.normal(size=(3, 3, 3, 4)).astype("float32"), name="conv")

    @tf.function
    def __call__(self, images, training=False, pool=True):
        h = tf.nn.relu(tf.nn.conv2d(images, self.kernel, 1, "SAME"))
        if training:
            h = tf.nn.dropout(h, rate=0.5)
        return tf.reduce_mean(h, axis=[1, 2]) if pool else h


def _write_cnn(path):
    module = _TinyCNN()
    for training in (True, False):
        for pool in (True, False):
            module.__call__.get_concrete_function(
                tf.TensorSpec([None, 8, 8, 3], tf.float32), training, pool
            )
    tf.saved_model.save(module, path)


class _StringModel(tf.Module):
    """Strings in: split, vocabulary lookup table, mean of embeddings."""

    def __init__(self):
        super().__init__()
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(VOCAB), tf.range(len(VOCAB), dtype=tf.int64)
            ),
            default_value=len(VOCAB),
        )
        rng = np.random.default_rng(1)
        self.embeddings = tf.Variable(
            rng.normal(size=(len(VOCAB) + 1, 3)).astype("float32"), name="embeddings"
        )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, text):
        ids = self.table.lookup(tf.strings.split(tf.strings.lower(text)))
        vectors = tf.ragged.map_flat_values(tf.gather, self.embeddings, ids)
        return tf.reduce_mean(vectors, axis=1)


class _TinyEncoder(tf.Module):
    """A BERT-shaped encoder: dict inputs, dict outputs, no Hub attributes."""

    def __init__(self, vocab=20, hidden=8):
        super().__init__()
        rng = np.random.default_rng(2)

        def var(shape, name):
            return tf.Variable(rng.normal(size=shape, scale=0.5).astype("float32"), name=name)

        self.word_embeddings = var((vocab, hidden), "embeddings/word")
        self.type_embeddings = var((2, hidden), "embeddings/type")
        self.dense = var((hidden, hidden), "encoder/layer_0/dense/kernel")
        self.pooler = var((hidden, hidden), "pooler/dense/kernel")

    @tf.function(
        input_signature=[
            {
                "input_word_ids": tf.TensorSpec([None, None], tf.int32, "input_word_ids"),
                "input_mask": tf.TensorSpec([None, None], tf.int32, "input_mask"),
                "input_type_ids": tf.TensorSpec([None, None], tf.int32, "input_type_ids"),
            }
        ]
    )
    def __call__(self, inputs):
        x = tf.gather(self.word_embeddings, inputs["input_word_ids"])
        x += tf.gather(self.type_embeddings, inputs["input_type_ids"])
        mask = tf.cast(inputs["input_mask"], tf.float32)[..., None]
        sequence = tf.tanh(tf.einsum("bsh,hk->bsk", x, self.dense)) * mask
        pooled = tf.tanh(tf.matmul(sequence[:, 0], self.pooler))
        return {"pooled_output": pooled, "sequence_output": sequence}


def _write_tf1(path):
    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        w = tf.compat.v1.get_variable(
            "dense/w", initializer=tf.constant(np.arange(8, dtype="float32").reshape(4, 2))
        )
        y = tf.matmul(x, w, name="y")
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(path)
            signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
            builder.add_meta_graph_and_variables(
                sess, ["serve"], signature_def_map={"serving_default": signature}
            )
            builder.save()


class _SignatureOnly(tf.Module):
    def __init__(self):
        super().__init__()
        self.w = tf.Variable(np.ones((4, 2), "float32"), name="w")

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, "x")])
    def predict(self, x):
        return {"scores": tf.matmul(x, self.w), "sum": tf.reduce_sum(x, axis=1)}


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_models")
    keys = ("vector", "image", "strings", "bert", "tf1", "sigonly")
    paths = {key: str(root / key) for key in keys}
    _write_vector_bn(paths["vector"])
    _write_cnn(paths["image"])
    tf.saved_model.save(_StringModel(), paths["strings"])
    encoder = _TinyEncoder()
    tf.saved_model.save(
        encoder, paths["bert"],
        signatures={"serving_default": encoder.__call__.get_concrete_function()},
    )
    _write_tf1(paths["tf1"])
    sig_only = _SignatureOnly()
    tf.saved_model.save(
        sig_only, paths["sigonly"], signatures={"serving_default": sig_only.predict}
    )
    return paths


def _vectors(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    return x, y


def _bert_batch(n=4):
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 20, size=(n, SEQ)).astype("int32")
    mask = np.ones((n, SEQ), "int32")
    mask[:, 3:] = 0
    return {"input_word_ids": ids, "input_mask": mask, "input_type_ids": np.zeros_like(ids)}


def _bert_inputs():
    return {
        key: keras.Input((SEQ,), dtype="int32", name=key)
        for key in ("input_word_ids", "input_mask", "input_type_ids")
    }


@pytest.fixture
def no_network(monkeypatch):
    """Fails the test if anything opens a socket."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)


# -- (a) vectors with BatchNorm --------------------------------------------------------


def test_sequential_and_functional_match_the_savedmodel(models):
    x, _ = _vectors()
    reference = tf.saved_model.load(models["vector"])(tf.constant(x), training=False).numpy()
    seq = keras.Sequential([keras.Input((4,)), HubLayer(models["vector"])])
    inputs = keras.Input((4,))
    functional = keras.Model(inputs, HubLayer(models["vector"])(inputs))
    np.testing.assert_allclose(seq.predict(x, verbose=0), reference, rtol=1e-6)
    np.testing.assert_allclose(functional.predict(x, verbose=0), reference, rtol=1e-6)


def test_clean_variable_names_and_weight_split(models):
    layer = HubLayer(models["vector"], trainable=True)
    names = sorted(v.name for v in layer.weights)
    assert names == sorted(
        ["dense_kernel", "dense_bias", "bn_gamma", "bn_beta", "bn_moving_mean",
         "bn_moving_variance"]
    )
    assert sorted(v.name for v in layer.non_trainable_weights) == [
        "bn_moving_mean", "bn_moving_variance"
    ]
    assert len(layer.trainable_weights) == 4
    frozen = HubLayer(models["vector"])
    assert frozen.trainable_weights == [] and len(frozen.non_trainable_weights) == 6


def test_frozen_layer_keeps_batchnorm_in_inference_mode(models):
    layer = HubLayer(models["vector"])
    x, y = _vectors()
    np.testing.assert_array_equal(layer(x, training=True), layer(x, training=False))
    model = keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    before = [v.numpy().copy() for v in layer.weights]
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for old, new in zip(before, layer.weights, strict=True):
        np.testing.assert_array_equal(old, new.numpy())


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_trainable_layer_fine_tunes(models, optimizer):
    layer = HubLayer(models["vector"], trainable=True)
    x, y = _vectors()
    # Training mode uses batch statistics: the outputs differ from inference.
    assert not np.allclose(layer(x, training=True), layer(x, training=False))
    model = keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(2)])
    opt = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW}[optimizer]
    # AdamW also runs under XLA: plain numeric SavedModels compile.
    model.compile(
        opt(0.05), "sparse_categorical_crossentropy", jit_compile=optimizer == "adamw"
    )
    assert layer.supports_jit and model.jit_compile == (optimizer == "adamw")
    kernel = layer._loaded.module.kernel  # the SavedModel's own variable
    moving_mean = layer._loaded.module.moving_mean
    before_kernel, before_mean = kernel.numpy().copy(), moving_mean.numpy().copy()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert not np.allclose(before_kernel, kernel.numpy())
    assert not np.allclose(before_mean, moving_mean.numpy())
    assert any("momentum" in v.path for v in model.optimizer.variables)


def test_regularization_losses_added_only_while_trainable(models):
    x, _ = _vectors(4)
    trainable = HubLayer(models["vector"], trainable=True)
    trainable(x)
    kernel = trainable._loaded.module.kernel.numpy()
    assert len(trainable.losses) == 1
    np.testing.assert_allclose(trainable.losses[0], 0.01 * np.sum(kernel**2), rtol=1e-5)
    frozen = HubLayer(models["vector"])
    frozen(x)
    assert frozen.losses == []

    model = keras.Sequential([keras.Input((4,)), trainable])
    model.compile("sgd", "mse")
    target = np.zeros((4, 6), "float32")
    with_reg = model.evaluate(x, target, verbose=0)
    plain = float(np.mean((model.predict(x, verbose=0) - target) ** 2))
    np.testing.assert_allclose(with_reg - plain, 0.01 * np.sum(kernel**2), rtol=1e-4)


def test_keras_file_round_trip_keeps_fine_tuned_values(models, tmp_path):
    x, y = _vectors()
    model = keras.Sequential(
        [keras.Input((4,)), HubLayer(models["vector"], trainable=True), keras.layers.Dense(2)]
    )
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    tuned = model.predict(x, verbose=0)
    untuned = keras.Sequential([keras.Input((4,)), HubLayer(models["vector"])])
    path = str(tmp_path / "tuned.keras")
    model.save(path)

    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), tuned, rtol=1e-6)
    layer = reloaded.layers[0]
    assert isinstance(layer, HubLayer) and layer.trainable
    # The tuned values came from the .keras file, not from the SavedModel.
    assert not np.allclose(
        layer(x).numpy(), untuned.predict(x, verbose=0)
    )
    assert layer.get_config()["handle"] == models["vector"]


def test_get_config_round_trip(models):
    layer = HubLayer(
        models["bert"], output_key="pooled_output", name="enc", arguments={}
    )
    config = layer.get_config()
    assert config["handle"] == models["bert"] and config["output_key"] == "pooled_output"
    clone = HubLayer.from_config(config)
    batch = _bert_batch()
    np.testing.assert_array_equal(clone(batch), layer(batch))
    assert keras.saving.get_registered_name(HubLayer) == "tfft>HubLayer"


def test_savedmodel_export_round_trip(models, tmp_path):
    x, y = _vectors()
    inputs = keras.Input((4,))
    hub = HubLayer(models["vector"], trainable=True)
    model = keras.Model(inputs, keras.layers.Dense(2)(hub(inputs)))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    expected = model.predict(x, verbose=0)

    saved = str(tmp_path / "saved")
    tf.saved_model.save(model, saved)
    restored = tf.saved_model.load(saved)
    np.testing.assert_allclose(
        restored.signatures["serving_default"](tf.constant(x))["output_0"], expected, rtol=1e-5
    )
    exported = str(tmp_path / "exported")
    model.export(exported, verbose=False)
    archive = tf.saved_model.load(exported)  # keep a reference: it owns the variables
    np.testing.assert_allclose(archive.serve(tf.constant(x)), expected, rtol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(models, policy):
    x, y = _vectors(n=64)
    low = policy.removeprefix("mixed_")
    keras.mixed_precision.set_global_policy(policy)
    try:
        layer = HubLayer(models["vector"], trainable=True)
        head = keras.layers.Dense(2, activation="softmax")
        model = keras.Sequential([keras.Input((4,)), layer, head])
        model.compile("adam", "sparse_categorical_crossentropy")
        before = {v.name: v.numpy().copy() for v in layer.trainable_weights}
        # float16 scales the loss and skips a step whose gradients overflow, so
        # give it several steps; every trainable SavedModel weight must move.
        history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
        assert np.isfinite(history.history["loss"][-1])
        moved = {
            v.name for v in layer.trainable_weights if not np.allclose(before[v.name], v.numpy())
        }
        assert moved == set(before), f"did not train: {sorted(set(before) - moved)}"
        # The SavedModel computes in float32; the head in the low precision.
        assert layer.compute_dtype == "float32" and head.compute_dtype == low
        assert keras.backend.standardize_dtype(layer(x).dtype) == "float32"
        assert keras.backend.standardize_dtype(model(x).dtype) == low
        assert layer.weights[0].dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_image_model_with_arguments_and_dropout(models):
    images = np.random.default_rng(5).uniform(size=(2, 8, 8, 3)).astype("float32")
    frozen = HubLayer(models["image"])
    # Frozen: dropout stays off even when the model trains around it.
    np.testing.assert_array_equal(frozen(images, training=True), frozen(images))
    tuned = HubLayer(models["image"], trainable=True)
    assert not np.allclose(tuned(images, training=True), tuned(images))
    maps = HubLayer(models["image"], arguments={"pool": False})
    assert tuple(maps(images).shape) == (2, 8, 8, 4)
    np.testing.assert_allclose(
        np.mean(maps(images), axis=(1, 2)), frozen(images), rtol=1e-5, atol=1e-6
    )
    clone = HubLayer.from_config(maps.get_config())
    assert clone.arguments == {"pool": False} and tuple(clone(images).shape) == (2, 8, 8, 4)


# -- (b) strings with a lookup table ----------------------------------------------------


def test_string_inputs_with_lookup_table(models, tmp_path):
    layer = HubLayer(models["strings"], trainable=True)
    assert layer.supports_jit is False  # lookup tables do not compile with XLA
    text = tf.constant(["good fine", "awful", "bad great", "unknown words"])
    inputs = keras.Input((), dtype="string")
    model = keras.Model(inputs, keras.layers.Dense(2)(layer(inputs)))
    with pytest.warns(UserWarning, match="jit_compile"):
        model.compile(
            keras.optimizers.AdamW(0.1), "sparse_categorical_crossentropy", jit_compile=True
        )
    assert model.jit_compile is False
    before = layer.weights[0].numpy().copy()
    model.fit(text, np.array([1, 0, 0, 1]), epochs=2, verbose=0)
    assert not np.allclose(before, layer.weights[0].numpy())

    expected = model.predict(text, verbose=0)
    path = str(tmp_path / "strings.keras")
    model.save(path)
    np.testing.assert_allclose(
        keras.saving.load_model(path).predict(text, verbose=0), expected, rtol=1e-6
    )
    exported = str(tmp_path / "strings_export")
    tf.saved_model.save(model, exported)
    serve = tf.saved_model.load(exported).signatures["serving_default"]
    np.testing.assert_allclose(
        next(iter(serve(text).values())), expected, rtol=1e-5
    )


# -- (c) BERT-like dict inputs and outputs ---------------------------------------------


def test_bert_like_dict_inputs_and_outputs(models):
    batch = _bert_batch()
    reference = tf.saved_model.load(models["bert"])(
        {k: tf.constant(v) for k, v in batch.items()}
    )
    inputs = _bert_inputs()
    as_dict = HubLayer(models["bert"])(inputs)
    assert set(as_dict) == {"pooled_output", "sequence_output"}
    pooled = keras.Model(inputs, HubLayer(models["bert"], output_key="pooled_output")(inputs))
    np.testing.assert_allclose(
        pooled.predict(batch, verbose=0), reference["pooled_output"], rtol=1e-6
    )
    sequence = keras.Model(
        inputs, HubLayer(models["bert"], output_key="sequence_output")(inputs)
    )
    assert sequence.output_shape == (None, SEQ, 8)
    # int64 ids (numpy's default) are cast to the int32 the SavedModel expects.
    batch64 = {k: v.astype("int64") for k, v in batch.items()}
    np.testing.assert_allclose(
        pooled.predict(batch64, verbose=0), reference["pooled_output"], rtol=1e-6
    )


def test_bert_like_fine_tunes_without_hub_attributes(models):
    layer = HubLayer(models["bert"], trainable=True, output_key="pooled_output")
    assert len(layer.trainable_weights) == 4  # found through the function's captures
    inputs = _bert_inputs()
    model = keras.Model(inputs, keras.layers.Dense(2)(layer(inputs)))
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    before = [w.numpy().copy() for w in layer.trainable_weights]
    model.fit(_bert_batch(), np.array([0, 1, 0, 1]), epochs=1, verbose=0)
    assert all(not np.allclose(b, w.numpy())
               for b, w in zip(before, layer.trainable_weights, strict=True))


def test_named_signature_of_tf2_model(models):
    batch = _bert_batch()
    layer = HubLayer(models["bert"], signature="serving_default", output_key="sequence_output")
    out = layer(batch)
    assert out.shape == (4, SEQ, 8)
    whole = HubLayer(models["bert"], signature="serving_default", signature_outputs_as_dict=True)
    np.testing.assert_array_equal(whole(batch)["sequence_output"], out)


# -- (d) TF1 and signature-only models ----------------------------------------------------


def test_tf1_model_loads_for_inference_through_signature(models):
    x, _ = _vectors(3)
    layer = HubLayer(models["tf1"], signature="serving_default")
    assert layer.is_tf1
    expected = x @ np.arange(8, dtype="float32").reshape(4, 2)
    model = keras.Sequential([keras.Input((4,)), layer])
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5)


def test_tf1_model_refuses_training(models):
    with pytest.raises(ValueError, match="TF1 format"):
        HubLayer(models["tf1"], signature="serving_default", trainable=True)
    layer = HubLayer(models["tf1"], signature="serving_default")
    model = keras.Sequential([keras.Input((4,)), layer])
    with pytest.raises(ValueError, match="cannot be fine-tuned"):
        layer.trainable = True
    model.trainable = False  # (Keras skips `model.trainable = True` while already True)
    with pytest.raises(ValueError, match="cannot be fine-tuned"):
        model.trainable = True
    assert not layer.trainable
    with pytest.raises(ValueError, match=r"no restored __call__.*serving_default"):
        HubLayer(models["tf1"])


def test_signature_only_model(models):
    with pytest.raises(ValueError, match="no restored __call__"):
        HubLayer(models["sigonly"])
    with pytest.raises(ValueError, match=r"several outputs.*'scores', 'sum'"):
        HubLayer(models["sigonly"], signature="serving_default")
    layer = HubLayer(models["sigonly"], signature="serving_default", output_key="sum")
    x, _ = _vectors(3)
    np.testing.assert_allclose(layer(x), x.sum(axis=1), rtol=1e-5)
    with pytest.raises(ValueError, match="signature"):
        HubLayer(models["sigonly"], signature="serving_default", output_key="sum", trainable=True)


# -- errors ---------------------------------------------------------------------------------


def test_error_messages(models, tmp_path):
    with pytest.raises(ValueError, match=r"expected saved_model.pb"):
        HubLayer(str(tmp_path))
    with pytest.raises(ValueError, match="neither a URL nor an existing directory"):
        HubLayer(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"Unknown signature.*serving_default"):
        HubLayer(models["bert"], signature="nope")
    with pytest.raises(ValueError, match=r"Unknown output_key.*pooled_output"):
        HubLayer(models["bert"], output_key="pooler")
    with pytest.raises(ValueError, match="returns a single tensor"):
        HubLayer(models["vector"], output_key="x")
    with pytest.raises(ValueError, match="not both"):
        HubLayer(models["bert"], signature="serving_default", output_key="pooled_output",
                 signature_outputs_as_dict=True)
    with pytest.raises(TypeError, match="trainable"):
        HubLayer(models["vector"], trainable="yes")
    layer = HubLayer(models["bert"])
    with pytest.raises(ValueError, match=r"Missing inputs.*input_word_ids"):
        layer({"input_word_ids": np.zeros((1, SEQ), "int32")})


def test_url_offline_fails_fast_without_download(monkeypatch):
    def unreachable(address, timeout=None):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    url = "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5"
    with pytest.raises(NetworkUnavailableError, match=r"tfhub.dev.*tfhub:/path/to"):
        HubLayer(url)
    with pytest.raises(NetworkUnavailableError):
        tfft.load_backbone("tfhub:mobilenet_v2_100_224_feature_vector")


# -- the tfhub: backbone source --------------------------------------------------------------


def test_load_backbone_from_local_path(models, no_network):
    backbone = tfft.load_backbone(f"tfhub:{models['bert']}", output_key="pooled_output")
    assert isinstance(backbone, tfft.Backbone)
    assert backbone.info.source == "tfhub" and backbone.info.offline
    assert backbone.info.feature_dim == 8 and backbone.info.mask_key == "input_mask"
    assert backbone.info.modality == "text"
    assert backbone.model.count_params() == backbone.info.params == 20 * 8 + 2 * 8 + 2 * 64
    out = backbone.model(_bert_batch())
    assert out.shape == (4, 8)

    vector = tf_hub.load(models["vector"])
    assert vector.info.feature_dim == 6 and vector.info.input_size == 4
    image = tf_hub.load(models["image"])
    assert image.info.modality == "image" and image.info.family == "cnn"
    assert image.info.input_size == (8, 8) and image.info.feature_dim == 4
    assert image.model.input_shape == (None, 8, 8, 3)
    strings = tf_hub.load(models["strings"])
    assert strings.model(tf.constant(["good"])).shape == (1, 3)


def test_known_backbones_catalogue():
    infos = tf_hub.known_backbones()
    by_name = {i.name: i for i in infos}
    assert {"bert_en_uncased_L-12_H-768_A-12", "mobilenet_v2_100_224_feature_vector",
            "efficientnet_b0_feature_vector", "universal_sentence_encoder"} <= set(by_name)
    bert = by_name["bert_en_uncased_L-12_H-768_A-12"]
    assert "bert_en_uncased_preprocess" in bert.preprocessing and bert.feature_dim == 768
    for info in infos:
        assert info.spec.startswith("tfhub:https://") and not info.offline
        assert tfft.backbones.parse_spec(info.spec)[0] == "tfhub"
    assert set(by_name) <= {i.name for i in tfft.list_backbones(source="tfhub")}


# -- hub.KerasLayer in Keras 3, for the record ---------------------------------------------


def test_hub_keras_layer_is_rejected_by_keras3_while_hub_layer_works(models):
    """Documents why HubLayer exists: `tensorflow_hub.KerasLayer` is a tf_keras
    (Keras 2) layer, which Keras 3 models refuse (tensorflow/hub#903)."""
    hub = pytest.importorskip("tensorflow_hub")
    with pytest.raises((TypeError, ValueError), match=r"Only instances of `keras.Layer`"):
        keras.Sequential([keras.Input((4,)), hub.KerasLayer(models["vector"])])
    inputs = keras.Input((4,))
    with pytest.raises((TypeError, ValueError), match="KerasTensor"):
        hub.KerasLayer(models["vector"])(inputs)
    model = keras.Sequential([keras.Input((4,)), HubLayer(models["vector"])])
    assert model.output_shape == (None, 6)
