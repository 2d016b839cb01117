"""The real labelled datasets that ship inside packages, loaded offline.

Each loader reads its files once per process (`functools.lru_cache`) and
returns a fresh `LabeledData` over copies of the cached arrays, so callers may
modify what they get back.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import logging
import os
from collections.abc import Sequence

import numpy as np

from tfft import assets

logger = logging.getLogger("tfft.data")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]


@dataclasses.dataclass
class LabeledData:
    """Examples with integer labels and the class names they index.

    Args:
        x: np.ndarray. Raw inputs: strings for text, uint8 arrays for images.
        y: np.ndarray. Integer labels in `[0, len(class_names))`, or a 2D
            multi-hot array for multilabel data.
        class_names: list of str.
        name: str. Dataset name.
        skipped: int. Records the loader skipped (`on_error="skip"`).
            Defaults to 0.
    """

    x: np.ndarray
    y: np.ndarray
    class_names: list
    name: str = ""
    skipped: int = 0

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(
                f"Inputs and labels differ in length: {len(self.x)} inputs, "
                f"{len(self.y)} labels."
            )
        y = np.asarray(self.y)
        if y.ndim == 1 and len(y) and self.class_names and y.dtype.kind in "iu":
            bad = np.flatnonzero((y < 0) | (y >= len(self.class_names)))
            if len(bad):
                raise ValueError(
                    f"Label ids must be in [0, {len(self.class_names)}) for class_names "
                    f"{list(self.class_names)}. Received: label {y[bad[0]]} at row "
                    f"{bad[0]} ({len(bad)} rows out of range)."
                )

    def __len__(self):
        return len(self.y)

    def take(self, indices: Sequence[int] | np.ndarray) -> LabeledData:
        """Returns the examples at `indices` as a new `LabeledData`."""
        indices = np.asarray(indices)
        return LabeledData(
            self.x[indices], self.y[indices], list(self.class_names), self.name, self.skipped
        )

    @property
    def modality(self) -> str:
        return "text" if self.x.dtype.kind in "OUS" else "image"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _fresh(data):
    """A `LabeledData` over copies of a cached one's arrays."""
    return LabeledData(
        data.x.copy(), data.y.copy(), list(data.class_names), data.name, data.skipped
    )


@functools.cache
def _bbc_news():
    root = assets.asset_path("bbc_news")
    class_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    texts, labels = [], []
    for label, class_name in enumerate(class_names):
        folder = os.path.join(root, class_name)
        for filename in sorted(os.listdir(folder)):
            if not filename.endswith(".txt"):
                continue
            path = os.path.join(folder, filename)
            with open(path, "rb") as f:
                raw = f.read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                # A few BBC files are Latin-1; decoding them that way loses nothing.
                text = raw.decode("latin-1")
            texts.append(text.strip())
            labels.append(label)
    return LabeledData(
        np.array(texts, dtype=object), np.array(labels, dtype=np.int64),
        [c.lower() for c in class_names], "bbc_news",
    )


def load_bbc_news() -> LabeledData:
    """BBC News topic classification: 2,225 articles, 5 classes.

    Class folders are read in sorted order, so label ids are stable across
    file systems.
    """
    return _fresh(_bbc_news())


@functools.cache
def _rotten_tomatoes():
    import pandas as pd

    path = assets.asset_path("rotten_tomatoes")
    frame = pd.read_csv(path, usecols=["category", "text"])
    missing = frame["text"].isna() | (frame["text"].astype(str).str.strip() == "")
    if missing.any():
        logger.info("rotten_tomatoes: skipped %d rows with no text", int(missing.sum()))
    frame = frame[~missing]
    class_names = sorted(frame["category"].unique())
    ids = {name: i for i, name in enumerate(class_names)}
    return LabeledData(
        np.array([t.strip() for t in frame["text"]], dtype=object),
        np.array([ids[c] for c in frame["category"]], dtype=np.int64),
        class_names, "rotten_tomatoes", skipped=int(missing.sum()),
    )


def load_rotten_tomatoes(classes: Sequence[str] | None = None) -> LabeledData:
    """Rotten Tomatoes snippets: 13,891 texts labelled fresh, plot or rotten.

    Rows with no text (14 in the file) are skipped and counted in `skipped`.

    Args:
        classes: list of str. Keep only these classes, relabelled in the
            given order, e.g. `["rotten", "fresh"]`. Defaults to all three
            (`["fresh", "plot", "rotten"]`).
    """
    data = _fresh(_rotten_tomatoes())
    return select_classes(data, classes) if classes is not None else data


