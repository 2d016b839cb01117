"""`tfft recommend` and `tfft select`: model selection from the command line.

    tfft recommend --task multiclass --modality text --num-examples 2000 --compute cpu
    tfft select --dataset bbc_news --candidates minilm:feature_extraction,tfidf_logreg \\
        --budget-seconds 600 --max-examples 600 --out runs/select
    tfft select --data reviews.csv --text-column review --label-column stars \\
        --budget-seconds 300 --out runs/select

`--data` takes the sources and options of `tfft.data.user_data` (a CSV/TSV/JSONL
file, a folder of class subfolders of texts or images, a TFDS name); without
`--candidates`, the offline backbones of the data's modality are tried.
"""

import json
import sys

from tfft.backbones import list_backbones
from tfft.data import IMAGE_DATASETS, TEXT_DATASETS, select_classes, stratified_split
from tfft.data.sources import DatasetUnavailableError
from tfft.data.user_data import (
    add_data_arguments,
    data_spec_from_args,
    flag_message,
    load_data_spec,
)
from tfft.selection.candidates import TFIDF, parse_candidates
from tfft.selection.recommend import recommend
from tfft.selection.select import select

EXIT_USAGE = 2
SELECT_TASKS = ("multiclass", "binary")


def add_parser(subparsers):
    """Registers the `recommend` and `select` subcommands."""
    rec = subparsers.add_parser(
        "recommend", help="Suggest backbones and fine-tuning methods for a task.",
        description=(
            "Rank the catalog's backbones (tfft.list_backbones) for a task with the rules "
            "in tfft.selection.rules: zero-shot without labels, feature extraction under "
            "1,000 examples, top-2 blocks up to 20,000, full fine-tuning beyond; smaller "
            "backbones on CPU or under a latency budget. Each line cites its rules."
        ),
    )
    rec.add_argument("--task", required=True, help="multiclass, binary, multilabel, ...")
    rec.add_argument("--modality", required=True, help="text or image")
    rec.add_argument("--num-examples", type=int, required=True,
                     help="labelled training examples (0 for none)")
    rec.add_argument("--compute", default="cpu",
                     help="cpu, gpu, tpu, or a training budget in seconds (default cpu)")
    rec.add_argument("--latency-ms", type=float, default=None,
                     help="per-example inference budget in milliseconds")
    rec.add_argument("--no-labels", action="store_true",
                     help="no labels available: zero-shot prompts")
    rec.add_argument("--limit", type=int, default=5, help="suggestions shown (default 5)")
    rec.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rec.set_defaults(func=run, selection_command="recommend")

    sel = subparsers.add_parser(
        "select", help="Bake off candidate backbones/methods on a dataset within a budget.",
        description=(
            "Run candidates (TF-IDF baseline, zero-shot prompts, linear probes on cached "
            "features, short top-k fine-tunes) on a stratified train/validation split "
            "(or the given --val-data) within a time budget; print the leaderboard and "
            "write leaderboard.csv, .json and .png. Pass your own data with --data, or a "
            "bundled dataset with --dataset."
        ),
    )
    sel.add_argument("--dataset", default=None,
                     help="a bundled dataset (bbc_news, rotten_tomatoes, lfw_subset, ...)")
    add_data_arguments(sel)
    sel.add_argument("--candidates", default=None,
                     help="comma-separated, e.g. minilm:feature_extraction,minilm:top_k:2,"
                          "minilm:zero_shot,tfidf_logreg. Defaults to the offline backbones "
                          "of the data's modality (plus tfidf_logreg for text).")
    sel.add_argument("--budget-seconds", type=float, default=600.0,
                     help="wall-clock budget of the whole run (default 600)")
    sel.add_argument("--metric", default="macro_f1", help="macro_f1 (default), accuracy, ...")
    sel.add_argument("--classes", default=None,
                     help="keep only these classes, comma-separated (e.g. fresh,rotten)")
    sel.add_argument("--max-examples", type=int, default=None,
                     help="use a stratified subset of this many examples")
    sel.add_argument("--val-fraction", type=float, default=0.3,
                     help="validation share of the split (default 0.3)")
    sel.add_argument("--finalists", type=int, default=1,
                     help="probed backbones that also get a top_k:2 fine-tune (default 1)")
    sel.add_argument("--fine-tune-seconds", type=float, default=None,
                     help="cap on each fine-tune's training time")
    sel.add_argument("--sequence-length", type=int, default=128,
                     help="tokens per text (default 128)")
    sel.add_argument("--seed", type=int, default=0)
    sel.add_argument("--out", default=None, help="folder for the leaderboard files")
    sel.set_defaults(func=run, selection_command="select")
    return rec, sel


