"""Local KerasHub image folders (issue 25 item 7): preprocessor, family, blocks, input size."""

import itertools
import json

import keras
import numpy as np
import pytest

import tfft
from tfft.backbones import keras_hub as keras_hub_source

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NUM_LAYERS = 3


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory):
    """A tiny random DINOv2 saved as a KerasHub preset, with its image converter."""
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=4, num_layers=NUM_LAYERS, hidden_dim=8, num_heads=2, intermediate_dim=16,
        image_shape=(32, 32, 3), position_embedding_shape=(64, 64, 3),
    )
    folder = tmp_path_factory.mktemp("presets") / "tiny_dinov2"
    backbone.save_to_preset(str(folder))
    keras_hub.layers.DINOV2ImageConverter(
        image_size=(32, 32), scale=[1 / (255 * s) for s in STD],
        offset=[-m / s for m, s in zip(MEAN, STD, strict=True)],
    ).save_to_preset(str(folder))
    return str(folder)


def test_a_local_dinov2_folder_is_a_vit_with_blocks_size_and_image_preprocessor(
        dinov2_folder, assert_step_changes_only_trainable):
    task = tfft.build_model(f"keras_hub:{dinov2_folder}", task="multiclass", num_classes=2,
                            freeze="top_k:1", image_size=24, compile=False)
    info = task.backbone_info
    assert (info.modality, info.family, info.input_size) == ("image", "vit", (24, 24))
    # The asked size, not the 32 px of the saved config.
    assert tuple(task.backbone.input.shape[1:]) == (24, 24, 3)
    with open(f"{dinov2_folder}/config.json") as f:
        assert len(task.backbone_layer.block_names) == json.load(f)["config"]["num_layers"]

    # top_k:1: the last transformer block, the final norm above it and the head train.
    trainable = {w.path for w in task.trainable_weights}
    inner = task.backbone_layer.backbone
    encoder_blocks = {name: [w.path for w in layer.weights]
                      for name, layer in ((lay.name, lay) for lay in
                                          tfft.utils.walk.walk_layers(inner, nested=False))
                      if name.startswith("layers_")}
    assert sorted(encoder_blocks) == ["layers_0", "layers_1", "layers_2"]
    assert set(encoder_blocks["layers_2"]) <= trainable
    assert not trainable & set(encoder_blocks["layers_0"] + encoder_blocks["layers_1"])
    backbone_trainable = {p for p in trainable if not p.startswith("head/")}
    assert backbone_trainable - set(encoder_blocks["layers_2"]) == {
        w.path for w in inner.weights if "layernorm" in w.path}
    assert any(p.startswith("head/") for p in trainable)

    # Raw 0-255 images of any size: resized to 24 px and normalised as the converter says.
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 30, 3)).astype("uint8")
    probabilities = task.predict(images, verbose=0)
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    # The freeze flags hold in training: one step moves exactly the trainable weights.
    task.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    assert_step_changes_only_trainable(task, task.preprocess(images), np.array([0, 1, 0]))
    red = np.asarray(task.preprocessor(np.full((1, 50, 50, 3), [255, 0, 0], "uint8")))
    assert red.shape == (1, 24, 24, 3)
    np.testing.assert_allclose(red[0, 0, 0], [(1 - MEAN[0]) / STD[0], -MEAN[1] / STD[1],
                                              -MEAN[2] / STD[2]], rtol=1e-5)


def test_image_folder_without_a_recorded_normalisation_asks_for_preprocessor(tmp_path):
    import keras_hub

    keras_hub.models.DINOV2Backbone(
        patch_size=4, num_layers=1, hidden_dim=8, num_heads=2, intermediate_dim=16,
        image_shape=(16, 16, 3), position_embedding_shape=(16, 16, 3),
    ).save_to_preset(str(tmp_path))
    with pytest.raises(ValueError, match=r"records no image normalisation.*preprocessor="):
        tfft.load_backbone(f"keras_hub:{tmp_path}")
    pre = tfft.ImagePreprocessor((16, 16), **tfft.layers.NORMALISATIONS["tf"])
    backbone = tfft.load_backbone(f"keras_hub:{tmp_path}", preprocessor=pre)
    assert backbone.preprocessor is pre and backbone.info.family == "vit"


def test_image_size_on_a_text_preset_is_refused():
    with pytest.raises(ValueError, match="image_size applies to image backbones"):
        tfft.load_backbone("minilm", image_size=224)


