"""`tfft.few_shot_fit` on a tiny random BERT: pairs, losses, freeze policies, prompts, errors.

The real MiniLM on BBC News is in test_few_shot_real.py.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfft
from tfft.prompting import build_zero_shot_model
from tfft.prompting.few_shot import (
    check_few_shot_data,
    contrastive_loss,
    embed,
    few_shot_fit,
    make_pairs,
    sample_shots,
)

SPORT = ["the team won the match", "a game for the team", "win the match", "sport news team",
         "the game and the win"]
MONEY = ["the market and shares", "bank profit fell", "shares in the bank", "market profit news",
         "the bank and the market"]
TEXTS = SPORT + MONEY
LABELS = [0] * 5 + [1] * 5
NAMES = ["sport", "money"]


def _fit(backbone, **kwargs):
    # interpolation=1 keeps the tuned encoder: the training itself is under test here;
    # test_interpolation_... checks the move back toward the pretrained weights.
    options = dict(class_names=NAMES, num_pairs=90, batch_size=6, epochs=5,
                   learning_rate=1e-2, head_epochs=50, interpolation=1.0, verbose=0)
    options.update(kwargs)
    return few_shot_fit(backbone, TEXTS, LABELS, **options)


def _pair_margin(task):
    """Mean cosine of same-class pairs minus that of different-class pairs."""
    emb = embed(task, TEXTS)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = emb @ emb.T
    y = np.asarray(LABELS)
    same = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
    return cos[same].mean() - cos[y[:, None] != y[None, :]].mean()


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("texts, labels, names, message", [
    (["a b", "c d", "e f"], ["x", "x", "y"], None,
     "Class 'y' has 1 example; few-shot fitting needs at least 2 per class"),
    (["a", "b", "c", "d"], [0, 0, 0, 0], ["sport", "money"],
     "only class 'sport' has any (4 examples)"),
    (["a", "b", "c"], [0, 0, 1], ["sport", "money", "arts"], "Class 'money' has 1 example"),
    (["a", "b", "c", "d"], [0, 0, 1, 1], ["sport", "money", "arts"],
     "Class 'arts' has 0 examples"),
    ([], [], None, "Received: no texts"),
    (["a", "  ", "c", "d"], [0, 0, 1, 1], None, "texts[1] is empty (label 0)"),
    (["a", "b"], [0], None, "2 texts and 1 labels"),
    (["a", "b", "c", "d"], [0, 0, 1, 5], ["x", "y"], "Received: [5]"),
    # Refused before classes 0..99999998 are named (that took minutes and GBs).
    (["a", "b", "c", "d"], [0, 0, 1, 99999999], None,
     "Label ids go up to 99999999 for 4 examples"),
])
def test_bad_data_is_named(texts, labels, names, message):
    with pytest.raises(ValueError) as error:
        check_few_shot_data(texts, labels, names)
    assert message in str(error.value)


def test_bad_settings_are_named(tiny_text_preprocessor):
    tiny_text_backbone = _new_backbone(tiny_text_preprocessor)
    for kwargs, message in [
        (dict(loss="triplet"), "Unknown contrastive loss"),
        (dict(pair_sampling="hard"), "Unknown pair sampling"),
        (dict(epochs=-1), "epochs must be an int >= 0"),
        (dict(learning_rate=0.0), "learning_rate must be a positive number"),
        (dict(interpolation=1.5), r"interpolation must be a number in \[0, 1\]"),
        (dict(freeze="feature_extraction"), "leaves no encoder weight trainable"),
    ]:
        with pytest.raises(ValueError, match=message):
            _fit(tiny_text_backbone, **kwargs)
    with pytest.raises(TypeError, match="not one str"):
        few_shot_fit(tiny_text_backbone, "one text", [0])


def test_a_task_with_another_class_count_is_refused(tiny_text_preprocessor):
    task = tfft.build_model(_new_backbone(tiny_text_preprocessor), num_classes=3)
    with pytest.raises(ValueError, match="head has 3 classes but the labels name 2"):
        _fit(task)


# -- pairs and losses --------------------------------------------------------------------


def test_balanced_pairs_are_half_positive_and_follow_the_seed():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pairs = make_pairs(labels, 200, "balanced", seed=3)
    assert pairs.shape == (200, 3)
    assert np.all(pairs[:, 0] != pairs[:, 1])
    np.testing.assert_array_equal(pairs[:, 2], labels[pairs[:, 0]] == labels[pairs[:, 1]])
    assert pairs[:, 2].mean() == 0.5
    # Every example anchors as many pairs (up to one round).
    counts = np.bincount(pairs[:, 0], minlength=len(labels))
    assert counts.max() - counts.min() <= 2
    np.testing.assert_array_equal(pairs, make_pairs(labels, 200, "balanced", seed=3))
    assert not np.array_equal(pairs, make_pairs(labels, 200, "balanced", seed=4))
    random = make_pairs(labels, 500, "random", seed=0)
    assert np.all(random[:, 0] != random[:, 1])
    np.testing.assert_array_equal(random[:, 2], labels[random[:, 0]] == labels[random[:, 1]])
    assert len(make_pairs(labels)) == 40 * len(labels)


def test_sample_shots_takes_k_per_class_and_follows_the_seed():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 20)
    picked = sample_shots(labels, 5, seed=1)
    np.testing.assert_array_equal(np.bincount(labels[picked]), [5, 3, 5])
    np.testing.assert_array_equal(picked, sample_shots(labels, 5, seed=1))
    assert not np.array_equal(picked, sample_shots(labels, 5, seed=2))


def test_cosent_and_cosine_mse_equal_their_definitions():
    cos = np.array([0.9, 0.2, 0.5, -0.1, 0.7], dtype=np.float32)
    same = np.array([1, 0, 1, 0, 0], dtype=np.float32)
    terms = [20.0 * (cos[q] - cos[p]) for p in range(5) for q in range(5)
             if same[p] == 1 and same[q] == 0]
    want = np.log(1.0 + np.sum(np.exp(terms)))
    got = float(contrastive_loss(tf.constant(cos), tf.constant(same), "cosent"))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    got = float(contrastive_loss(tf.constant(cos), tf.constant(same), "cosine_mse"))
    np.testing.assert_allclose(got, np.mean((cos - same) ** 2), rtol=1e-6)
    # Positives ranked above every negative by a wide margin: CoSENT near 0.
    ranked = np.where(same == 1, 0.9, -0.9).astype(np.float32)
    assert float(contrastive_loss(tf.constant(ranked), tf.constant(same))) < 1e-6


# -- training --------------------------------------------------------------------------


def _new_backbone(preprocessor, seed=0):
    """A tiny random 2-layer BERT (same weights for the same seed) with a real tokenizer."""
    import keras_hub

    keras.utils.set_random_seed(seed)
    model = keras_hub.models.BertBackbone(
        vocabulary_size=preprocessor.tokenizer.vocabulary_size(), num_layers=2, num_heads=2,
        hidden_dim=8, intermediate_dim=16, max_sequence_length=16,
    )
    backbone = tfft.load_backbone(model)
    backbone.preprocessor = preprocessor
    return backbone


def _weights(model):
    return {w.path: np.array(w.numpy()) for w in model.weights}


@pytest.fixture(scope="module")
def fitted(tiny_text_preprocessor):
    """One few-shot fit (in-batch pairs, CoSENT, full policy) and the weights it started from."""
    backbone = _new_backbone(tiny_text_preprocessor)
    before = _weights(backbone.model)
    margin = _pair_margin(tfft.build_model(backbone, num_classes=2, normalize_features=True))
    task = _fit(backbone, seed=5)
    return task, before, margin


def test_contrastive_training_pulls_classes_apart(fitted):
    task, _, before = fitted
    after = _pair_margin(task)
    assert after > before + 0.2, (before, after)
    predicted = task.predict(TEXTS, verbose=0).argmax(-1)
    assert np.mean(predicted == np.asarray(LABELS)) == 1.0
    assert task.class_names == NAMES


def test_explicit_balanced_pairs_with_cosine_mse_also_pull_apart(tiny_text_preprocessor):
    backbone = _new_backbone(tiny_text_preprocessor)
    before = _pair_margin(tfft.build_model(backbone, num_classes=2, normalize_features=True))
    task = _fit(backbone, pair_sampling="balanced", loss="cosine_mse", num_pairs=60,
                batch_size=12)
    assert _pair_margin(task) > before + 0.2


def test_full_policy_moves_every_used_encoder_weight(fitted):
    task, before, _ = fitted
    after = _weights(task.backbone)
    # Mean pooling leaves the pooler without gradient; every transformer block weight and
    # the token embeddings move.
    moved = {p for p in before if not np.array_equal(before[p], after[p])}
    blocks = {p for p in before if "transformer_layer" in p}
    assert blocks and blocks <= moved, sorted(blocks - moved)[:5]
    assert any("token_embedding" in p for p in moved)
    assert task.freeze_policy == tfft.Full()


def test_same_seed_same_task(fitted, tiny_text_preprocessor):
    task, _, _ = fitted
    again = _fit(_new_backbone(tiny_text_preprocessor), seed=5)
    probe = ["the team and the bank", "market news"]
    np.testing.assert_allclose(task.predict(probe, verbose=0), again.predict(probe, verbose=0),
                               atol=1e-6)
    for (path, a), b in zip(_weights(task.backbone).items(), again.backbone.weights,
                            strict=True):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-6, err_msg=path)


def test_interpolation_puts_the_encoder_halfway_between_pretrained_and_tuned(
        fitted, tiny_text_preprocessor):
    tuned, pretrained, _ = fitted
    task = _fit(_new_backbone(tiny_text_preprocessor), seed=5, interpolation=0.5)
    half, tuned = _weights(task.backbone), _weights(tuned.backbone)
    moved = [p for p in pretrained if not np.array_equal(pretrained[p], tuned[p])]
    assert len(moved) > 10
    for path in pretrained:
        np.testing.assert_allclose(half[path], (pretrained[path] + tuned[path]) / 2,
                                   atol=1e-6, err_msg=path)


def test_top_k_policy_moves_only_the_top_block(tiny_text_preprocessor):
    backbone = _new_backbone(tiny_text_preprocessor)
    before = _weights(backbone.model)
    task = _fit(backbone, freeze="top_k:1")
    after = _weights(backbone.model)
    top = [p for p in before if "transformer_layer_1" in p]
    rest = [p for p in before if "transformer_layer_1" not in p]
    assert top and all(not np.array_equal(before[p], after[p]) for p in top)
    for path in rest:
        np.testing.assert_array_equal(before[path], after[path], err_msg=path)
    assert task.freeze_policy == tfft.TopK(1)


def test_lora_policy_moves_only_the_adapters(tiny_text_preprocessor):
    backbone = _new_backbone(tiny_text_preprocessor)
    before = _weights(backbone.model)
    task = _fit(backbone, freeze="lora:2")
    adapters = tfft.adapt.lora_layers(task.backbone)
    assert adapters and any(np.abs(layer.lora_kernel_b.numpy()).max() > 0
                            for layer in adapters)
    for path, value in _weights(task.backbone).items():
        if path in before:
            np.testing.assert_array_equal(before[path], value, err_msg=path)


def test_prompt_head_without_training_is_the_zero_shot_model(tiny_text_preprocessor):
    template = "the {label} news"
    verbalizer = {"sport": ["sport", "game"], "money": ["market"]}
    task = _fit(_new_backbone(tiny_text_preprocessor), epochs=0, head_epochs=0,
                template=template, verbalizer=verbalizer)
    zero_shot = build_zero_shot_model(_new_backbone(tiny_text_preprocessor), NAMES,
                                      template=template, verbalizer=verbalizer)
    inputs = task.preprocess(np.asarray(TEXTS, dtype=object))
    np.testing.assert_allclose(task.predict(TEXTS, verbose=0),
                               zero_shot.predict(inputs, verbose=0), atol=1e-5)


def test_epochs_zero_is_a_probe_that_leaves_the_encoder(tiny_text_preprocessor):
    backbone = _new_backbone(tiny_text_preprocessor)
    before = _weights(backbone.model)
    zero_shot = _fit(backbone, epochs=0, head_epochs=0, template="{label}")
    start = keras.losses.sparse_categorical_crossentropy(
        np.asarray(LABELS), zero_shot.predict(TEXTS, verbose=0)).numpy().mean()
    task = _fit(backbone, epochs=0, template="{label}")
    for path, value in _weights(task.backbone).items():
        np.testing.assert_array_equal(before[path], value, err_msg=path)
    assert task.freeze_policy == tfft.FeatureExtraction()
    # The head trained on the frozen embeddings, from the zero-shot head.
    end = keras.losses.sparse_categorical_crossentropy(
        np.asarray(LABELS), task.predict(TEXTS, verbose=0)).numpy().mean()
    assert end < start - 0.05, (start, end)


def test_fitted_task_evaluates_saves_and_reloads(fitted, assert_round_trip):
    task, _, _ = fitted
    results = task.evaluate(TEXTS, np.asarray(LABELS), verbose=0, return_dict=True)
    assert results["sparse_categorical_accuracy"] == 1.0
    assert_round_trip(task, np.asarray(TEXTS, dtype=object), atol=1e-5)


def test_a_task_passed_in_is_fitted_in_place(tiny_text_preprocessor):
    task = tfft.build_model(_new_backbone(tiny_text_preprocessor), num_classes=2,
                            normalize_features=True, class_names=NAMES)
    before = _weights(task.backbone)
    assert _fit(task, epochs=1) is task
    assert any(not np.array_equal(before[w.path], w.numpy()) for w in task.backbone.weights)
