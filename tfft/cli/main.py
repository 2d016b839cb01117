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
    from tfft.cli import assets as assets_cli
    from tfft.cli import env as env_cli
    from tfft.evaluation import cli as evaluation_cli
    from tfft.export import cli as export_cli
    from tfft.jobs import cli as jobs_cli
    from tfft.selection import cli as selection_cli

    jobs_cli.add_parser(subparsers)
    _add_predict(subparsers)
    evaluation_cli.add_parser(subparsers)
    export_cli.add_parser(subparsers)
    selection_cli.add_parser(subparsers)
    assets_cli.add_parser(subparsers)
    env_cli.add_parser(subparsers)
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
