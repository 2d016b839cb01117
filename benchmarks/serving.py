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

With the `bench` extra installed (torch, transformers), `vs_peer` adds the
peer: the same MiniLM weights (read by transformers from the same asset) with
the trained head's weights copied into a `torch.nn.Linear`, tokenised at the
request's own length, under `torch.inference_mode`, in a child process
(`torch_serving_peer.py`: the two frameworks' thread pools in one process
slow each other). Single-request p50 of the SavedModel and of the peer on
the same short (8-word) and long (about 120-word) text, alternating blocks
of calls so load falls on both alike; `p50_ratio_saved_model_over_peer`
below 1 means the export is faster.

`vs_peer` also times the same model exported with
`export_saved_model(..., jit_compile=True)` (its model part compiled by XLA;
`xla_saved_model_p50_ms`, after warm-up calls that compile the request's shape).

`--mixed-precision` defaults to off here (on, the model trains and is
exported in bfloat16): the figures are for a float32 export.

    .venv/bin/python benchmarks/serving.py [--requests 50] [--batches 5]
        [--peer-requests 200] [--distribution auto]
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfft  # noqa: I001  (sets the Keras backend first)
import numpy as np
import tensorflow as tf

from tfft.assets import asset_path
from tfft.data import load_bbc_news
from bench_common import add_distribution_args, read_json_line, setup_distribution

SHORT_TEXT = "the bank raised its profits again this year"


def long_text(texts, words=120):
    """The first `words` words of the first article that has that many."""
    for text in texts:
        split = text.split()
        if len(split) >= words:
            return " ".join(split[:words])
    raise ValueError(f"No text of {words} words.")


class ServingPeer:
    """The trained model's math in PyTorch + transformers, in a child process.

    In one process with TensorFlow, each framework's worker threads kept
    spinning on the two cores after its own call and slowed the other's next
    call (the export measured 16.7 ms there for the short text against
    8.6 ms alone), so the peer runs in `torch_serving_peer.py`.
    """

    def __init__(self, model, folder):
        head = os.path.join(folder, "head.npz")
        kernel, bias = model.get_layer("head").output_layer.get_weights()
        np.savez(head, kernel=kernel, bias=bias)
        command = [sys.executable,
                   os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "torch_serving_peer.py"),
                   "--model-dir", asset_path("minilm"), "--head", head]
        env = {**os.environ, "USE_TF": "0", "USE_TORCH": "1"}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env)
        self._read()

    def _read(self):
        return read_json_line(self.process)

    def time(self, text, requests):
        self.process.stdin.write(json.dumps({"text": text, "requests": requests}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def start_peer(model, folder):
    """A `ServingPeer`, or None without the `bench` extra.

    Looked up, not imported: PyTorch stays out of this TensorFlow process.
    """
    if any(importlib.util.find_spec(name) is None for name in ("torch", "transformers")):
        return None
    return ServingPeer(model, folder)


def paired_p50(exports, peer, text, requests, rounds=4, warmup=5):
    """Single-request p50 (ms) of each export and of the peer on `text`.

    `exports` maps names to serving functions. Each round times
    `requests / rounds` calls of the peer (in its own process, while this
    one waits), then of each export, so load from other processes falls on
    all alike.
    """
    for fn in exports.values():
        for _ in range(warmup):
            fn([text])
    seconds = {name: [] for name in [*exports, "peer"]}
    answer = None
    for _ in range(rounds):
        answer = peer.time(text, requests // rounds)
        seconds["peer"].extend(answer["seconds"])
        for name, fn in exports.items():
            for _ in range(requests // rounds):
                t0 = time.perf_counter()
                fn([text])
                seconds[name].append(time.perf_counter() - t0)
    p50 = {name: round(float(np.percentile(np.array(s) * 1000, 50)), 2)
           for name, s in seconds.items()}
    return p50, answer


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
    parser.add_argument("--peer-requests", type=int, default=200)
    add_distribution_args(parser)
    parser.set_defaults(mixed_precision="off")
    args = parser.parse_args()
    _, settings = setup_distribution(args)
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

        # The same model exported with its model part compiled by XLA.
        xla_path = tfft.export_saved_model(model, os.path.join(tmp, "export_xla"),
                                           jit_compile=True)
        serve_xla = tf.saved_model.load(xla_path).signatures["serving_default"]

        def xla_saved_model_fn(texts):
            return serve_xla(tf.constant(texts))["probabilities"].numpy()

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
            **settings,
        }
        peer = start_peer(model, tmp)
        if peer is None:
            result["vs_peer"] = "not run: pip install -e '.[bench]' (torch, transformers)"
        else:
            result["vs_peer"] = {}
            for name, text in (("short", SHORT_TEXT), ("long", long_text(texts))):
                p50, answer = paired_p50(
                    {"saved_model": saved_model_fn, "xla": xla_saved_model_fn}, peer, text,
                    args.peer_requests)
                result["vs_peer"][name] = {
                    "words": len(text.split()),
                    "tokens": answer["tokens"],
                    "saved_model_p50_ms": p50["saved_model"],
                    "peer_p50_ms": p50["peer"],
                    "p50_ratio_saved_model_over_peer": round(
                        p50["saved_model"] / p50["peer"], 3),
                    "max_abs_diff_probabilities": float(np.max(np.abs(
                        saved_model_fn([text]) - np.array(answer["probabilities"])))),
                    "xla_saved_model_p50_ms": p50["xla"],
                    "p50_ratio_xla_saved_model_over_peer": round(p50["xla"] / p50["peer"], 3),
                    "xla_max_abs_diff_probabilities": float(np.max(np.abs(
                        xla_saved_model_fn([text]) - saved_model_fn([text])))),
                }
            peer.close()
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
