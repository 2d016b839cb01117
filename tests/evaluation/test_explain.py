"""Attributions on tiny models whose right answers are known."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfft
from tfft.evaluation import Explanation, explain, load_keras_source

TEXTS = ["the team win the match", "shares in the bank rose", "film star award for music"]


@pytest.fixture
def text_task(tiny_text_backbone):
    return tfft.build_model(tiny_text_backbone, task="multiclass", num_classes=3,
                            class_names=["sport", "business", "arts"])


def _cut_at_embeddings(task, text):
    """`score(embeddings batch)` of the sport class, from Keras' functional API alone."""
    backbone = task.backbone
    embedding = backbone.get_layer("token_embedding")
    rest = keras.Model([embedding.output, backbone.input["padding_mask"],
                        backbone.input["segment_ids"]], backbone.output)
    features = task.preprocessor(np.array([text], dtype=object))

    def score(embeddings):
        n = len(embeddings)
        mask = np.repeat(np.asarray(features["padding_mask"]), n, axis=0)
        segments = np.repeat(np.asarray(features["segment_ids"]), n, axis=0)
        out = rest([embeddings, mask, segments])
        return np.asarray(task.head(task.pooling(out["sequence_output"], mask=mask)))[:, 0]

    return score, embedding, np.asarray(features["token_ids"])[0]


def test_integrated_gradients_are_complete_and_match_finite_differences(text_task):
    explanation = explain(text_task, TEXTS[:1], targets="sport", steps=64, baseline="pad")
    assert isinstance(explanation, Explanation)
    assert explanation.baselines == ["pad"]
    tokens = explanation.tokens[0]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    attribution = explanation.attributions[0]
    # Special tokens keep their embeddings in the baseline: no attribution.
    assert attribution[0] == 0.0 and attribution[-1] == 0.0
    # Completeness: the attributions add up to F(x) - F(baseline).
    delta = explanation.scores[0] - explanation.baseline_scores[0]
    assert attribution.sum() == pytest.approx(delta, rel=1e-3, abs=1e-6)
    assert explanation.completeness_error[0] < 1e-3

    # Each token's share without gradients: along the same straight path, move
    # only token j by +-h of its own difference (central finite differences).
    score, embedding, ids = _cut_at_embeddings(text_task, TEXTS[0])
    tokenizer = text_task.preprocessor.tokenizer
    special = [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id]
    baseline_ids = np.where(np.isin(ids, special), ids, tokenizer.pad_token_id)
    x = np.asarray(embedding(ids[None]))[0]
    b = np.asarray(embedding(baseline_ids[None]))[0]
    assert score(x[None])[0] == pytest.approx(explanation.scores[0], abs=1e-5)
    assert score(b[None])[0] == pytest.approx(explanation.baseline_scores[0], abs=1e-5)
    alphas = (np.arange(32) + 0.5) / 32  # midpoints
    h = 1e-2
    for j in range(1, len(tokens) - 1):
        direction = np.zeros_like(x)
        direction[j] = x[j] - b[j]
        points = b[None] + alphas[:, None, None] * (x - b)[None]
        up, down = score(points + h * direction), score(points - h * direction)
        numeric = float(np.mean((up - down) / (2 * h)))
        assert attribution[j] == pytest.approx(numeric, rel=0.02, abs=1e-5), j


def test_auto_baseline_is_the_most_uniform_one(text_task):
    explanation = explain(text_task, TEXTS[1:2], steps=8)
    entropy = {}
    for baseline in ("pad", "mask", "zeros"):
        # The baseline's whole output: its score for each class in turn.
        probs = np.array([explain(text_task, TEXTS[1:2], steps=1, baseline=baseline,
                                  targets=k).baseline_scores[0] for k in range(3)])
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)
        entropy[baseline] = float(-(probs * np.log(probs)).sum())
    assert explanation.baselines == [max(entropy, key=entropy.get)]


def test_text_occlusion_on_a_saved_model_is_the_score_drop_per_word(tmp_path, keyword_export):
    # Scores raw texts by keyword counts: sport | business.
    export = tf.saved_model.load(keyword_export(str(tmp_path / "keywords"),
                                                ("match|team|win", "shares|bank"), scale=2.0))
    explanation = explain(export, TEXTS[:2], class_names=["sport", "business"])
    assert explanation.method == "occlusion"
    serve = export.signatures["serving_default"]

    def p(text, k):
        return float(serve(inputs=tf.constant([text]))["probabilities"].numpy()[0, k])

    for i, text in enumerate(TEXTS[:2]):
        words = text.split()
        target = int(explanation.targets[i])
        assert explanation.words[i] == words
        for j in range(len(words)):
            without = " ".join(words[:j] + words[j + 1:])
            assert explanation.word_attributions[i][j] == pytest.approx(
                p(text, target) - p(without, target), abs=1e-6)
    assert explanation.top_words(0, 2)[0][0] in ("team", "win", "match")
    assert [w for w, v in zip(explanation.words[0], explanation.word_attributions[0],
                              strict=True) if v == 0] == ["the", "the"]
    with pytest.raises(TypeError, match="occlusion"):
        explain(export, TEXTS, method="integrated_gradients")


