"""Where tfft's first fine-tuning epoch spends the time the second does not.

The workload of `vs_transformers.py` (MiniLM, full fine-tuning, AdamW,
Rotten Tomatoes fresh vs rotten, length-bucketed batches of 32). Two epochs
through `Task.fit`, timed part by part:

- `dataset_s`: `make_text_dataset(bucketing=True)` (its length pass
  tokenises every text once).
- `to_first_step_s`: `fit` called until the end of its first batch: tracing
  the train step in Python, TensorFlow's graph optimisation (Grappler) and
  the first batch's execution.
- `trace_s`: tracing alone, measured on a copy of the step function traced to
  a graph without running it (`get_concrete_function`) before `fit`
  (`--trace-first`), with `train_graph_nodes`, the traced graph's size.
- `epoch_s`: each epoch's wall time (as `vs_transformers.py` counts it, with
  `dataset_s` in epoch 1).
- `new_width_step_s` / `seen_width_step_s`: median step time of batches whose
  (batch size, width) shape the run meets for the first time vs ones it has
  met before (what a per-shape first-run cost would show up in);
  `new_width_extra_s`: what first meetings cost in total over a seen step.
  The two medians mix epochs and widths, so this overstates what a new
  shape costs; `epoch1_ms_per_token` compares like with like: epoch 1's
  steps on shapes met for the first time vs on shapes met before, in
  milliseconds per token position (step time over batch width).
- `first_epoch_extra_s`: epoch 1 minus epoch 2.
- `input_wait_s`: per epoch, time the training loop waited for a batch.
- `padding_ratio`: token positions the model computed (batch x width,
  summed) over real tokens.
- `fit_outside_steps_s`: per `fit` call, `fit` called -> its first epoch
  began, `fit` called -> `on_train_begin`, and last batch -> `fit` returned.
- `epoch_first_step_s` / `epoch_median_step_s`: each epoch's first batch
  (an input pipeline that starts cold waits inside it) and median batch.
- `minor_faults`: per epoch, memory pages the process touched for the first
  time (its working set growing); `first_touch_ms_per_mb`: what this machine
  charges per MB of them (`first_touch_ms_per_mb()`), so their part of
  `first_epoch_extra_s` is about `4096 * faults / 2**20` times it, in ms.

One `fit` call per epoch by default (as `vs_transformers.py` times epochs);
`--one-fit` trains both epochs in one `fit(epochs=2)` call, as users do.

`--optimizer keras` uses `keras.optimizers.AdamW` instead of
`tfft.training.FusedAdamW` (the same math, a graph twice the size).
`--grappler` picks TensorFlow's graph optimiser setting (`default`, `off`:
`disable_meta_optimizer`) to measure what optimising the graph costs and
what it gives back per step. `--xla on` compiles the step with XLA.

Prints one JSON line. The CPU may be shared: `load_average_1m` is printed.

    .venv/bin/python benchmarks/first_epoch.py [--train 2048] [--grappler default]
        [--optimizer fused] [--xla off] [--mixed-precision off] [--seed 0]
        [--trace-first] [--bucket-boundaries] [--one-fit]
"""

import argparse
import json
import mmap
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfft  # noqa: I001  (sets the Keras backend first)
import keras
import numpy as np
import tensorflow as tf
from sklearn.model_selection import train_test_split

import tfft.data as td
from bench_common import add_fused_ops_arg, fused_ops_setting

LEARNING_RATE = 5e-5
WEIGHT_DECAY = 0.01
MAX_LENGTH = 128


class StepClock(keras.callbacks.Callback):
    """Wall time of every training batch, and the gaps between batches."""

    def __init__(self, batch_shape, batch_tokens):
        super().__init__()
        self.batch_shape, self.batch_tokens = batch_shape, batch_tokens
        self.shapes, self.real_tokens = [], []
        self.steps, self.gaps = [], []
        self._begin = self._end = None
        self.fit_called = self.train_begin = self.train_end = None
        self.epoch_begins, self.epoch_ends, self.epoch_end_faults = [], [], []
        self.outside = []  # per fit: (call -> epoch begin, last batch -> fit returned)

    def on_train_begin(self, logs=None):
        self.train_begin = time.perf_counter()

    def on_train_end(self, logs=None):
        self.train_end = time.perf_counter()

    def fit(self, task, dataset, epoch, epochs=1):
        self.fit_called = time.perf_counter()
        first = len(self.epoch_begins)
        task.fit(dataset, epochs=epoch + epochs, initial_epoch=epoch, verbose=0,
                 callbacks=[self])
        returned = time.perf_counter()
        self.outside.append((self.epoch_begins[first] - self.fit_called,
                             self.train_begin - self.fit_called, returned - self._end))
        return returned

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_begins.append(time.perf_counter())
        self.steps.append([])
        self.gaps.append([])
        self._end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append(time.perf_counter())
        self.epoch_end_faults.append(minor_faults())

    def on_train_batch_begin(self, batch, logs=None):
        self._begin = time.perf_counter()
        self.gaps[-1].append(self._begin - self._end)

    def on_train_batch_end(self, batch, logs=None):
        self._end = time.perf_counter()
        self.steps[-1].append(self._end - self._begin)
        self.shapes.append(tuple(int(v) for v in self.batch_shape.numpy()))
        self.real_tokens.append(int(self.batch_tokens.numpy()))
        self._end = time.perf_counter()  # reading the variables is not the step's time


