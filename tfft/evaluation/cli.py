"""`tfft evaluate`: score an exported SavedModel on a labelled split.

    tfft evaluate --model saved_models/bbc/1 --data bbc_news --split test --out runs/eval
    tfft evaluate --model saved_models/faces/1 --data photos/ --split all
    tfft evaluate --model saved_models/bbc/1 --explain 8 --slice-by length

`--explain N` adds the N top losses with their attributions (occlusion on the
SavedModel, or integrated gradients / Grad-CAM with `--keras-model`, the
export's `.keras` source), the most-confused class pairs and the calibration
to report.json; `--slice-by` adds metrics per slice (`tfft.evaluation.
interpretation` writes those files).

The export's `tfft_metadata.json` (beside `saved_model.pb`) supplies the class
names, the task, the dataset and the split settings used in training, so the
test split here is the same one the model never saw.

`--data` takes every source of `tfft.data.user_data` with its options: a
CSV/TSV/JSONL file, a folder of class subfolders (images are fed to an image
export as PNG bytes), a TFDS name (its own splits), plus `--val-data` /
`--test-data`. A CSV scored for a single-label task keeps this command's strict
reader: an empty cell is an error naming its line, labels match the model's
class names case-insensitively.
"""

import dataclasses
import json
import os
import sys

from tfft.backbones.keras_hub import missing_text_ops_hint, register_text_ops
from tfft.data import IMAGE_DATASETS, TEXT_DATASETS, LabeledData
from tfft.data.labels import check_class_count, class_labels
from tfft.data.sources import DatasetUnavailableError
from tfft.data.user_data import (
    DATA_TASKS,
    DataSpec,
    add_data_arguments,
    data_overrides,
    flag_message,
    load_data_spec,
    split_indices,
)
from tfft.evaluation import interpretation
from tfft.evaluation.signatures import scored_output
from tfft.utils.files import write_json_atomic

METADATA_FILE = "tfft_metadata.json"
EXPLAIN_METHODS = ("auto", "integrated_gradients", "grad_cam", "occlusion")
SPLITS = ("train", "val", "test", "all")
DEFAULT_SPLIT = {"seed": 0, "val_fraction": 0.15, "test_fraction": 0.15}


def add_parser(subparsers):
    """Registers the `evaluate` subcommand on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "evaluate",
        help="Evaluate an exported SavedModel on a labelled dataset.",
        description=(
            "Load a SavedModel exported by tfft, run its serving signature on the raw "
            "inputs of a dataset split, print precision/recall/F1 and the confusion "
            "matrix, and write report.json and PNG plots."
        ),
    )
    parser.add_argument("--model", required=True,
                        help="SavedModel folder, e.g. saved_models/NAME/VERSION.")
    add_data_arguments(parser, data_help=(
        "A bundled dataset name (bbc_news, rotten_tomatoes, digits, ...), a CSV/TSV/JSONL "
        "file, a folder with one subfolder of .txt or image files per class (images are "
        "fed as PNG bytes) or a TFDS name. Defaults to the dataset named in "
        "tfft_metadata.json. --task overrides the task in the metadata."
    ))
    parser.add_argument("--split", default="test", choices=SPLITS,
                        help="Which split to score; 'all' uses every row. Without given "
                             "splits, the stratified split of training is rebuilt. "
                             "Defaults to test.")
    parser.add_argument("--out", default=None,
                        help="Folder for report.json and plots. Defaults to "
                             "runs/evaluate/NAME-VERSION.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=None,
                        help="Split seed; defaults to the metadata's.")
    parser.add_argument("--val-fraction", type=float, default=None)
    parser.add_argument("--test-fraction", type=float, default=None)
    parser.add_argument("--max-examples", type=int, default=None,
                        help="The stratified subset size used in training; defaults to the "
                             "metadata's split.max_examples.")
    parser.add_argument("--limit", type=int, default=None,
                        help="Score only the first N examples of the split (quick checks).")
    parser.add_argument("--no-plots", action="store_true", help="Skip the PNG plots.")
    group = parser.add_argument_group(
        "interpretation", "Why the model decided, where it fails and for whom (single-label "
        "classification).")
    group.add_argument("--explain", type=int, default=None, metavar="N",
                       help="Explain the N top losses (most confidently wrong examples) with "
                            "attributions, and add the most-confused class pairs and the "
                            "calibration (reliability_diagram.png, expected calibration "
                            "error) to report.json.")
    group.add_argument("--explain-method", default="auto", choices=EXPLAIN_METHODS,
                       help="auto: with --keras-model, integrated gradients (texts) or "
                            "Grad-CAM (images); without it, occlusion on the SavedModel.")
    group.add_argument("--keras-model", default=None, metavar="PATH.keras",
                       help="The export's Keras source (the .keras task it was exported "
                            "from), for gradient attributions; it must give the export's "
                            "outputs.")
    group.add_argument("--explain-steps", type=int, default=50,
                       help="Integrated gradients: path steps. Defaults to 50.")
    group.add_argument("--slice-by", default=None, metavar="COLUMN",
                       help="Metrics per slice: a column of the --data file (CSV/TSV/JSONL), "
                            "or 'length' (text word count, quartiles) or 'brightness' "
                            "(image mean, quartiles). Writes slices.json and slices.png.")
    group.add_argument("--min-slice-support", type=int, default=1,
                       help="Slices smaller than this are left out of the largest gap.")
    parser.set_defaults(func=run)
    return parser


def run(args):
    """Runs `tfft evaluate` for parsed `args`; returns the exit status."""
    try:
        return _run(args)
    except (ValueError, TypeError, FileNotFoundError, DatasetUnavailableError) as error:
        print(f"tfft evaluate: error: {error}", file=sys.stderr)
        return 2


def read_metadata(model_dir):
    """Returns the export's `tfft_metadata.json` as a dict, or {} when absent."""
    path = os.path.join(model_dir, METADATA_FILE)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            metadata = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{path} must hold a JSON object. Received: {type(metadata).__name__}")
    return metadata


