"""`load()`: one entry point from TFDS names, CSV files, DataFrames, folders and arrays.

Every source returns a `LabeledData` (raw inputs `x`, int labels `y`, class
names). Bad records raise a ValueError naming the file or row and what was
wrong; with `on_error="skip"` they are dropped, counted in `skipped` and
reported in a log warning, never silently.
"""

from __future__ import annotations

import codecs
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tfft.data.datasets import LabeledData
from tfft.data.labels import LabelEncoder, check_class_count, class_labels
from tfft.utils.network import network_reachable

logger = logging.getLogger("tfft.data")

TEXT_EXTENSIONS = (".txt",)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
CSV_EXTENSIONS = (".csv", ".tsv", ".csv.gz", ".csv.bz2", ".csv.zip", ".tsv.gz", ".tsv.bz2")
JSONL_EXTENSIONS = (".jsonl", ".ndjson", ".jsonl.gz", ".jsonl.bz2")
ON_ERROR = ("raise", "skip")
TFDS_HOST = "storage.googleapis.com"


class DatasetUnavailableError(OSError):
    """A TFDS dataset is not prepared in `data_dir` and cannot be downloaded."""


def load(
    source: Any,
    split: str | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    labels: npt.ArrayLike | None = None,
    text_column: str = "text",
    label_column: str = "label",
    class_names: Sequence[str] | None = None,
    label_separator: str | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    encoding: str = "utf-8",
    on_error: str = "raise",
    name: str | None = None,
    regression: bool = False,
) -> LabeledData | dict[str, LabeledData]:
    """Loads labelled examples from a TFDS name, a CSV/JSONL file, a DataFrame, a folder or arrays.

    Args:
        source: what to load:
            - a TFDS dataset name: one of the offline datasets registered by
              `tfft.data` (`bbc_news`, `rotten_tomatoes`, `mnist_5k`,
              `lfw_subset`, `digits`, `fashion_mnist_local`) or any TFDS
              dataset with `supervised_keys`;
            - a CSV/TSV file path (optionally .gz/.bz2/.zip compressed);
            - a JSON Lines file (`.jsonl`, `.ndjson`): one JSON object per
              line, read like a CSV's rows;
            - a `pandas.DataFrame`;
            - a folder with one subfolder of `.txt` or image files per class
              (classes are the sorted subfolder names);
            - NumPy arrays: `(x, y)`, or `x` with `labels=y`.
        split: str. TFDS split, e.g. `"train"` or `"test[:10%]"`; None returns
            a dict of every split. Only for TFDS sources.
        data_dir: str. TFDS data directory. Defaults to TFDS's own
            (`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`).
        download: bool. Prepare a TFDS dataset that is not in `data_dir` yet
            (the offline datasets prepare without network). Defaults to True.
        labels: array. Labels for an array `source`.
        text_column: str. Input column of a CSV/JSONL/DataFrame: texts, or
            image file paths (relative to the file's folder), which are then
            read as images. Defaults to `"text"`.
        label_column: str. Label column of a CSV/DataFrame. Defaults to `"label"`.
        class_names: list of str. Declared classes in id order; a label outside
            them is an error. Defaults to the sorted distinct labels (or
            `"0".."n-1"` for whole-number labels, also when written as
            floats or text: `2.0` and `"2.0"` are id 2). Labels with a
            fractional part are refused as a continuous target (train a
            regression instead), and so are more than 50 derived classes
            that outnumber half the rows (an id or measurement column);
            declaring `class_names` accepts any class count.
        label_separator: str. Makes a CSV/DataFrame multilabel: each label
            cell lists labels split by this string; `y` becomes multi-hot.
        image_size: tuple `(height, width)`. Resize folder images to this
            size; required when they differ in size.
        channels: int. Channels to decode folder images to (1 or 3);
            defaults to 3.
        encoding: str. Encoding of text files and CSVs. Defaults to `"utf-8"`.
        on_error: str. `"raise"` (default) or `"skip"` bad records.
        name: str. Name stored on the result.
        regression: bool. The label column is a numeric target: `y` becomes
            float32 and `class_names` is `[]`; a non-numeric target is an
            error naming its row. Not for folders. Defaults to False.

    Returns:
        A `LabeledData`, or for TFDS sources with `split=None` a dict
        `{split_name: LabeledData}`.

    Example:

    >>> train = tfft.data.load("bbc_news", split="train")
    >>> train.class_names
    ['business', 'entertainment', 'politics', 'sports', 'tech']
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"Expected on_error in {list(ON_ERROR)}. Received: on_error={on_error!r}")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(
            f"Unknown encoding={encoding!r}. Use a Python codec name such as utf-8, latin-1 "
            "or cp1252."
        ) from None
    import pandas as pd

    if isinstance(source, LabeledData):
        return source
    if regression and (class_names is not None or label_separator is not None):
        raise ValueError(
            "A regression target has no classes: pass neither class_names nor "
            f"label_separator. Received: class_names={class_names!r}, "
            f"label_separator={label_separator!r}"
        )
    if isinstance(source, pd.DataFrame):
        return from_dataframe(
            source, text_column=text_column, label_column=label_column,
            class_names=class_names, label_separator=label_separator, on_error=on_error,
            name=name or "dataframe", regression=regression,
        )
    if isinstance(source, tuple):
        if len(source) != 2 or labels is not None:
            raise ValueError(
                "An array source is `(x, y)` or `x` with `labels=y`. Received: a tuple of "
                f"{len(source)} items{' and labels=' if labels is not None else ''}."
            )
        return from_arrays(source[0], source[1], class_names=class_names, name=name)
    if isinstance(source, (np.ndarray, list)):
        if labels is None:
            raise ValueError(
                "An array source needs its labels: pass `(x, y)` or `labels=y`. "
                "Received: labels=None"
            )
        return from_arrays(source, labels, class_names=class_names, name=name)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "source must be a TFDS name, a path, a pandas DataFrame, a LabeledData or "
            f"NumPy arrays. Received: {type(source).__name__}"
        )
    path = os.path.expanduser(os.fspath(source))
    if os.path.isdir(path):
        if regression:
            raise ValueError(
                f"{path} is a folder of class subfolders, which holds classes, not numeric "
                "targets. For a regression, pass a CSV or JSONL file with a numeric "
                "label column."
            )
        return from_directory(
            path, class_names=class_names, image_size=image_size, channels=channels,
            encoding=encoding, on_error=on_error, name=name,
        )
    if os.path.isfile(path):
        reader = from_jsonl if path.lower().endswith(JSONL_EXTENSIONS) else from_csv
        return reader(
            path, text_column=text_column, label_column=label_column,
            class_names=class_names, label_separator=label_separator, encoding=encoding,
            on_error=on_error, name=name, regression=regression, image_size=image_size,
            channels=channels,
        )
    if os.sep in path or path.lower().endswith(CSV_EXTENSIONS + JSONL_EXTENSIONS):
        raise ValueError(
            f"The path {path!r} does not exist. Pass an existing CSV file or folder, or a "
            "TFDS dataset name."
        )
    return from_tfds(
        path, split=split, data_dir=data_dir, download=download, regression=regression
    )


def _report_skipped(name, skipped, first_problem):
    if skipped:
        logger.warning(
            "%s: skipped %d bad record(s) (on_error='skip'); first: %s",
            name, skipped, first_problem,
        )


def _encode_labels(values, class_names, where, on_error):
    """Returns (ids, class_names, bad_rows, first_problem) for single-label values.

    Whole numbers, also written as floats or text (`2.0`, `"2.0"`), are class
    ids; fractional numbers are refused as a continuous target; without
    declared `class_names`, an implausible class count is refused
    (`check_class_count`).
    """
    values = class_labels(values, where)
    present = [v for v in values if not _missing(v)]
    integer = bool(present) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present
    )
    if integer:
        negative = [i for i, v in enumerate(values) if not _missing(v) and int(v) < 0]
        if negative:
            raise ValueError(
                f"Integer labels must be >= 0. Received: {values[negative[0]]} at row "
                f"{negative[0]} of {where}."
            )
        if class_names is None:
            # Checked before the names are made: a stray id such as 99999999 would
            # otherwise build a list of 10^8 names (gigabytes) first.
            count = max(int(v) for v in present) + 1
            check_class_count(count, len(present), where)
            class_names = [str(i) for i in range(count)]
        # Integer ids against the class names: check the range, keep the ids.
        ids = np.array([-1 if _missing(v) else int(v) for v in values], dtype=np.int64)
        bad, problem = [], None
        for row, value in enumerate(values):
            if _missing(value):
                message = f"Label at row {row} is missing (in {where})"
            elif not 0 <= ids[row] < len(class_names):
                message = (
                    f"Label id {ids[row]} at row {row} of {where} is out of range for "
                    f"{len(class_names)} class_names {list(class_names)}"
                )
            else:
                continue
            if on_error == "raise":
                raise ValueError(message + ".")
            bad.append(row)
            problem = problem or message
        return ids, list(class_names), bad, problem
    if class_names is None:
        check_class_count(len({str(v) for v in present}), len(present), where)
    encoder = LabelEncoder(class_names).fit(present)
    ids = np.full(len(values), -1, dtype=np.int64)
    bad, problem = [], None
    for row, value in enumerate(values):
        try:
            if _missing(value):
                raise ValueError(f"Label at row {row} is missing.")
            ids[row] = encoder._id(value, row)
        except ValueError as error:
            message = f"{error} (in {where})"
            if on_error == "raise":
                raise ValueError(message) from None
            bad.append(row)
            problem = problem or message
    return ids, list(encoder.class_names), bad, problem


def _missing(value):
    return value is None or (isinstance(value, float) and np.isnan(value))


def from_arrays(x, y, class_names=None, name=None):
    """A `LabeledData` from arrays; string labels are encoded, integer ids checked."""
    x = np.asarray(x, dtype=object) if isinstance(x, list) else np.asarray(x)
    y = np.asarray(y)
    if len(x) == 0:
        raise ValueError("The array source is empty: x has 0 examples.")
    if len(x) != len(y):
        raise ValueError(
            f"x and y differ in length. Received: {len(x)} inputs, {len(y)} labels."
        )
    if x.dtype.kind in "US":
        x = x.astype(object)
    if y.ndim == 2:
        if class_names is None or len(class_names) != y.shape[1]:
            raise ValueError(
                "Multi-hot labels need class_names with one name per column. Received: "
                f"y.shape={y.shape}, class_names={class_names!r}"
            )
        return LabeledData(x, y.astype(np.float32), list(class_names), name or "arrays")
    ids, names, _, _ = _encode_labels(y.tolist(), class_names, "the labels", "raise")
    return LabeledData(x, ids, names, name or "arrays")


def from_dataframe(
    frame, text_column="text", label_column="label", class_names=None,
    label_separator=None, on_error="raise", name="dataframe", where=None,
    regression=False,
):
    """A `LabeledData` from a DataFrame's text and label columns.

    With `regression=True` the labels are float targets and `class_names` is
    `[]`.
    """
    where = where or f"DataFrame {name!r}"
    for role, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in frame.columns:
            raise ValueError(
                f"Column {column!r} ({role}) is not in {where}. Available columns: "
                f"{[str(c) for c in frame.columns]}."
            )
    if len(frame) == 0:
        raise ValueError(f"{where} is empty: it has no rows.")
    texts = frame[text_column].tolist()
    bad_text, problem = [], None
    for row, text in enumerate(texts):
        if _missing(text) or not isinstance(text, str):
            message = (
                f"Text at row {row} of {where} (column {text_column!r}) is "
                f"{'missing' if _missing(text) else f'not a string: {text!r}'}."
            )
            if on_error == "raise":
                raise ValueError(message)
            bad_text.append(row)
            problem = problem or message
    values = frame[label_column].tolist()
    if regression:
        y, names, bad_labels, label_problem = _regression_targets(
            values, where, label_column, on_error
        )
    elif label_separator is not None:
        y, names, bad_labels, label_problem = _multilabel(
            values, label_separator, class_names, where, on_error
        )
    else:
        y, names, bad_labels, label_problem = _encode_labels(
            values, class_names, where, on_error
        )
    bad = sorted(set(bad_text) | set(bad_labels))
    keep = np.setdiff1d(np.arange(len(frame)), bad)
    if len(keep) == 0:
        raise ValueError(f"{where}: every row is bad; first: {problem or label_problem}")
    _report_skipped(name, len(bad), problem or label_problem)
    x = np.array([texts[i] for i in keep], dtype=object)
    return LabeledData(x, y[keep], names, name, skipped=len(bad))


def _regression_targets(values, where, column, on_error):
    """Returns (float32 targets, [], bad_rows, first_problem) for a numeric target column."""
    y = np.full(len(values), np.nan, dtype=np.float32)
    bad, problem = [], None
    for row, value in enumerate(values):
        number = None
        if not _missing(value) and not isinstance(value, (bool, np.bool_)):
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = None
        if number is not None and np.isfinite(number):
            y[row] = number
            continue
        what = "missing" if _missing(value) else f"not a finite number: {value!r}"
        message = (
            f"Target at row {row} of {where} (column {column!r}) is {what}; a regression "
            "needs a number in every row"
        )
        if on_error == "raise":
            raise ValueError(message + ".")
        bad.append(row)
        problem = problem or message
    return y, [], bad, problem


def _multilabel(values, separator, class_names, where, on_error):
    lists, bad, problem = [], [], None
    for row, value in enumerate(values):
        if _missing(value):
            message = f"Labels at row {row} of {where} are missing."
            if on_error == "raise":
                raise ValueError(message)
            bad.append(row)
            problem = problem or message
            lists.append([])
        else:
            lists.append([p.strip() for p in str(value).split(separator) if p.strip()])
    encoder = LabelEncoder(class_names).fit(lists)
    y = np.zeros((len(values), len(encoder.class_names)), dtype=np.float32)
    for row, labels in enumerate(lists):
        try:
            y[row] = encoder.encode_multilabel([labels])[0]
        except ValueError as error:
            message = f"{str(error).replace('row 0', f'row {row}')} (in {where})"
            if on_error == "raise":
                raise ValueError(message) from None
            bad.append(row)
            problem = problem or message
    return y, list(encoder.class_names), bad, problem


def from_csv(
    path, text_column="text", label_column="label", class_names=None,
    label_separator=None, encoding="utf-8", on_error="raise", name=None,
    regression=False, image_size=None, channels=None,
):
    """A `LabeledData` from a CSV/TSV file (rows are counted from 0, header excluded).

    An input column of image file names (relative to the CSV's folder, or
    absolute) is read as images.
    """
    import pandas as pd

    lowered = path.lower()
    sep = "\t" if ".tsv" in os.path.basename(lowered) else ","
    try:
        frame = pd.read_csv(path, sep=sep, encoding=encoding)
    except pd.errors.EmptyDataError:
        raise ValueError(f"The CSV file {path} is empty: no header and no rows.") from None
    except UnicodeDecodeError as error:
        raise ValueError(
            f"The CSV file {path} is not valid {encoding} ({error.reason} at byte "
            f"{error.start}). Pass encoding=... (e.g. 'latin-1')."
        ) from None
    except (pd.errors.ParserError, OSError, EOFError) as error:
        raise ValueError(f"Cannot read the CSV file {path}: {error}") from None
    name = name or os.path.basename(path).split(".")[0]
    data = from_dataframe(
        frame, text_column=text_column, label_column=label_column, class_names=class_names,
        label_separator=label_separator, on_error=on_error, name=name,
        where=f"CSV file {path}", regression=regression,
    )
    return _read_image_column(data, path, image_size, channels, on_error)


def from_jsonl(
    path, text_column="text", label_column="label", class_names=None,
    label_separator=None, encoding="utf-8", on_error="raise", name=None,
    regression=False, image_size=None, channels=None,
):
    """A `LabeledData` from a JSON Lines file: one JSON object per line.

    Blank lines are ignored; a line that is not a JSON object is an error
    naming its line number (skipped and counted with `on_error="skip"`).
    Rows are counted from 0 over the objects read.
    """
    import bz2
    import gzip
    import json

    import pandas as pd

    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(os.path.splitext(path)[1].lower(), open)
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"The JSONL file {path} is not valid {encoding} ({error.reason} at byte "
            f"{error.start}). Pass encoding=... (e.g. 'latin-1')."
        ) from None
    except (OSError, EOFError) as error:
        raise ValueError(f"Cannot read the JSONL file {path}: {error}") from None
    records, bad, problem = [], 0, None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
        except ValueError as error:
            message = (
                f"Line {number} of the JSONL file {path} is not a JSON object "
                f"({str(error)[:120]})"
            )
            if on_error == "raise":
                raise ValueError(message + ".") from None
            bad += 1
            problem = problem or message
            continue
        records.append(record)
    if not records:
        raise ValueError(
            f"The JSONL file {path} is empty: it holds no JSON objects"
            + (f" (first bad line: {problem})." if problem else ".")
        )
    name = name or os.path.basename(path).split(".")[0]
    data = from_dataframe(
        pd.DataFrame.from_records(records), text_column=text_column,
        label_column=label_column, class_names=class_names, label_separator=label_separator,
        on_error=on_error, name=name, where=f"JSONL file {path}", regression=regression,
    )
    _report_skipped(name, bad, problem)
    data.skipped += bad
    return _read_image_column(data, path, image_size, channels, on_error)


def _read_image_column(data, path, image_size, channels, on_error):
    """Reads `data.x` as images when every input names an image file, else returns `data`."""
    if not all(str(x).lower().endswith(IMAGE_EXTENSIONS) for x in data.x):
        return data
    folder = os.path.dirname(os.path.abspath(path))
    reader = _image_reader(image_size, channels)
    images, keep, problem = [], [], None
    for row, name in enumerate(data.x):
        file = os.path.join(folder, os.path.expanduser(str(name)))
        try:
            if not os.path.isfile(file):
                raise ValueError(
                    f"The image file {file} (row {row} of {path}) does not exist. Remove "
                    "the row or pass on_error='skip'."
                )
            images.append(reader(file, None))
            keep.append(row)
        except ValueError as error:
            if on_error == "raise":
                raise
            problem = problem or str(error)
    if not images:
        raise ValueError(f"Every image named in {path} is bad; first: {problem}")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise ValueError(
            f"The images named in {path} differ in size ({sorted(shapes)[:3]}). Pass "
            "image_size=(height, width)."
        )
    _report_skipped(data.name, len(data.x) - len(keep), problem)
    kept = data.take(keep)
    return LabeledData(
        np.stack(images), kept.y, kept.class_names, data.name,
        skipped=data.skipped + len(data.x) - len(keep),
    )


def from_directory(
    root, class_names=None, image_size=None, channels=None, encoding="utf-8",
    on_error="raise", name=None,
):
    """A `LabeledData` from a folder with one subfolder of `.txt` or image files per class."""
    folders = sorted(
        d for d in os.listdir(root)
        if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
    )
    if not folders:
        raise ValueError(
            f"The folder {root} has no class subfolders: expected one subfolder of .txt "
            f"or image ({', '.join(IMAGE_EXTENSIONS)}) files per class."
        )
    if class_names is not None:
        extra = sorted(set(folders) - set(class_names))
        if extra:
            raise ValueError(
                f"Subfolders {extra} of {root} are not among the declared classes "
                f"{list(class_names)}."
            )
        folders = list(class_names)
    files, labels = [], []
    for label, folder in enumerate(folders):
        path = os.path.join(root, folder)
        entries = sorted(os.listdir(path)) if os.path.isdir(path) else []
        found = [
            os.path.join(path, f) for f in entries
            if f.lower().endswith(TEXT_EXTENSIONS + IMAGE_EXTENSIONS) and not f.startswith(".")
        ]
        if not found:
            raise ValueError(
                f"Class {folder!r} has no examples: {path} holds no .txt or image files."
            )
        files.extend(found)
        labels.extend([label] * len(found))
    kinds = {f.lower().endswith(TEXT_EXTENSIONS) for f in files}
    if len(kinds) > 1:
        text_file = next(f for f in files if f.lower().endswith(TEXT_EXTENSIONS))
        image_file = next(f for f in files if not f.lower().endswith(TEXT_EXTENSIONS))
        raise ValueError(
            f"The folder {root} mixes text and image files (e.g. {text_file} and "
            f"{image_file}); use one kind per dataset."
        )
    reader = _read_text if kinds == {True} else _image_reader(image_size, channels)
    xs, ys, bad, problem = [], [], 0, None
    for path, label in zip(files, labels, strict=True):
        try:
            xs.append(reader(path, encoding))
            ys.append(label)
        except ValueError as error:
            if on_error == "raise":
                raise
            bad += 1
            problem = problem or str(error)
    name = name or os.path.basename(os.path.normpath(root))
    if not xs:
        raise ValueError(f"Every file in {root} is bad; first: {problem}")
    _report_skipped(name, bad, problem)
    ys = np.array(ys, dtype=np.int64)
    if kinds == {True}:
        x = np.array(xs, dtype=object)
    else:
        shapes = {a.shape for a in xs}
        if len(shapes) > 1:
            first = xs[0].shape
            other = next(i for i, a in enumerate(xs) if a.shape != first)
            raise ValueError(
                f"Images in {root} differ in size ({files[0]} is {first}, "
                f"{files[other]} is {xs[other].shape}). Pass image_size=(height, width)."
            )
        x = np.stack(xs)
    for label, folder in enumerate(folders):
        if not np.any(ys == label):
            raise ValueError(f"Class {folder!r} has no readable examples in {root}.")
    return LabeledData(x, ys, list(folders), name, skipped=bad)


def _read_text(path, encoding):
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode(encoding).strip()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"The text file {path} is not valid {encoding}: {error.reason} at byte "
            f"{error.start}. Pass encoding=... (e.g. 'latin-1') or on_error='skip'."
        ) from None


def _image_reader(image_size, channels):
    import tensorflow as tf

    channels = 3 if channels is None else int(channels)
    if channels not in (1, 3):
        raise ValueError(f"Expected channels 1 or 3. Received: channels={channels!r}")

    def read(path, encoding):
        del encoding
        with open(path, "rb") as f:
            raw = f.read()
        try:
            image = tf.io.decode_image(raw, channels=channels, expand_animations=False)
        except (tf.errors.InvalidArgumentError, ValueError) as error:
            message = str(error).strip().splitlines()[0][:200]
            raise ValueError(
                f"The image file {path} is unreadable or corrupt: {message}. Remove it or "
                "pass on_error='skip'."
            ) from None
        if image_size is not None:
            image = tf.image.resize(image, image_size, antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return image.numpy()

    return read


def from_tfds(name, split=None, data_dir=None, download=True, regression=False):
    """Reads a TFDS dataset's split(s) into `LabeledData` via its `supervised_keys`.

    With `regression=True` the labels are kept as float32 targets.
    """
    import tensorflow_datasets as tfds

    from tfft.data.tfds_builders import BUILDERS, OFFLINE_DATASETS

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"Unknown dataset: {name!r} is not an existing file or folder, nor a TFDS "
            "dataset. Offline "
            f"datasets: {OFFLINE_DATASETS}; other TFDS names download when the network is "
            "reachable."
        ) from None
    if not builder.is_prepared():
        where = builder.data_dir_root if hasattr(builder, "data_dir_root") else data_dir
        offline_hint = (
            f"Pass the data_dir where it was prepared, or use an offline dataset: "
            f"{OFFLINE_DATASETS}."
        )
        if not download:
            raise DatasetUnavailableError(
                f"The TFDS dataset {name!r} is not prepared in data_dir={where!r} and "
                f"download=False. {offline_hint}"
            )
        if name not in BUILDERS and not network_reachable(TFDS_HOST):
            raise DatasetUnavailableError(
                f"The TFDS dataset {name!r} is not prepared in data_dir={where!r} and the "
                f"network ({TFDS_HOST}) is unreachable, so it cannot be downloaded. "
                f"{offline_hint}"
            )
        try:
            builder.download_and_prepare()
        except Exception as error:
            if name in BUILDERS:
                raise
            raise DatasetUnavailableError(
                f"Preparing the TFDS dataset {name!r} into data_dir={where!r} failed "
                f"({type(error).__name__}: {error}). {offline_hint}"
            ) from error
    info = builder.info
    if not info.supervised_keys:
        raise ValueError(
            f"The TFDS dataset {name!r} has no supervised_keys, so its input and label "
            "features are unknown; load it with tfds.load and build a LabeledData."
        )
    _, label_key = info.supervised_keys[:2]
    label_feature = info.features[label_key]
    names = list(getattr(label_feature, "names", None) or [])
    if split is None:
        return {s: _read_split(builder, s, names, name, regression) for s in info.splits}
    return _read_split(builder, split, names, name, regression)


def _read_split(builder, split, class_names, name, regression=False):
    import tensorflow_datasets as tfds

    dataset = builder.as_dataset(split=split, as_supervised=True).batch(1024)
    xs, ys = [], []
    for x, y in tfds.as_numpy(dataset):
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ValueError(f"The split {split!r} of TFDS dataset {name!r} is empty.")
    x = np.concatenate(xs)
    if x.dtype.kind == "S" or x.dtype == object:
        x = np.array([v.decode("utf-8") for v in x], dtype=object)
    if regression:
        return LabeledData(x, np.concatenate(ys).astype(np.float32), [], name)
    y = np.concatenate(ys).astype(np.int64)
    if not class_names:
        class_names = [str(i) for i in range(int(y.max()) + 1)]
    return LabeledData(x, y, class_names, name)