def select_classes(data: LabeledData, classes: Sequence[str]) -> LabeledData:
    """Keeps the examples of `classes`, relabelled 0..len(classes)-1 in that order."""
    classes = list(classes)
    unknown = [c for c in classes if c not in data.class_names]
    if unknown or not classes:
        raise ValueError(
            f"Unknown classes for dataset {data.name!r}. Expected a non-empty subset of "
            f"{list(data.class_names)}. Received: classes={classes!r}"
        )
    old_ids = [data.class_names.index(c) for c in classes]
    mapping = np.full(len(data.class_names), -1, dtype=np.int64)
    mapping[old_ids] = np.arange(len(classes))
    keep = np.flatnonzero(mapping[data.y] >= 0)
    return LabeledData(
        data.x[keep], mapping[data.y[keep]], classes, data.name, data.skipped
    )


@functools.cache
def _mnist_5k():
    import pandas as pd

    values = pd.read_csv(assets.asset_path("mnist_5k"), header=None).to_numpy()
    images = values[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    return LabeledData(
        images, values[:, -1].astype(np.int64), [str(d) for d in range(10)], "mnist_5k"
    )


def load_mnist_5k() -> LabeledData:
    """MNIST 5k: 5,000 handwritten digits, 28x28 uint8, 500 per class."""
    return _fresh(_mnist_5k())


@functools.cache
def _lfw_subset():
    faces = np.load(assets.asset_path("lfw_subset"))
    images = np.round(faces * 255.0).astype(np.uint8)
    # The file holds 100 faces followed by 100 non-faces.
    labels = np.repeat(np.array([0, 1], dtype=np.int64), [100, len(images) - 100])
    return LabeledData(images, labels, ["face", "not_face"], "lfw_subset")


def load_lfw_subset() -> LabeledData:
    """LFW faces vs non-faces: 200 grayscale 25x25 uint8 images, 2 classes."""
    return _fresh(_lfw_subset())


@functools.cache
def _digits():
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # sklearn's pixels run 0-16; scale to the 0-255 that image pipelines expect.
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return LabeledData(
        images, bunch.target.astype(np.int64), [str(d) for d in range(10)], "digits"
    )


def load_digits() -> LabeledData:
    """scikit-learn digits: 1,797 8x8 images (pixels scaled 0-16 -> 0-255), 10 classes."""
    return _fresh(_digits())


def _read_idx(path, offset):
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def fashion_mnist_files(root: str = FASHION_MNIST_DIR) -> dict[str, str]:
    """Returns the four Fashion-MNIST IDX paths, or raises with the install line."""
    names = {
        "train_images": "train-images-idx3-ubyte.gz",
        "train_labels": "train-labels-idx1-ubyte.gz",
        "test_images": "t10k-images-idx3-ubyte.gz",
        "test_labels": "t10k-labels-idx1-ubyte.gz",
    }
    paths = {key: os.path.join(root, name) for key, name in names.items()}
    missing = [p for p in paths.values() if not os.path.exists(p)]
    if missing:
        raise assets.AssetNotFoundError(
            f"Fashion-MNIST is not installed: {missing[0]} does not exist. Install the "
            "Debian package with `apt-get install dataset-fashion-mnist` (or run "
            "`make test`, which tries to)."
        )
    return paths


@functools.cache
def _fashion_mnist(root):
    paths = fashion_mnist_files(root)
    result = {}
    for split in ("train", "test"):
        images = _read_idx(paths[f"{split}_images"], 16).reshape(-1, 28, 28)
        labels = _read_idx(paths[f"{split}_labels"], 8).astype(np.int64)
        result[split] = LabeledData(
            images, labels, list(FASHION_MNIST_CLASSES), "fashion_mnist_local"
        )
    return result


def load_fashion_mnist(split: str = "train", root: str = FASHION_MNIST_DIR) -> LabeledData:
    """Fashion-MNIST from the Debian package: 60,000 train / 10,000 test, 28x28 uint8.

    Args:
        split: str. `"train"` or `"test"`. Defaults to `"train"`.
        root: str. Folder of the four `*-idx*-ubyte.gz` files.
            Defaults to `/usr/share/datasets/fashion-mnist`.
    """
    if split not in ("train", "test"):
        raise ValueError(f"Expected split 'train' or 'test'. Received: split={split!r}")
    return _fresh(_fashion_mnist(root)[split])


TEXT_DATASETS = {"bbc_news": load_bbc_news, "rotten_tomatoes": load_rotten_tomatoes}
IMAGE_DATASETS = {
    "mnist_5k": load_mnist_5k,
    "lfw_subset": load_lfw_subset,
    "digits": load_digits,
    "fashion_mnist_local": load_fashion_mnist,
}