def _is_bundled(name):
    return name in TEXT_DATASETS or name in IMAGE_DATASETS


def load_eval_data(data, class_names=None, text_column="text", label_column="label",
                   encoding="utf-8", num_classes=None):
    """Loads a named dataset or a CSV file as a `LabeledData`.

    CSV labels may be class names (mapped through `class_names`, or sorted
    when none are known) or integer ids. `encoding` is the CSV's text encoding.
    `num_classes` (the model's output width, for a model without class names)
    bounds integer ids and names them `"0"` .. `"num_classes - 1"`; without it
    an implausible id count is refused (`check_class_count`) before any class
    is named.
    """
    named = {**TEXT_DATASETS, **IMAGE_DATASETS}
    if data in named:
        return named[data]()
    if not (data.lower().endswith((".csv", ".csv.gz", ".csv.bz2", ".tsv")) or os.path.isfile(data)):
        raise ValueError(
            f"Unknown dataset. Expected one of {sorted(named)} or a CSV path. "
            f"Received: --data {data!r}"
        )
    if not os.path.isfile(data):
        raise FileNotFoundError(f"No such CSV file: {data}")
    return _load_csv(data, class_names, text_column, label_column, encoding, num_classes)


def _read_csv_text(path, encoding):
    """The CSV's text; a decoding error names the file, the line and `--encoding`."""
    import bz2
    import codecs
    import gzip

    try:
        # A UTF-8 byte-order mark (Excel's "CSV UTF-8") is not part of the header.
        codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    except LookupError:
        raise ValueError(
            f"Unknown --encoding {encoding!r}. Use a Python codec name such as utf-8, "
            "latin-1 or cp1252."
        ) from None
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(os.path.splitext(path)[1].lower(), open)
    with opener(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"{path}, line {line}: not valid {encoding} ({error.reason} at byte "
            f"{error.start}: {raw[error.start:error.end]!r}). Pass the file's encoding with "
            "--encoding, e.g. --encoding latin-1 (or cp1252 for Windows files)."
        ) from None