def _red_detector():
    """Feature map = the image itself; class 0 scores the red channel's mean."""
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.Conv2D(3, 1, use_bias=False, name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(2, activation="softmax", use_bias=False)(pooled)
    model = keras.Model(inputs, outputs)
    model.get_layer("features").set_weights([np.eye(3, dtype="float32")[None, None]])
    model.layers[-1].set_weights([np.array([[4.0, -4.0], [0, 0], [0, 0]], "float32")])
    return model


def test_grad_cam_of_a_known_model_is_the_channel_it_reads():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (16, 16, 3)).astype("float32")
    image[4:8, 10:14, 0] = 3.0  # a bright red patch
    explanation = explain(_red_detector(), [image], method="grad_cam", targets=0)
    heat = explanation.attributions[0]
    # Channel weights: class 0's gradient is positive on red only, so the map is
    # the red channel scaled (ReLU keeps it: it is non-negative).
    red = image[..., 0].astype(np.float64)
    np.testing.assert_allclose(heat / heat.max(), red / red.max(), atol=1e-5)
    # Explaining the other class: red lowers it, so its map is empty.
    other = explain(_red_detector(), [image], method="grad_cam", targets=1)
    assert np.all(other.attributions[0] == 0.0)


def test_image_occlusion_finds_the_patch_the_model_reads():
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 1, (16, 16, 3)).astype("float32")
    image[4:8, 8:12, 0] = 3.0
    explanation = explain(_red_detector(), [image], method="occlusion", targets=0, patches=4)
    heat = explanation.attributions[0]
    assert heat.shape == (16, 16)
    # The 4 x 4 grid: the patch at rows 4-8, columns 8-12 holds the red square.
    assert np.unravel_index(np.argmax(heat), heat.shape)[0] in range(4, 8)
    assert np.unravel_index(np.argmax(heat), heat.shape)[1] in range(8, 12)
    assert heat[4:8, 8:12].min() > 10 * max(abs(heat[:4]).max(), 1e-9)


def test_grad_cam_on_an_image_task_resizes_onto_each_image(tiny_cnn, tmp_path):
    backbone = tfft.load_backbone(
        tiny_cnn, preprocessor=tfft.ImagePreprocessor((32, 32), scale=1 / 127.5, offset=-1.0))
    task = tfft.build_model(backbone, task="multiclass", num_classes=2,
                            class_names=["cat", "dog"])
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 52, 3), dtype=np.uint8),
              rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)]
    explanation = explain(task, images)
    assert explanation.method == "grad_cam"
    assert [a.shape for a in explanation.attributions] == [(40, 52), (30, 30)]
    np.testing.assert_allclose(explanation.probabilities,
                               np.concatenate([task.predict_on_batch(im[None])
                                               for im in images]), atol=1e-5)
    paths = explanation.save(str(tmp_path), name="cams")
    with np.load(tmp_path / "cams.npz") as saved:
        np.testing.assert_allclose(saved["heatmap_1"], explanation.attributions[1], rtol=1e-6)
    with open(tmp_path / "cams.json") as f:
        assert json.load(f)["examples"][0]["target"] in ("cat", "dog")
    assert str(tmp_path / "cams.png") in paths


def test_text_explanation_saves_json_and_a_highlight_png(text_task, tmp_path):
    explanation = explain(text_task, TEXTS, steps=8)
    paths = explanation.save(str(tmp_path))
    with open(tmp_path / "explanations.json") as f:
        saved = json.load(f)
    for i, example in enumerate(saved["examples"]):
        assert example["words"] == explanation.words[i]
        np.testing.assert_allclose(example["word_attributions"],
                                   explanation.word_attributions[i])
        assert example["target"] == explanation.target_name(i)
    from PIL import Image

    with Image.open(tmp_path / "explanations.png") as png:
        pixels = np.asarray(png.convert("RGB")).reshape(-1, 3).astype(int)
    # Highlighted words: strongly red and strongly blue pixels both appear.
    assert np.any((pixels[:, 0] > 150) & (pixels[:, 2] < 110))
    assert np.any((pixels[:, 2] > 150) & (pixels[:, 0] < 110))
    assert len(paths) == 2


def test_wordpieces_join_into_words():
    from tfft.evaluation.explain import _merge_pieces

    words, values = _merge_pieces(["[CLS]", "foot", "##ball", "is", "fun", "[SEP]"],
                                  [0.0, 0.25, 0.5, 0.1, -0.2, 0.0],
                                  special_tokens={"[CLS]", "[SEP]"})
    assert words == ["football", "is", "fun"]
    np.testing.assert_allclose(values, [0.75, 0.1, -0.2])


def test_bad_arguments_say_what_is_valid(text_task):
    with pytest.raises(ValueError, match="Unknown method"):
        explain(text_task, TEXTS, method="shap")
    with pytest.raises(ValueError, match="grad_cam explains images"):
        explain(text_task, TEXTS, method="grad_cam")
    with pytest.raises(ValueError, match="Unknown baseline"):
        explain(text_task, TEXTS, baseline="random")
    with pytest.raises(ValueError, match="Unknown target class"):
        explain(text_task, TEXTS, targets="weather")
    with pytest.raises(ValueError, match="empty"):
        explain(text_task, [])
    with pytest.raises(TypeError, match="not one string"):
        explain(text_task, "one text")
    with pytest.raises(ValueError, match="takes texts"):
        explain(text_task, np.zeros((1, 8, 8, 3), np.uint8))


def test_keras_source_loads_safely(text_task, tmp_path):
    path = str(tmp_path / "task.keras")
    text_task.save(path)
    reloaded = load_keras_source(path)
    np.testing.assert_allclose(reloaded.predict_on_batch(np.array(TEXTS, dtype=object)),
                               text_task.predict_on_batch(np.array(TEXTS, dtype=object)),
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"\.keras file"):
        load_keras_source(str(tmp_path / "missing.keras"))
