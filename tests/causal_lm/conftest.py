"""Fixtures for the causal-LM task tests: a tiny random Llama and the real SmolLM2."""

import keras
import pytest

import tfft  # noqa: F401  (sets the TensorFlow backend first)

WORDS = ["review", "was", "good", "bad", "great", "awful", "film", "sentiment", "the",
         "positive", "negative", "a", "match", "won", "lost", "is", "it", "answer", "yes",
         "no", "question"]
SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
           "<|eot_id|>"]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a real offline asset end to end")


def _vocab_and_merges(words):
    vocab, merges = [], []

    def add(token):
        if token not in vocab:
            vocab.append(token)

    for word in words:
        for variant in (word, "\u0120" + word):
            pieces = list(variant)
            for p in pieces:
                add(p)
            current = pieces[0]
            for p in pieces[1:]:
                merge = f"{current} {p}"
                if merge not in merges:
                    merges.append(merge)
                current += p
                add(current)
    for token in [":", ".", "\u010a", "\u0120", "?", *SPECIAL]:
        add(token)
    return {t: i for i, t in enumerate(vocab)}, merges


def make_tiny_llama(sequence_length=32, seed=0):
    """A tiny random Llama-3 causal LM (2 layers, hidden 16) with a made-up BPE vocabulary."""
    import keras_hub

    keras.utils.set_random_seed(seed)
    vocabulary, merges = _vocab_and_merges(WORDS)
    tokenizer = keras_hub.models.Llama3Tokenizer(vocabulary=vocabulary, merges=merges)
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=len(vocabulary), num_layers=2, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=16, intermediate_dim=32, max_sequence_length=64,
    )
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(
        tokenizer, sequence_length=sequence_length, add_start_token=False)
    return keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=preprocessor)


@pytest.fixture(scope="session")
def make_lm():
    """Builds a fresh tiny random Llama causal LM (LoRA changes a model in place)."""
    return make_tiny_llama


def copy_causal_lm(lm):
    """A fresh copy of a KerasHub causal LM (same weights, no adapters), without disk I/O."""
    config = lm.backbone.get_config()
    # KerasHub 0.32's Llama get_config leaves out tie_word_embeddings (SmolLM2 ties them).
    config.setdefault("tie_word_embeddings", getattr(lm.backbone, "tie_word_embeddings", False))
    backbone = type(lm.backbone).from_config(config)
    backbone.set_weights(lm.backbone.get_weights())
    return type(lm)(backbone=backbone, preprocessor=lm.preprocessor)


@pytest.fixture(scope="session")
def copy_lm():
    return copy_causal_lm


@pytest.fixture(scope="session")
def smollm2_base():
    """The real SmolLM2-135M-Instruct, loaded once per session. Never modified: tests
    take `copy_causal_lm(smollm2_base)` before adding adapters."""
    from tfft.backbones.causal_lm import load_causal_lm

    return load_causal_lm("offline:smollm2", sequence_length=64)