def _load_csv(path, class_names, text_column, label_column, encoding="utf-8", num_classes=None):
    import io

    import numpy as np
    import pandas as pd

    text = _read_csv_text(path, encoding)
    frame = pd.read_csv(io.StringIO(text), sep="\t" if path.lower().endswith(".tsv") else ",")
    for flag, column in (("--text-column", text_column), ("--label-column", label_column)):
        if column not in frame.columns:
            raise ValueError(
                f"{path} has no column {column!r} (set {flag}). "
                f"Columns: {list(frame.columns)}"
            )
    missing = frame[[text_column, label_column]].isna().any(axis=1).to_numpy()
    if missing.any():
        # No row is dropped silently: a score over fewer rows than the file
        # holds would be reported as the file's.
        rows = [int(i) + 2 for i in np.flatnonzero(missing)]  # + header, 1-based
        raise ValueError(
            f"{path}: {len(rows)} row(s) have an empty {text_column!r} or {label_column!r} "
            f"cell (lines {rows[:10]}{' ...' if len(rows) > 10 else ''}). Fill or remove them."
        )
    # Whole-number floats (0.0, "1.0") are class ids; fractional ones are refused.
    raw = class_labels(frame[label_column].tolist(), where=path)
    if all(isinstance(v, int) for v in raw):
        labels = np.asarray(raw, np.int64)
        if class_names is None:
            # Ids name their classes; checked before naming them, since a stray id
            # (99999999) would otherwise name 10^8 classes.
            if labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes):
                valid = f"0..{num_classes - 1} (the model's {num_classes} outputs)" \
                    if num_classes is not None else "0 or more"
                raise ValueError(
                    f"{path}: class ids must be {valid}. Received ids {sorted(set(raw))[:10]}."
                )
            if num_classes is None:
                check_class_count(int(labels.max()) + 1, len(labels), where=path)
            class_names = [str(i) for i in range(num_classes or int(labels.max()) + 1)]
        elif labels.min() < 0 or labels.max() >= len(class_names):
            raise ValueError(
                f"{path}: class ids must be 0..{len(class_names) - 1} for the model's "
                f"classes {list(class_names)}. Received ids {sorted(set(raw))[:10]}."
            )
    else:
        values = pd.Series(raw).astype(str).str.strip()
        if class_names is None:
            class_names = sorted(values.unique())
        index = {str(n): i for i, n in enumerate(class_names)}
        lowered = {str(n).lower(): i for i, n in enumerate(class_names)}
        unknown = sorted({v for v in values if v not in index and v.lower() not in lowered})
        if unknown:
            raise ValueError(
                f"{path}: labels {unknown[:10]} are not among the model's classes "
                f"{list(class_names)}."
            )
        labels = np.array([index.get(v, lowered.get(v.lower())) for v in values], np.int64)
    texts = frame[text_column].astype(str).to_numpy(object)
    name = os.path.basename(path)
    return LabeledData(texts, labels, list(class_names), name)


# The files this command's strict CSV reader opens; other CSV kinds (.zip, .tsv.gz)
# go through tfft.data.load like every other source.
STRICT_CSV_EXTENSIONS = (".csv", ".csv.gz", ".csv.bz2", ".tsv")


def _is_csv(source):
    return os.path.isfile(source) and source.lower().endswith(STRICT_CSV_EXTENSIONS)


def load_user_data(spec, class_names=None, num_classes=None):
    """Loads `spec` into named splits whose classes are the model's `class_names`.

    `num_classes` (a model without class names: its output width) bounds the
    strict CSV reader's integer ids (`load_eval_data`).

    Returns:
        dict. `{"all": data}`, or the given splits (`train`, `val`, `test`).
    """
    strict_csv = (
        spec.task in ("multiclass", "binary") and spec.on_error == "raise"
        and spec.val_source is None and spec.test_source is None and _is_csv(spec.source)
    )
    if strict_csv:
        return {"all": load_eval_data(spec.source, class_names or spec.class_names,
                                      spec.text_column, spec.label_column, spec.encoding,
                                      num_classes)}
    if class_names is not None and spec.task == "multilabel" and spec.class_names is None:
        # Multi-hot columns in the model's order; another label is an error naming its row.
        spec = dataclasses.replace(spec, class_names=tuple(class_names))
    try:
        splits = load_data_spec(spec, require_classes=False)
    except ValueError as error:
        raise ValueError(flag_message(error)) from None
    skipped = sum(d.skipped for d in splits.values())
    if skipped:
        print(f"tfft evaluate: skipped {skipped} bad record(s) of {spec.source} "
              "(--on-error skip)")
    if class_names is None or spec.task == "regression":
        return splits
    return {key: align_classes(data, class_names) for key, data in splits.items()}


def align_classes(data, class_names):
    """Re-indexes `data`'s labels onto the model's `class_names` (matched case-insensitively).

    Labels that are class ids (`"0"`, `"1"`, ... as the data's class names) are
    kept as ids into `class_names`.
    """
    import numpy as np

    names = [str(n) for n in data.class_names]
    lowered = {str(n).lower(): i for i, n in enumerate(class_names)}
    ids = [str(i) for i in range(len(names))]
    if names == ids and [str(n) for n in class_names] != ids:
        if len(names) > len(class_names):
            raise ValueError(
                f"{data.name}: class ids must be 0..{len(class_names) - 1} for the model's "
                f"classes {list(class_names)}. Received ids up to {len(names) - 1}."
            )
        mapping = np.arange(len(names))
    else:
        unknown = [n for n in names if n.lower() not in lowered]
        if unknown:
            raise ValueError(
                f"{data.name}: labels {unknown[:10]} are not among the model's classes "
                f"{list(class_names)}."
            )
        mapping = np.array([lowered[n.lower()] for n in names], dtype=np.int64)
    y = np.asarray(data.y)
    if y.ndim == 2:
        aligned = np.zeros((len(y), len(class_names)), dtype=y.dtype)
        aligned[:, mapping] = y
    else:
        aligned = mapping[y]
    return LabeledData(data.x, aligned, list(class_names), data.name, data.skipped)


