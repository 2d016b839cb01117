import keras
import numpy as np
import pytest

import tfft
from tfft.adapt.freeze import find_backbone_layer, parse_freeze
from tfft.adapt.lora import LoRA, has_lora, lora_layers, lora_targets, merge_lora

HEAD = 27
LABELS = np.arange(16) % 3
# Per transformer layer at rank r: query/key/value EinsumDense kernels (8, 2, 4) get
# A (8, 2, r) and B (r, 4); attention_output (2, 4, 8): A (2, 4, r), B (r, 8);
# the FFN Dense (8, 16) and (16, 8): A (in, r), B (r, out).
PER_LAYER = {1: 124, 2: 248}
QUERY_VALUE = {4: 2 * (8 * 2 * 4 + 4 * 4)}


def _lora_weights(model):
    return [w for w in model.weights if "lora_kernel" in w.path]


@pytest.mark.parametrize("policy, expected", [
    ("lora:2", HEAD + 3 * PER_LAYER[2]),
    (LoRA(rank=1), HEAD + 3 * PER_LAYER[1]),
    (LoRA(rank=4, target="query|value"), HEAD + 3 * QUERY_VALUE[4]),
])
def test_lora_trains_exactly_the_adapters_and_the_head(
        policy, expected, tiny_bert, text_batch, assert_step_changes_only_trainable):
    model = tfft.build_model(tiny_bert, num_classes=3, freeze=policy)
    model.run_eagerly = True  # which variables move does not depend on tracing
    counts = tfft.trainable_summary(model)
    print(policy, counts)
    assert counts["trainable"] == expected
    trainable = {w.path for w in model.trainable_weights}
    assert trainable == {w.path for w in _lora_weights(model)} | {
        "head/logits/kernel", "head/logits/bias"}
    assert all(not layer._kernel.trainable for layer in lora_layers(model))
    assert not any(layer.path.startswith("pooled_dense") for layer in lora_layers(model))
    # B starts at zero, so the first step cannot move A; from the second on both move.
    model.train_on_batch(text_batch, LABELS)
    assert_step_changes_only_trainable(model, text_batch, LABELS)


def test_lora_string_form_and_builder():
    assert parse_freeze("lora:8") == LoRA(8)
    assert LoRA(4, alpha=8).to_dict() == {"policy": "lora", "rank": 4, "alpha": 8,
                                         "target": None}
    assert tfft.FreezePolicy.from_dict({"policy": "lora", "rank": 4, "target": "query"}) == LoRA(
        4, target="query")


def test_merge_lora_gives_plain_kernels_with_the_same_outputs(tiny_bert, text_batch):
    plain_params = tiny_bert.count_params() + HEAD
    model = tfft.build_model(tiny_bert, num_classes=3, freeze=LoRA(2, alpha=4), compile=False)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    model.run_eagerly = True
    start = model.predict(text_batch, verbose=0)
    for _ in range(3):
        model.train_on_batch(text_batch, LABELS)
    assert all(np.any(w.numpy()) for w in _lora_weights(model))
    want = model.predict(text_batch, verbose=0)
    assert np.abs(want - start).max() > 1e-3, "LoRA training should change the outputs"
    merged = merge_lora(model)
    assert merged is not model and not has_lora(merged) and has_lora(model)
    assert merged.count_params() == plain_params
    assert isinstance(merged, tfft.Task) and merged.backbone is find_backbone_layer(merged).backbone
    assert merged.backbone_info == model.backbone_info
    np.testing.assert_allclose(merged.predict(text_batch, verbose=0), want, atol=1e-5)
    layer = lora_layers(model)[0]
    copy = {w.path: w for w in merged.weights}[layer._kernel.path]
    np.testing.assert_allclose(
        copy.numpy(),
        layer._kernel.numpy() + 2.0 * np.tensordot(layer.lora_kernel_a.numpy(),
                                                   layer.lora_kernel_b.numpy(), axes=1),
        atol=1e-6)
    assert merge_lora(merged) is merged


