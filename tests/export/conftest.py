"""Fixtures for export tests: tiny text and image models with real preprocessors."""

import keras
import numpy as np
import pytest

import tfft

TEXTS = [
    "the team win the match",
    "shares and profit at the bank",
    "film star award",
    "the minister and the election vote",
    "phone software on the internet",
    "",
]


def _make_text_model(preprocessor, task="multiclass", num_classes=3, seed=0):
    import keras_hub

    keras.utils.set_random_seed(seed)
    bert = keras_hub.models.BertBackbone(
        vocabulary_size=preprocessor.tokenizer.vocabulary_size(), num_layers=2, num_heads=2,
        hidden_dim=8, intermediate_dim=16, max_sequence_length=16,
    )
    backbone = tfft.load_backbone(bert)
    backbone.preprocessor = preprocessor
    model = tfft.build_model(backbone, task=task, num_classes=num_classes, dropout=0.0,
                             compile=False)
    # Larger head weights so outputs differ clearly between inputs.
    head = model.get_layer("head")
    kernel = head.output_layer.kernel
    kernel.assign(np.random.default_rng(seed).normal(0, 2.0, kernel.shape).astype("float32"))
    return model


@pytest.fixture(scope="session")
def make_text_model(tiny_text_preprocessor):
    """Factory: a tiny BERT tfft model with the tiny real BERT preprocessor."""

    def make(task="multiclass", num_classes=3, seed=0):
        return _make_text_model(tiny_text_preprocessor, task, num_classes, seed)

    return make


@pytest.fixture
def texts():
    return np.array(TEXTS)


def calibrated_cnn_backbone(input_size=32, seed=0):
    """A tiny random MobileNetV2 whose BatchNorm statistics fit random images.

    With `weights=None` the moving statistics are 0/1 and the features vanish
    (~1e-11); one training-mode pass with momentum 0 sets them from a batch, so
    outputs differ between inputs and parity checks can fail.
    """
    keras.utils.set_random_seed(seed)
    backbone = tfft.load_backbone("keras_app:MobileNetV2", weights=None, alpha=0.35,
                                  input_size=input_size)
    images = np.random.default_rng(seed + 1).integers(
        0, 256, (64, input_size, input_size, 3)).astype("uint8")
    batch_norms = [layer for layer in backbone.model.layers
                   if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in batch_norms:
        layer.momentum = 0.0
    backbone.model(np.asarray(backbone.preprocessor(images)), training=True)
    for layer in batch_norms:
        layer.momentum = 0.99
    return backbone


@pytest.fixture
def cnn_backbone():
    return calibrated_cnn_backbone()


@pytest.fixture(scope="module")
def image_model():
    backbone = calibrated_cnn_backbone()
    return tfft.build_model(backbone, task="multiclass", num_classes=3, dropout=0.0,
                            compile=False)


@pytest.fixture
def images():
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (h, w, 3)).astype("uint8")
            for h, w in ((32, 32), (48, 40), (20, 36), (32, 32))]