def first_touch_ms_per_mb(megabytes=256):
    """What this machine charges for memory a process touches for the first time.

    Touches one byte per 4 KiB page of a fresh anonymous mapping (huge pages
    off for it, as for most of TensorFlow's allocations): a minor page fault
    each. A first epoch takes more of them than later ones (its working set
    grows); times this figure, they are part of its extra time that is the
    machine's, not the framework's (some virtual machines back guest memory
    lazily and charge several times what a bare CPU does).
    """
    size = megabytes << 20
    with mmap.mmap(-1, size) as memory:
        if hasattr(memory, "madvise") and hasattr(mmap, "MADV_NOHUGEPAGE"):
            memory.madvise(mmap.MADV_NOHUGEPAGE)
        start = time.perf_counter()
        for offset in range(0, size, 4096):
            memory[offset] = 1
        return 1000 * (time.perf_counter() - start) / megabytes


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def load_texts(train, seed):
    data = td.load_rotten_tomatoes(classes=["rotten", "fresh"])
    index, _ = train_test_split(np.arange(len(data)), train_size=train, stratify=data.y,
                                random_state=seed)
    part = data.take(index)
    return np.asarray(part.x, dtype=object), np.asarray(part.y, dtype="int32")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grappler", choices=("default", "off"), default="default")
    parser.add_argument("--xla", choices=("on", "off"), default="off")
    parser.add_argument("--optimizer", choices=("fused", "keras"), default="fused",
                        help="tfft.training.FusedAdamW or keras.optimizers.AdamW.")
    parser.add_argument("--mixed-precision", choices=("on", "off"), default="off",
                        help="on: Keras' mixed_bfloat16 policy (bfloat16 compute, "
                        "float32 weights).")
    parser.add_argument("--bucket-boundaries", action="store_true",
                        help="Fixed length buckets (default_bucket_boundaries) instead of "
                        "sorted pools.")
    add_fused_ops_arg(parser)
    parser.add_argument("--one-fit", action="store_true",
                        help="Both epochs in one fit(epochs=2) call, as users call it, instead "
                        "of one call per epoch (vs_transformers.py's way of timing epochs).")
    parser.add_argument("--trace-first", action="store_true",
                        help="Trace a copy of the train step before fit, to time tracing alone.")
    args = parser.parse_args()
    if args.grappler == "off":
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    if args.mixed_precision == "on":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    texts, labels = load_texts(args.train, args.seed)

    keras.utils.set_random_seed(args.seed)
    task = tfft.build_model("minilm", num_classes=2, freeze="full", compile=False,
                            sequence_length=MAX_LENGTH)
    optimizer = (tfft.training.FusedAdamW if args.optimizer == "fused"
                 else keras.optimizers.AdamW)(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    task.compile(optimizer=optimizer,
                 loss="sparse_categorical_crossentropy", jit_compile=args.xla == "on")
    task.fused_ops = fused_ops_setting(args.fused_ops)


    start = time.perf_counter()
    dataset = td.make_text_dataset((texts, labels), preprocessor=task.preprocessor,
                                   batch_size=args.batch_size, bucketing=True, shuffle=True,
                                   seed=args.seed, bucket_boundaries=(
                                       td.default_bucket_boundaries(MAX_LENGTH)
                                       if args.bucket_boundaries else None))
    dataset_s = time.perf_counter() - start
    tfft.training.build_for_training(task, dataset.element_spec)

    trace_s = nodes = None
    if args.trace_first:
        start = time.perf_counter()
        graph = tf.function(task.train_step).get_concrete_function(dataset.element_spec).graph
        trace_s = time.perf_counter() - start
        nodes = len(graph.as_graph_def().node)

    traces = []
    step = task.train_step

    # Each step writes its batch's shape and real token count into variables
    # the callback reads after the step.
    batch_shape = tf.Variable([0, 0], dtype=tf.int32, trainable=False)
    batch_tokens = tf.Variable(0, dtype=tf.int32, trainable=False)

    def counted(data):
        traces.append(time.perf_counter())
        features = data[0]
        batch_shape.assign(tf.shape(features["token_ids"]))
        batch_tokens.assign(tf.reduce_sum(tf.cast(features["padding_mask"], tf.int32)))
        return step(data)

    task.train_step = counted
    clock = StepClock(batch_shape, batch_tokens)
    epoch_s = []
    if args.one_fit:
        start, faults = time.perf_counter(), minor_faults()
        returned = clock.fit(task, dataset, 0, epochs=2)
        epoch_s = [clock.epoch_ends[0] - start, returned - clock.epoch_ends[0]]
        faults = [clock.epoch_end_faults[0] - faults, minor_faults() - clock.epoch_end_faults[0]]
    else:
        faults = []
        for epoch in range(2):
            start, before = time.perf_counter(), minor_faults()
            clock.fit(task, dataset, epoch)
            epoch_s.append(time.perf_counter() - start)
            faults.append(minor_faults() - before)
    epoch_s[0] += dataset_s
    touch_ms_per_mb = first_touch_ms_per_mb()

    shapes, real_tokens = clock.shapes, clock.real_tokens
    flat_steps = clock.steps[0] + clock.steps[1]
    seen, new, repeat = set(), [], []
    for i, (shape, seconds) in enumerate(zip(shapes, flat_steps, strict=False)):
        if i == 0:
            seen.add(shape)
            continue
        (repeat if shape in seen else new).append(seconds)
        seen.add(shape)
    # Epoch 1 alone: ms per token position of steps on new vs seen shapes.
    first_new, first_seen, seen_in_first = [], [], set(shapes[:1])
    for shape, seconds in zip(shapes[1:len(clock.steps[0])], clock.steps[0][1:], strict=True):
        (first_seen if shape in seen_in_first else first_new).append(1000 * seconds / shape[1])
        seen_in_first.add(shape)
    seen_median = float(np.median(repeat)) if repeat else None
    new_median = float(np.median(new)) if new else None
    first_step = clock.steps[0][0] + clock.gaps[0][0]
    load = os.getloadavg()
    print(json.dumps({
        "benchmark": "first_epoch",
        "train_examples": len(texts),
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "grappler": args.grappler,
        "jit_compile": args.xla == "on",
        "dataset_s": round(dataset_s, 2),
        "trace_s": None if trace_s is None else round(trace_s, 2),
        "train_graph_nodes": nodes,
        "train_step_traces": len(traces),
        "to_first_step_s": round(first_step, 2),
        "first_step_s": round(clock.steps[0][0], 2),
        "before_first_batch_s": round(clock.gaps[0][0], 2),
        "epoch_s": [round(s, 2) for s in epoch_s],
        "first_epoch_extra_s": round(epoch_s[0] - epoch_s[1], 2),
        "steps_per_epoch": [len(s) for s in clock.steps],
        "distinct_shapes": [len(set(shapes[:len(clock.steps[0])])), len(set(shapes))],
        # Token positions computed over real tokens, both epochs.
        "padding_ratio": round(sum(b * w for b, w in shapes) / sum(real_tokens), 3),
        "new_shapes_after_first_step": len(new),
        "new_width_step_s": None if new_median is None else round(new_median, 4),
        "seen_width_step_s": None if seen_median is None else round(seen_median, 4),
        "new_width_extra_s": (None if new_median is None or seen_median is None
                              else round(float(np.sum(new)) - seen_median * len(new), 2)),
        "epoch1_ms_per_token": {
            "new_shape": round(float(np.median(first_new)), 2) if first_new else None,
            "seen_shape": round(float(np.median(first_seen)), 2) if first_seen else None,
            "epoch2": round(float(np.median(
                [1000 * t / sh[1] for sh, t in zip(shapes[len(clock.steps[0]):], clock.steps[1],
                                                    strict=True)])), 2),
        },
        "step_sum_s": [round(sum(s), 2) for s in clock.steps],
        "mixed_precision": args.mixed_precision == "on",
        "batching": "bucket_boundaries" if args.bucket_boundaries else "sorted_pools",
        "fused_ops": args.fused_ops,
        "input_wait_s": [round(sum(g), 2) for g in clock.gaps],
        "one_fit": args.one_fit,
        # Each epoch's first batch (a cold input pipeline waits in it) and the median.
        "epoch_first_step_s": [round(s[0], 2) for s in clock.steps],
        "epoch_median_step_s": [round(float(np.median(s)), 3) for s in clock.steps],
        # Per fit call: fit called -> its first on_epoch_begin, fit called ->
        # on_train_begin, last batch -> fit returned.
        "fit_outside_steps_s": [[round(t, 2) for t in o] for o in clock.outside],
        # Minor page faults per epoch (dataset building not counted), and this
        # machine's cost of one first-touched MB (measured after training).
        "minor_faults": faults,
        "first_touch_ms_per_mb": round(touch_ms_per_mb, 3),
        "load_average_1m": round(load[0], 2),
    }))


if __name__ == "__main__":
    main()
