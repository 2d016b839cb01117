"""A user's own labelled data, described once: `DataSpec`, its loader and its CLI flags.

`tfft finetune`, `tfft select` and `tfft evaluate` take the same `--data`
sources (a CSV/TSV/JSONL file, a folder of class subfolders of texts or
images, or a TFDS name) with the same column, task and split options, all
through this module, which builds on `tfft.data.load`.

Example:

>>> spec = DataSpec("reviews.csv", text_column="review", label_column="stars",
...                 task="regression")
>>> splits = load_data_spec(spec)   # {"all": LabeledData} (illustrative)
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import math
import os
import re
from typing import Any

import numpy as np

from tfft.data.datasets import LabeledData
from tfft.data.sources import ON_ERROR, load
from tfft.data.splits import stratified_split

DATA_TASKS = ("multiclass", "binary", "multilabel", "regression")
DEFAULT_LABEL_SEPARATOR = "|"
# TFDS split names that count as a validation split.
VAL_SPLIT_NAMES = ("validation", "val", "valid", "dev")
# A DataSpec field -> the command-line flag that sets it (see `add_data_arguments`).
FLAGS = {
    "source": "--data",
    "val_source": "--val-data",
    "test_source": "--test-data",
    "text_column": "--text-column",
    "label_column": "--label-column",
    "task": "--task",
    "label_separator": "--label-separator",
    "class_names": "--class-names",
    "on_error": "--on-error",
    "image_size": "--image-size",
    "encoding": "--encoding",
}


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where a user's labelled data is and how to read it.

    Args:
        source: str. A CSV/TSV/JSONL file, a folder with one subfolder of
            `.txt` or image files per class, or a TFDS dataset name (whose
            own splits are used).
        val_source: str or None. A validation file or folder. Defaults to None.
        test_source: str or None. A test file or folder. Defaults to None.
        text_column: str. The input column of a CSV/JSONL file: texts, or
            image file paths relative to the file. Defaults to `"text"`.
        label_column: str. The label (or regression target) column.
            Defaults to `"label"`.
        task: str. One of `DATA_TASKS`: `"multiclass"`, `"binary"` (exactly two
            classes), `"multilabel"` (label cells list labels split by
            `label_separator`) or `"regression"` (numeric targets).
            Defaults to `"multiclass"`.
        label_separator: str or None. Splits a multilabel cell such as
            `"sport|politics"`. Defaults to `"|"` for `task="multilabel"`;
            only valid for that task.
        class_names: tuple of str or None. The declared classes in id order;
            a label outside them is an error. Defaults to the labels found.
        on_error: str. `"raise"` (default): a bad row or unreadable file is an
            error naming it. `"skip"`: bad records are dropped, counted in
            `LabeledData.skipped` and logged.
        image_size: tuple `(height, width)` or None. Resize images to this
            size; needed when they differ in size. Defaults to None.
        encoding: str. Text encoding of files. Defaults to `"utf-8"`.
    """

    source: str
    val_source: str | None = None
    test_source: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    task: str = "multiclass"
    label_separator: str | None = None
    class_names: tuple[str, ...] | None = None
    on_error: str = "raise"
    image_size: tuple[int, int] | None = None
    encoding: str = "utf-8"

    def __post_init__(self):
        for field in ("source", "val_source", "test_source"):
            value = getattr(self, field)
            if value is None and field != "source":
                continue
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
                object.__setattr__(self, field, value)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(
                    f"{field} must be a file, a folder or a TFDS dataset name. "
                    f"Received: {field}={value!r}"
                )
        for field in ("text_column", "label_column", "encoding"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value:
                raise ValueError(
                    f"{field} must be a non-empty string. Received: {field}={value!r}"
                )
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(
                f"Unknown encoding={self.encoding!r}. Use a Python codec name such as "
                "utf-8, latin-1 or cp1252."
            ) from None
        if self.text_column == self.label_column:
            raise ValueError(
                "text_column and label_column must differ. Received: both "
                f"{self.text_column!r}"
            )
        if self.task not in DATA_TASKS:
            raise ValueError(
                f"Unknown task. Expected one of {list(DATA_TASKS)}. Received: task={self.task!r}"
            )
        if self.on_error not in ON_ERROR:
            raise ValueError(
                f"Expected on_error in {list(ON_ERROR)}. Received: on_error={self.on_error!r}"
            )
        if self.label_separator is not None:
            if self.task != "multilabel":
                raise ValueError(
                    "label_separator is only for task='multilabel'. Received: "
                    f"label_separator={self.label_separator!r} with task={self.task!r}"
                )
            if not isinstance(self.label_separator, str) or not self.label_separator:
                raise ValueError(
                    "label_separator must be a non-empty string such as '|'. Received: "
                    f"label_separator={self.label_separator!r}"
                )
        elif self.task == "multilabel":
            object.__setattr__(self, "label_separator", DEFAULT_LABEL_SEPARATOR)
        if self.class_names is not None:
            names = self.class_names
            if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
                raise ValueError(
                    "class_names must be a list of non-empty strings. Received: "
                    f"class_names={names!r}"
                )
            names = tuple(names)
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(
                    f"class_names must be distinct. Received duplicates {duplicates} in "
                    f"class_names={list(names)!r}"
                )
            if self.task == "regression":
                raise ValueError(
                    "A regression target has no classes: drop class_names or pick a "
                    f"classification task. Received: class_names={list(names)!r}"
                )
            minimum = 2 if self.task in ("multiclass", "binary") else 1
            if len(names) < minimum or (self.task == "binary" and len(names) != 2):
                expected = "exactly 2" if self.task == "binary" else f"at least {minimum}"
                raise ValueError(
                    f"task={self.task!r} needs {expected} class_names. Received: "
                    f"class_names={list(names)!r}"
                )
            object.__setattr__(self, "class_names", names)
        if self.image_size is not None:
            size = self.image_size
            if (
                isinstance(size, str)
                or len(size) != 2
                or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size)
            ):
                raise ValueError(
                    "image_size must be two positive integers (height, width). Received: "
                    f"image_size={size!r}"
                )
            object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON/YAML-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        for key in ("class_names", "image_size"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> DataSpec:
        """A spec from a dict such as a config file's `data:` section."""
        if not isinstance(config, dict):
            raise TypeError(
                f"A data config must be a mapping. Received: {type(config).__name__}"
            )
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(config) - set(fields))
        if unknown:
            raise ValueError(f"Unknown data keys {unknown}. Expected keys among {fields}.")
        config = dict(config)
        for key in ("class_names", "image_size"):
            if isinstance(config.get(key), list):
                config[key] = tuple(config[key])
        return cls(**config)


