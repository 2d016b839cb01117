import numpy as np
import pytest

import tfft
from tfft.adapt.freeze import FREEZE_POLICIES, find_backbone_layer, parse_freeze

# Tiny BERT (3 layers, hidden 8, 3 classes): expected trainable parameter counts.
# The BERT pooler ("pooled_dense", 8*8+8 params) never trains: the head pools
# sequence_output itself, so the pooler gets no gradient.
HEAD = 8 * 3 + 3
LAYER = 600  # one transformer layer: attention 4*(8*8+8), 2 norms 2*16, FFN 8*16+16+16*8+8
POOLER = 8 * 8 + 8
CASES = {
    "feature_extraction": lambda total: HEAD,
    "full": lambda total: total - POOLER,
    "top_k:1": lambda total: LAYER + HEAD,
    "top_k:2": lambda total: 2 * LAYER + HEAD,
    "top_k:0": lambda total: HEAD,
    "regex:transformer_layer_1/": lambda total: LAYER + HEAD,
}


@pytest.mark.parametrize("policy", sorted(CASES))
def test_policy_sets_exactly_the_expected_trainable_variables(
        policy, tiny_bert, text_batch, assert_step_changes_only_trainable):
    total = tiny_bert.count_params() + HEAD
    assert tiny_bert.get_layer("transformer_layer_0").count_params() == LAYER
    model = tfft.build_model(tiny_bert, num_classes=3, freeze=policy)
    counts = tfft.trainable_summary(model)
    print(policy, counts)
    assert counts["trainable"] == CASES[policy](total)
    assert counts["trainable"] + counts["frozen"] == total
    assert_step_changes_only_trainable(model, text_batch, np.arange(16) % 3)


def test_every_registered_policy_has_a_string_form():
    for name in FREEZE_POLICIES:
        policy = parse_freeze(name if name not in ("top_k", "regex") else f"{name}:1")
        assert policy.name == name


def test_top_k_follows_blocks_in_order(tiny_bert):
    model = tfft.build_model(tiny_bert, num_classes=3, freeze="top_k:2")
    inner = find_backbone_layer(model).backbone
    flags = {layer.name: layer.trainable for layer in inner.layers}
    assert not flags["transformer_layer_0"]
    assert flags["transformer_layer_1"] and flags["transformer_layer_2"]
    assert not flags["token_embedding"] and not flags["pooled_dense"]


def test_feature_extraction_keeps_batchnorm_statistics(tiny_cnn):
    model = tfft.build_model(tiny_cnn, num_classes=2, freeze="feature_extraction")
    stats = [w for w in model.weights if "moving" in w.path]
    assert stats
    before = [np.array(w.numpy()) for w in stats]
    x = np.random.default_rng(1).uniform(0, 1, (16, 32, 32, 3)).astype("float32") * 5
    model.fit(x, np.arange(16) % 2, epochs=2, batch_size=8, verbose=0)
    for w, b in zip(stats, before, strict=True):
        np.testing.assert_array_equal(w.numpy(), b)


def test_feature_extraction_runs_the_backbone_in_inference_mode(tiny_bert, text_batch):
    model = tfft.build_model(tiny_bert, num_classes=3, freeze="feature_extraction",
                             dropout=0.0)
    a = model(text_batch, training=True)
    b = model(text_batch, training=True)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    tfft.apply_freeze(model, "full")
    c = model(text_batch, training=True)
    assert not np.allclose(c.numpy(), a.numpy()), "dropout should run once unfrozen"


@pytest.mark.parametrize(
    "policy, message",
    [
        ("top_k:9", "top_k asks for 9 blocks but the backbone"),
        ("top_k:x", "needs an integer"),
        ("regex:(", "Invalid regex"),
        ("regex:nomatch_xyz", "matches no backbone weight"),
        ("freeze_all", "Unknown freeze policy"),
        ("full:3", "takes no argument"),
    ],
)
def test_bad_policies_are_rejected_with_the_valid_forms(policy, message, tiny_bert):
    with pytest.raises(ValueError, match=message):
        tfft.build_model(tiny_bert, num_classes=3, freeze=policy)


def test_policy_object_and_string_forms_agree(tiny_bert):
    a = tfft.build_model(tiny_bert, num_classes=3, freeze=tfft.TopK(1), compile=False)
    assert tfft.trainable_summary(a)["trainable"] == LAYER + HEAD
    assert parse_freeze("top_k:1") == tfft.TopK(1)
    assert tfft.TopK(1).to_dict() == {"policy": "top_k", "k": 1}


@pytest.mark.parametrize("policy", ["top_k:1", "regex:transformer_layer_1/", "feature_extraction"])
def test_freeze_state_survives_keras_save_and_load(policy, tiny_bert, text_batch, tmp_path):
    import keras

    model = tfft.build_model(tiny_bert, num_classes=3, freeze=policy)
    before = tfft.trainable_summary(model)
    path = str(tmp_path / "m.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, compile=False)
    assert tfft.trainable_summary(reloaded) == before
    np.testing.assert_allclose(reloaded.predict(text_batch, verbose=0),
                               model.predict(text_batch, verbose=0), atol=1e-6)


@pytest.mark.slow
def test_top_k_finds_blocks_inside_nested_backbones():
    """EfficientNet-Lite0's blocks live in an inner functional model."""
    model = tfft.build_model("offline:efficientnet_lite0", num_classes=2, freeze="top_k:2",
                             compile=False)
    counts = tfft.trainable_summary(model)
    head = 1280 * 2 + 2
    assert head < counts["trainable"] < counts["trainable"] + counts["frozen"]
    backbone = find_backbone_layer(model)
    top = backbone.block_names[-2:]
    top_names = {n for b in top for n in ([b] if isinstance(b, str) else b)}
    for weight in model.trainable_weights:
        if weight.path.split("/")[0] == "head" or "/head/" in weight.path:
            continue
        assert any(name in weight.path for name in top_names), weight.path
