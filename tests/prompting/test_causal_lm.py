import numpy as np
import pytest
import tensorflow as tf

import tfft  # noqa: F401
from tfft.prompting.causal_lm import CausalLMClassifier, CausalLMScorer, load_causal_lm
from tfft.prompting.gguf_llama import _unpermute_rotary

TEMPLATE = "review: {input}\nsentiment: {label}"
VERBALIZER = {"fresh": ["positive", "good"], "rotten": ["negative"]}
TEXTS = ["the film was good", "the film was awful", "a great match"]


def _brute_force_log_likelihood(lm, prompt_ids, continuation_ids):
    """Full-sequence forward pass, no batching or de-duplication."""
    ids = np.array([list(prompt_ids) + list(continuation_ids)], np.int32)
    logits = lm({"token_ids": ids, "padding_mask": np.ones_like(ids, bool)})
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1).numpy()[0]
    start = len(prompt_ids)
    return sum(log_probs[start - 1 + k, t] for k, t in enumerate(continuation_ids))


def _ids(tokenizer, text):
    return np.asarray(tokenizer(text)).reshape(-1).tolist()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_scores_match_a_full_forward_pass(tiny_gpt2, reduction):
    clf = CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER, reduction=reduction, batch_size=2)
    scores = clf.scores(TEXTS)
    assert scores.shape == (3, 2)
    tok = tiny_gpt2.preprocessor.tokenizer
    for n, text in enumerate(TEXTS):
        prompt = _ids(tok, "review: ") + _ids(tok, text) + _ids(tok, "\nsentiment:")
        for c, words in enumerate(VERBALIZER.values()):
            expected = []
            for word in words:
                cont = _ids(tok, " " + word)
                total = _brute_force_log_likelihood(tiny_gpt2, prompt, cont)
                expected.append(total if reduction == "sum" else total / len(cont))
            np.testing.assert_allclose(scores[n, c], np.mean(expected), rtol=1e-4, atol=1e-4)


def test_predict_proba_and_predict(tiny_gpt2):
    clf = CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER)
    proba = clf.predict_proba(TEXTS)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert clf.predict(TEXTS) == [clf.class_names[i] for i in proba.argmax(axis=1)]
    # A lower temperature sharpens but keeps the ranking.
    sharp = CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER, temperature=0.1)
    assert (np.abs(sharp.predict_proba(TEXTS) - 0.5) >= np.abs(proba - 0.5) - 1e-9).all()


def test_template_ensemble_averages_scores(tiny_gpt2):
    second = "{input} sentiment: {label}"
    a = CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER).scores(TEXTS)
    b = CausalLMClassifier(tiny_gpt2, second, VERBALIZER).scores(TEXTS)
    both = CausalLMClassifier(tiny_gpt2, [TEMPLATE, second], VERBALIZER).scores(TEXTS)
    np.testing.assert_allclose(both, (a + b) / 2, rtol=1e-5, atol=1e-5)
    assert not np.allclose(a, b)


def test_scorer_deduplicates_shared_inputs(tiny_gpt2):
    scorer = CausalLMScorer(tiny_gpt2)
    calls = []
    original = scorer._log_probs_at

    def counting(token_ids, *args):
        calls.append(token_ids.shape[0])
        return original(token_ids, *args)

    scorer._log_probs_at = counting
    prompt = [1, 2, 3]
    results = scorer.score([(prompt, [4]), (prompt, [5]), (prompt, [6, 7])])
    # [4] and [5] share the model input `prompt`; [6, 7] needs `prompt + [6]`.
    assert sum(calls) == 2
    assert [len(r) for r in results] == [1, 1, 2]


