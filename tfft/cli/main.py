"""`tfft` command line: finetune, evaluate, predict and friends.

Every subcommand validates its arguments before doing any work: a bad value
prints one paragraph naming it and the valid forms, and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer, got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _add_finetune(subparsers):
    from tfft.jobs.finetune import METHODS, JobConfig

    d = JobConfig()
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained backbone on a dataset (defaults: MiniLM on BBC News)",
        description=(
            "Fine-tune the way the Keras recipe reads: load the backbone, add the task "
            "layer, train the head on the frozen backbone (cached features), unfreeze "
            "the top transformer blocks and fine-tune with a lower learning rate, then "
            "evaluate on the test split and export a SavedModel that takes raw strings. "
            "With no arguments: the offline all-MiniLM-L6-v2 on BBC News topics."
        ),
    )
    p.add_argument("--config", help="YAML or JSON file of settings; flags override it")
    p.add_argument("--backbone", help=f"backbone spec (default {d.backbone})")
    p.add_argument("--dataset", help=f"dataset name (default {d.dataset})")
    p.add_argument("--epochs", type=_non_negative_int,
                   help=f"fine-tuning epochs with the top blocks unfrozen (default {d.epochs})")
    p.add_argument("--head-epochs", type=_positive_int,
                   help=f"head epochs on the frozen backbone (default {d.head_epochs})")
    p.add_argument("--unfreeze-top", type=_non_negative_int,
                   help=f"transformer blocks to unfreeze (default {d.unfreeze_top})")
    p.add_argument("--sequence-length", type=_positive_int,
                   help=f"tokens per example (default {d.sequence_length})")
    p.add_argument("--batch-size", type=_positive_int,
                   help=f"examples per batch (default {d.batch_size})")
    p.add_argument("--learning-rate", type=float,
                   help=f"fine-tuning peak learning rate (default {d.learning_rate})")
    p.add_argument("--head-learning-rate", type=float,
                   help=f"head learning rate (default {d.head_learning_rate})")
    p.add_argument("--max-examples", type=_positive_int,
                   help="use a stratified subset of this many examples")
    p.add_argument("--seed", type=_non_negative_int, help=f"random seed (default {d.seed})")
    p.add_argument("--export-dir", help=f"export model directory (default {d.export_dir})")
    p.add_argument("--no-export", action="store_true", help="skip the SavedModel export")
    p.add_argument("--run-dir", help="report/log directory "
                   "(default runs/<date>-<time>-<microseconds>, unique)")
    p.add_argument("--method", choices=METHODS,
                   help="adaptation method: fine_tune (head, then top blocks; default), "
                   "prompt (zero-shot label prompts, no parameter updates) or soft_prompt "
                   "(learnable prompt vectors before the frozen backbone)")
    p.add_argument("--strategy", choices=METHODS,
                   help="deprecated alias of --method (tf.distribute is --distribution)")
    p.add_argument("--prompt-template",
                   help="label prompt for --method prompt (default "
                   "'This article is about {label}.')")
    p.add_argument("--distribution",
                   help="tf.distribute strategy: auto, tpu, mirrored, multi_worker, gpu, cpu, "
                   "default (default auto); --batch-size is per replica")
    p.add_argument("--tpu", help="TPU address for --distribution tpu ('local' on a TPU VM)")
    p.add_argument("--no-feature-cache", action="store_true",
                   help="run the frozen backbone every epoch instead of caching features")
    p.set_defaults(func=_run_finetune)


def _load_config_file(path):
    from tfft.jobs.config import load_config_file

    return load_config_file(path)


def _run_finetune(args):
    from tfft.backbones import NetworkUnavailableError
    from tfft.jobs.finetune import ConfigError, NumericalError, run_job

    try:
        settings = _load_config_file(args.config) if args.config else {}
        method = _method_flag(args)
        flags = {
            "backbone": args.backbone, "dataset": args.dataset, "epochs": args.epochs,
            "head_epochs": args.head_epochs, "unfreeze_top": args.unfreeze_top,
            "sequence_length": args.sequence_length, "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "head_learning_rate": args.head_learning_rate,
            "max_examples": args.max_examples, "seed": args.seed,
            "export_dir": args.export_dir, "run_dir": args.run_dir,
            "method": method, "distribution": args.distribution, "tpu": args.tpu,
            "prompt_template": args.prompt_template,
        }
        if method is not None:
            # The flag wins over the file, under either of the file's names.
            settings.pop("strategy", None)
        settings.update({k: v for k, v in flags.items() if v is not None})
        if args.no_export:
            settings["export_dir"] = None
        if args.no_feature_cache:
            settings["feature_cache"] = False
        report = run_job(_job_config(settings))
    except (ConfigError, NetworkUnavailableError, FileExistsError) as error:
        print(f"tfft finetune: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except NumericalError as error:
        print(f"tfft finetune: training stopped: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        # Raised while loading the backbone or data, before training starts.
        print(f"tfft finetune: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps({"test": report["test"], "export_path": report["export_path"],
                      "run_dir": report["run_dir"]}))
    return 0


def _job_config(settings):
    """`JobConfig.from_dict`, each deprecation warning printed as one note on stderr."""
    from tfft.jobs.finetune import JobConfig

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        try:
            return JobConfig.from_dict(settings)
        finally:
            for warning in caught:
                print(f"tfft finetune: note: {warning.message}", file=sys.stderr)


def _method_flag(args):
    """`--method`, or the deprecated `--strategy` with a one-line note on stderr."""
    from tfft.jobs.finetune import ConfigError

    if args.strategy is None:
        return args.method
    if args.method is not None and args.method != args.strategy:
        raise ConfigError(
            f"--strategy is a deprecated alias of --method, and they disagree. Received: "
            f"--method {args.method} --strategy {args.strategy}. Keep only --method."
        )
    print(f"tfft finetune: note: --strategy is deprecated; use --method {args.strategy} "
          "(tf.distribute is --distribution).", file=sys.stderr)
    return args.strategy


def _add_predict(subparsers):
    p = subparsers.add_parser(
        "predict", help="classify raw texts with an exported SavedModel",
        description="Run an exported SavedModel's serving_default signature on raw texts.",
    )
    p.add_argument("--model", required=True, help="saved_models/NAME/VERSION directory")
    p.add_argument("texts", nargs="+", help="texts to classify")
    p.set_defaults(func=_run_predict)


def _run_predict(args):
    import os

    if not os.path.exists(os.path.join(args.model, "saved_model.pb")):
        print(f"tfft predict: error: {args.model!r} is not a SavedModel directory "
              "(expected saved_model.pb inside, e.g. saved_models/NAME/1).", file=sys.stderr)
        return EXIT_USAGE
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tfft",
        description="tfft: fine-tune pretrained models (BERT, ResNet, TF Hub, ...) with "
        "Keras 3 on TensorFlow.",
    )
    subparsers = parser.add_subparsers(dest="command", parser_class=_Parser,
                                       metavar="COMMAND")
    _add_finetune(subparsers)
    _add_predict(subparsers)
    from tfft.evaluation import cli as evaluation_cli
    from tfft.export import cli as export_cli
    from tfft.selection import cli as selection_cli

    evaluation_cli.add_parser(subparsers)
    export_cli.add_parser(subparsers)
    selection_cli.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import tfft  # noqa: F401  selects the TensorFlow backend first

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
