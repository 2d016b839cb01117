"""The real labelled datasets that ship inside packages, loaded offline."""

import dataclasses
import os

import numpy as np

from tfft import assets


@dataclasses.dataclass
class LabeledData:
    """Examples with integer labels and the class names they index.

    Args:
        x: np.ndarray. Raw inputs: strings for text, uint8 arrays for images.
        y: np.ndarray. Integer labels in `[0, len(class_names))`.
        class_names: list of str.
        name: str. Dataset name.
    """

    x: np.ndarray
    y: np.ndarray
    class_names: list
    name: str = ""

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(
                f"Inputs and labels differ in length: {len(self.x)} inputs, "
                f"{len(self.y)} labels."
            )

    def __len__(self):
        return len(self.y)

    def take(self, indices):
        """Returns the examples at `indices` as a new `LabeledData`."""
        indices = np.asarray(indices)
        return LabeledData(self.x[indices], self.y[indices], list(self.class_names), self.name)

    @property
    def modality(self):
        return "text" if self.x.dtype.kind in "OUS" else "image"


def load_bbc_news():
    """BBC News topic classification: 2,225 articles, 5 classes.

    Class folders are read in sorted order, so label ids are stable across
    file systems.
    """
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


TEXT_DATASETS = {"bbc_news": load_bbc_news}
