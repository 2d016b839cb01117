"""Data: the bundled real datasets, splits and tf.data pipelines."""

from tfft.data.datasets import TEXT_DATASETS, LabeledData, load_bbc_news
from tfft.data.splits import stratified_split

__all__ = ["TEXT_DATASETS", "LabeledData", "load_bbc_news", "stratified_split"]
