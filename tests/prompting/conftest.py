"""Fixtures for the prompting tests: tiny random KerasHub models and real assets."""

import keras
import numpy as np
import pytest

import tfft  # noqa: F401  (sets the TensorFlow backend first)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a real offline asset end to end")


WORDS = ["a", "photo", "of", "cat", "dog", "car", "the", "review", "was", "good", "bad",
         "great", "awful", "film", "topic", "sport", "business", "news", "is"]


def bpe_vocab_and_merges(words, suffix="", space_prefix=""):
    """A tiny BPE vocabulary that spells each word from its characters.

    `suffix` marks word ends (CLIP: "</w>"); `space_prefix` marks a leading
    space (GPT-2 byte-level: "Ġ").
    """
    vocab, merges = [], []

    def add(token):
        if token not in vocab:
            vocab.append(token)

    for word in words:
        for variant in ([word] + ([space_prefix + word] if space_prefix else [])):
            pieces = list(variant)
            pieces[-1] = pieces[-1] + suffix
            for p in pieces:
                add(p)
            current = pieces[0]
            for p in pieces[1:]:
                merge = f"{current} {p}"
                if merge not in merges:
                    merges.append(merge)
                current = current + p
                add(current)
    return vocab, merges


@pytest.fixture(scope="session")
def tiny_clip():
    import keras_hub

    # Random weights from a fixed seed, not from whatever the tests before left in the
    # global generators (an unlucky draw put two classes' cosines 3e-4 apart).
    keras.utils.set_random_seed(0)
    vocab, merges = bpe_vocab_and_merges([*WORDS, "."], suffix="</w>")
    for p in [".", "</w>"]:
        if p not in vocab:
            vocab.append(p)
    vocab += ["<|startoftext|>", "<|endoftext|>"]  # end token has the highest id
    vocabulary = {t: i for i, t in enumerate(vocab)}
    tokenizer = keras_hub.models.CLIPTokenizer(vocabulary=vocabulary, merges=merges)
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=4, hidden_dim=8, num_layers=1, num_heads=2, intermediate_dim=16,
        image_shape=(16, 16, 3),
    )
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=len(vocabulary), embedding_dim=8, hidden_dim=8, num_layers=1,
        num_heads=2, intermediate_dim=16, max_sequence_length=12,
    )
    backbone = keras_hub.models.CLIPBackbone(
        vision_encoder=vision, text_encoder=text, projection_dim=6
    )
    return backbone, tokenizer


@pytest.fixture(scope="session")
def tiny_images():
    return np.random.default_rng(0).uniform(-1, 1, (5, 16, 16, 3)).astype("float32")


GPT_WORDS = ["review", "was", "good", "bad", "great", "awful", "film", "sentiment", "the",
             "topic", "sport", "business", "news", "positive", "negative", "a", "match",
             "market", "shares", "won"]


@pytest.fixture(scope="session")
def tiny_gpt2():
    """A tiny random GPT-2 causal LM with a made-up byte-level BPE vocabulary."""
    import keras_hub

    vocab, merges = bpe_vocab_and_merges(GPT_WORDS, space_prefix="\u0120")
    for token in [":", ".", "\u010a", "\u0120", "<|endoftext|>"]:
        if token not in vocab:
            vocab.append(token)
    vocabulary = {t: i for i, t in enumerate(vocab)}
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(vocabulary), num_layers=2, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=128, dropout=0.0,
    )
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=16)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)


BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "match", "was", "won",
              "market", "shares", "fell", "film", "good", "bad", "sport", "business", "."]


@pytest.fixture()
def tiny_bert():
    """A tiny random BERT backbone and its preprocessor (fresh per test: it gets frozen)."""
    import keras_hub

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=BERT_VOCAB, lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=8)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(BERT_VOCAB), num_layers=2, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=8, dropout=0.0,
    )
    return backbone, preprocessor


@pytest.fixture()
def tiny_llama():
    import keras_hub

    return keras_hub.models.Llama3Backbone(
        vocabulary_size=40, num_layers=2, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=8, intermediate_dim=16,
    )


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct, loaded once per session (converted once into
    tfft's preset cache). Tests only run it; a soft prompt freezes its weights in place."""
    from tfft.prompting.causal_lm import load_causal_lm

    return load_causal_lm("offline:smollm2", sequence_length=64)
