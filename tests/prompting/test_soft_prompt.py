import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfft  # noqa: F401
from tfft.prompting.causal_lm import CausalLMClassifier
from tfft.prompting.soft_prompt import (
    SoftPrompt,
    build_soft_prompt_causal_lm,
    build_soft_prompt_classifier,
    count_trainable_params,
)

TEXTS = ["the match was won", "shares fell", "the film was good", "market shares fell ."]
LABELS = np.array([0, 1, 2, 1])


def _weights_by_path(model):
    return {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}


def test_only_prompt_and_head_are_trainable(tiny_bert, capsys):
    backbone, _ = tiny_bert
    model = build_soft_prompt_classifier(backbone, num_classes=3, num_tokens=4)
    expected = 4 * 8 + 8 * 3 + 3
    assert count_trainable_params(model) == expected
    assert f"{expected:,} trainable" in capsys.readouterr().out
    names = sorted(w.path for w in model.trainable_weights)
    assert len(names) == 3 and any("soft_prompt" in n for n in names)


def test_one_step_changes_only_prompt_and_head(tiny_bert):
    backbone, preprocessor = tiny_bert
    model = build_soft_prompt_classifier(backbone, num_classes=3, num_tokens=4, verbose=False)
    model.compile(keras.optimizers.Adam(0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = _weights_by_path(model)
    model.fit(preprocessor(TEXTS), LABELS, epochs=1, batch_size=4, verbose=0)
    after = _weights_by_path(model)
    trainable = {w.path for w in model.trainable_weights}
    for path in before:
        changed = not np.array_equal(before[path], after[path])
        assert changed == (path in trainable), path


def test_training_reduces_loss(tiny_bert):
    keras.utils.set_random_seed(0)
    backbone, preprocessor = tiny_bert
    model = build_soft_prompt_classifier(backbone, num_classes=3, num_tokens=4, verbose=False)
    model.compile(keras.optimizers.Adam(0.1),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = preprocessor(TEXTS)
    history = model.fit(x, LABELS, epochs=40, batch_size=4, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]


def test_padding_does_not_change_outputs(tiny_bert):
    backbone, preprocessor = tiny_bert
    model = build_soft_prompt_classifier(backbone, num_classes=3, num_tokens=4, verbose=False)
    x = preprocessor(TEXTS)
    full = model(x).numpy()
    # The same texts with less padding (every text here fits in 6 tokens).
    assert int(tf.reduce_sum(tf.cast(x["padding_mask"][:, 6:], tf.int32))) == 0
    trimmed = {k: v[:, :6] for k, v in x.items()}
    np.testing.assert_allclose(model(trimmed).numpy(), full, rtol=1e-5, atol=1e-5)
    # Changing a padded position's token id must not matter either.
    ids = np.array(x["token_ids"])
    ids[:, 7] = 5
    changed = {**x, "token_ids": tf.constant(ids)}
    np.testing.assert_allclose(model(changed).numpy(), full, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "first", "prompt_mean"])
def test_keras_round_trip(tiny_bert, tmp_path, pooling):
    backbone, preprocessor = tiny_bert
    model = build_soft_prompt_classifier(backbone, num_classes=3, num_tokens=4, pooling=pooling,
                                         verbose=False)
    model.get_layer("soft_prompt").prompt.assign(
        np.random.default_rng(0).normal(size=(4, 8)).astype("float32"))
    x = preprocessor(TEXTS)
    path = str(tmp_path / "soft_prompt.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)
    assert count_trainable_params(reloaded) == count_trainable_params(model)


def test_saved_model_export_round_trip(tiny_bert, tmp_path):
    backbone, preprocessor = tiny_bert
    model = build_soft_prompt_classifier(backbone, num_classes=3, num_tokens=4, verbose=False)
    x = preprocessor(TEXTS)
    spec = {k: tf.TensorSpec((None, None), tf.int32, name=k) for k in x}

    @tf.function(input_signature=[spec])
    def serve(inputs):
        return {"logits": model(inputs, training=False)}

    export_dir = str(tmp_path / "export")
    tf.saved_model.save(model, export_dir, signatures={"serving_default": serve})
    np.save(tmp_path / "expected.npy", model(x).numpy())
    np.savez(tmp_path / "inputs.npz", **{k: np.asarray(v) for k, v in x.items()})
    # Reload in a fresh process: no tfft or Keras objects in memory there.
    script = (
        "import numpy as np, tensorflow as tf, sys\n"
        "d = sys.argv[1]\n"
        "fn = tf.saved_model.load(d + '/export').signatures['serving_default']\n"
        "inputs = dict(np.load(d + '/inputs.npz'))\n"
        "out = fn(**{k: tf.constant(v, tf.int32) for k, v in inputs.items()})['logits']\n"
        "np.testing.assert_allclose(out.numpy(), np.load(d + '/expected.npy'), atol=1e-5)\n"
        "print('OK')\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-2000:]


def test_llama_soft_prompt_equals_prepending_real_tokens(tiny_llama):
    """With prompt vectors set to the embeddings of real tokens, the soft-prompted LM
    must give the same logits as the plain backbone on those tokens + the input."""
    prompt_ids = np.array([5, 6, 7])
    ids = np.array([[1, 2, 3, 4], [9, 8, 0, 0]], np.int32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.int32)
    table = keras.ops.convert_to_numpy(tiny_llama.token_embedding.embeddings)
    full_ids = np.concatenate([np.tile(prompt_ids, (2, 1)), ids], axis=1)
    full_mask = np.concatenate([np.ones((2, 3), np.int32), mask], axis=1)
    hidden = tiny_llama({"token_ids": full_ids, "padding_mask": full_mask})
    expected = tiny_llama.token_embedding(hidden, reverse=True).numpy()[:, 3:]

    lm = build_soft_prompt_causal_lm(tiny_llama, num_tokens=3, verbose=False)
    lm.get_layer("soft_prompt").prompt.assign(table[prompt_ids])
    got = lm({"token_ids": ids, "padding_mask": mask}).numpy()
    assert got.shape == (2, 4, 40)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1, :2], expected[1, :2], rtol=1e-4, atol=1e-4)
    # Other prompt vectors give other logits.
    lm.get_layer("soft_prompt").prompt.assign(table[[10, 11, 12]])
    assert not np.allclose(lm({"token_ids": ids, "padding_mask": mask}).numpy()[0], expected[0],
                           atol=1e-3)


def test_llama_soft_prompt_trains_and_scores_label_words(tiny_gpt2, tmp_path):
    import keras_hub

    tokenizer = tiny_gpt2.preprocessor.tokenizer
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=1, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=8, intermediate_dim=16,
    )
    lm = build_soft_prompt_causal_lm(backbone, num_tokens=2, verbose=False)
    assert count_trainable_params(lm) == 2 * 8
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=12)
    x, y, w = preprocessor(["the film was good", "the film was bad"])
    lm.compile(keras.optimizers.Adam(0.1),
               keras.losses.SparseCategoricalCrossentropy(from_logits=True),
               weighted_metrics=[])
    before = _weights_by_path(lm)
    lm.fit({"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}, y,
           sample_weight=w, epochs=2, verbose=0)
    after = _weights_by_path(lm)
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert changed == {w.path for w in lm.trainable_weights}
    clf = CausalLMClassifier(lm, "{input} was {label}", {"pos": "good", "neg": "bad"},
                             tokenizer=tokenizer, max_length=64)
    proba = clf.predict_proba(["the film"])
    np.testing.assert_allclose(proba.sum(), 1.0, rtol=1e-6)
    path = str(tmp_path / "lm.keras")
    lm.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded(x).numpy(), lm(x).numpy(), rtol=1e-5, atol=1e-5)
    assert count_trainable_params(reloaded) == 2 * 8  # still frozen after reload

    spec = {k: tf.TensorSpec((None, None), tf.int32, name=k) for k in ("token_ids",
                                                                       "padding_mask")}

    @tf.function(input_signature=[spec])
    def serve(inputs):
        return {"logits": lm(inputs, training=False)}

    tf.saved_model.save(lm, str(tmp_path / "export"), signatures={"serving_default": serve})
    restored = tf.saved_model.load(str(tmp_path / "export")).signatures["serving_default"]
    out = restored(token_ids=tf.cast(x["token_ids"], tf.int32),
                   padding_mask=tf.cast(x["padding_mask"], tf.int32))["logits"]
    np.testing.assert_allclose(out.numpy(), lm(x).numpy(), rtol=1e-5, atol=1e-5)


