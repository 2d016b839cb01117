"""Raw texts through `Task.fit` / `predict` / `evaluate`: batches cut to their longest vs padded.

A `Task` given raw texts tokenises them in its `tf.data` pipeline
(`Task.make_dataset`). Padded, every batch is as wide as the preprocessor's
`sequence_length` (128 here); cut (`Task.trim_batches`, the default), each
batch is as wide as its longest text. This script times both on the same
texts with the real all-MiniLM-L6-v2 and Rotten Tomatoes reviews (fresh vs
rotten, ~28 tokens on average): `predict` and `evaluate` on the test texts
(which, cut, run them shortest first; `predict_in_order` is `predict` on a
`tf.data.Dataset` of the same texts, which keeps its order), and one epoch of
full fine-tuning (`fit`, `shuffle=False`) on the training texts in their own
order; batches of 32. The two settings alternate within
each run (the order flips every run), after one untimed warm-up call of each
function in each setting (tracing). Prints one JSON line last: median seconds
per setting, `*_speedup` = padded / cut, the mean batch width of each (in the
texts' order and shortest first), and the largest difference between the two
settings' predicted probabilities (same weights).

    .venv/bin/python benchmarks/text_batches.py [--train 512] [--test 1024]
        [--runs 3] [--distribution auto] [--mixed-precision auto]
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfft  # noqa: I001  (sets the Keras backend first)
import numpy as np
import tensorflow as tf
from sklearn.model_selection import train_test_split

import tfft.data as td
from bench_common import add_distribution_args, setup_distribution

SEQUENCE_LENGTH = 128
SETTINGS = {"padded": False, "cut": None}  # Task.trim_batches


def mean_width(task, texts, batch_size):
    widths = [int(x["token_ids"].shape[1])
              for x in task.make_dataset(texts, batch_size=batch_size)]
    return round(float(np.mean(widths)), 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--test", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    add_distribution_args(parser)
    args = parser.parse_args()
    strategy, settings = setup_distribution(args)

    data = td.load_rotten_tomatoes(classes=["rotten", "fresh"])
    train_idx, test_idx = train_test_split(np.arange(len(data)), train_size=args.train,
                                           test_size=args.test, stratify=data.y, random_state=0)
    train, test = data.take(train_idx), data.take(test_idx)
    train_x, test_x = (np.asarray(d.x, dtype=object) for d in (train, test))
    train_y, test_y = (np.asarray(d.y, dtype="int32") for d in (train, test))
    with strategy.scope():
        task = tfft.build_model("minilm", num_classes=2, freeze="full",
                                sequence_length=SEQUENCE_LENGTH, strategy=strategy)
    if settings["jit_compile"]:
        task.compile(optimizer=task.optimizer, loss=task.loss, metrics=task.metrics,
                     jit_compile=True)
    bs = args.batch_size

    raw_test = tf.data.Dataset.from_tensor_slices(test_x.astype(str)).batch(bs)
    calls = {
        "predict": lambda: task.predict(test_x, batch_size=bs, verbose=0),
        # A dataset keeps its order: cut batches of texts as they come.
        "predict_in_order": lambda: task.predict(raw_test, verbose=0),
        "evaluate": lambda: task.evaluate(test_x, test_y, batch_size=bs, verbose=0),
        "fit_epoch": lambda: task.fit(train_x, train_y, batch_size=bs, epochs=1,
                                      shuffle=False, verbose=0),
    }
    seconds = {name: {s: [] for s in SETTINGS} for name in calls}
    widths, probs = {}, {}
    by_length = np.argsort([len(t) for t in test_x], kind="stable")  # as predict orders them
    # Warm-up, untimed: each function traced in each setting; the probabilities
    # compared come from the same (pretrained) weights, before any training.
    for setting, trim in SETTINGS.items():
        task.trim_batches = trim
        widths[setting] = mean_width(task, test_x, bs)
        widths[f"{setting}_shortest_first"] = mean_width(task, test_x[by_length], bs)
        probs[setting] = task.predict(test_x, batch_size=bs, verbose=0)
        task.evaluate(test_x[:bs], test_y[:bs], batch_size=bs, verbose=0)
    for trim in SETTINGS.values():
        task.trim_batches = trim
        task.fit(train_x[:bs], train_y[:bs], batch_size=bs, epochs=1, verbose=0)
    for run in range(args.runs):
        order = list(SETTINGS) if run % 2 == 0 else list(SETTINGS)[::-1]
        for setting in order:
            task.trim_batches = SETTINGS[setting]
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                seconds[name][setting].append(time.perf_counter() - start)
        print(f"run {run + 1}/{args.runs}: " + ", ".join(
            f"{name} {v['padded'][-1]:.1f} / {v['cut'][-1]:.1f} s"
            for name, v in seconds.items()), file=sys.stderr, flush=True)

    median = {name: {s: round(statistics.median(v), 2) for s, v in by.items()}
              for name, by in seconds.items()}
    print(json.dumps({
        "benchmark": "text_batches",
        "dataset": "rotten_tomatoes (rotten vs fresh)",
        "train_examples": len(train_x), "test_examples": len(test_x), "batch_size": bs,
        "sequence_length": SEQUENCE_LENGTH, "runs": args.runs, **settings,
        "seconds": median,
        **{f"{name}_speedup": round(m["padded"] / m["cut"], 3) for name, m in median.items()},
        "mean_width": widths,
        "max_abs_probability_diff": float(np.abs(probs["cut"] - probs["padded"]).max()),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
