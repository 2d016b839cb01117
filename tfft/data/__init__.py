"""Data: the bundled real datasets, splits and tf.data pipelines.

Importing this package registers the offline datasets with TFDS
(`tfds.load("bbc_news")`, see `tfft.data.tfds_builders`).
"""

from tfft.data import tfds_builders
from tfft.data.datasets import (
    IMAGE_DATASETS,
    TEXT_DATASETS,
    LabeledData,
    load_bbc_news,
    load_digits,
    load_fashion_mnist,
    load_lfw_subset,
    load_mnist_5k,
    load_rotten_tomatoes,
    select_classes,
)
from tfft.data.labels import LabelEncoder, class_weights, multi_hot
from tfft.data.masks import flip_with_mask, segmentation_dataset
from tfft.data.pipeline import (
    AUTOTUNE,
    bucket_by_length,
    default_bucket_boundaries,
    make_dataset,
    make_text_dataset,
    pipeline_options,
)
from tfft.data.sources import DatasetUnavailableError, load
from tfft.data.splits import split_data, stratified_split
from tfft.data.synthetic_scenes import Scenes, make_scenes, write_scene_dataset
from tfft.data.tfds_builders import OFFLINE_DATASETS
from tfft.data.user_data import (
    DATA_TASKS,
    DataSpec,
    add_data_arguments,
    data_spec_from_args,
    load_data_spec,
)

__all__ = [
    "AUTOTUNE",
    "DATA_TASKS",
    "IMAGE_DATASETS",
    "OFFLINE_DATASETS",
    "TEXT_DATASETS",
    "DataSpec",
    "DatasetUnavailableError",
    "LabelEncoder",
    "LabeledData",
    "Scenes",
    "add_data_arguments",
    "bucket_by_length",
    "class_weights",
    "data_spec_from_args",
    "default_bucket_boundaries",
    "flip_with_mask",
    "load",
    "load_bbc_news",
    "load_data_spec",
    "load_digits",
    "load_fashion_mnist",
    "load_lfw_subset",
    "load_mnist_5k",
    "load_rotten_tomatoes",
    "make_dataset",
    "make_scenes",
    "make_text_dataset",
    "multi_hot",
    "pipeline_options",
    "segmentation_dataset",
    "select_classes",
    "split_data",
    "stratified_split",
    "tfds_builders",
    "write_scene_dataset",
]