def test_llama_classifier_variant(tiny_llama):
    model = build_soft_prompt_classifier(tiny_llama, num_classes=2, num_tokens=3, verbose=False)
    out = model({"token_ids": np.array([[1, 2, 0]]), "padding_mask": np.array([[1, 1, 0]])})
    assert out.shape == (1, 2)
    assert count_trainable_params(model) == 3 * 8 + 8 * 2 + 2


def test_bad_arguments(tiny_bert, tiny_gpt2):
    backbone, _ = tiny_bert
    with pytest.raises(TypeError, match="BERT-family"):
        build_soft_prompt_classifier(tiny_gpt2.backbone, num_classes=2)
    with pytest.raises(TypeError, match="Llama-family"):
        build_soft_prompt_causal_lm(backbone)
    with pytest.raises(ValueError, match="num_tokens"):
        SoftPrompt(0)
    with pytest.raises(ValueError, match="num_classes"):
        build_soft_prompt_classifier(backbone, num_classes=1)
    with pytest.raises(ValueError, match="pooling"):
        build_soft_prompt_classifier(backbone, num_classes=2, pooling="max")


def test_building_on_a_llama_reports_its_counts_by_default(tiny_llama, capsys):
    # verbose=True (the default) prints the counts; the decoder wraps a Llama
    # backbone that Keras never marks built.
    lm = build_soft_prompt_causal_lm(tiny_llama, num_tokens=3)
    total = sum(int(np.prod(w.shape)) for w in tiny_llama.weights) + 3 * 8
    assert f"24 trainable of {total:,} parameters" in capsys.readouterr().out
    assert lm.trainable_weights[0].shape == (3, 8)
