"""End-to-end checks on the offline real assets (MiniLM, SmolLM2, BBC News, Rotten Tomatoes)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfft
from tfft.data import load_bbc_news, load_rotten_tomatoes
from tfft.prompting import (
    CausalLMClassifier,
    ZeroShotEncoderClassifier,
    build_soft_prompt_classifier,
    count_trainable_params,
    smollm2_preset_dir,
)

pytestmark = pytest.mark.slow

BBC_VERBALIZER = {
    "business": ["business"], "entertainment": ["entertainment"], "politics": ["politics"],
    "sports": ["sport"], "tech": ["technology"],
}


def _per_class(data, n, seed=0):
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(data.y == c), n, replace=False)
                          for c in range(len(data.class_names))])
    return data.take(np.sort(idx))


@pytest.fixture(scope="session")
def bbc():
    data = load_bbc_news()
    # Class names come from the folder names; the verbalizer keys must match them.
    assert sorted(BBC_VERBALIZER) == sorted(data.class_names), data.class_names
    return data


@pytest.fixture(scope="session")
def minilm():
    return tfft.load_backbone("minilm", sequence_length=128)


def test_minilm_zero_shot_beats_majority_on_bbc(minilm, bbc):
    sample = _per_class(bbc, 10)
    clf = ZeroShotEncoderClassifier(minilm, "This news article is about {label}.",
                                    BBC_VERBALIZER, class_names=bbc.class_names)
    predicted = clf.predict(list(sample.x))
    accuracy = np.mean(np.array(predicted) == np.array(bbc.class_names)[sample.y])
    majority = np.bincount(sample.y).max() / len(sample)
    assert accuracy >= majority + 0.3, (accuracy, majority)


def test_smollm2_conversion_is_cached_and_complete(smollm2):
    path = smollm2_preset_dir()
    assert smollm2_preset_dir() == path  # second call reuses the cache
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (
        30, 576, 49152)
    assert config["tie_word_embeddings"] is True
    with open(os.path.join(path, "tokenizer.json")) as f:
        assert len(json.load(f)["model"]["vocab"]) == 49152
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".smollm2")]
    assert smollm2.backbone.count_params() == 134_515_008


def test_smollm2_greedy_generation_knows_paris(smollm2):
    # Greedy decoding, one forward pass per token (KerasHub's `generate` gives the
    # same text but compiles a sampling loop, which costs ~30 s on 2 cores).
    tokenizer = smollm2.preprocessor.tokenizer
    ids = np.asarray(tokenizer("The capital of France is")).tolist()
    for _ in range(3):
        x = np.array([ids], np.int32)
        logits = smollm2({"token_ids": x, "padding_mask": np.ones_like(x, bool)})
        ids.append(int(np.argmax(logits[0, -1])))
    text = tokenizer.detokenize(np.array(ids))
    text = text.numpy().decode() if hasattr(text, "numpy") else str(text)
    assert "Paris" in text, text


def test_smollm2_scorer_matches_full_logits(smollm2):
    clf = CausalLMClassifier(smollm2, "Review: {input}\nSentiment: {label}",
                             {"fresh": ["positive"], "rotten": ["negative"]})
    prompt, _ = clf._prompt_ids(clf.templates[0], "A warm, funny film.")
    continuation = clf._tokenize(" positive")
    ids = np.array([prompt + continuation], np.int32)
    logits = smollm2({"token_ids": ids, "padding_mask": np.ones_like(ids, bool)})
    log_probs = tf.nn.log_softmax(logits[0], axis=-1).numpy()
    expected = sum(log_probs[len(prompt) - 1 + k, t] for k, t in enumerate(continuation))
    got = clf.scorer.score([(prompt, continuation)])[0].sum()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_smollm2_zero_and_few_shot_sentiment(smollm2):
    data = load_rotten_tomatoes(classes=["fresh", "rotten"])
    test = _per_class(data, 12, seed=1)
    pool = _per_class(data, 20, seed=2)
    verbalizer = {"fresh": ["positive"], "rotten": ["negative"]}
    template = "Review: {input}\nSentiment: {label}"
    zero = CausalLMClassifier(smollm2, template, verbalizer, max_input_tokens=64)
    truth = np.array(data.class_names)[test.y]
    zero_accuracy = np.mean(np.array(zero.predict(list(test.x))) == truth)
    # SmolLM2-135M scores about 0.77 on 60 balanced snippets; chance is 0.5.
    assert zero_accuracy >= 0.65, zero_accuracy
    few = CausalLMClassifier(smollm2, template, verbalizer, k_shot=2, examples=pool,
                             max_input_tokens=48, max_length=256)
    proba = few.predict_proba(list(test.x[:4]))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert sorted(label for _, label in few.shots) == ["fresh", "rotten"]
    # The shots are in the prompt: asked about a shot's own text, the model leans
    # further towards the label it was shown than without the shots (SmolLM2 moves
    # the rotten shot's margin by about 0.3 nats, the fresh shot's by about 0.7).
    shot_texts = [text for text, _ in few.shots]
    shown = [few.class_names.index(label) for _, label in few.shots]
    few_scores, zero_scores = few.scores(shot_texts), zero.scores(shot_texts)
    for row, label in enumerate(shown):
        other = 1 - label
        few_margin = few_scores[row, label] - few_scores[row, other]
        zero_margin = zero_scores[row, label] - zero_scores[row, other]
        assert few_margin > zero_margin + 0.1, (few.shots[row], few_margin, zero_margin)


def test_minilm_soft_prompt_trains_prompt_only(bbc):
    backbone = tfft.load_backbone("minilm", sequence_length=48)
    sample = _per_class(bbc, 6, seed=3)
    model = build_soft_prompt_classifier(backbone, num_classes=5, num_tokens=8, verbose=False)
    assert count_trainable_params(model) == 8 * 384 + 384 * 5 + 5
    x = backbone.preprocess(tf.constant(list(sample.x)))
    frozen = {w.path: keras.ops.convert_to_numpy(w) for w in backbone.model.weights}
    prompt_before = keras.ops.convert_to_numpy(model.get_layer("soft_prompt").prompt)
    # Eager steps: three batches do not repay tracing the train step.
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    model.fit(x, sample.y, epochs=1, batch_size=10, verbose=0)
    prompt_after = keras.ops.convert_to_numpy(model.get_layer("soft_prompt").prompt)
    assert not np.allclose(prompt_before, prompt_after)
    for w in backbone.model.weights:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), frozen[w.path])