def load_data_spec(spec: DataSpec, *, require_classes: bool = True) -> dict[str, LabeledData]:
    """Loads a `DataSpec` into named splits, checked against its task.

    Args:
        spec: `DataSpec`.
        require_classes: bool. A classification needs at least two classes
            among the training labels (exactly two for `"binary"`); False
            skips that check, e.g. to score a model on a file that holds one
            class. Defaults to True.

    Returns:
        dict. `{"all": data}` when no split is given (the caller splits it);
        otherwise `"train"` plus `"val"` and/or `"test"` for the splits given
        by `val_source`, `test_source` or a TFDS dataset's own splits
        (`validation`/`val`/`dev` count as `"val"`). Every split shares the
        training data's class names.
    """
    if not isinstance(spec, DataSpec):
        raise TypeError(f"spec must be a DataSpec. Received: {type(spec).__name__}")
    main = _load(spec, spec.source, spec.class_names)
    splits = _tfds_splits(spec.source, main) if isinstance(main, dict) else {"all": main}
    first = splits.get("train", splits.get("all"))
    class_names = spec.class_names
    if spec.task != "regression":
        class_names = tuple(first.class_names)
    for key, source in (("val", spec.val_source), ("test", spec.test_source)):
        if source is None:
            continue
        loaded = _load(spec, source, class_names)
        if isinstance(loaded, dict):
            raise ValueError(
                f"{FLAGS[key + '_source'][2:]} {source!r} is a TFDS dataset with splits "
                f"{sorted(loaded)}; pass a file or a folder, or give the TFDS name as the "
                "main source to use its own splits."
            )
        splits[key] = loaded
    if "all" in splits and len(splits) > 1:
        splits = {"train": splits.pop("all"), **splits}
    for key, data in splits.items():
        _check_task(spec, data, key, require_classes and key in ("all", "train"))
    return splits