def _data_spec(args, metadata):
    """The `DataSpec` to score: the flags, over the metadata's `data` section if any."""
    overrides = data_overrides(args)
    base = metadata.get("data") if isinstance(metadata.get("data"), dict) else {}
    # The job's summary of its data holds the DataSpec fields among others (sizes, ...);
    # the model's classes are matched after loading, not declared to the loader.
    fields = {f.name for f in dataclasses.fields(DataSpec)} - {"class_names"}
    base = {k: v for k, v in base.items() if k in fields and v is not None}
    if not base.get("source") and metadata.get("dataset"):
        base = {"source": metadata["dataset"]}
    config = {**base, **overrides}
    if not config.get("source") or _is_bundled(config["source"]):
        # Bundled datasets load by name, as in training; no data options apply.
        if "source" not in config and config.keys() & {"val_source", "test_source"}:
            raise ValueError("--val-data and --test-data need --data (the main data).")
        return None
    if "task" not in config and metadata.get("task") in ("multiclass", "binary", "multilabel",
                                                         "regression"):
        config["task"] = metadata["task"]
    if config.get("task") != "multilabel" and "label_separator" not in overrides:
        config.pop("label_separator", None)
    try:
        return DataSpec.from_dict(config)
    except ValueError as error:
        raise ValueError(flag_message(error)) from None


def _pick_split(splits, split):
    """The split to score from given splits (`train`/`val`/`test`)."""
    if split in splits:
        return splits[split]
    raise ValueError(
        f"--split {split} is not among the given splits {sorted(splits)} (from --val-data, "
        "--test-data or the TFDS dataset's own splits). Pick one of them."
    )


def load_export(model_dir):
    """Loads an exported SavedModel, text exports' tokenizer ops included.

    Raises:
        ValueError: the folder does not hold a loadable SavedModel, or it needs
            TensorFlow Text and `tensorflow-text` is not installed.
    """
    import tensorflow as tf

    register_text_ops()
    try:
        return tf.saved_model.load(model_dir)
    except (OSError, RuntimeError, tf.errors.OpError) as error:
        hint = missing_text_ops_hint(error)
        detail = hint if hint else str(error)
        raise ValueError(f"Could not load the SavedModel in {model_dir}: {detail}") from None


def served_classes(model):
    """The classes an export scores: the width of the output `evaluate` scores (1 means 2).

    None when `serving_default` has no such output (`scored_output`) of rank 2
    and known width; `evaluate` then says what is wrong.
    """
    try:
        signature = model.signatures["serving_default"]
        output = signature.structured_outputs[scored_output(signature)]
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    shape = getattr(output, "shape", None)
    if shape is None or shape.rank != 2 or shape[-1] is None:
        return None
    return max(int(shape[-1]), 2)


def _split_settings(args, metadata):
    split = dict(DEFAULT_SPLIT)
    meta_split = metadata.get("split") or {}
    if not isinstance(meta_split, dict):
        raise ValueError(f"{METADATA_FILE}: 'split' must be an object. Received: {meta_split!r}")
    split.update({k: meta_split[k] for k in (*DEFAULT_SPLIT, "max_examples")
                  if k in meta_split})
    for key, value in (("seed", args.seed), ("val_fraction", args.val_fraction),
                       ("test_fraction", args.test_fraction),
                       ("max_examples", args.max_examples)):
        if value is not None:
            split[key] = value
    return split


