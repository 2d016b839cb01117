"""Gradient checkpointing on SmolLM2-135M-Instruct LoRA training: memory and step time.

Each setting (checkpointing off, then on) runs in its own process, so each
peak resident memory is its own: the process loads SmolLM2, adds LoRA (rank 8,
attention), traces the train step on one batch, then times `--steps` more
steps of `--batch-size` x `--sequence-length` tokens (every token a completion
token, so the loss covers the whole sequence). Printed: one JSON line with, per
setting, `peak_rss_mb`, `training_rss_mb` (peak minus the resident memory
after loading, that is what training added), the median step time, and the
ratios checkpointing/plain. The CPU may be shared: times are noisy, memory is not.

    .venv/bin/python benchmarks/gradient_checkpointing.py --batch-size 4 --sequence-length 512
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(args):
    import keras
    import numpy as np
    import tensorflow as tf

    from tfft.backbones.causal_lm import load_smollm2
    from tfft.models.causal_lm import build_causal_lm

    lm = load_smollm2(sequence_length=args.sequence_length)
    task = build_causal_lm(lm, freeze="lora:8", sequence_length=args.sequence_length,
                           gradient_checkpointing=args.checkpointing, learning_rate=1e-4)
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.sequence_length)
    x = {"token_ids": tf.constant(rng.integers(100, 40000, shape), tf.int32),
         "padding_mask": tf.ones(shape, tf.bool)}
    y = tf.constant(rng.integers(100, 40000, shape), tf.int32)
    w = tf.ones(shape, tf.float32)
    data = tf.data.Dataset.from_tensors((x, y, w)).repeat(args.steps + 1)
    loaded = _rss_mb()
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.start)

    task.fit(data, epochs=1, verbose=0, callbacks=[Timer()])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": round(peak, 1), "training_rss_mb": round(peak - loaded, 1),
                      "step_seconds": round(statistics.median(times[1:]), 2),
                      "first_step_seconds": round(times[0], 2)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sequence-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    result = {"model": "SmolLM2-135M-Instruct", "lora_rank": 8, "batch_size": args.batch_size,
              "sequence_length": args.sequence_length, "steps": args.steps}
    for name, flag in (("plain", []), ("checkpointing", ["--checkpointing"])):
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--batch-size", str(args.batch_size),
             "--sequence-length", str(args.sequence_length), "--steps", str(args.steps), *flag],
            capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"{name} run failed:\n{out.stderr[-3000:]}")
        result[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(name, result[name], file=sys.stderr, flush=True)
    plain, checked = result["plain"], result["checkpointing"]
    result["training_rss_ratio"] = round(checked["training_rss_mb"] / plain["training_rss_mb"], 3)
    result["step_time_ratio"] = round(checked["step_seconds"] / plain["step_seconds"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
