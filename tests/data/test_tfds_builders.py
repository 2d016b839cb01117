import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfft  # noqa: F401
import tfft.data as td
from tfft.data import datasets, tfds_builders


def test_offline_datasets_registered_with_tfds():
    names = set(tfds.list_builders())
    for name in ("bbc_news", "rotten_tomatoes", "mnist_5k", "lfw_subset", "digits",
                 "fashion_mnist_local"):
        assert name in names
    assert sorted(tfds_builders.BUILDERS) == td.OFFLINE_DATASETS
    # Builder bases are not datasets.
    assert "_offline_builder" not in names and "_text_builder" not in names


def test_builder_metadata_without_preparing(tmp_path):
    builder = tfds.builder("bbc_news", data_dir=str(tmp_path))
    info = builder.info
    assert info.supervised_keys == ("text", "label")
    assert info.features["label"].names == [
        "business", "entertainment", "politics", "sports", "tech"]
    assert "BBC" in info.description and info.homepage
    assert not builder.is_prepared()


@pytest.mark.slow
def test_tfds_load_digits_fixed_stratified_splits(tfds_dir):
    splits, info = tfds.load("digits", data_dir=tfds_dir, with_info=True, as_supervised=True)
    sizes = {name: info.splits[name].num_examples for name in ("train", "validation", "test")}
    assert sizes == {"train": 1257, "validation": 270, "test": 270}
    image, label = next(iter(splits["train"]))
    assert image.shape == (8, 8, 1) and image.dtype.name == "uint8"
    assert 0 <= int(label) < 10
    # Matches the raw loader's split exactly: same seed, same stratified indices.
    raw = td.load_digits()
    _, _, test_idx = td.stratified_split(raw.y, 0.15, 0.15, seed=tfds_builders.SPLIT_SEED)
    test = td.load("digits", split="test", data_dir=tfds_dir)
    assert sorted(test.y.tolist()) == sorted(raw.y[test_idx].tolist())
    assert np.bincount(test.y).min() >= 26  # stratified: every digit present


@pytest.mark.slow
def test_load_lfw_subset_all_splits(tfds_dir):
    parts = td.load("lfw_subset", data_dir=tfds_dir)
    assert set(parts) == {"train", "validation", "test"}
    assert [len(parts[s]) for s in ("train", "validation", "test")] == [140, 30, 30]
    train = parts["train"]
    assert train.class_names == ["face", "not_face"]
    assert train.x.shape == (140, 25, 25, 1) and train.x.dtype == np.uint8
    assert np.bincount(train.y).tolist() == [70, 70]
    # The pixels are the raw file's, not a re-encoding artefact.
    raw = td.load_lfw_subset()
    raw_set = {img.tobytes() for img in raw.x}
    assert all(img[..., 0].tobytes() in raw_set for img in train.x)


@pytest.mark.slow
def test_load_bbc_news_train_split(tfds_dir):
    train = td.load("bbc_news", split="train", data_dir=tfds_dir)
    assert len(train) == 1557 and train.modality == "text"
    assert train.class_names == td.load_bbc_news().class_names
    assert isinstance(train.x[0], str) and len(train.x[0]) > 100
    counts = np.bincount(train.y)
    np.testing.assert_allclose(counts / counts.sum(), [510 / 2225, 386 / 2225, 417 / 2225,
                                                       511 / 2225, 401 / 2225], atol=0.01)
    # Plain tfds.load finds it too, once tfft.data is imported.
    ds = tfds.load("bbc_news", split="test", data_dir=tfds_dir, as_supervised=True)
    assert sum(1 for _ in ds) == 334
    with pytest.raises(ValueError, match="Unknown split"):
        td.load("bbc_news", split="nope", data_dir=tfds_dir)


def test_fashion_mnist_missing_package_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        datasets.load_fashion_mnist("train", root=str(tmp_path))


@pytest.mark.slow
def test_rotten_tomatoes_and_mnist_5k_splits(tfds_dir):
    reviews = td.load("rotten_tomatoes", split="validation", data_dir=tfds_dir)
    assert reviews.class_names == ["fresh", "plot", "rotten"]
    assert len(reviews) == round(13891 * 0.15)
    assert np.bincount(reviews.y).min() > 100  # "plot" (8% of rows) present too
    digits = td.load("mnist_5k", split="test", data_dir=tfds_dir)
    assert digits.x.shape == (750, 28, 28, 1)
    assert np.bincount(digits.y).tolist() == [75] * 10


@pytest.mark.slow
def test_fashion_mnist_local_official_test_split(tfds_dir):
    info = tfds.builder("fashion_mnist_local", data_dir=tfds_dir).info
    assert info.features["label"].names[0] == "t-shirt/top"
    test = td.load("fashion_mnist_local", split="test[:2000]", data_dir=tfds_dir)
    assert test.x.shape == (2000, 28, 28, 1)
    splits = tfds.builder("fashion_mnist_local", data_dir=tfds_dir).info.splits
    assert [splits[s].num_examples for s in ("train", "validation", "test")] == [
        50000, 10000, 10000]
