"""Serving latency and throughput: exported SavedModel vs the in-memory Keras model.

Trains a head on all-MiniLM-L6-v2 (sequence length 128) for BBC News quickly
(`tfft.run_job(max_examples=200, epochs=0, head_epochs=3)`), exports it (raw
strings in, tokenised in the graph), reloads the SavedModel and measures, in
the same run and on the same test texts:

- single-request latency (one text per call): p50 and p99 over `--requests`
  calls, after warm-up;
- batch-of-64 throughput (texts/s), median of `--batches` calls;

for the SavedModel's `serving_default` and for the in-memory Keras model
(preprocessor + `model(...)`, eager, the way a Python service would call it).
Also checks their probabilities agree. Prints one JSON object as the last line.

    .venv/bin/python benchmarks/serving.py [--requests 50] [--batches 5]
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
import numpy as np
import tensorflow as tf

from tfft.data import load_bbc_news


def latencies(fn, texts, requests, warmup=3):
    for text in texts[:warmup]:
        fn([text])
    seconds = []
    for i in range(requests):
        text = texts[i % len(texts)]
        t0 = time.perf_counter()
        fn([text])
        seconds.append(time.perf_counter() - t0)
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2)}


def throughput(fn, texts, batch, batches):
    fn(texts[:batch])
    seconds = []
    for i in range(batches):
        chunk = [texts[(i * batch + j) % len(texts)] for j in range(batch)]
        t0 = time.perf_counter()
        fn(chunk)
        seconds.append(time.perf_counter() - t0)
    median = statistics.median(seconds)
    return {"batch": batch, "median_seconds": round(median, 4),
            "texts_per_second": round(batch / median, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        report = tfft.run_job(max_examples=200, epochs=0, head_epochs=3,
                              export_dir=os.path.join(tmp, "export"),
                              run_dir=os.path.join(tmp, "run"), verbose=0)
        finetune_seconds = time.perf_counter() - t0
        model = report["model"]
        pre = model.preprocessor   # the trained tfft.Task's tokenizer
        path = report["export_path"]
        loaded = tf.saved_model.load(path)
        serve = loaded.signatures["serving_default"]

        def saved_model_fn(texts):
            return serve(tf.constant(texts))["probabilities"].numpy()

        def keras_fn(texts):
            return np.asarray(model(pre(tf.constant(texts)), training=False))

        texts = [str(t) for t in load_bbc_news().x[:256]]
        diff = float(np.max(np.abs(saved_model_fn(texts[:64]) - keras_fn(texts[:64]))))
        result = {
            "benchmark": "serving",
            "backbone": "keras_hub:all_minilm_l6_v2",
            "sequence_length": 128,
            "export_path_version": os.path.basename(path),
            "finetune_and_export_seconds": round(finetune_seconds, 1),
            "test_accuracy": round(report["test"]["accuracy"], 4),
            "max_abs_diff_probabilities": diff,
            "saved_model": {
                "single_request": latencies(saved_model_fn, texts, args.requests),
                "batch_throughput": throughput(saved_model_fn, texts, args.batch_size,
                                               args.batches),
            },
            "keras_in_memory": {
                "single_request": latencies(keras_fn, texts, args.requests),
                "batch_throughput": throughput(keras_fn, texts, args.batch_size, args.batches),
            },
        }
    sm, km = result["saved_model"], result["keras_in_memory"]
    result["latency_p50_ratio_keras_over_saved_model"] = round(
        km["single_request"]["p50_ms"] / sm["single_request"]["p50_ms"], 2)
    result["throughput_ratio_saved_model_over_keras"] = round(
        sm["batch_throughput"]["texts_per_second"] / km["batch_throughput"]["texts_per_second"],
        2)
    result["load_average_1min"] = round(os.getloadavg()[0], 2)
    result["cpu_count"] = os.cpu_count()
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
