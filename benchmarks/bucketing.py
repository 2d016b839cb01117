"""Length bucketing vs fixed 128-token padding when fine-tuning MiniLM.

Rotten Tomatoes, fresh vs rotten (short review snippets): the same MiniLM +
masked-mean + Dense classifier, from the same initial weights, fine-tuned for
one epoch (frozen=False, Adam) on the same training examples, once with every
batch padded to 128 tokens and once with length buckets padded per batch.
The two runs alternate their training steps, so load from other processes on
a shared machine falls on both alike. Training examples/s exclude each run's
first step (graph tracing); later retracing for new batch shapes is counted.
Both are then scored on the same test examples (macro F1).

Prints one JSON object as the last line, with `speedup` =
bucketed examples/s / fixed examples/s.

    .venv/bin/python benchmarks/bucketing.py [--train 1000] [--test 500]
        [--distribution auto]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfft  # noqa: I001  (sets the Keras backend first)
import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split

import tfft.data as td

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import add_distribution_args, setup_distribution
from input_pipeline import build_classifier


def make_model(backbone, initial_weights, learning_rate, jit_compile=False):
    model = build_classifier(backbone, 2)
    model.set_weights(initial_weights)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


def score(model, dataset):
    labels, predictions = [], []
    start = time.perf_counter()
    for x, y in dataset:
        predictions.append(np.argmax(model.predict_on_batch(x), axis=-1))
        labels.append(y.numpy())
    seconds = time.perf_counter() - start
    labels, predictions = np.concatenate(labels), np.concatenate(predictions)
    return {
        "macro_f1": round(float(f1_score(labels, predictions, average="macro")), 4),
        "accuracy": round(float(np.mean(labels == predictions)), 4),
        "eval_s": round(seconds, 1),
    }


def train_interleaved(runs):
    """One epoch for every run, alternating their steps so that load from other
    processes on a shared machine falls on all of them alike."""
    iterators = {name: iter(run["train"]) for name, run in runs.items()}
    for run in runs.values():
        run.update(step_s=[], step_examples=[], widths=[])
    while iterators:
        for name in list(iterators):
            try:
                x, y = next(iterators[name])
            except StopIteration:
                del iterators[name]
                continue
            run = runs[name]
            start = time.perf_counter()
            run["model"].train_on_batch(x, y)
            run["step_s"].append(time.perf_counter() - start)
            run["step_examples"].append(int(y.shape[0]))
            run["widths"].append(int(x["token_ids"].shape[1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bucket-boundaries", action="store_true",
                        help="Fixed length buckets (td.default_bucket_boundaries(128)) instead "
                        "of make_text_dataset's default length-sorted pools.")
    add_distribution_args(parser)
    args = parser.parse_args()
    strategy, settings = setup_distribution(args)

    data = td.load_rotten_tomatoes(classes=["rotten", "fresh"])
    train_idx, rest = train_test_split(
        np.arange(len(data)), train_size=args.train, stratify=data.y, random_state=args.seed
    )
    test_idx, _ = train_test_split(
        rest, train_size=args.test, stratify=data.y[rest], random_state=args.seed
    )
    train, test = data.take(train_idx), data.take(test_idx)

    backbone = tfft.load_backbone("minilm", sequence_length=128)
    keras.utils.set_random_seed(args.seed)
    initial_weights = build_classifier(backbone, 2).get_weights()
    lengths = np.sum(
        backbone.preprocessor(tf.constant(list(train.x)))["padding_mask"].numpy(), axis=1
    )
    runs = {}
    for name, bucketing in (("fixed_128", False), ("bucketed", True)):
        make = dict(preprocessor=backbone.preprocessor, batch_size=args.batch_size,
                    bucketing=bucketing)
        if bucketing and args.bucket_boundaries:
            make["bucket_boundaries"] = td.default_bucket_boundaries(128)
        # Each run trains its own copy of the backbone, from the same weights.
        with strategy.scope():
            own = tfft.load_backbone("minilm", sequence_length=128)
            model = make_model(own, initial_weights, args.learning_rate,
                               settings["jit_compile"])
        runs[name] = {
            "model": model,
            "train": td.make_text_dataset(train, shuffle=True, seed=args.seed, **make),
            "test": td.make_text_dataset(test, **make),
        }
    train_interleaved(runs)
    results = {}
    for name, run in runs.items():
        # The first step traces the train function; later retracing for new
        # batch shapes (bucketing) is counted.
        results[name] = {
            "train_examples_per_s": round(
                sum(run["step_examples"][1:]) / sum(run["step_s"][1:]), 2
            ),
            "train_s": round(sum(run["step_s"]), 1),
            "steps": len(run["step_s"]),
            "mean_padded_length": round(float(np.mean(run["widths"])), 1),
            **score(run["model"], run["test"]),
        }
    fixed, bucketed = results["fixed_128"], results["bucketed"]
    print(json.dumps({
        "benchmark": "bucketing",
        "dataset": "rotten_tomatoes (rotten vs fresh)",
        "train_examples": len(train),
        "test_examples": len(test),
        "batch_size": args.batch_size,
        "batching": "bucket_boundaries" if args.bucket_boundaries else "sorted_pools",
        "epochs": 1,
        **settings,
        "median_tokens": float(np.median(lengths)),
        "mean_tokens": round(float(np.mean(lengths)), 1),
        "fixed_128": fixed,
        "bucketed": bucketed,
        "speedup": round(
            bucketed["train_examples_per_s"] / fixed["train_examples_per_s"], 2
        ),
        "f1_fixed": fixed["macro_f1"],
        "f1_bucketed": bucketed["macro_f1"],
    }))


if __name__ == "__main__":
    main()