def _load(spec, source, class_names):
    return load(
        source,
        text_column=spec.text_column,
        label_column=spec.label_column,
        class_names=list(class_names) if class_names else None,
        label_separator=spec.label_separator if spec.task == "multilabel" else None,
        image_size=spec.image_size,
        encoding=spec.encoding,
        on_error=spec.on_error,
        regression=spec.task == "regression",
    )


def _tfds_splits(name, splits):
    """Maps a TFDS dataset's splits onto train/val/test; only a train split means `all`."""
    train = splits.get("train")
    if train is None:
        raise ValueError(
            f"The TFDS dataset {name!r} has no 'train' split (it has {sorted(splits)}). "
            "Prepare a file or folder from the split you want to train on."
        )
    out = {"train": train}
    val = next((splits[s] for s in VAL_SPLIT_NAMES if s in splits), None)
    if val is not None:
        out["val"] = val
    if "test" in splits:
        out["test"] = splits["test"]
    return out if len(out) > 1 else {"all": train}


def _check_task(spec, data, key, require_classes):
    where = f"the {key} data ({data.name or spec.source})"
    y = np.asarray(data.y)
    if spec.task == "regression":
        if y.ndim != 1 or y.dtype.kind != "f":
            raise ValueError(
                f"task='regression' needs one numeric target per row; {where} holds "
                f"labels of shape {y.shape} and dtype {y.dtype}."
            )
        return
    if spec.task == "multilabel":
        if y.ndim != 2:
            raise ValueError(
                f"task='multilabel' needs label cells split by label_separator "
                f"{spec.label_separator!r}; {where} holds one class per row. A folder of "
                "class subfolders is single-label: use task='multiclass'."
            )
        return
    if y.ndim != 1:
        raise ValueError(f"task={spec.task!r} needs one class per row; {where} holds {y.shape}.")
    if spec.task == "binary" and len(data.class_names) != 2:
        raise ValueError(
            f"task='binary' needs exactly two classes; {where} has "
            f"{len(data.class_names)}: {list(data.class_names)[:20]}. Use task='multiclass' "
            "for more, or keep two classes."
        )
    if require_classes:
        present = np.unique(y)
        if len(present) < 2:
            only = data.class_names[int(present[0])] if len(present) else None
            raise ValueError(
                f"{where} holds one class only ({only!r}, {len(y)} rows): a classifier "
                "needs examples of at least two classes. Check label_column, or add "
                "examples of the other classes."
            )


def split_indices(
    y: np.ndarray, task: str, val_fraction: float = 0.15, test_fraction: float = 0.15,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/validation/test indices for data of `task`, the same for the same seed.

    Classification labels get `stratified_split`; regression targets and
    multi-hot rows, which have no single class to stratify on, a seeded
    shuffle: the first `ceil(n * val_fraction)` shuffled rows validate, the
    next `ceil(n * test_fraction)` test. `tfft finetune` and `tfft evaluate`
    both split with this, so evaluate rebuilds the job's test split.

    Returns:
        `(train_idx, val_idx, test_idx)`, sorted int arrays.
    """
    if task not in DATA_TASKS:
        raise ValueError(f"Unknown task. Expected one of {list(DATA_TASKS)}. Received: {task!r}")
    y = np.asarray(y)
    if task in ("multiclass", "binary"):
        return stratified_split(y, val_fraction, test_fraction, seed)
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1). Received: {name}={value!r}")
    # Rounded before the ceiling: 20 * 0.3 is 6.000000000000001, which must give 6.
    n_val = math.ceil(round(len(y) * val_fraction, 9))
    n_test = math.ceil(round(len(y) * test_fraction, 9))
    if len(y) - n_val - n_test < 1:
        raise ValueError(
            f"Cannot split {len(y)} examples with val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}: no training example would be left."
        )
    order = np.random.default_rng(seed).permutation(len(y))
    val, test = order[:n_val], order[n_val:n_val + n_test]
    return np.sort(order[n_val + n_test:]), np.sort(val), np.sort(test)


def parse_image_size(text: str) -> tuple[int, int]:
    """Parses `"HxW"` (or a single `"N"` for a square) into `(height, width)`."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", str(text))
    if not match or int(match.group(1)) < 1 or int(match.group(2) or 1) < 1:
        raise ValueError(
            f"An image size is HEIGHTxWIDTH in pixels, e.g. 224x224. Received: {text!r}"
        )
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def _image_size_arg(text):
    try:
        return parse_image_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _class_names_arg(text):
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(
            f"--class-names is a comma-separated list, e.g. neg,pos. Received: {text!r}"
        )
    return tuple(names)


