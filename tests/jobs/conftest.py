"""Fixtures of the own-data job tests: tiny KerasHub presets on disk, and data writers.

The tiny presets are real KerasHub preset folders (`keras_hub:<folder>` specs), so
`tfft.run_job` loads them the way it loads a user's own: a 2-layer BERT with a
word-level vocabulary, and a small ResNet (with BatchNorm) with its image converter.
"""

import io
import os

import keras
import numpy as np
import pandas as pd
import pytest

SPORT = ("match", "team", "win", "goal")
MONEY = ("market", "shares", "profit", "bank")
ARTS = ("film", "music", "star", "award")
FILLER = ("the", "a", "of", "and", "in")
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, *SPORT, *MONEY, *ARTS]
TOPICS = {"sport": SPORT, "money": MONEY, "arts": ARTS}
IMAGE_SIZE = 32


@pytest.fixture(scope="session")
def tiny_presets(tmp_path_factory):
    """`{"text": folder, "image": folder}`: tiny KerasHub presets saved with their preprocessing."""
    import keras_hub

    root = tmp_path_factory.mktemp("tiny_presets")
    keras.utils.set_random_seed(0)
    text = str(root / "tiny_bert")
    keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCAB), num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=16,
    ).save_to_preset(text)
    keras_hub.models.BertTextClassifierPreprocessor(
        keras_hub.models.BertTokenizer(vocabulary=VOCAB), sequence_length=16,
    ).save_to_preset(text)
    image = str(root / "tiny_resnet")
    keras_hub.models.ResNetBackbone(
        input_conv_filters=[16], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2],
        block_type="bottleneck_block", use_pre_activation=False,
        image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
    ).save_to_preset(image)
    keras_hub.layers.ResNetImageConverter(
        image_size=(IMAGE_SIZE, IMAGE_SIZE), scale=1 / 255.0,
    ).save_to_preset(image)
    return {"text": text, "image": image}


def topic_text(rng, topics, words=8):
    """A sentence of filler words and words of `topics` (their order shuffled)."""
    pool = [w for t in topics for w in TOPICS[t]]
    chosen = list(rng.choice(pool, size=words // 2)) + list(rng.choice(FILLER, size=words // 2))
    rng.shuffle(chosen)
    return " ".join(chosen)


def write_csv(path, columns, rows):
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return str(path)


def write_png(path, image):
    from PIL import Image

    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path, format="PNG")


def png_bytes(image):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image_folders(root, images_by_class):
    """One subfolder of PNG files per class: `root/<class>/<i>.png`."""
    for name, images in images_by_class.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i, image in enumerate(images):
            write_png(os.path.join(root, name, f"{i:03d}.png"), image)
    return str(root)


@pytest.fixture(scope="session")
def kit():
    """The writers and constants above, for the test modules (conftest is not importable)."""
    import types

    return types.SimpleNamespace(
        SPORT=SPORT, MONEY=MONEY, ARTS=ARTS, TOPICS=TOPICS, IMAGE_SIZE=IMAGE_SIZE,
        topic_text=topic_text, write_csv=write_csv, write_png=write_png, png_bytes=png_bytes,
        write_image_folders=write_image_folders,
    )