def test_few_shot_selection_is_balanced_and_seeded(tiny_gpt2):
    texts = [f"the film was {w}" for w in ["good", "great", "bad", "awful"] * 5]
    labels = ["fresh", "fresh", "rotten", "rotten"] * 5
    clf = CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER, k_shot=4,
                             examples=(texts, labels), seed=1)
    chosen = [label for _, label in clf.shots]
    assert sorted(chosen) == ["fresh", "fresh", "rotten", "rotten"]
    again = CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER, k_shot=4,
                               examples=(texts, labels), seed=1)
    assert again.shots == clf.shots
    others = [CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER, k_shot=4,
                                 examples=(texts, labels), seed=s).shots
              for s in range(2, 6)]
    assert any(o != clf.shots for o in others)
    # The shots change the scores: they are in the prompt.
    zero = CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER)
    assert not np.allclose(zero.scores(TEXTS), clf.scores(TEXTS))


def test_few_shot_integer_labels_and_errors(tiny_gpt2):
    texts, labels = ["good", "bad", "great"], [0, 1, 0]
    clf = CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER, k_shot=3, examples=(texts, labels))
    assert sorted(label for _, label in clf.shots) == ["fresh", "fresh", "rotten"]
    with pytest.raises(ValueError, match="needs examples"):
        CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER, k_shot=2)
    with pytest.raises(ValueError, match="only 3 examples"):
        CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER, k_shot=5, examples=(texts, labels))
    with pytest.raises(ValueError, match="not classes"):
        CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER, k_shot=1,
                           examples=(["x"], ["meh"]))


def test_too_long_context_raises_before_scoring(tiny_gpt2):
    clf = CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER, max_length=12)

    def must_not_run(pairs):
        raise AssertionError("scored before the length check")

    clf.scorer.score = must_not_run
    with pytest.raises(ValueError, match="at most 12") as info:
        clf.scores(["the film was good the film was good the film was good"])
    assert "max_input_tokens" in str(info.value)
    # Truncating the input makes it fit.
    fits = CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER, max_length=12, max_input_tokens=2)
    assert fits.scores(["the film was good the film was good"]).shape == (1, 2)


def test_default_max_length_is_the_backbone_limit(tiny_gpt2):
    clf = CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER)
    assert clf.max_length == 128
    with pytest.raises(ValueError, match="at most 128"):
        clf.scores([" ".join(["the film"] * 80)])


def test_verbalizer_errors(tiny_gpt2):
    with pytest.raises(ValueError, match=r"\['tech'\]"):
        CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER, class_names=["fresh", "tech"])
    with pytest.raises(ValueError, match=r"needs a {input} slot"):
        CausalLMClassifier(tiny_gpt2, "sentiment: {label}", VERBALIZER)
    with pytest.raises(TypeError, match="list of texts"):
        CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER).predict("one string")


def test_load_causal_lm_rejects_bad_specs(tiny_gpt2, tmp_path):
    assert load_causal_lm(tiny_gpt2) is tiny_gpt2
    with pytest.raises(ValueError, match="does not exist"):
        load_causal_lm("./no/such/folder")
    with pytest.raises(ValueError, match=r"config.json"):
        load_causal_lm(str(tmp_path))
    with pytest.raises(TypeError):
        load_causal_lm(3)


def _llama_cpp_permute(weights, num_heads):
    """llama.cpp convert_hf_to_gguf's q/k row permutation, restated for the test."""
    return (
        weights.reshape(num_heads, 2, weights.shape[0] // num_heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


@pytest.mark.parametrize("num_heads, head_dim", [(9, 64), (3, 8), (1, 4)])
def test_unpermute_inverts_llama_cpp_rotary_permutation(num_heads, head_dim):
    hf = np.random.default_rng(0).normal(size=(num_heads * head_dim, 5))
    permuted = _llama_cpp_permute(hf, num_heads)
    assert not np.allclose(permuted, hf)
    np.testing.assert_array_equal(_unpermute_rotary(permuted, num_heads), hf)


def test_contextual_calibration_subtracts_content_free_scores(tiny_gpt2):
    raw = CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER)
    calibrated = CausalLMClassifier(tiny_gpt2, TEMPLATE, VERBALIZER, calibrate=True)
    content_free = raw.scores(["N/A", "", "[MASK]"]).mean(axis=0)
    np.testing.assert_allclose(calibrated.scores(TEXTS), raw.scores(TEXTS) - content_free,
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(content_free, 0.0)
