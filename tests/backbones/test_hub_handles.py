"""Which TF Hub handles a saved config may load, and where TF Hub caches downloads.

A `.keras` file names its HubLayer's handle in its config, and loading the file
calls `HubLayer.from_config`: a stranger's file must not make tfft download and
run a SavedModel graph from a host the user never chose. The network is mocked
at its boundary only (`socket.create_connection` for the probe, `urlopen` for
TF Hub's download); everything between runs for real.
"""

import tfft  # noqa: I001  (sets the Keras backend first)

import io
import json
import os
import socket
import tarfile
import urllib.request
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfft.layers import HubLayer, allow_hub_handles
from tfft.layers.hub_layer import ALLOWED_HANDLES_ENV, check_config_handle

HANDLE = "https://tfhub.dev/someone/tiny_vector/1"
X = np.arange(12, dtype="float32").reshape(3, 4) / 10


class _Tiny(tf.Module):
    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.kernel = tf.Variable(rng.normal(size=(4, 2)).astype("float32"), name="kernel")

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    def __call__(self, x):
        return tf.matmul(x, self.kernel)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hub_handles") / "tiny")
    tf.saved_model.save(_Tiny(), path)
    return path


@pytest.fixture(scope="module")
def saved_model_tgz(saved_model):
    """The SavedModel as TF Hub serves it: a .tar.gz of the folder's contents."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in sorted(os.listdir(saved_model)):
            tar.add(os.path.join(saved_model, name), arcname=name)
    return buffer.getvalue()


@pytest.fixture
def network(monkeypatch, saved_model_tgz):
    """Records every connection: the probe's sockets and TF Hub's downloads."""
    calls = {"sockets": [], "downloads": []}

    class _Connection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def create_connection(address, *args, **kwargs):
        calls["sockets"].append(address)
        return _Connection()

    def urlopen(request, *args, **kwargs):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        calls["downloads"].append(url)
        return io.BytesIO(saved_model_tgz)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return calls


@pytest.fixture
def loads(monkeypatch):
    """Records each SavedModel `tf.saved_model.load` opens (and still loads it)."""
    opened = []
    real = tf.saved_model.load

    def load(path, *args, **kwargs):
        opened.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tf.saved_model, "load", load)
    return opened


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No allow-list and no TF Hub cache chosen; tfft's cache in a fresh folder."""
    monkeypatch.delenv(ALLOWED_HANDLES_ENV, raising=False)
    monkeypatch.delenv("TFHUB_CACHE_DIR", raising=False)
    monkeypatch.setenv("TFFT_CACHE_DIR", str(tmp_path / "tfft_cache"))
    return tmp_path / "tfft_cache"


def _keras_file(saved_model, tmp_path, handle):
    """A `.keras` file of a model over `saved_model`, its config then naming `handle`:
    what a stranger's file looks like."""
    model = keras.Sequential([keras.Input((4,)), HubLayer(saved_model), keras.layers.Dense(3)])
    original = str(tmp_path / "original.keras")
    model.save(original)
    path = str(tmp_path / "stranger.keras")
    with zipfile.ZipFile(original) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                hub = [layer for layer in config["config"]["layers"]
                       if layer["class_name"] == "HubLayer"]
                assert hub[0]["config"]["handle"] == saved_model
                hub[0]["config"]["handle"] = handle
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    return path, model.predict(X, verbose=0)


# -- a .keras file naming a remote handle --------------------------------------------


def test_keras_file_with_https_handle_is_refused_without_network(
    saved_model, tmp_path, network, loads, clean_env
):
    path, _ = _keras_file(saved_model, tmp_path, HANDLE)
    loads.clear()
    with pytest.raises(ValueError, match=ALLOWED_HANDLES_ENV) as info:
        keras.saving.load_model(path)
    message = str(info.value)
    # The message says exactly how to allow it, for this handle.
    assert f"allow_hub_handles([{HANDLE!r}])" in message
    assert f"{ALLOWED_HANDLES_ENV}={HANDLE}" in message
    # Nothing was probed, downloaded or loaded.
    assert network == {"sockets": [], "downloads": []}
    assert loads == []
    assert not os.path.exists(clean_env / "tfhub")