def add_data_arguments(parser: argparse.ArgumentParser, *, data_help: str | None = None) -> None:
    """Adds the shared data flags (`--data`, `--text-column`, `--task`, ...) to `parser`.

    Every flag defaults to None, so a caller can tell a given flag from an
    absent one (e.g. to let it override a config file); `data_spec_from_args`
    fills in `DataSpec`'s defaults.

    Args:
        parser: an `argparse.ArgumentParser` (or argument group).
        data_help: str. Help text for `--data`. Defaults to a description of
            the source kinds.
    """
    parser.add_argument(
        "--data", default=None, metavar="SOURCE",
        help=data_help or (
            "Your labelled data: a CSV/TSV/JSONL file, a folder with one subfolder of .txt "
            "or image files per class, or a TFDS dataset name."
        ),
    )
    parser.add_argument("--val-data", default=None, metavar="SOURCE",
                        help="A validation file or folder (else a stratified split is made).")
    parser.add_argument("--test-data", default=None, metavar="SOURCE",
                        help="A test file or folder (else a stratified split is made).")
    parser.add_argument("--text-column", default=None,
                        help="Input column of a CSV/JSONL: texts or image paths "
                             "(default text).")
    parser.add_argument("--label-column", default=None,
                        help="Label or target column of a CSV/JSONL (default label).")
    parser.add_argument("--task", default=None, choices=DATA_TASKS,
                        help="multiclass (default), binary, multilabel or regression.")
    parser.add_argument("--label-separator", default=None,
                        help="Separates the labels of a multilabel cell (default |).")
    parser.add_argument("--class-names", default=None, type=_class_names_arg,
                        metavar="A,B,...",
                        help="The classes in id order; other labels are an error.")
    parser.add_argument("--on-error", default=None, choices=ON_ERROR,
                        help="raise (default): a bad row or unreadable file is an error; "
                             "skip: drop, count and report them.")
    parser.add_argument("--image-size", default=None, type=_image_size_arg, metavar="HxW",
                        help="Resize images to HEIGHTxWIDTH, e.g. 224x224 (needed when "
                             "they differ in size).")
    parser.add_argument("--encoding", default=None,
                        help="Text encoding of the files, e.g. latin-1 (default utf-8).")


def data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `DataSpec` fields given on the command line, by field name (absent flags left out)."""
    out = {}
    for field, flag in FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None:
            out[field] = value
    return out


def data_spec_from_args(args: argparse.Namespace) -> DataSpec | None:
    """A `DataSpec` from flags added by `add_data_arguments`; None when `--data` is absent."""
    overrides = data_overrides(args)
    if "source" not in overrides:
        given = sorted(FLAGS[k] for k in overrides if k in ("val_source", "test_source"))
        if given:
            raise ValueError(f"{' and '.join(given)} need --data (the training data).")
        return None
    return DataSpec(**overrides)


# Snake-case names are rewritten wherever they appear; plain words ("task", "encoding")
# only as `name=`, so prose such as "a classification task" stays as it is.
_FLAG_PATTERN = re.compile(
    r"image_size=\(height, width\)"
    r"|\b(text_column|label_column|label_separator|class_names|on_error|image_size)\b(=)?"
    r"|\b(task|encoding)(=)"
)


def flag_message(message: str) -> str:
    """Rewrites a data error's argument names as the CLI flags that set them.

    `"(text_column)"` becomes `"(--text-column)"`, `"on_error='skip'"`
    becomes `"--on-error 'skip'"`, so a command-line user reads the flags.
    """

    def replace(match):
        if match.group(0).startswith("image_size=("):
            return "--image-size HxW"
        name = match.group(1) or match.group(3)
        return FLAGS[name] + (" " if match.group(2) or match.group(4) else "")

    return _FLAG_PATTERN.sub(replace, str(message))
