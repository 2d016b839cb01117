"""`tfft evaluate --explain N --slice-by COLUMN`: the interpretation files of a run.

The pieces are the library's (`tfft.evaluation.explain`, `.failures`,
`.calibration`, `.slices`); this module picks the model to attribute with
(the export's Keras source, else the SavedModel itself through occlusion),
reads slice columns back from the scored file, and writes JSON and PNGs into
the output folder. It prints nothing: `tfft.evaluation.cli` does.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from tfft.evaluation.calibration import calibration_report
from tfft.evaluation.explain import explain, load_keras_source
from tfft.evaluation.failures import most_confused, top_losses
from tfft.evaluation.signatures import predict_fn
from tfft.evaluation.slices import INPUT_SLICERS, input_groups, slice_metrics
from tfft.utils.files import write_json_atomic

logger = logging.getLogger(__name__)

# The Keras source must give the export's probabilities within this.
SOURCE_PARITY_ATOL = 1e-3
COLUMN_FILES = (".csv", ".csv.gz", ".csv.bz2", ".tsv", ".tsv.gz", ".jsonl", ".json")


def check_arguments(args: Any) -> None:
    """Checks the interpretation flags before any work; raises ValueError."""
    if args.explain is not None and args.explain < 1:
        raise ValueError(f"--explain must be >= 1 (examples to explain). Received: "
                         f"{args.explain}")
    if args.explain_steps < 1:
        raise ValueError(f"--explain-steps must be >= 1. Received: {args.explain_steps}")
    if args.min_slice_support < 1:
        raise ValueError(f"--min-slice-support must be >= 1. Received: "
                         f"{args.min_slice_support}")
    if args.keras_model is not None and args.explain is None:
        raise ValueError("--keras-model is the model --explain attributes with; pass "
                         "--explain N as well.")
    if args.keras_model is not None and not (args.keras_model.endswith(".keras")
                                             and os.path.isfile(args.keras_model)):
        raise ValueError(f"--keras-model must be an existing .keras file (the task the "
                         f"export came from). Received: {args.keras_model!r}")
    if args.explain_method in ("integrated_gradients", "grad_cam") and not args.keras_model:
        raise ValueError(f"--explain-method {args.explain_method} takes gradients through "
                         "a Keras model: pass --keras-model PATH.keras (the export's source), "
                         "or use --explain-method occlusion on the SavedModel.")


def _source_file(spec, split, given):
    if spec is None:
        return None
    if given:
        return {"train": spec.source, "val": spec.val_source,
                "test": spec.test_source}.get(split)
    return spec.source


def _read_column(path, column, encoding):
    import pandas as pd

    lower = path.lower()
    if not os.path.isfile(path) or not lower.endswith(COLUMN_FILES):
        raise ValueError(
            f"--slice-by {column!r} reads a column of the --data file, which must be one of "
            f"{list(COLUMN_FILES)}. Received: {path!r}. Use --slice-by length or brightness "
            "for slices computed from the inputs."
        )
    if lower.endswith((".jsonl", ".json")):
        frame = pd.read_json(path, lines=lower.endswith(".jsonl"), encoding=encoding)
    else:
        sep = "\t" if ".tsv" in lower else ","
        frame = pd.read_csv(path, sep=sep, encoding=encoding)
    if column not in frame.columns:
        raise ValueError(
            f"--slice-by: {path} has no column {column!r}. Columns: {list(frame.columns)}; "
            f"or use one of {list(INPUT_SLICERS)}."
        )
    return frame[column].to_numpy(object)


def slice_groups(slice_by: str, data: Any, rows: np.ndarray, loaded: int, spec: Any,
                 split: str, given: bool) -> list:
    """The group of each scored example: computed from its input, or a file column.

    Args:
        rows: the scored examples' rows among the `loaded` rows of their file.
    """
    if slice_by in INPUT_SLICERS:
        texts = isinstance(data.x[0], (str, bytes))
        if (slice_by == "length") != texts:
            kind = "texts" if texts else "images"
            raise ValueError(f"--slice-by {slice_by} does not apply to {kind}; use "
                             f"{'length' if texts else 'brightness'} or a column.")
        return input_groups(slice_by)(list(data.x))
    path = _source_file(spec, split, given)
    if path is None:
        raise ValueError(
            f"--slice-by {slice_by!r}: a column needs a --data file (CSV/TSV/JSONL); bundled "
            f"datasets have none. Use one of {list(INPUT_SLICERS)}."
        )
    values = _read_column(path, slice_by, spec.encoding)
    if len(values) != loaded:
        raise ValueError(
            f"--slice-by {slice_by!r}: {path} has {len(values)} rows but {loaded} were "
            "loaded (--on-error skip dropped some), so the column does not line up with the "
            "examples. Fix or remove the bad rows."
        )
    return list(values[rows])


def write_slices(report: Any, groups: list, args: Any, out: str) -> tuple[dict, list, str]:
    """Slice metrics of `report`'s predictions: (JSON section, files written, table)."""
    if report.task not in ("binary", "multiclass"):
        raise ValueError(f"--slice-by needs a binary or multiclass model. Received: task "
                         f"{report.task!r}")
    slices = slice_metrics(report.y_true, report.y_pred, groups, slice_by=args.slice_by,
                           min_support=args.min_slice_support)
    files = [slices.save_json(os.path.join(out, "slices.json"))]
    if not args.no_plots:
        files.append(slices.save_plot(os.path.join(out, "slices.png")))
    return slices.to_dict(), files, slices.table()


