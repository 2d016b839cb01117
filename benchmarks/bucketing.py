"""Length bucketing vs fixed 128-token padding when fine-tuning MiniLM.

Rotten Tomatoes, fresh vs rotten (short review snippets): the same MiniLM +
masked-mean + Dense classifier, from the same initial weights, fine-tuned for
one epoch (frozen=False, Adam) on the same training examples, once with every
batch padded to 128 tokens and once with length buckets padded per batch.
Training examples/s exclude each run's first step (graph tracing); later
retracing for new batch shapes is counted. Both are then scored on the same
test examples (macro F1).

Prints one JSON object as the last line, with `speedup` =
bucketed examples/s / fixed examples/s.

    .venv/bin/python benchmarks/bucketing.py [--train 1000] [--test 500]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfft  # noqa: E402,I001  (sets the Keras backend first)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import tfft.data as td  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from input_pipeline import build_classifier  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def run(backbone, initial_weights, train, test, bucketing, batch_size, learning_rate, seed):
    keras.utils.set_random_seed(seed)
    model = build_classifier(backbone, train.num_classes)
    model.set_weights(initial_weights)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    make = dict(preprocessor=backbone.preprocessor, batch_size=batch_size, bucketing=bucketing)
    train_ds = td.make_text_dataset(train, shuffle=True, seed=seed, **make)
    timer = StepTimer()
    model.fit(train_ds, epochs=1, verbose=0, callbacks=[timer])
    # The first batch is always full (buckets emit partial batches only at the
    # end), so the timed steps saw every example but the first batch's.
    examples_per_s = (len(train) - batch_size) / sum(timer.times[1:])

    labels, predictions = [], []
    start = time.perf_counter()
    for x, y in td.make_text_dataset(test, **make):
        predictions.append(np.argmax(model.predict_on_batch(x), axis=-1))
        labels.append(y.numpy())
    eval_s = time.perf_counter() - start
    labels, predictions = np.concatenate(labels), np.concatenate(predictions)
    widths = [int(x["token_ids"].shape[1]) for x, _ in train_ds]
    return {
        "train_examples_per_s": round(examples_per_s, 2),
        "train_s": round(sum(timer.times), 1),
        "eval_s": round(eval_s, 1),
        "macro_f1": round(float(f1_score(labels, predictions, average="macro")), 4),
        "accuracy": round(float(np.mean(labels == predictions)), 4),
        "mean_padded_length": round(float(np.mean(widths)), 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

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
        backbone.preprocessor(tf.constant(list(train.x[:500])))["padding_mask"].numpy(), axis=1
    )
    common = (args.batch_size, args.learning_rate, args.seed)
    fixed = run(backbone, initial_weights, train, test, False, *common)
    bucketed = run(backbone, initial_weights, train, test, True, *common)
    print(json.dumps({
        "benchmark": "bucketing",
        "dataset": "rotten_tomatoes (rotten vs fresh)",
        "train_examples": len(train),
        "test_examples": len(test),
        "batch_size": args.batch_size,
        "epochs": 1,
        "median_tokens": float(np.median(lengths)),
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
