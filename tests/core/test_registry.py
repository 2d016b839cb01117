import socket

import keras
import numpy as np
import pytest

import tfft
from tfft.backbones import NetworkUnavailableError, parse_spec


@pytest.mark.parametrize("spec", ["does-not-exist", "nosuchsource:x", "keras_hub:", ":x", ""])
def test_malformed_specs_list_the_valid_forms(spec):
    with pytest.raises(ValueError, match="keras_hub:<preset name") as info:
        tfft.load_backbone(spec)
    assert repr(spec.strip()) in str(info.value)


def test_non_string_spec_is_a_type_error():
    with pytest.raises(TypeError, match=r"must be a string or a keras\.Model"):
        tfft.load_backbone(42)


def test_aliases_resolve_to_the_offline_minilm():
    assert parse_spec("minilm") == ("keras_hub", "all_minilm_l6_v2")
    assert parse_spec(" keras_hub:bert_base_en_uncased ") == ("keras_hub", "bert_base_en_uncased")


def test_online_preset_fails_fast_offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(NetworkUnavailableError, match="keras_hub:/path/to/preset_dir"):
        tfft.load_backbone("keras_hub:bert_base_en_uncased")


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"expected a config\.json"):
        tfft.load_backbone(f"keras_hub:{tmp_path}")


def test_missing_local_directory_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        tfft.load_backbone(f"keras_hub:{tmp_path}/nothing/here")


def test_list_backbones_has_metadata():
    infos = tfft.list_backbones(modality="text")
    names = {i.name for i in infos}
    assert "all_minilm_l6_v2" in names
    minilm = next(i for i in infos if i.name == "all_minilm_l6_v2")
    assert minilm.params == 22_713_216 and minilm.feature_dim == 384 and minilm.offline
    assert all(i.modality == "text" for i in infos)
    assert set(minilm.to_dict()) >= {"modality", "params", "input_size", "preprocessing",
                                     "feature_dim", "source"}


def test_keras_model_object_is_wrapped(tiny_bert):
    backbone = tfft.load_backbone(tiny_bert)
    assert backbone.info.source == "model"
    assert backbone.info.output_key == "sequence_output"
    assert backbone.info.mask_key == "padding_mask"
    assert [b[0].name for b in backbone.blocks()] == [
        "transformer_layer_0", "transformer_layer_1", "transformer_layer_2"
    ]


@pytest.mark.slow
def test_offline_minilm_is_a_first_class_backbone(minilm):
    assert minilm.info.offline and minilm.info.feature_dim == 384
    assert len(minilm.blocks()) == 6
    tokens = minilm.preprocessor(np.array(["Shares rose on the stock market."]))
    out = minilm.model(tokens)["sequence_output"]
    assert out.shape == (1, 64, 384)
    assert np.isfinite(keras.ops.convert_to_numpy(out)).all()


def test_a_users_keras_applications_cnn_gets_its_stages_as_blocks(tiny_cnn):
    backbone = tfft.load_backbone(tiny_cnn)
    assert backbone.modality == "image"
    blocks = backbone.blocks()
    assert len(blocks) >= 10
    assert blocks[-1][-1].name in {layer.name for layer in tiny_cnn.layers}


def test_a_misspelt_keras_hub_preset_is_unknown_not_offline(monkeypatch):
    """Issue 25 item 8: KerasHub's preset index tells a typo from a missing network."""
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(ValueError) as info:
        tfft.load_backbone("keras_hub:all_minilm_l6_v3")
    message = str(info.value)
    assert not isinstance(info.value, NetworkUnavailableError)
    assert "Unknown KerasHub preset 'all_minilm_l6_v3'" in message
    assert "'all_minilm_l6_v2'" in message and "unreachable" not in message
    # A name KerasHub knows still reaches the network check.
    with pytest.raises(NetworkUnavailableError, match="unreachable"):
        tfft.load_backbone("keras_hub:bert_tiny_en_uncased")
