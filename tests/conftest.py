"""Shared fixtures: real offline assets loaded once per session, tiny models, checks."""

import os

import keras
import numpy as np
import pytest

import tfft  # noqa: F401  importing tfft selects the TensorFlow backend

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "the a of to and in is on for with news sport game team win match election vote "
    "party minister market shares profit bank film music star award phone software "
    "computer internet".split()
)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real offline pretrained assets (still run in CI)")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Feature caches go to a per-session folder unless the caller chose one."""
    if "TFFT_CACHE_DIR" not in os.environ:
        # Converted presets (EfficientNet, SmolLM2) stay in the user cache, which
        # is slow to rebuild; only feature caches are isolated.
        os.environ["TFFT_FEATURE_CACHE_DIR"] = str(tmp_path_factory.mktemp("features"))
    yield


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 backbone at a short sequence length."""
    return tfft.load_backbone("minilm", sequence_length=64)


@pytest.fixture(scope="session")
def bbc():
    from tfft.data import load_bbc_news

    return load_bbc_news()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    import keras_hub

    return keras_hub.models.BertTokenizer(vocabulary=VOCAB)


@pytest.fixture(scope="session")
def tiny_text_preprocessor(tiny_tokenizer):
    import keras_hub

    return keras_hub.models.BertTextClassifierPreprocessor(tiny_tokenizer, sequence_length=16)


def make_tiny_bert(num_layers=3, seed=0):
    import keras_hub

    keras.utils.set_random_seed(seed)
    return keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCAB), num_layers=num_layers, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=16,
    )


@pytest.fixture
def tiny_bert():
    return make_tiny_bert()


@pytest.fixture
def tiny_text_backbone(tiny_text_preprocessor):
    """A tiny random BERT wrapped as a tfft Backbone with a real preprocessor."""
    backbone = tfft.load_backbone(make_tiny_bert())
    backbone.preprocessor = tiny_text_preprocessor
    return backbone


def tiny_text_batch(n=16, seed=0, length=16):
    rng = np.random.default_rng(seed)
    mask = np.ones((n, length), dtype="int32")
    for i in range(n):
        mask[i, rng.integers(4, length):] = 0
    return {
        "token_ids": rng.integers(5, len(VOCAB), (n, length)).astype("int32") * mask,
        "segment_ids": np.zeros((n, length), dtype="int32"),
        "padding_mask": mask,
    }


@pytest.fixture
def text_batch():
    return tiny_text_batch()


@pytest.fixture
def tiny_cnn():
    """A small random MobileNetV2 (has BatchNorm), 32x32 inputs."""
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.35
    )


@pytest.fixture
def assert_round_trip(tmp_path):
    """Saves a model as .keras, reloads it, and compares outputs."""

    def check(model, x, atol=1e-6):
        path = str(tmp_path / "model.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
        want = model.predict(x, verbose=0)
        got = reloaded.predict(x, verbose=0)
        np.testing.assert_allclose(got, want, atol=atol)
        return reloaded

    return check


@pytest.fixture
def assert_step_changes_only_trainable():
    """One training step changes every trainable variable and no other."""

    def check(model, x, y):
        before = {id(w): np.array(w.numpy()) for w in model.weights}
        model.train_on_batch(x, y)
        trainable = {id(w) for w in model.trainable_weights}
        changed, unchanged_trainable = [], []
        for w in model.weights:
            moved = not np.array_equal(before[id(w)], w.numpy())
            if id(w) in trainable and not moved:
                unchanged_trainable.append(w.path)
            if id(w) not in trainable and moved:
                changed.append(w.path)
        assert not changed, f"frozen variables changed: {changed[:5]}"
        assert not unchanged_trainable, (
            f"trainable variables did not move: {unchanged_trainable[:5]}"
        )

    return check


@pytest.fixture(scope="session")
def finetune_run(tmp_path_factory):
    """The real main job at reduced size, run once per session.

    300 BBC News articles, sequence length 64, one fine-tuning epoch.
    """
    root = tmp_path_factory.mktemp("finetune")
    report = tfft.finetune(
        max_examples=300, sequence_length=64, batch_size=16, head_epochs=15, epochs=1,
        run_dir=str(root / "run"), export_dir=str(root / "saved_models" / "bbc_small"),
        verbose=0,
    )
    return report