def test_keras_file_with_allowed_https_handle_loads_from_the_mocked_hub(
    saved_model, tmp_path, network, clean_env
):
    path, expected = _keras_file(saved_model, tmp_path, HANDLE)
    with allow_hub_handles(["https://tfhub.dev/someone/"]):
        reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded.predict(X, verbose=0), expected, rtol=1e-6)
    layer = reloaded.layers[0]
    assert layer.handle == HANDLE
    # The network guard still probed the host before TF Hub downloaded.
    assert network["sockets"] == [("tfhub.dev", 443)]
    assert [url.split("?")[0] for url in network["downloads"]] == [HANDLE]
    # TF Hub cached the download in tfft's cache, not in the shared /tmp/tfhub_modules.
    cache = os.path.realpath(clean_env / "tfhub")
    assert os.path.realpath(layer.resolved_path).startswith(cache + os.sep)
    assert os.path.exists(os.path.join(layer.resolved_path, "saved_model.pb"))
    # ... without leaving TFHUB_CACHE_DIR set for the rest of the process.
    assert "TFHUB_CACHE_DIR" not in os.environ
    # The allowance ended with the block.
    with pytest.raises(ValueError, match="allow_hub_handles"):
        keras.saving.load_model(path)


def test_environment_setting_allows_a_handle(
    saved_model, tmp_path, network, clean_env, monkeypatch
):
    path, expected = _keras_file(saved_model, tmp_path, HANDLE)
    monkeypatch.setenv(ALLOWED_HANDLES_ENV, "gs://other-bucket, https://tfhub.dev/someone")
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded.predict(X, verbose=0), expected, rtol=1e-6)
    assert [url.split("?")[0] for url in network["downloads"]] == [HANDLE]


def test_user_tfhub_cache_dir_is_respected(saved_model, network, clean_env, monkeypatch,
                                           tmp_path):
    mine = tmp_path / "my_tfhub_cache"
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(mine))
    layer = HubLayer(HANDLE)  # built directly in Python: no allow-list needed
    assert os.path.realpath(layer.resolved_path).startswith(os.path.realpath(mine) + os.sep)
    assert not os.path.exists(clean_env / "tfhub")
    assert os.environ["TFHUB_CACHE_DIR"] == str(mine)


@pytest.mark.parametrize(
    ("allowed", "handle"),
    [
        # Another host whose name starts like the allowed one.
        ("https://tfhub.dev", "https://tfhub.dev.evil.example/m/1"),
        # Userinfo that reads like the allowed host; the request goes to evil.example.
        ("https://tfhub.dev", "https://tfhub.dev@evil.example/m/1"),
        # A sibling folder whose name starts like the allowed one.
        ("https://tfhub.dev/google", "https://tfhub.dev/googleevil/m/1"),
        # Climbing out of the allowed folder, plainly or percent-encoded.
        ("https://tfhub.dev/google/", "https://tfhub.dev/google/../evil/m/1"),
        ("https://tfhub.dev/google/", "https://tfhub.dev/google/%2e%2e/evil/m/1"),
        ("https://tfhub.dev/google/", "https://tfhub.dev/google/x%2F..%2F..%2Fevil/m"),
        # Another port, another scheme, another bucket.
        ("https://tfhub.dev", "https://tfhub.dev:8443/google/m/1"),
        ("https://storage.googleapis.com/b", "gs://b/m"),
        ("gs://bucket", "gs://bucket-evil/m"),
    ],
)
def test_allow_list_prefixes_do_not_match_lookalikes(
    saved_model, allowed, handle, network, loads, clean_env
):
    config = HubLayer(saved_model).get_config()
    loads.clear()
    with allow_hub_handles([allowed]), pytest.raises(ValueError, match="saved config"):
        HubLayer.from_config({**config, "handle": handle})
    assert network == {"sockets": [], "downloads": []} and loads == []


@pytest.mark.parametrize(
    ("allowed", "handle"),
    [
        ("https://tfhub.dev/google", "https://tfhub.dev/google/imagenet/x/5"),
        ("https://tfhub.dev/google/", "https://TFHUB.dev:443/google/x/5?tf-hub-format=compressed"),
        ("https://tfhub.dev/google/x/5", "https://tfhub.dev/google/x/5"),
        ("gs://bucket", "gs://bucket/models/m.tar.gz"),
    ],
)
def test_allow_list_prefixes_match_their_handles(allowed, handle, clean_env):
    """The other side of the look-alike cases: the matcher is not a blanket refusal."""
    with pytest.raises(ValueError, match="no allowed prefix matches"):
        check_config_handle(handle)
    with allow_hub_handles(allowed):
        check_config_handle(handle)
    with pytest.raises(ValueError, match="no allowed prefix matches"):
        check_config_handle(handle)


