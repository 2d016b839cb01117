"""`tfft finetune`: the main job's command line (flags override a config file)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from tfft.backbones import NetworkUnavailableError
from tfft.data.user_data import add_data_arguments, data_overrides, flag_message
from tfft.jobs.config import load_config_file
from tfft.jobs.finetune import METHODS, ConfigError, JobConfig, NumericalError, run_job

EXIT_USAGE = 2
# A DataSpec field (`tfft.data.user_data`) -> the job setting of the same meaning.
_DATA_SETTINGS = {"source": "data", "val_source": "val_data", "test_source": "test_data"}


def _int_at_least(low, kind):
    """An argparse type: an integer >= `low`, else a message naming `kind` ("positive")."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "positive")
_non_negative_int = _int_at_least(0, "non-negative")


def _shots(text):
    """--shots: an integer >= 2 (a class needs two examples to form a positive pair)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 2 (a class needs two examples for a positive pair), "
            f"got {value}")
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return value


def add_parser(subparsers):
    d = JobConfig()
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained backbone on your data (--data FILE|DIR|TFDS name)",
        description=(
            "Fine-tune the way the Keras recipe reads: load the backbone, add the task "
            "layer, train the head on the frozen backbone (cached features), unfreeze "
            "the top blocks and fine-tune with a lower learning rate (images: BatchNorm "
            "kept in inference mode), then evaluate on the test split and export a "
            "SavedModel that takes raw strings or JPEG/PNG bytes. --data takes a "
            "CSV/TSV/JSONL file, a folder of class subfolders (texts or images) or a TFDS "
            "name; the default backbone follows it (texts: all-MiniLM-L6-v2, images: "
            "offline:efficientnet_lite0). With no arguments: MiniLM on BBC News topics."
        ),
    )
    p.add_argument("--config", help="YAML or JSON file of settings; flags override it")
    add_data_arguments(p)
    p.add_argument("--threshold", type=_fraction,
                   help=f"multilabel decision threshold (default {d.threshold})")
    p.add_argument("--backbone", help="backbone spec (default auto: keras_hub:all_minilm_l6_v2 "
                   "for texts, offline:efficientnet_lite0 for images)")
    p.add_argument("--dataset", help="a bundled dataset instead of --data: bbc_news "
                   "(the default without --data) or rotten_tomatoes")
    p.add_argument("--epochs", type=_non_negative_int,
                   help=f"fine-tuning epochs with the top blocks unfrozen (default {d.epochs})")
    p.add_argument("--head-epochs", type=_positive_int,
                   help=f"head epochs on the frozen backbone (default {d.head_epochs})")
    p.add_argument("--unfreeze-top", type=_non_negative_int,
                   help=f"top backbone blocks to unfreeze (default {d.unfreeze_top})")
    p.add_argument("--sequence-length", type=_positive_int,
                   help=f"tokens per example (default {d.sequence_length})")
    p.add_argument("--batch-size", type=_positive_int,
                   help=f"examples per batch (default {d.batch_size})")
    p.add_argument("--learning-rate", type=float,
                   help=f"fine-tuning peak learning rate (default {d.learning_rate})")
    p.add_argument("--head-learning-rate", type=float,
                   help=f"head learning rate (default {d.head_learning_rate})")
    p.add_argument("--max-examples", type=_positive_int,
                   help="use a subset of this many examples (stratified for classes)")
    p.add_argument("--seed", type=_non_negative_int, help=f"random seed (default {d.seed})")
    p.add_argument("--export-dir", help="export model directory "
                   "(default saved_models/<data name>_<backbone name>)")
    p.add_argument("--no-export", action="store_true", help="skip the SavedModel export")
    p.add_argument("--export-jit-compile", action="store_true",
                   help="compile the export's model part with XLA (faster single requests "
                   "on CPU; about 1 s of compilation per new request shape)")
    p.add_argument("--run-dir", help="report/log directory "
                   "(default runs/<date>-<time>-<microseconds>, unique)")
    p.add_argument("--method", choices=METHODS,
                   help="adaptation method: fine_tune (head, then top blocks; default), "
                   "prompt (zero-shot label prompts, no parameter updates), soft_prompt "
                   "(learnable prompt vectors before the frozen backbone) or few_shot "
                   "(--shots examples per class: contrastive fine-tuning on pairs of them, "
                   "then the head from the label prompts)")
    p.add_argument("--shots", type=_shots,
                   help=f"examples per class for --method few_shot (default {d.shots})")
    p.add_argument("--strategy", choices=METHODS,
                   help="deprecated alias of --method (tf.distribute is --distribution)")
    p.add_argument("--prompt-template",
                   help="label prompt for --method prompt and few_shot (default "
                   "'This article is about {label}.')")
    p.add_argument("--distribution",
                   help="tf.distribute strategy: auto, tpu, mirrored, multi_worker, gpu, cpu, "
                   "default (default auto); --batch-size is per replica")
    p.add_argument("--tpu", help="TPU address for --distribution tpu ('local' on a TPU VM)")
    p.add_argument("--no-feature-cache", action="store_true",
                   help="run the frozen backbone every epoch instead of caching features")
    p.set_defaults(func=run)


def run(args):
    try:
        settings = load_config_file(args.config) if args.config else {}
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
            "prompt_template": args.prompt_template, "threshold": args.threshold,
            "shots": args.shots,
        }
        for field, value in data_overrides(args).items():
            flags[_DATA_SETTINGS.get(field, field)] = (
                list(value) if isinstance(value, tuple) else value)
        if method is not None:
            # The flag wins over the file, under either of the file's names.
            settings.pop("strategy", None)
        settings.update({k: v for k, v in flags.items() if v is not None})
        if args.no_export:
            settings["export_dir"] = None
        if args.no_feature_cache:
            settings["feature_cache"] = False
        if args.export_jit_compile:
            settings["export_jit_compile"] = True
        report = run_job(_job_config(settings))
    except (ConfigError, NetworkUnavailableError, FileExistsError) as error:
        print(f"tfft finetune: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except NumericalError as error:
        print(f"tfft finetune: training stopped: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        # Raised while loading the backbone or data, before training starts.
        print(f"tfft finetune: error: {flag_message(error)}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps({"test": report["test"], "export_path": report["export_path"],
                      "run_dir": report["run_dir"], "backbone": report["backbone_spec"]}))
    return 0


def _job_config(settings):
    """`JobConfig.from_dict`, each deprecation warning printed as one note on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        try:
            return JobConfig.from_dict(settings)
        finally:
            for warning in caught:
                print(f"tfft finetune: note: {warning.message}", file=sys.stderr)


def _method_flag(args):
    """`--method`, or the deprecated `--strategy` with a one-line note on stderr."""
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
