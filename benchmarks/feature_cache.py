"""How much faster is frozen-backbone training on cached features?

all-MiniLM-L6-v2 (sequence length 128, frozen, mean pooling) + a softmax head on
a stratified BBC News subset (default 400 train / 100 validation / 200 test).
In one run, from the same seed:

- uncached: `model.fit` on tokenised batches; the backbone runs every epoch
  (on train and validation);
- cached: `tfft.training.feature_cache.fit_cached`: the backbone runs once (the
  "feature pass"), then the head trains on the stored features.

Reports the seconds per epoch after the first (median) of both and their ratio
(`speedup_per_epoch`, target >= 50), the first-epoch cost of each (the cached
one includes the feature pass), the time of a cache hit, and the test accuracy
of both models on raw test texts. Prints one JSON object as the last line.

    .venv/bin/python benchmarks/feature_cache.py [--epochs 4] [--train 400]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfft  # noqa: I001  (sets the Keras backend first)
import keras
import numpy as np

from tfft.training import feature_cache
from tfft.data import load_bbc_news, stratified_split


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def subset(data, train, val, test, seed):
    total = train + val + test
    keep, _, _ = stratified_split(data.y, 0.0, 1.0 - total / len(data), seed=seed)
    data = data.take(keep)
    tr, va, te = stratified_split(data.y, val / len(data), test / len(data), seed=seed)
    return data.take(tr), data.take(va), data.take(te)


def build(backbone, num_classes, seed):
    keras.utils.set_random_seed(seed)
    return tfft.build_model(backbone, task="multiclass", num_classes=num_classes,
                            freeze="feature_extraction", compile=False)


def accuracy(model, data, batch_size):
    probs = model.predict(model.make_dataset(data.x, batch_size=batch_size), verbose=0)
    return float(np.mean(probs.argmax(-1) == data.y))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()

    data = load_bbc_news()
    train, val, test = subset(data, args.train, args.val, args.test, args.seed)
    backbone = tfft.load_backbone("minilm", sequence_length=args.sequence_length)
    bs = args.batch_size
    num_classes = len(data.class_names)

    # Uncached: the frozen backbone runs on every batch of every epoch.
    model = build(backbone, num_classes, args.seed)
    model.compile(keras.optimizers.Adam(args.learning_rate), "sparse_categorical_crossentropy",
                  metrics=["sparse_categorical_accuracy"])
    timer = EpochTimer()
    model.fit(model.make_dataset(train.x, train.y, batch_size=bs, shuffle=True, seed=args.seed),
              validation_data=model.make_dataset(val.x, val.y, batch_size=bs),
              epochs=args.epochs, callbacks=[timer], verbose=0)
    uncached_epochs = timer.seconds
    uncached_accuracy = accuracy(model, test, bs)

    # Cached: one backbone pass, then the head alone.
    model = build(backbone, num_classes, args.seed)

    def make_ds(x):
        return model.make_dataset(x, batch_size=bs)

    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as cache:
        history = feature_cache.fit_cached(
            model, train.x, train.y, (val.x, val.y), make_dataset=make_ds,
            epochs=args.epochs, batch_size=bs,
            optimizer=keras.optimizers.Adam(args.learning_rate), metrics=[
                "sparse_categorical_accuracy"], preprocessing={"sequence_length":
                                                               args.sequence_length},
            callbacks=[timer], directory=cache, verbose=0, seed=args.seed,
        )
        feature_seconds = history.feature_seconds
        t0 = time.perf_counter()
        _, hit = feature_cache.cached_features(
            model, train.x, make_ds, {"sequence_length": args.sequence_length},
            directory=cache, verbose=0)
        hit_seconds = time.perf_counter() - t0
    cached_epochs = timer.seconds
    cached_accuracy = accuracy(model, test, bs)

    uncached_after_first = statistics.median(uncached_epochs[1:] or uncached_epochs)
    cached_after_first = statistics.median(cached_epochs[1:] or cached_epochs)
    result = {
        "benchmark": "feature_cache",
        "backbone": "keras_hub:all_minilm_l6_v2",
        "dataset": "bbc_news",
        "sequence_length": args.sequence_length,
        "batch_size": bs,
        "split": [len(train), len(val), len(test)],
        "epochs": args.epochs,
        "uncached_epoch_seconds": [round(s, 4) for s in uncached_epochs],
        "cached_epoch_seconds": [round(s, 4) for s in cached_epochs],
        "uncached_seconds_per_epoch": round(uncached_after_first, 4),
        "cached_seconds_per_epoch": round(cached_after_first, 5),
        "speedup_per_epoch": round(uncached_after_first / cached_after_first, 1),
        "feature_pass_seconds": round(feature_seconds, 3),
        "first_epoch_seconds_uncached": round(uncached_epochs[0], 3),
        "first_epoch_seconds_cached": round(feature_seconds + cached_epochs[0], 3),
        "training_seconds_uncached": round(sum(uncached_epochs), 3),
        "training_seconds_cached": round(feature_seconds + sum(cached_epochs), 3),
        "cache_hit": bool(hit),
        "cache_hit_seconds": round(hit_seconds, 3),
        "test_accuracy_uncached": round(uncached_accuracy, 4),
        "test_accuracy_cached": round(cached_accuracy, 4),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