# -- plain http:// ----------------------------------------------------------------------


def test_http_handle_is_refused_in_python_and_in_configs(
    saved_model, tmp_path, network, loads, clean_env, monkeypatch
):
    url = "http://tfhub.dev/someone/tiny_vector/1"
    with pytest.raises(ValueError, match=r"http://.*https://") as info:
        HubLayer(url)
    assert "https://tfhub.dev/someone/tiny_vector/1" in str(info.value)
    path, _ = _keras_file(saved_model, tmp_path, url)
    loads.clear()
    # Even a prefix that would match it, through either route, does not let it in.
    monkeypatch.setenv(ALLOWED_HANDLES_ENV, "https://tfhub.dev")
    with allow_hub_handles(["https://tfhub.dev"]), pytest.raises(ValueError, match="https://"):
        keras.saving.load_model(path)
    with pytest.raises(ValueError, match="http://"), allow_hub_handles(["http://tfhub.dev"]):
        pass
    monkeypatch.setenv(ALLOWED_HANDLES_ENV, "http://tfhub.dev")
    with pytest.raises(ValueError, match=f"{ALLOWED_HANDLES_ENV}.*never allowed"):
        HubLayer.from_config({"handle": HANDLE})
    assert network == {"sockets": [], "downloads": []} and loads == []


def test_bad_allow_list_entries_are_refused_clearly(clean_env, monkeypatch):
    with pytest.raises(TypeError, match="prefixes"), allow_hub_handles([3]):
        pass
    for prefix in ("tfhub.dev/google", "https://", "file:///models", "https://h/a/../b"):
        with pytest.raises(ValueError, match="Expected https://"), allow_hub_handles([prefix]):
            pass
    monkeypatch.setenv(ALLOWED_HANDLES_ENV, "tfhub.dev/google")
    with pytest.raises(ValueError, match=f"{ALLOWED_HANDLES_ENV}.*Expected https://"):
        HubLayer.from_config({"handle": HANDLE})


# -- local SavedModels in configs ----------------------------------------------------------


def test_keras_file_with_local_savedmodel_loads_without_allowing(
    saved_model, tmp_path, network, clean_env
):
    model = keras.Sequential([keras.Input((4,)), HubLayer(saved_model), keras.layers.Dense(3)])
    path = str(tmp_path / "local.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        reloaded.predict(X, verbose=0), model.predict(X, verbose=0), rtol=1e-6
    )
    assert network == {"sockets": [], "downloads": []}


def test_direct_https_construction_needs_no_allow_list(network, clean_env):
    layer = HubLayer(HANDLE)
    assert tuple(layer(X).shape) == (3, 2)
    assert network["sockets"] == [("tfhub.dev", 443)]


def test_tfhub_backbone_url_caches_in_tfft_cache(network, clean_env):
    backbone = tfft.load_backbone(f"tfhub:{HANDLE}")
    layer = next(layer for layer in backbone.model._flatten_layers()
                 if isinstance(layer, HubLayer))
    cache = os.path.realpath(clean_env / "tfhub")
    assert os.path.realpath(layer.resolved_path).startswith(cache + os.sep)
    assert not backbone.info.offline and "TFHUB_CACHE_DIR" not in os.environ
    np.testing.assert_allclose(backbone.model(X), X @ _Tiny().kernel.numpy(), rtol=1e-5)


@pytest.mark.parametrize("handle", ["s3://bucket/model", "hdfs://namenode/model",
                                    "ram://model", "file:///etc/model"])
def test_other_file_system_schemes_in_a_config_are_refused(handle, monkeypatch):
    """Only local directories and allowed https/gs handles load from a saved config."""
    loads = []
    monkeypatch.setattr(tf.saved_model, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(ValueError, match="only local SavedModel directories"):
        HubLayer.from_config({"handle": handle, "name": "hub"})
    assert loads == []
