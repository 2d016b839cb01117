"""tfft's overhead: build/compile/fit vs the same model written by hand in Keras + KerasHub.

Both sides fully fine-tune all-MiniLM-L6-v2 (sequence length 128) with a
masked-mean pooling, dropout 0.1 and softmax Dense head on Rotten Tomatoes
(fresh vs rotten), from the same initial weights, with the same math:
AdamW (weight decay 0.01) at 5e-5 with 10% linear warmup then linear decay
over the run's steps, gradient clipping at norm 1.0, sparse categorical
cross-entropy with accuracy, batch 32.

- tfft: `tfft.build_model("minilm", freeze="full", total_steps=...)` (the
  transformer preset) and `Task.fit(texts, labels)`.
- by hand: `keras_hub.models.BertBackbone.from_preset(<asset dir>)`, its
  `BertTextClassifierPreprocessor` in a `tf.data` map (batch first), the
  pooling and head as Keras layers, the schedule and optimizer written out.

Both sides pad every batch to the 128 tokens (`Task.trim_batches = False`): this
measures tfft's overhead on the same work. Cutting batches of raw texts to
their longest sequence, tfft's default, is measured by `text_batches.py`.

The two sides alternate whole epochs, so load from other processes falls on
both alike. Prints one JSON object as the last line: `ratio` is tfft's
examples/s over the hand-written model's in the epochs after the first
(both steady), `first_epoch_ratio` the same for the first epoch (graph
tracing included).

    .venv/bin/python benchmarks/overhead.py [--train 320] [--epochs 3]
        [--distribution auto]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfft  # noqa: I001  (sets the Keras backend first)
import keras
import keras_hub
import numpy as np
import tensorflow as tf
from sklearn.model_selection import train_test_split

import tfft.data as td
from tfft.assets import asset_path
from bench_common import add_distribution_args, setup_distribution

SEQUENCE_LENGTH = 128


class WarmupLinear(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `peak` over `warmup` steps, then linear decay to 0."""

    def __init__(self, peak, warmup, total):
        self.peak, self.warmup, self.total = peak, warmup, total

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.peak * (step + 1.0) / float(self.warmup)
        decay = self.peak * keras.ops.maximum(
            1.0 - (step - self.warmup) / float(max(self.total - self.warmup, 1)), 0.0)
        return keras.ops.where(step < self.warmup, warm, decay)


class MaskedMean(keras.layers.Layer):
    def call(self, sequence, mask):
        mask = keras.ops.cast(mask, sequence.dtype)[..., None]
        return keras.ops.sum(sequence * mask, axis=1) / keras.ops.maximum(
            keras.ops.sum(mask, axis=1), 1.0)


def hand_written(total_steps, jit_compile):
    directory = asset_path("minilm")
    backbone = keras_hub.models.BertBackbone.from_preset(directory)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        directory, sequence_length=SEQUENCE_LENGTH)
    inputs = {name: keras.Input((None,), dtype="int32", name=name)
              for name in ("token_ids", "segment_ids", "padding_mask")}
    pooled = MaskedMean()(backbone(inputs)["sequence_output"], inputs["padding_mask"])
    outputs = keras.layers.Dense(2, activation="softmax", dtype="float32")(
        keras.layers.Dropout(0.1)(pooled))
    model = keras.Model(inputs, outputs)
    warmup = int(0.1 * total_steps)
    model.compile(
        optimizer=keras.optimizers.AdamW(WarmupLinear(5e-5, warmup, total_steps),
                                         weight_decay=0.01, clipnorm=1.0),
        loss="sparse_categorical_crossentropy", metrics=["sparse_categorical_accuracy"],
        jit_compile=jit_compile,
    )
    return model, preprocessor


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    add_distribution_args(parser)
    args = parser.parse_args()
    strategy, settings = setup_distribution(args)

    data = td.load_rotten_tomatoes(classes=["rotten", "fresh"])
    index, _ = train_test_split(np.arange(len(data)), train_size=args.train,
                                stratify=data.y, random_state=args.seed)
    train = data.take(index)
    texts, labels = np.asarray(train.x, dtype=object), np.asarray(train.y, dtype="int32")
    steps = -(-len(texts) // args.batch_size)
    total_steps = steps * args.epochs

    with strategy.scope():
        keras.utils.set_random_seed(args.seed)
        task = tfft.build_model("minilm", num_classes=2, freeze="full", total_steps=total_steps,
                                sequence_length=SEQUENCE_LENGTH, strategy=strategy)
        task.trim_batches = False  # the hand-written model's fixed 128 tokens
        if settings["jit_compile"]:
            task.compile(optimizer=task.optimizer, loss=task.loss,
                         metrics=["sparse_categorical_accuracy"], jit_compile=True)
        model, preprocessor = hand_written(total_steps, settings["jit_compile"])
    # Same starting point: the hand-written model takes tfft's initial weights.
    model.set_weights(task.get_weights())

    hand_data = (
        tf.data.Dataset.from_tensor_slices((texts.astype(str), labels))
        .shuffle(len(texts), seed=args.seed, reshuffle_each_iteration=True)
        .batch(args.batch_size)
        .map(lambda x, y: (preprocessor(x), y), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    seconds = {"tfft": [], "keras": []}
    for epoch in range(args.epochs):
        start = time.perf_counter()
        task.fit(texts, labels, batch_size=args.batch_size, epochs=epoch + 1,
                 initial_epoch=epoch, verbose=0)
        seconds["tfft"].append(time.perf_counter() - start)
        start = time.perf_counter()
        model.fit(hand_data, epochs=epoch + 1, initial_epoch=epoch, verbose=0)
        seconds["keras"].append(time.perf_counter() - start)

    def rate(side, epochs):
        return round(len(texts) * len(epochs) / sum(seconds[side][e] for e in epochs), 2)

    later = list(range(1, args.epochs)) or [0]
    print(json.dumps({
        "benchmark": "overhead",
        "dataset": "rotten_tomatoes (rotten vs fresh)",
        "train_examples": len(texts),
        "epochs": args.epochs,
        "sequence_length": SEQUENCE_LENGTH,
        **settings,
        "tfft_examples_per_s": rate("tfft", later),
        "keras_examples_per_s": rate("keras", later),
        "ratio": round(rate("tfft", later) / rate("keras", later), 3),
        "first_epoch_ratio": round(seconds["keras"][0] / seconds["tfft"][0], 3),
        "epoch_seconds": {k: [round(s, 1) for s in v] for k, v in seconds.items()},
        "load_average_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