def run(args):
    """Runs `tfft recommend` or `tfft select`; returns the exit status."""
    command = args.selection_command
    try:
        if command == "recommend":
            return _recommend(args)
        return _select(args)
    except (ValueError, TypeError, DatasetUnavailableError) as error:
        print(f"tfft {command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def _compute(text):
    try:
        return float(text)
    except ValueError:
        return text


def _recommend(args):
    recs = recommend(args.task, args.modality, args.num_examples, compute=_compute(args.compute),
                     latency_ms=args.latency_ms, labels_available=not args.no_labels,
                     limit=args.limit)
    if args.json:
        print(json.dumps([r.to_dict() for r in recs], indent=2))
        return 0
    for i, rec in enumerate(recs, 1):
        print(f"{i}. {rec.backbone_spec}  method={rec.method}  score={rec.score:.2f}  "
              f"~{rec.estimated_seconds:.0f} s")
        print(f"   {rec.reason}")
    return 0


def _load_dataset(name, classes):
    loaders = {**TEXT_DATASETS, **IMAGE_DATASETS}
    if name not in loaders:
        raise ValueError(
            f"Unknown dataset. Expected one of {sorted(loaders)}. Received: --dataset {name!r}"
        )
    data = loaders[name]()
    if classes:
        data = select_classes(data, [c.strip() for c in classes.split(",") if c.strip()])
    return data


def _subset(data, max_examples, seed):
    if max_examples is not None:
        if max_examples < 10:
            raise ValueError(f"--max-examples must be >= 10. Received: {max_examples}")
        if max_examples < len(data):
            keep, _, _ = stratified_split(data.y, 0.0, 1.0 - max_examples / len(data),
                                          seed=seed)
            data = data.take(keep)
    return data


def split_for_selection(data, max_examples=None, val_fraction=0.3, seed=0):
    """A stratified (subset and) train/validation split of `data`."""
    data = _subset(data, max_examples, seed)
    train_idx, val_idx, _ = stratified_split(data.y, val_fraction, 0.0, seed=seed)
    return data.take(train_idx), data.take(val_idx)


def default_candidates(modality):
    """The offline catalog backbones of `modality` as probes, TF-IDF first for text."""
    specs = [f"{info.spec}:feature_extraction" for info in list_backbones()
             if info.offline and info.modality == modality]
    return ([TFIDF] if modality == "text" else []) + specs


def _user_data(args):
    """Train and validation `LabeledData` from `--data` and its options."""
    try:
        spec = data_spec_from_args(args)
        if spec.task not in SELECT_TASKS:
            raise ValueError(
                f"tfft select ranks classifiers: --task must be one of {list(SELECT_TASKS)}. "
                f"Received: --task {spec.task}"
            )
        splits = load_data_spec(spec)
    except ValueError as error:
        raise ValueError(flag_message(error)) from None
    skipped = sum(d.skipped for d in splits.values())
    if skipped:
        print(f"tfft select: skipped {skipped} bad record(s) of {spec.source} (--on-error skip)")
    if "test" in splits:
        print("tfft select: --test-data is not used: the bake-off scores on validation data")
    classes = _classes(args.classes)
    if classes:
        splits = {k: select_classes(d, classes) for k, d in splits.items()}
    if "val" in splits:
        return _subset(splits["train"], args.max_examples, args.seed), splits["val"]
    data = splits.get("all", splits.get("train"))
    return split_for_selection(data, args.max_examples, args.val_fraction, args.seed)


def _classes(text):
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def _select(args):
    if (args.dataset is None) == (args.data is None):
        raise ValueError(
            "Pass your data with --data SOURCE (a CSV/TSV/JSONL file, a folder of class "
            "subfolders or a TFDS name) or a bundled dataset with --dataset NAME, not "
            f"{'both' if args.dataset else 'neither'}."
        )
    if args.candidates is not None:
        candidates = parse_candidates(args.candidates)
    if args.dataset is not None:
        data = _load_dataset(args.dataset, args.classes)
        train, val = split_for_selection(data, args.max_examples, args.val_fraction, args.seed)
        name = args.dataset
    else:
        train, val = _user_data(args)
        name = args.data
    if args.candidates is None:
        candidates = parse_candidates(default_candidates(train.modality))
    print(f"tfft select: {name} ({len(train.class_names)} classes), train/val = "
          f"{len(train)}/{len(val)}, budget {args.budget_seconds:g} s, "
          f"{len(candidates)} candidates")
    board = select(candidates, train, val, budget_seconds=args.budget_seconds,
                   metric=args.metric, finalists=args.finalists,
                   fine_tune_seconds=args.fine_tune_seconds, out_dir=args.out,
                   sequence_length=args.sequence_length, seed=args.seed)
    winner = board.winner
    print(json.dumps({
        "winner": winner.candidate if winner else None,
        "backbone_spec": winner.backbone_spec if winner else None,
        "freeze": winner.freeze if winner else None,
        args.metric: winner.value if winner else None,
        "out": args.out,
    }))
    return 0
