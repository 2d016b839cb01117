"""`tfft` command line: finetune, evaluate, predict and friends.

Every subcommand validates its arguments before doing any work: a bad value
prints one paragraph naming it and the valid forms, and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_predict(subparsers):
    p = subparsers.add_parser(
        "predict", help="classify raw texts with an exported SavedModel",
        description="Run an exported SavedModel's serving_default signature on raw texts.",
    )
    p.add_argument("--model", required=True, help="saved_models/NAME/VERSION directory")
    p.add_argument("texts", nargs="+", metavar="INPUT",
                   help="texts to classify, or image files for a detection/segmentation export")
    p.add_argument("--out", help="folder for the pictures of a detection/segmentation export "
                   "(default: the current folder)")
    p.add_argument("--min-score", type=float, default=0.3,
                   help="detection exports: boxes scoring below it are left out of the JSON "
                   "and the picture (default 0.3)")
    p.set_defaults(func=_run_predict)


def _run_predict(args):
    import os

    if not os.path.exists(os.path.join(args.model, "saved_model.pb")):
        print(f"tfft predict: error: {args.model!r} is not a SavedModel directory "
              "(expected saved_model.pb inside, e.g. saved_models/NAME/1).", file=sys.stderr)
        return EXIT_USAGE
    from tfft.export.detection import DETECTION_METADATA_FILE
    from tfft.export.segmentation import SEGMENTATION_METADATA_FILE

    for name in (DETECTION_METADATA_FILE, SEGMENTATION_METADATA_FILE):
        if os.path.exists(os.path.join(args.model, name)):
            return _predict_dense(args, os.path.join(args.model, name))
    import tensorflow as tf

    from tfft.backbones.keras_hub import missing_text_ops_hint, register_text_ops

    register_text_ops()  # a text export's tokenizer runs TensorFlow Text ops
    try:
        loaded = tf.saved_model.load(args.model)
    except (RuntimeError, tf.errors.NotFoundError) as error:
        hint = missing_text_ops_hint(error)
        if hint is None:
            raise
        print(f"tfft predict: error: {args.model!r}: {hint}", file=sys.stderr)
        return EXIT_USAGE
    outputs = loaded.signatures["serving_default"](tf.constant(args.texts))
    for i, text in enumerate(args.texts):
        row = {"text": text}
        for key, value in outputs.items():
            item = value.numpy()[i]
            row[key] = item.decode() if isinstance(item, bytes) else item.tolist()
        print(json.dumps(row))
    return 0


def _predict_dense(args, metadata_path):
    """`tfft predict` on a detection/segmentation export: image files in, JSON + PNG out."""
    import os

    import numpy as np
    import tensorflow as tf

    with open(metadata_path) as f:
        metadata = json.load(f)
    missing = [path for path in args.texts if not os.path.isfile(path)]
    if missing:
        print(f"tfft predict: error: {args.model!r} is a {metadata['task']} export and takes "
              f"image files (PNG/JPEG); not found: {missing[:3]}", file=sys.stderr)
        return EXIT_USAGE
    data = [tf.io.read_file(path).numpy() for path in args.texts]
    try:
        images = [tf.io.decode_image(b, channels=3, expand_animations=False).numpy()
                  for b in data]
    except tf.errors.InvalidArgumentError:
        print(f"tfft predict: error: the inputs must be PNG/JPEG/GIF/BMP images. Received: "
              f"{args.texts[:3]}", file=sys.stderr)
        return EXIT_USAGE
    serve = tf.saved_model.load(args.model).signatures["serving_default"]
    outputs = {k: v.numpy() for k, v in serve(image_bytes=tf.constant(data)).items()}
    out = args.out or "."
    os.makedirs(out, exist_ok=True)
    names = metadata["class_names"]
    for i, path in enumerate(args.texts):
        stem = os.path.splitext(os.path.basename(path))[0]
        if metadata["task"] == "object_detection":
            from tfft.evaluation.detection import detections_from_export, plot_detections

            found = detections_from_export(outputs, i)
            keep = found["scores"] >= args.min_score
            found = {key: value[keep] for key, value in found.items()}
            picture = plot_detections(images[i][None], [found],
                                      os.path.join(out, f"{stem}_boxes.png"), names,
                                      min_score=args.min_score)
            row = {"image": path, "boxes": found["boxes"].tolist(),
                   "classes": [names[c] for c in found["classes"]],
                   "class_ids": found["classes"].tolist(), "scores": found["scores"].tolist()}
        else:
            from tfft.evaluation.segmentation import plot_mask_overlay

            mask = outputs["mask"][i]
            counts = np.bincount(mask.ravel(), minlength=len(names))
            picture = plot_mask_overlay(images[i], mask, os.path.join(out, f"{stem}_mask.png"),
                                        names)
            row = {"image": path, "mask_size": list(mask.shape),
                   "pixels": {name: int(n) for name, n in zip(names, counts, strict=False)}}
        row["picture"] = picture
        print(json.dumps(row))
    return 0


def _add_generate(subparsers):
    p = subparsers.add_parser(
        "generate", help="generate completions with an exported causal LM",
        description="Run an exported causal LM's generate signature (greedy) on raw prompts.",
    )
    p.add_argument("--model", required=True,
                   help="saved_models/NAME directory (newest version) or NAME/VERSION")
    p.add_argument("--max-new-tokens", type=_positive_int, default=32,
                   help="tokens generated at most per prompt (default 32)")
    p.add_argument("prompts", nargs="+", help="prompts to complete")
    p.set_defaults(func=_run_generate)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer. Received: {text!r}")
    return value


def _run_generate(args):
    from tfft.export.generate import load_generate

    try:
        generate = load_generate(args.model)
    except (ValueError, OSError) as error:
        print(f"tfft generate: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    for prompt, completion in zip(args.prompts, generate(args.prompts, args.max_new_tokens),
                                  strict=True):
        print(json.dumps({"prompt": prompt, "completion": completion}))
    return 0


def _finetune_task(argv):
    """The `--task` of `tfft finetune ...` when that task has a job (and flags) of its own."""
    from tfft.jobs.config import DENSE_VISION_TASKS

    argv = list(argv)
    if not argv or argv[0] != "finetune":
        return None
    own = ("causal_lm", *DENSE_VISION_TASKS)
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--task" and i + 1 < len(argv) else (
            arg.partition("=")[2] if arg.startswith("--task=") else None)
        if value in own:
            return value
    return None


def _dense_finetune(argv, task):
    from tfft.jobs.dense_vision import (
        DEFAULT_DENSE_BACKBONE,
        DETECTION_TASK,
        DenseVisionJobConfig,
        run_dense_vision_job,
    )

    detection = task == DETECTION_TASK
    p = _Parser(
        prog=f"tfft finetune --task {task}",
        description=("Object detection on a box file (CSV/JSON rows or COCO JSON): "
                     if detection else
                     "Semantic segmentation on a folder of images with PNG masks: ")
        + "the head on the frozen backbone, then the top blocks at a lower rate; "
        "test-split scores in report.json, a PNG picture and a SavedModel taking image bytes.",
    )
    p.add_argument("--task", choices=[task], required=True)
    p.add_argument("--data", required=True,
                   help="boxes .csv/.json (or COCO .json)" if detection else "folder of images")
    p.add_argument("--val-data")
    p.add_argument("--test-data")
    if not detection:
        p.add_argument("--mask-dir", help="PNG masks named like the images "
                       "(default: masks/ beside --data)")
        p.add_argument("--val-mask-dir")
        p.add_argument("--test-mask-dir")
    p.add_argument("--backbone", default=DEFAULT_DENSE_BACKBONE,
                   help=f"image backbone spec (default {DEFAULT_DENSE_BACKBONE})")
    p.add_argument("--class-names", help="comma-separated class names"
                   + ("" if detection else ", one per mask id, background first"))
    p.add_argument("--image-size", default="128x128", help="HxW model input (default 128x128)")
    p.add_argument("--epochs", type=_positive_int, default=2, help="epochs per stage")
    p.add_argument("--fine-tune-epochs", type=int, help="stage-2 epochs (default --epochs)")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--fine-tune-learning-rate", type=float, default=1e-3)
    p.add_argument("--unfreeze", default="top_k_frozen_batch_norm:2",
                   help="stage-2 freeze policy (default top_k_frozen_batch_norm:2)")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--val-fraction", type=float, default=0.0)
    p.add_argument("--max-examples", type=_positive_int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export-dir", help="SavedModel folder (default RUN_DIR/saved_model)")
    p.add_argument("--run-dir")
    args = p.parse_args(argv[1:])
    settings = {k: v for k, v in vars(args).items() if v is not None}
    return _run_task_job(run_dense_vision_job, DenseVisionJobConfig, settings, "picture")


def _causal_lm_finetune(argv):
    from tfft.jobs.causal_lm import DEFAULT_CAUSAL_LM, CausalLMJobConfig, run_causal_lm_job

    p = _Parser(
        prog="tfft finetune --task causal_lm",
        description="LoRA fine-tuning of a causal LM on prompt/completion pairs (or text): "
        "loss on the completions only, then held-out perplexity (and accuracy/macro F1 "
        "when completions are labels), the adapters alone and a SavedModel with a "
        "generate signature.",
    )
    p.add_argument("--task", choices=["causal_lm"], required=True)
    p.add_argument("--data", required=True,
                   help="a .jsonl/.json/.csv file with prompt and completion columns (or text)")
    p.add_argument("--val-data")
    p.add_argument("--test-data")
    p.add_argument("--backbone", default=DEFAULT_CAUSAL_LM,
                   help=f"causal LM spec (default {DEFAULT_CAUSAL_LM})")
    p.add_argument("--lora-rank", type=_positive_int, default=8)
    p.add_argument("--lora-mlp", action="store_true", help="LoRA on the MLP projections too")
    p.add_argument("--chat-template", action="store_true",
                   help="format prompts with the model's own chat template")
    p.add_argument("--sequence-length", type=_positive_int, default=256)
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each block's activations in the backward pass: less "
                   "memory for long sequences and large batches, more time")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--epochs", type=_positive_int, default=1)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine",
                   help="cosine: warm up over a tenth of the steps, then down to zero")
    p.add_argument("--max-examples", type=_positive_int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export-dir", help="SavedModel directory (default: no export)")
    p.add_argument("--run-dir")
    args = p.parse_args(argv[1:])
    settings = {k: v for k, v in vars(args).items() if k != "task" and v is not None}
    return _run_task_job(run_causal_lm_job, CausalLMJobConfig, settings, "adapters")


def _run_task_job(run, config_class, settings, extra_key):
    """Runs a task's own job; bad settings or data exit 2, the summary is one JSON line."""
    try:
        report = run(config_class(**settings))
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as error:
        print(f"tfft finetune: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps({"test": report["test"], "export_path": report["export_path"],
                      extra_key: report[extra_key], "run_dir": report["run_dir"],
                      "backbone": report["backbone_spec"]}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tfft",
        description="tfft: fine-tune pretrained models (BERT, ResNet, TF Hub, ...) with "
        "Keras 3 on TensorFlow.",
    )
    subparsers = parser.add_subparsers(dest="command", parser_class=_Parser,
                                       metavar="COMMAND")
    from tfft.cli import assets as assets_cli
    from tfft.cli import env as env_cli
    from tfft.evaluation import cli as evaluation_cli
    from tfft.export import cli as export_cli
    from tfft.jobs import cli as jobs_cli
    from tfft.selection import cli as selection_cli

    jobs_cli.add_parser(subparsers)
    _add_predict(subparsers)
    _add_generate(subparsers)
    evaluation_cli.add_parser(subparsers)
    export_cli.add_parser(subparsers)
    selection_cli.add_parser(subparsers)
    assets_cli.add_parser(subparsers)
    env_cli.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import tfft  # noqa: F401  selects the TensorFlow backend first

    argv = sys.argv[1:] if argv is None else list(argv)
    own_task = _finetune_task(argv)
    if own_task == "causal_lm":
        return _causal_lm_finetune(argv)
    if own_task is not None:
        return _dense_finetune(argv, own_task)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