def _run(args):
    import numpy as np

    from tfft.evaluation.evaluator import evaluate

    model_dir = os.path.normpath(args.model)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"--model: no such folder: {model_dir}")
    if not os.path.exists(os.path.join(model_dir, "saved_model.pb")):
        versions = sorted(d for d in os.listdir(model_dir) if d.isdigit())
        hint = f" It holds versions {versions}: pass {model_dir}/{versions[-1]}." if versions \
            else ""
        raise FileNotFoundError(f"--model: {model_dir} has no saved_model.pb.{hint}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1. Received: {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1. Received: {args.limit}")
    interpretation.check_arguments(args)
    metadata = read_metadata(model_dir)
    class_names = metadata.get("class_names") or None  # [] from an export without names
    task = args.task or metadata.get("task")
    spec = _data_spec(args, metadata)
    meta_data = metadata.get("data") if isinstance(metadata.get("data"), dict) else {}
    data_name = spec.source if spec is not None else (
        args.data or meta_data.get("source") or metadata.get("dataset"))
    if not data_name:
        raise ValueError(
            f"No data to evaluate on: pass --data, or export with 'dataset' in {METADATA_FILE}."
        )
    if spec is not None and (args.task or spec.task != "multiclass"):
        task = spec.task
    model, num_classes = None, None
    if class_names is None and task != "regression":
        # Without class names the model's classes are its output ids: its output
        # width bounds the labels' ids.
        model = load_export(model_dir)
        num_classes = served_classes(model)
    if spec is None:
        splits = {"all": load_eval_data(data_name, class_names, num_classes=num_classes)}
    else:
        splits = load_user_data(spec, class_names, num_classes)
    given = "all" not in splits
    if given and args.split == "all":
        raise ValueError(
            f"--split all scores one source, but the data has the given splits "
            f"{sorted(splits)}: pick --split {' or --split '.join(sorted(splits))}."
        )
    data = _pick_split(splits, args.split) if given else splits["all"]
    # Which rows of the loaded file each example is, for --slice-by COLUMN.
    rows = np.arange(len(data))
    loaded = len(data)
    if task == "regression":
        class_names = None
    elif class_names is None:
        class_names = list(data.class_names)
    elif [str(c).lower() for c in data.class_names] != [str(c).lower() for c in class_names]:
        raise ValueError(
            f"The data's classes {list(data.class_names)} differ from the model's "
            f"{list(class_names)} (from {METADATA_FILE})."
        )

    if args.split != "all" and not given:
        split = _split_settings(args, metadata)
        split_task = task if task in DATA_TASKS else "multiclass"
        max_examples = split.get("max_examples")
        if max_examples and max_examples < len(data):
            # `tfft finetune --max-examples` first keeps a stratified subset, then
            # splits it; the same two steps give back its exact test split.
            keep, _, _ = split_indices(
                data.y, split_task, 0.0, 1.0 - max_examples / len(data), split["seed"]
            )
            data, rows = data.take(keep), rows[keep]
        train_idx, val_idx, test_idx = split_indices(
            data.y, split_task, split["val_fraction"], split["test_fraction"], split["seed"]
        )
        indices = {"train": train_idx, "val": val_idx, "test": test_idx}[args.split]
        if len(indices) == 0:
            raise ValueError(
                f"The {args.split} split is empty (val_fraction={split['val_fraction']}, "
                f"test_fraction={split['test_fraction']}). Pick another --split or fraction."
            )
        data, rows = data.take(indices), rows[indices]
    if args.limit is not None:
        data, rows = data.take(np.arange(min(args.limit, len(data)))), rows[:args.limit]
    if len(data) == 0:
        raise ValueError(f"No examples to evaluate in {data_name!r} ({args.split} split).")

    if model is None:
        model = load_export(model_dir)
    report = evaluate(model, data, task=task, class_names=class_names,
                      batch_size=args.batch_size)

    out = args.out or os.path.join(
        "runs", "evaluate",
        f"{os.path.basename(os.path.dirname(model_dir)) or 'model'}-{os.path.basename(model_dir)}",
    )
    os.makedirs(out, exist_ok=True)
    print(report.table())
    extra, extra_files = {}, []
    if args.slice_by is not None:
        groups = interpretation.slice_groups(args.slice_by, data, rows, loaded, spec,
                                             args.split, given)
        section, files, table = interpretation.write_slices(report, groups, args, out)
        print()
        print(table)
        extra["slices"] = section
        extra_files += files
    if args.explain is not None:
        section, files = interpretation.write_failures(report, data, model, args, out)
        extra.update(section)
        extra_files += files
    report_path = os.path.join(out, "report.json")
    if extra:
        written = [write_json_atomic(report_path, {**report.to_dict(), **extra},
                                     allow_nan=False)]
    else:
        written = [report.save_json(report_path)]
    if not args.no_plots:
        written.extend(report.save_plots(out))
    written.extend(extra_files)
    print()
    print(f"{args.split} split of {data_name}: {len(data)} examples. Wrote:")
    for path in written:
        print(f"  {path}")
    return 0
