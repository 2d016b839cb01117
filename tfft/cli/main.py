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


def _is_causal_lm_finetune(argv):
    """`tfft finetune ... --task causal_lm`: the causal-LM job has flags of its own."""
    argv = list(argv)
    if not argv or argv[0] != "finetune":
        return False
    for i, arg in enumerate(argv):
        if arg == "--task" and i + 1 < len(argv) and argv[i + 1] == "causal_lm":
            return True
        if arg == "--task=causal_lm":
            return True
    return False


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
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--epochs", type=_positive_int, default=1)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--max-examples", type=_positive_int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export-dir", help="SavedModel directory (default: no export)")
    p.add_argument("--run-dir")
    args = p.parse_args(argv[1:])
    settings = {k: v for k, v in vars(args).items() if k != "task" and v is not None}
    try:
        report = run_causal_lm_job(CausalLMJobConfig(**settings))
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as error:
        print(f"tfft finetune: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps({"test": report["test"], "export_path": report["export_path"],
                      "adapters": report["adapters"], "run_dir": report["run_dir"],
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
    if _is_causal_lm_finetune(argv):
        return _causal_lm_finetune(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
