import numpy as np
import pytest

import tfft  # noqa: F401
import tfft.data as td


@pytest.mark.slow
def test_bbc_news_contents_and_copies():
    data = td.load_bbc_news()
    assert len(data) == 2225
    assert np.bincount(data.y).tolist() == [510, 386, 417, 511, 401]
    data.x[0] = "changed"
    data.y[0] = 4
    again = td.load_bbc_news()
    assert again.x[0] != "changed" and again.y[0] == 0  # the cache is not mutated


@pytest.mark.slow
def test_rotten_tomatoes_counts_and_class_selection():
    data = td.load_rotten_tomatoes()
    assert data.class_names == ["fresh", "plot", "rotten"]
    # 14 plot rows have no text: skipped and counted, not silently dropped.
    assert np.bincount(data.y).tolist() == [7403, 1083, 5405]
    assert data.skipped == 14 and len(data) + data.skipped == 13905
    assert all(isinstance(t, str) and t for t in data.x[:100])
    binary = td.load_rotten_tomatoes(classes=["rotten", "fresh"])
    assert binary.class_names == ["rotten", "fresh"]
    full_counts = np.bincount(data.y)
    assert np.bincount(binary.y).tolist() == [full_counts[2], full_counts[0]]
    with pytest.raises(ValueError, match="Expected a non-empty subset"):
        td.load_rotten_tomatoes(classes=["meh"])


@pytest.mark.slow
def test_image_loaders_shapes_and_labels():
    mnist = td.load_mnist_5k()
    assert mnist.x.shape == (5000, 28, 28) and mnist.x.dtype == np.uint8
    assert np.bincount(mnist.y).tolist() == [500] * 10
    assert mnist.x.max() == 255
    lfw = td.load_lfw_subset()
    assert lfw.x.shape == (200, 25, 25) and lfw.y[:100].tolist() == [0] * 100
    digits = td.load_digits()
    assert digits.x.shape == (1797, 8, 8) and digits.x.max() == 255


@pytest.mark.slow
def test_fashion_mnist_from_debian_package():
    test = td.load_fashion_mnist("test")
    assert test.x.shape == (10000, 28, 28) and test.x.dtype == np.uint8
    assert np.bincount(test.y).tolist() == [1000] * 10
    assert test.class_names[9] == "ankle boot"
    with pytest.raises(ValueError, match="'train' or 'test'"):
        td.load_fashion_mnist("validation")
