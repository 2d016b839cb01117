"""Where a MiniLM training step's time goes, by part of the model, from TensorFlow's profiler.

The workload of `first_epoch.py` (MiniLM, full fine-tuning, FusedAdamW,
Rotten Tomatoes in length-sorted pools of batches of 32). After one warm-up
epoch, `--steps` steps run under `tf.profiler.experimental` and the kernel
time of every op is summed by the part of the model its name falls in: GELU,
layer normalisation, dropout, softmax, the optimizer, the matrix products
(MatMul, Einsum, BatchMatMul), the fused attention's other ops, and the
rest. Summed over TensorFlow's compute threads, so shares, not wall time,
are the figure to read.

`--fused-ops off` profiles Keras' own GELU, layer norm, dropout and
attention (as before `Task.fused_ops`); `--distribution`, `--mixed-precision` and `--xla` as in
`bench_common` (auto: bfloat16 on CPUs that compute it in hardware).

Prints one JSON line: `op_ms` (total), `share` per part, `step_s` (wall time
of the profiled `fit` divided by its steps, profiler on), `load_average_1m`.

    .venv/bin/python benchmarks/step_profile.py [--train 1024] [--steps 16]
        [--fused-ops auto] [--mixed-precision auto] [--distribution auto]
"""

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfft  # noqa: I001  (sets the Keras backend first)
import keras
import tensorflow as tf

import tfft.data as td
from bench_common import (
    add_distribution_args,
    add_fused_ops_arg,
    fused_ops_setting,
    setup_distribution,
)
from first_epoch import load_texts

# First match wins: an op's name (its name scope) says which part it belongs to.
# "attention": the fused attention's ops other than its matrix products (softmax, mask,
# dropout, transposes); Keras' own attention counts those under "softmax", "dropout", "other".
PARTS = (("gelu", ("Gelu", "gelu")), ("layer_norm", ("layer_norm",)),
         ("dropout", ("dropout",)), ("softmax", ("softmax",)),
         ("optimizer", ("fused_adamw", "adamw", "ResourceApply")),
         ("matmul", (":_MklMatMul", ":MatMul", ":_MklEinsum", ":Einsum", "BatchMatMul",
                     "_MklFusedMatMul")),
         ("attention", ("fused_attention",)))


def part_of(name):
    for part, needles in PARTS:
        if any(needle in name for needle in needles):
            return part
    return "other"


def op_times(logdir):
    """Kernel milliseconds per model part, from the profiler's xplane file."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals = {}
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "::" in name:  # executor wrappers, not ops
                    continue
                part = part_of(name)
                totals[part] = totals.get(part, 0.0) + event.duration_ps / 1e9
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    add_fused_ops_arg(parser)
    add_distribution_args(parser)
    args = parser.parse_args()
    strategy, settings = setup_distribution(args)
    texts, labels = load_texts(args.train, args.seed)
    keras.utils.set_random_seed(args.seed)
    with strategy.scope():
        task = tfft.build_model("minilm", num_classes=2, freeze="full", compile=False,
                                sequence_length=128)
        task.compile(optimizer=tfft.training.FusedAdamW(5e-5, weight_decay=0.01),
                     loss="sparse_categorical_crossentropy", jit_compile=settings["jit_compile"])
    task.fused_ops = fused_ops_setting(args.fused_ops)
    dataset = td.make_text_dataset((texts, labels), preprocessor=task.preprocessor,
                                   batch_size=32, bucketing=True, shuffle=True, seed=args.seed)
    print("warm-up epoch ...", file=sys.stderr, flush=True)
    task.fit(dataset, epochs=1, verbose=0)
    logdir = tempfile.mkdtemp(prefix="step_profile_")
    print(f"profiling {args.steps} steps ...", file=sys.stderr, flush=True)
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    task.fit(dataset.take(args.steps), epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    tf.profiler.experimental.stop()
    totals = op_times(logdir)
    shutil.rmtree(logdir, ignore_errors=True)
    total = sum(totals.values())
    print(json.dumps({
        "benchmark": "step_profile",
        "train_examples": args.train,
        "steps": args.steps,
        **settings,
        "fused_ops": args.fused_ops,
        "op_ms": round(total, 1),
        "share": {part: round(ms / total, 3) for part, ms in
                  sorted(totals.items(), key=lambda item: -item[1])},
        "step_s": round(seconds / args.steps, 4),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
