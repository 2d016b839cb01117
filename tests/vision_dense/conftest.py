"""Session fixtures for dense vision tasks: a written scene dataset and a tiny CNN backbone."""

import keras
import pytest

from tfft.backbones import Backbone, BackboneInfo
from tfft.data.synthetic_scenes import make_scenes, write_scene_dataset
from tfft.layers import NORMALISATIONS, ImagePreprocessor

TINY_SIZE = (64, 64)


@pytest.fixture(scope="session")
def scene_dir(tmp_path_factory):
    """24 training and 8 test scenes (128x128, digits 0-2) written as PNG files."""
    return write_scene_dataset(tmp_path_factory.mktemp("scenes") / "scenes", num_train=24,
                               num_test=8, seed=0)


@pytest.fixture(scope="session")
def tiny_scenes():
    return make_scenes(64, seed=1, image_size=TINY_SIZE, max_digits=2)


@pytest.fixture
def tiny_backbone():
    """Builds a random 5-stage CNN (strides 2-32) with BatchNorm, as a tfft Backbone."""
    return _tiny_backbone


def _tiny_backbone(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*TINY_SIZE, 3))
    x = inputs
    blocks = []
    for stage, filters in enumerate((8, 12, 16, 24, 32)):
        conv = f"stage{stage}_conv"
        bn = f"stage{stage}_bn"
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False,
                                name=conv)(x)
        x = keras.layers.BatchNormalization(name=bn)(x)
        x = keras.layers.ReLU(name=f"stage{stage}_relu")(x)
        blocks.append([conv, bn, f"stage{stage}_relu"])
    model = keras.Model(inputs, x, name="tiny_cnn")
    info = BackboneInfo(name="tiny_cnn", source="model", modality="image", family="cnn",
                        input_size=TINY_SIZE)
    return Backbone(model, info, preprocessor=ImagePreprocessor(TINY_SIZE, **NORMALISATIONS["tf"]),
                    block_names=blocks)