def test_lora_model_keras_round_trip(tiny_bert, text_batch, assert_round_trip):
    model = tfft.build_model(tiny_bert, num_classes=3, freeze="lora:2", compile=False)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    model.run_eagerly = True
    model.train_on_batch(text_batch, LABELS)
    model.train_on_batch(text_batch, LABELS)
    reloaded = assert_round_trip(model, text_batch, atol=1e-5)
    # KerasHub rebuilds its layers without adapters; the task puts them back, unmerged.
    assert has_lora(reloaded) and reloaded.freeze_policy == LoRA(2)
    for got, want in zip(lora_layers(reloaded), lora_layers(model), strict=True):
        np.testing.assert_array_equal(got.lora_kernel_a.numpy(), want.lora_kernel_a.numpy())
        np.testing.assert_array_equal(got.lora_kernel_b.numpy(), want.lora_kernel_b.numpy())


def _functional_backbone():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="relu", name="block_0")(inputs)
    x = keras.layers.Dense(8, activation="relu", name="block_1")(x)
    model = keras.Model(inputs, x, name="mlp")
    return tfft.load_backbone(model, block_names=["block_0", "block_1"])


def test_lora_on_a_functional_backbone_reloads_and_rearms(tmp_path):
    model = tfft.build_model(_functional_backbone(), num_classes=3, freeze="lora:2",
                             compile=False)
    assert [layer.name for layer in lora_targets(model)] == ["block_0", "block_1"]
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    for _ in range(2):
        model.train_on_batch(x, LABELS)
    path = str(tmp_path / "lora.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)
    # The adapters come back as trained (unmerged), and training can go on.
    layers = lora_layers(reloaded)
    assert len(layers) == 2
    for got, want in zip(layers, lora_layers(model), strict=True):
        np.testing.assert_array_equal(got.lora_kernel_b.numpy(), want.lora_kernel_b.numpy())
    tfft.apply_freeze(reloaded, "lora:2")
    np.testing.assert_array_equal(layers[0].lora_kernel_a.numpy(),
                                  lora_layers(model)[0].lora_kernel_a.numpy())
    assert tfft.trainable_summary(reloaded)["trainable"] == tfft.trainable_summary(model)[
        "trainable"]
    with pytest.raises(ValueError, match="already has LoRA of rank 2"):
        tfft.apply_freeze(reloaded, "lora:4")
    np.testing.assert_allclose(merge_lora(reloaded).predict(x, verbose=0),
                               reloaded.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("policy, message", [
    ("lora:0", "positive int rank"),
    ("lora:x", "needs an integer"),
    (LoRA(2, target="nomatch_xyz"), "No Dense or EinsumDense layer"),
])
def test_bad_lora_policies_are_rejected(policy, message, tiny_bert):
    with pytest.raises(ValueError, match=message):
        tfft.build_model(tiny_bert, num_classes=3, freeze=policy)


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 2.5}, "positive int rank"),
    ({"alpha": -1}, "alpha must be None or > 0"),
    ({"target": "("}, "Invalid LoRA target regex"),
])
def test_bad_lora_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoRA(**kwargs)


@pytest.mark.slow
def test_lora_on_the_real_minilm_trains_and_merges(bbc):
    # A backbone of its own: LoRA changes layers in place, the session `minilm` is shared.
    backbone = tfft.load_backbone("minilm", sequence_length=32)
    model = tfft.build_model(backbone, num_classes=5, freeze="lora:8", compile=False)
    counts = tfft.trainable_summary(model)
    print("minilm lora:8", counts)
    # 6 layers x (4 attention EinsumDense + 2 FFN Dense) at rank 8, plus a 384 x 5 head.
    assert counts["trainable"] == 889_344 + 384 * 5 + 5
    x = backbone.preprocess(np.asarray(bbc.x[:8]))
    y = np.asarray(bbc.y[:8])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    start = model.predict(x, verbose=0)
    for _ in range(2):
        model.train_on_batch(x, y)
    want = model.predict(x, verbose=0)
    assert np.abs(want - start).max() > 1e-4
    merged = merge_lora(model)
    assert not has_lora(merged)
    np.testing.assert_allclose(merged.predict(x, verbose=0), want, atol=1e-5)