def _explaining_model(export, args, items, class_names):
    """The model to attribute with: the Keras source (checked against the export) or it."""
    if args.keras_model is None:
        return export, "occlusion" if args.explain_method == "auto" else args.explain_method
    source = load_keras_source(args.keras_model)
    feed = np.asarray(items, dtype=object) if isinstance(items[0], str) else np.stack(items)
    theirs = predict_fn(export)(feed)
    if not hasattr(source, "preprocess"):
        raise ValueError(f"--keras-model {args.keras_model} holds a {type(source).__name__}, "
                         "not a tfft.Task (which carries its preprocessor).")
    ours = np.asarray(source.predict_on_batch(feed))
    difference = float(np.max(np.abs(theirs - ours)))
    if difference > SOURCE_PARITY_ATOL:
        raise ValueError(
            f"--keras-model {args.keras_model} is not the export's source: its probabilities "
            f"differ from the SavedModel's by up to {difference:.3g} (allowed "
            f"{SOURCE_PARITY_ATOL}). Pass the .keras file the export was made from."
        )
    if class_names is not None and getattr(source, "class_names", None) not in (
            None, list(class_names)):
        raise ValueError(f"--keras-model's class names {source.class_names} differ from the "
                         f"export's {list(class_names)}.")
    return source, args.explain_method


def write_failures(report: Any, data: Any, export: Any, args: Any,
                   out: str) -> tuple[dict, list]:
    """Top losses with attributions, most-confused pairs and calibration.

    Returns:
        (the sections for report.json, the files written).
    """
    if report.task not in ("binary", "multiclass") or report.y_score is None:
        raise ValueError("--explain needs a binary or multiclass model that outputs "
                         f"probabilities. Received: task {report.task!r}")
    names = list(report.class_names)
    calibration = calibration_report(report.y_true, report.y_score)
    confused = most_confused(report.y_true, report.y_pred, names, k=20)
    losses = top_losses(report.y_true, report.y_score, k=args.explain, class_names=names)
    files = []
    if not args.no_plots:
        files.append(calibration.save_plot(os.path.join(out, "reliability_diagram.png")))
    section = {"calibration": calibration.to_dict(), "most_confused": confused,
               "top_losses": losses}
    if not losses:
        logger.info("No misclassified examples: nothing to explain.")
        return section, files
    items = [data.x[row["index"]] for row in losses]
    model, method = _explaining_model(export, args, items, names)
    explanation = explain(model, items, method=method, class_names=names,
                          steps=args.explain_steps, batch_size=args.batch_size)
    titles = [f"#{row['index']}: true {row['true']}, predicted {row['predicted']} "
              f"({row['confidence']:.2f}); attributions toward {row['predicted']}"
              for row in losses]
    explained = explanation.to_dict()
    for row, example in zip(losses, explained["examples"], strict=True):
        if "top_words" in example:
            row["top_words"] = example["top_words"]
        if "completeness_error" in example:
            row["completeness_error"] = example["completeness_error"]
    section["explanation_method"] = explanation.method
    files.append(write_json_atomic(os.path.join(out, "top_losses.json"), explained,
                                   allow_nan=False))
    if explanation.modality == "image":
        path = os.path.join(out, "top_losses.npz")
        np.savez_compressed(path, **{f"heatmap_{r['index']}": np.asarray(a, np.float32)
                                     for r, a in zip(losses, explanation.attributions,
                                                     strict=True)})
        files.append(path)
    if not args.no_plots:
        files.extend(explanation.save_plots(os.path.join(out, "top_losses.png"), titles=titles))
    return section, files
