"""MNIST-5k and Fashion-MNIST are trained on, not only loaded.

A small CNN learns each dataset's fixed `train` split (as `tfft.data.load`
prepares it through TFDS, offline) and is scored on the `test` split, which
it never saw: labels or images scrambled by a loader (a wrong IDX offset, a
label column mixed up, splits overlapping with shuffled labels) bring the
accuracy down to chance. Fashion-MNIST comes from the Debian package
`dataset-fashion-mnist`: where it is missing the test fails and says how to
install it, it does not skip.
"""

import keras
import numpy as np
import pytest

import tfft  # noqa: F401  (sets the Keras backend first)
import tfft.data as td

pytestmark = pytest.mark.slow


def _train_small_cnn(train, test, epochs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(train.x, train.y, epochs=epochs, batch_size=64, verbose=0)
    predicted = model.predict(test.x, batch_size=256, verbose=0).argmax(-1)
    accuracy = float(np.mean(predicted == test.y))
    majority = np.bincount(test.y).max() / len(test.y)
    return accuracy, majority


def test_small_cnn_learns_mnist_5k(tfds_dir):
    train = td.load("mnist_5k", split="train", data_dir=tfds_dir)
    test = td.load("mnist_5k", split="test", data_dir=tfds_dir)
    assert train.x.shape[1:] == (28, 28, 1) and len(train) == 3500 and len(test) == 750
    accuracy, majority = _train_small_cnn(train, test, epochs=3)
    print(f"MNIST-5k test accuracy {accuracy:.3f} (majority {majority:.2f})")
    assert majority == 0.1
    assert accuracy > 0.9  # chance is 0.1


def test_small_cnn_learns_fashion_mnist(tfds_dir):
    # No skip: without the Debian package this raises FileNotFoundError naming
    # `apt-get install dataset-fashion-mnist`.
    td.datasets.fashion_mnist_files()
    train = td.load("fashion_mnist_local", split="train[:6000]", data_dir=tfds_dir)
    test = td.load("fashion_mnist_local", split="test[:2000]", data_dir=tfds_dir)
    assert train.class_names[0] == "t-shirt/top" and train.x.shape[1:] == (28, 28, 1)
    accuracy, majority = _train_small_cnn(train, test, epochs=2)
    print(f"Fashion-MNIST test accuracy {accuracy:.3f} (majority {majority:.2f})")
    assert majority < 0.15
    assert accuracy > 0.75  # chance is 0.1
