"""`tfft evaluate`: score an exported SavedModel on a labelled split.

    tfft evaluate --model saved_models/bbc/1 --data bbc_news --split test --out runs/eval

The export's `tfft_metadata.json` (beside `saved_model.pb`) supplies the class
names, the task, the dataset and the split settings used in training, so the
test split here is the same one the model never saw.
"""

import json
import os
import sys

from tfft.backbones.keras_hub import missing_text_ops_hint, register_text_ops
from tfft.data.labels import class_labels

METADATA_FILE = "tfft_metadata.json"
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
    parser.add_argument("--data", default=None,
                        help="A bundled dataset name (bbc_news, rotten_tomatoes, digits, ...; "
                             "images are fed as PNG bytes) or a CSV path. Defaults to the "
                             "dataset named in tfft_metadata.json.")
    parser.add_argument("--split", default="test", choices=SPLITS,
                        help="Which split to score; 'all' uses every row. Defaults to test.")
    parser.add_argument("--out", default=None,
                        help="Folder for report.json and plots. Defaults to "
                             "runs/evaluate/NAME-VERSION.")
    parser.add_argument("--text-column", default="text", help="CSV input column.")
    parser.add_argument("--label-column", default="label", help="CSV label column.")
    parser.add_argument("--encoding", default="utf-8",
                        help="Text encoding of a CSV given to --data, e.g. latin-1 or cp1252. "
                             "Defaults to utf-8.")
    parser.add_argument("--task", default=None,
                        choices=("binary", "multiclass", "multilabel", "regression"),
                        help="Overrides the task in the metadata.")
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
    parser.set_defaults(func=run)
    return parser


def run(args):
    """Runs `tfft evaluate` for parsed `args`; returns the exit status."""
    try:
        return _run(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
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


def load_eval_data(data, class_names=None, text_column="text", label_column="label",
                   encoding="utf-8"):
    """Loads a named dataset or a CSV file as a `LabeledData`.

    CSV labels may be class names (mapped through `class_names`, or sorted
    when none are known) or integer ids. `encoding` is the CSV's text encoding.
    """
    from tfft.data import IMAGE_DATASETS, TEXT_DATASETS

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
    return _load_csv(data, class_names, text_column, label_column, encoding)


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


def _load_csv(path, class_names, text_column, label_column, encoding="utf-8"):
    import io

    import numpy as np
    import pandas as pd

    from tfft.data import LabeledData

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
            class_names = [str(i) for i in range(int(labels.max()) + 1)]
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

    from tfft.data import stratified_split
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
    metadata = read_metadata(model_dir)
    class_names = metadata.get("class_names")
    task = args.task or metadata.get("task")
    data_name = args.data or metadata.get("dataset")
    if not data_name:
        raise ValueError(
            f"No data to evaluate on: pass --data, or export with 'dataset' in {METADATA_FILE}."
        )
    data = load_eval_data(data_name, class_names, args.text_column, args.label_column,
                          args.encoding)
    if class_names is None:
        class_names = list(data.class_names)
    elif [str(c).lower() for c in data.class_names] != [str(c).lower() for c in class_names]:
        raise ValueError(
            f"The data's classes {list(data.class_names)} differ from the model's "
            f"{list(class_names)} (from {METADATA_FILE})."
        )

    if args.split != "all":
        split = _split_settings(args, metadata)
        max_examples = split.get("max_examples")
        if max_examples and max_examples < len(data):
            # `tfft finetune --max-examples` first keeps a stratified subset, then
            # splits it; the same two steps give back its exact test split.
            keep, _, _ = stratified_split(
                data.y, 0.0, 1.0 - max_examples / len(data), split["seed"]
            )
            data = data.take(keep)
        train_idx, val_idx, test_idx = stratified_split(
            data.y, split["val_fraction"], split["test_fraction"], split["seed"]
        )
        indices = {"train": train_idx, "val": val_idx, "test": test_idx}[args.split]
        if len(indices) == 0:
            raise ValueError(
                f"The {args.split} split is empty (val_fraction={split['val_fraction']}, "
                f"test_fraction={split['test_fraction']}). Pick another --split or fraction."
            )
        data = data.take(indices)
    if args.limit is not None:
        data = data.take(np.arange(min(args.limit, len(data))))
    if len(data) == 0:
        raise ValueError(f"No examples to evaluate in {data_name!r} ({args.split} split).")

    model = load_export(model_dir)
    report = evaluate(model, data, task=task, class_names=class_names,
                      batch_size=args.batch_size)

    out = args.out or os.path.join(
        "runs", "evaluate",
        f"{os.path.basename(os.path.dirname(model_dir)) or 'model'}-{os.path.basename(model_dir)}",
    )
    os.makedirs(out, exist_ok=True)
    print(report.table())
    written = [report.save_json(os.path.join(out, "report.json"))]
    if not args.no_plots:
        written.extend(report.save_plots(out))
    print()
    print(f"{args.split} split of {data_name}: {len(data)} examples. Wrote:")
    for path in written:
        print(f"  {path}")
    return 0