def test_hugging_face_preprocessor_config_sets_the_normalisation():
    config = {"do_normalize": True, "do_rescale": True, "rescale_factor": 1 / 255,
              "image_mean": list(MEAN), "image_std": list(STD), "resample": 3,
              "do_center_crop": True, "crop_size": {"height": 224, "width": 224}}
    pre = keras_hub_source.image_preprocessor_from_hf_config(config, (8, 8))
    grey = np.asarray(pre(np.full((1, 16, 12, 3), 128, "uint8")))[0, 0, 0]
    np.testing.assert_allclose(grey, [(128 / 255 - m) / s for m, s in zip(MEAN, STD,
                                                                           strict=True)],
                               rtol=1e-4)
    assert pre.interpolation == "bicubic" and pre.crop_to_aspect_ratio


def test_a_vit_folder_is_a_vit_and_a_size_its_weights_cannot_take_is_explained(tmp_path):
    import keras_hub

    keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=8, num_layers=1,
                                 num_heads=2, hidden_dim=8, mlp_dim=16).save_to_preset(
        str(tmp_path))
    keras_hub.layers.ViTImageConverter(image_size=(16, 16), scale=1 / 127.5,
                                       offset=-1.0).save_to_preset(str(tmp_path))
    backbone = tfft.load_backbone(f"keras_hub:{tmp_path}")
    assert (backbone.info.family, backbone.info.input_size) == ("vit", (16, 16))
    assert "normalise: tf" in backbone.info.preprocessing
    with pytest.raises(ValueError, match=r"does not load at image_size=24.*ViT's position"):
        tfft.load_backbone(f"keras_hub:{tmp_path}", image_size=24)


def test_top_k_flags_survive_a_keras_reload_weight_by_weight(
        dinov2_folder, tmp_path, assert_step_changes_only_trainable):
    task = tfft.build_model(f"keras_hub:{dinov2_folder}", task="multiclass", num_classes=2,
                            freeze="top_k:1", compile=False)
    trainable = {w.path for w in task.trainable_weights}
    # Weights held directly by a layer that also has sublayers (DINOv2's embeddings).
    frozen = {w.path for w in task.non_trainable_weights}
    assert {p.rsplit("/", 1)[-1] for p in frozen if "embeddings/" in p} >= {
        "cls_token", "mask_token"}
    task.save(tmp_path / "task.keras")
    reloaded = keras.saving.load_model(tmp_path / "task.keras")
    assert {w.path for w in reloaded.trainable_weights} == trainable

    # The flags hold through compile and a training step.
    reloaded.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    assert {w.path for w in reloaded.trainable_weights} == trainable
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype("uint8")
    assert_step_changes_only_trainable(reloaded, reloaded.preprocess(images), np.array([0, 1]))


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    """A tiny random KerasHub ViT preset: its blocks sit in its encoder's `encoder_layers` list."""
    import keras_hub

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("presets") / "tiny_vit"
    keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=8, num_layers=NUM_LAYERS,
                                 num_heads=2, hidden_dim=8, mlp_dim=16).save_to_preset(
        str(folder))
    keras_hub.layers.ViTImageConverter(image_size=(16, 16), scale=1 / 127.5,
                                       offset=-1.0).save_to_preset(str(folder))
    return str(folder)


def test_top_k_reaches_the_blocks_of_a_keras_hub_vit(vit_folder,
                                                     assert_step_changes_only_trainable):
    task = tfft.build_model(f"keras_hub:{vit_folder}", task="multiclass", num_classes=2,
                            freeze="top_k:1", compile=False)
    inner = task.backbone_layer.backbone
    encoder = next(layer for layer in tfft.utils.walk.walk_layers(inner)
                   if type(layer).__name__ == "ViTEncoder")
    blocks = encoder.encoder_layers
    assert task.backbone_layer.block_names == [block.name for block in blocks]
    assert len(blocks) == NUM_LAYERS

    # top_k:1: the last encoder block, the final norm above it and the head train.
    trainable = {w.path for w in task.trainable_weights}
    assert {w.path for w in blocks[-1].weights} <= trainable
    assert not trainable & {w.path for block in blocks[:-1] for w in block.weights}
    backbone_trainable = trainable & {w.path for w in inner.weights}
    assert backbone_trainable - {w.path for w in blocks[-1].weights} == {
        w.path for w in encoder.layer_norm.weights}
    assert trainable - backbone_trainable and all("head" in p for p in
                                                  trainable - backbone_trainable)

    # One training step moves exactly those weights.
    task.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3)).astype("uint8")
    assert_step_changes_only_trainable(task, task.preprocess(images), np.array([0, 1, 0]))

    # Gradual unfreezing opens the same blocks one by one, top first, then the patch embedding.
    stages = tfft.adapt.Gradual().stages(task)
    assert [label for label, _ in stages] == ["head", *[b.name for b in reversed(blocks)], "rest"]
    opened = []
    for _, policy in stages:
        policy.apply(task)
        opened.append({w.path for w in task.trainable_weights})
    assert all(a < b for a, b in itertools.pairwise(opened))
    assert opened[2] - opened[1] == {w.path for w in blocks[-2].weights}


