"""Optional parts are extras: each missing one fails with the `pip install "tfft[...]"` line.

The missing module is simulated with `sys.modules[name] = None` (then `import name`
raises ImportError); the network, where a URL needs it, is mocked at the socket probe.
"""

import configparser
import re
import sys
from pathlib import Path

import pytest

import tfft
from tfft import assets
from tfft.backbones import keras_hub, tf_hub
from tfft.data import datasets
from tfft.layers import hub_layer
from tfft.utils import network

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def missing(monkeypatch):
    def hide(*names):
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)
    return hide


def test_hub_url_without_tensorflow_hub_names_the_hub_extra(missing, monkeypatch):
    missing("tensorflow_hub")
    monkeypatch.setattr(network, "_probe", lambda host, port, timeout: None)  # "online"
    with pytest.raises(ImportError, match=re.escape('pip install "tfft[hub]"')):
        hub_layer.resolve_handle("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/"
                                 "feature_vector/5")


def test_keras_cv_backbone_without_keras_cv_names_the_cv_extra(missing):
    missing("keras_cv")
    with pytest.raises(ImportError, match=re.escape('pip install "tfft[cv]"')):
        tfft.load_backbone("keras_cv:MobileNetV3Backbone")


def test_tf_hub_bert_preprocessing_without_tensorflow_text_names_the_text_extra(missing):
    missing("tensorflow_text")
    bert = next(info for info in tf_hub.CATALOG if info.preprocessing.startswith("https://"))
    with pytest.raises(ImportError, match=re.escape('pip install "tfft[text]"')):
        tf_hub._auto_preprocessor(bert)


def test_text_export_without_text_ops_names_the_text_extra(missing):
    missing("tensorflow_text")
    assert keras_hub.register_text_ops() is False
    hint = keras_hub.missing_text_ops_hint(
        RuntimeError("Op type not registered 'RegexSplitWithOffsets' in binary")
    )
    assert 'pip install "tfft[text]"' in hint


def test_lfw_loader_without_scikit_image_names_the_assets_command(missing, monkeypatch):
    missing("skimage")
    # The loader caches the decoded images; load as a first call would.
    monkeypatch.setattr(datasets, "_lfw_subset", datasets._lfw_subset.__wrapped__)
    with pytest.raises(assets.AssetNotFoundError, match="tfft assets install lfw_subset"):
        tfft.data.load_lfw_subset()


def _requirements(text):
    return {re.split(r"[<>=!~ ;\[]", line.strip())[0].lower()
            for line in text.splitlines() if line.strip()}


def test_setup_cfg_lists_true_dependencies_and_extras():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    required = _requirements(config["options"]["install_requires"])
    extras = {name: _requirements(config["options.extras_require"][name])
              for name in config["options.extras_require"]}
    # Never imported by tfft: not a dependency.
    assert not required & {"tqdm", "keras-nlp"}
    # tf.summary writes nothing without it: tfft.default_callbacks' TensorBoard logs need it.
    assert "tensorboard" in required
    # Optional parts live in extras only.
    assert extras["hub"] == {"tensorflow-hub", "tf-keras"}
    assert extras["cv"] == {"keras-cv"}
    assert extras["text"] == {"tensorflow-text"}
    assert not required & (extras["hub"] | extras["cv"] | extras["text"])
    # ReaderField.contents() arrived in gguf 0.16.
    assert "gguf>=0.16" in config["options"]["install_requires"]
    # The benchmarks' PyTorch + transformers peer is never imported by tfft.
    assert extras["bench"] == {"torch", "transformers"}
    assert not required & extras["bench"]
    # make installs every extra but the benchmarks' peer (a 3 GB download no test needs).
    makefile = (ROOT / "Makefile").read_text()
    make_extras = set(re.search(r"^EXTRAS := (.+)$", makefile, re.M).group(1).split(","))
    assert make_extras == set(extras) - {"bench"}