def test_blocks_of_a_keras_hub_vit_are_its_encoder_layers_bottom_to_top(vit_folder):
    backbone = tfft.load_backbone(f"keras_hub:{vit_folder}")
    encoder = next(layer for layer in tfft.utils.walk.walk_layers(backbone.model)
                   if type(layer).__name__ == "ViTEncoder")
    groups = backbone.blocks()
    assert len(groups) == NUM_LAYERS
    # The very layer objects, one per group, in the encoder's order.
    assert all(len(group) == 1 for group in groups)
    assert all(group[0] is block for group, block in zip(groups, encoder.encoder_layers,
                                                         strict=True))


def _sgd_moves(task, images, labels, rate):
    """`{path: (applied step, rate * gradient)}` for one plain SGD step of `task` on raw images."""
    import tensorflow as tf

    x = task.preprocess(images)
    with tf.GradientTape() as tape:
        loss = task.compute_loss(x=x, y=labels, y_pred=task(x, training=True))
    grads = tape.gradient(loss, task.trainable_weights)
    before = [w.numpy().copy() for w in task.trainable_weights]
    task.train_on_batch(images, labels)  # preprocesses images itself
    return {w.path: (b - w.numpy(), rate * tf.convert_to_tensor(g).numpy())
            for w, g, b in zip(task.trainable_weights, grads, before, strict=True)
            if g is not None}  # DINOv2's mask token takes no part


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_layerwise_rates_follow_the_encoder_blocks_of_a_keras_hub_vit(kind, request):
    from tfft.adapt.discriminative import block_depths

    folder = request.getfixturevalue(f"{kind}_folder")
    task = tfft.build_model(f"keras_hub:{folder}", task="multiclass", num_classes=2,
                            freeze="full", dropout=0.0, compile=False)
    inner = task.backbone_layer.backbone
    names = task.backbone_layer.block_names
    by_name = {layer.name: layer for layer in tfft.utils.walk.walk_layers(inner)}
    blocks = [by_name[name] for name in names]
    assert len(blocks) == NUM_LAYERS
    depths = block_depths(task)

    # Each block's weights get their own depth: the top block 1, the bottom one N.
    for index, block in enumerate(blocks):
        assert {depths[w.path] for w in block.weights} == {NUM_LAYERS - index}, block.name
    in_blocks = {w.path for block in blocks for w in block.weights}
    # The patch embedding (class token included) sits below them.
    embedding = next(layer for layer in tfft.utils.walk.walk_layers(inner)
                     if type(layer).__name__ in ("ViTPatchingAndEmbedding", "DINOV2Embedding"))
    assert any("token" in w.path for w in embedding.weights)
    assert {depths[w.path] for w in embedding.weights} == {NUM_LAYERS + 1}
    # What is left of the backbone is the final norm above the top block: depth 1.
    rest = {w.path for w in inner.weights} - in_blocks - {w.path for w in embedding.weights}
    assert rest and all("norm" in p or "/ln/" in p for p in rest)
    assert {depths[p] for p in rest} == {1}
    # The head trains at the full rate.
    outside = {w.path for w in task.weights} - {w.path for w in inner.weights}
    assert outside and {depths[p] for p in outside} == {0}

    # The optimizer gives the bottom block a smaller rate than the top, by decay per block.
    bottom, top = blocks[0].weights[0], blocks[-1].weights[0]
    optimizer = tfft.layerwise_lr(task, 1e-3, decay=0.5)
    assert optimizer.multiplier(bottom) == 0.5 ** NUM_LAYERS < optimizer.multiplier(top) == 0.5
    # One plain SGD step moves each block by its own rate.
    optimizer = tfft.layerwise_lr(task, 0.1, decay=0.5, optimizer="sgd")
    task.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    task.run_eagerly = True
    size = task.backbone_info.input_size
    images = np.random.default_rng(0).integers(0, 256, (4, *size, 3)).astype("uint8")
    moves = _sgd_moves(task, images, np.array([0, 1, 0, 1]), 0.1)
    rates = {factor: float(opt.learning_rate) for factor, opt in optimizer.group_optimizers()}
    assert rates == pytest.approx({0.5 ** d: 0.1 * 0.5 ** d for d in range(NUM_LAYERS + 2)})
    for index, block in enumerate(blocks):
        factor = 0.5 ** (NUM_LAYERS - index)
        for w in block.weights:
            step, full = moves[w.path]
            np.testing.assert_allclose(step, factor * full, rtol=1e-3, atol=1e-7,
                                       err_msg=w.path)
    # Most of the bottom block's weights really moved (attention key biases get no gradient).
    moved = [w for w in blocks[0].weights if np.abs(moves[w.path][0]).max() > 1e-5]
    assert len(moved) > len(blocks[0].weights) / 2
