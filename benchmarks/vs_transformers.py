"""tfft vs PyTorch + transformers: fully fine-tuning MiniLM on Rotten Tomatoes.

The same workload both ways in one process: all-MiniLM-L6-v2 (the offline
asset's weights, read by each side from the same `model.safetensors`), masked
mean pooling, dropout 0.1 and a Dense/Linear 2-way classifier, AdamW at a
constant 5e-5 (weight decay 0.01), batch 32, fresh vs rotten, `--epochs`
epochs. Texts longer than 128 tokens are cut to 128 on both sides.

- The peer is written the way a careful Hugging Face user writes it: the
  training texts are sorted by token length, cut into batches of 32 whose
  order is shuffled every epoch, and each batch is tokenised and padded to
  its own longest text (dynamic padding), under `torch.inference_mode` for
  the evaluation.
- tfft goes through its public API only: `tfft.build_model`, `Task.compile`
  with `tfft.training.FusedAdamW` (Keras' AdamW math, one fused kernel per
  variable; `--optimizer keras` uses `keras.optimizers.AdamW`),
  `tfft.data.make_text_dataset(bucketing=True)` (length-sorted pools of 32
  batches, each batch padded to its longest) and `Task.fit`.
- Precision: `--mixed-precision auto` (`bench_common`) trains tfft's side in
  `mixed_bfloat16` on a CPU with native bfloat16 (AVX512-BF16/AMX) and in
  float32 on others; the peer runs in float32 unless `--peer-precision bf16`
  (PyTorch's bfloat16 autocast), so both settings can be compared like for
  like.

The peer runs in a child process (sharing no thread pools with TensorFlow);
the two sides alternate whole epochs (peer epoch 1, tfft epoch 1, peer
epoch 2, ...), so load from other processes on a shared machine falls on
both alike. Every epoch's wall time counts everything: tokenisation, graph
tracing, the optimizer's first step. Both models are then scored on the
same held-out test texts.

Prints one JSON object as the last line: `first_epoch_ratio` and
`two_epoch_ratio` are tfft examples/s over the peer's (first epoch, first
two epochs together), plus both accuracies and each side's examples/s.
`tfft_first_over_second_epoch` is tfft's second epoch time over its first
(1.0: no first-epoch cost); `peer_first_over_second_epoch` the same for the
peer, which traces nothing: what the machine alone does to a first epoch.
With `--seeds 0,1,2` each training seed is one side-by-side run on the same
split (a JSON line each, then `per_seed` in the last line); the ratios then
come from the epoch times summed over the seeds and the accuracies are the
means (with `*_accuracy_std`).

Needs the `bench` extra (`pip install -e .[bench]`: torch, transformers);
tfft itself never imports them.

    .venv/bin/python benchmarks/vs_transformers.py [--train 2048] [--test 1024]
        [--epochs 2] [--seed 0] [--seeds 0,1,2] [--optimizer fused] [--distribution auto]
        [--mixed-precision auto] [--peer-precision fp32]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfft  # noqa: I001  (sets the Keras backend first)
import keras
import numpy as np
from sklearn.model_selection import train_test_split

import tfft.data as td
from tfft.assets import asset_path
from bench_common import (
    add_distribution_args,
    add_fused_ops_arg,
    fused_ops_setting,
    read_json_line,
    setup_distribution,
)

LEARNING_RATE = 5e-5
WEIGHT_DECAY = 0.01
MAX_LENGTH = 128


class TfftRun:
    """The same model through tfft's public API, length-bucketed."""

    def __init__(self, num_classes, batch_size, seed, strategy, jit_compile, optimizer="fused",
                 fused_ops="auto"):
        keras.utils.set_random_seed(seed)
        # tfft's AdamW: Keras' math with a fused update per variable (a smaller train graph).
        make = tfft.training.FusedAdamW if optimizer == "fused" else keras.optimizers.AdamW
        with strategy.scope():
            self.task = tfft.build_model("minilm", num_classes=num_classes, freeze="full",
                                         compile=False, sequence_length=MAX_LENGTH)
            self.task.compile(
                optimizer=make(LEARNING_RATE, weight_decay=WEIGHT_DECAY),
                loss="sparse_categorical_crossentropy",
                jit_compile=jit_compile,
            )
        self.task.fused_ops = fused_ops_setting(fused_ops)
        self.batch_size = batch_size
        self.seed = seed
        self.dataset = None
        self.epochs_done = 0

    def train_epoch(self, texts, labels):
        if self.dataset is None:
            # Made inside the first epoch's time: its length pass tokenises.
            self.dataset = td.make_text_dataset(
                (texts, labels), preprocessor=self.task.preprocessor,
                batch_size=self.batch_size, bucketing=True, shuffle=True, seed=self.seed,
            )
        # A no-op after the first call; Task.fit does the same once it calls it itself.
        tfft.training.build_for_training(self.task, self.dataset.element_spec)
        self.task.fit(self.dataset, epochs=self.epochs_done + 1,
                      initial_epoch=self.epochs_done, verbose=0)
        self.epochs_done += 1

    def predict(self, texts):
        test = td.make_text_dataset((texts, np.zeros(len(texts), dtype="int32")),
                                    preprocessor=self.task.preprocessor, batch_size=64)
        return np.argmax(self.task.predict(test, verbose=0), axis=-1)


def load_split(args):
    data = td.load_rotten_tomatoes(classes=["rotten", "fresh"])
    train_idx, rest = train_test_split(
        np.arange(len(data)), train_size=args.train, stratify=data.y, random_state=args.seed
    )
    test_idx, _ = train_test_split(
        rest, train_size=args.test, stratify=data.y[rest], random_state=args.seed
    )
    train, test = data.take(train_idx), data.take(test_idx)
    return (np.asarray(train.x, dtype=object), np.asarray(train.y, dtype="int32"),
            np.asarray(test.x, dtype=object), np.asarray(test.y))


class PeerProcess:
    """Drives `torch_peer.py` in a child process, one epoch per request.

    In its own process the peer shares no thread pools with TensorFlow (in
    one process, PyTorch's epochs after a TensorFlow epoch ran at half speed).
    """

    def __init__(self, args, split_path, seed):
        command = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "torch_peer.py"),
                   "--split", split_path, "--model-dir", asset_path("minilm"),
                   "--batch-size", str(args.batch_size), "--seed", str(seed),
                   "--precision", args.peer_precision]
        # transformers 4.x would otherwise import TensorFlow too, when installed.
        env = {**os.environ, "USE_TF": "0", "USE_TORCH": "1"}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env)

    def _ask(self, command):
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return read_json_line(self.process)

    def train_epoch(self):
        return self._ask("train")["seconds"]

    def accuracy(self):
        accuracy = self._ask("predict")["accuracy"]
        self.process.stdin.close()
        self.process.wait()
        return accuracy


def run_seed(args, strategy, settings, split, split_path, seed):
    """One side-by-side run: per-epoch seconds and test accuracy of both sides."""
    train_x, train_y, test_x, test_y = split
    peer = PeerProcess(args, split_path, seed)
    ours = TfftRun(2, args.batch_size, seed, strategy, settings["jit_compile"], args.optimizer,
                   args.fused_ops)
    seconds = {"peer": [], "tfft": []}
    for _ in range(args.epochs):
        seconds["peer"].append(peer.train_epoch())
        start = time.perf_counter()
        ours.train_epoch(train_x, train_y)
        seconds["tfft"].append(time.perf_counter() - start)
    accuracies = {
        "peer": peer.accuracy(),
        "tfft": float(np.mean(ours.predict(test_x) == test_y)),
    }
    return seconds, accuracies


def _ratios(seconds, epochs):
    peer, ours = seconds["peer"], seconds["tfft"]
    two = min(2, epochs)
    return {
        "first_epoch_ratio": round(peer[0] / ours[0], 3),
        "two_epoch_ratio": round(sum(peer[:two]) / sum(ours[:two]), 3),
        "tfft_first_over_second_epoch": (round(ours[1] / ours[0], 3) if epochs > 1 else None),
        # The peer traces nothing: how much the machine alone slows a first epoch.
        "peer_first_over_second_epoch": (round(peer[1] / peer[0], 3) if epochs > 1 else None),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2048)
    parser.add_argument("--test", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0,
                        help="Seed of the train/test split (and of training, without --seeds).")
    parser.add_argument("--seeds", default=None,
                        help="Comma-separated training seeds (e.g. 0,1,2): one side-by-side "
                        "run per seed on the same split. Defaults to --seed.")
    parser.add_argument("--optimizer", choices=("fused", "keras"), default="fused",
                        help="tfft's side: tfft.training.FusedAdamW (default) or "
                        "keras.optimizers.AdamW (the same math, a larger graph).")
    parser.add_argument("--peer-precision", choices=("fp32", "bf16"), default="fp32",
                        help="The peer's forward pass: float32 (default) or bfloat16 "
                        "autocast (what --mixed-precision is on tfft's side).")
    add_fused_ops_arg(parser)
    add_distribution_args(parser)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    strategy, settings = setup_distribution(args)
    split = load_split(args)
    train_x, train_y, test_x, test_y = split

    # The peer reads the same split from a file: its process never imports TensorFlow
    # (TensorFlow and PyTorch in one process crashed, and share thread pools).
    folder = tempfile.mkdtemp(prefix="vs_transformers_")
    split_path = os.path.join(folder, "split.npz")
    np.savez(split_path, train_x=train_x.astype(str), train_y=train_y,
             test_x=test_x.astype(str), test_y=test_y)
    runs = []
    for seed in seeds:
        seconds, accuracies = run_seed(args, strategy, settings, split, split_path, seed)
        runs.append({
            "seed": seed,
            **_ratios(seconds, args.epochs),
            "tfft_accuracy": round(accuracies["tfft"], 4),
            "peer_accuracy": round(accuracies["peer"], 4),
            "tfft_examples_per_s": [round(len(train_x) / s, 2) for s in seconds["tfft"]],
            "peer_examples_per_s": [round(len(train_x) / s, 2) for s in seconds["peer"]],
            "seconds": seconds,
            "load_average_1m": round(os.getloadavg()[0], 2),
        })
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "seconds"}), flush=True)
    # Over all seeds: times summed per epoch, accuracies averaged.
    total = {side: [sum(run["seconds"][side][e] for run in runs) for e in range(args.epochs)]
             for side in ("peer", "tfft")}
    tfft_acc = [run["tfft_accuracy"] for run in runs]
    peer_acc = [run["peer_accuracy"] for run in runs]
    print(json.dumps({
        "benchmark": "vs_transformers",
        "dataset": "rotten_tomatoes (rotten vs fresh)",
        "train_examples": len(train_x),
        "test_examples": len(test_x),
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        **settings,
        "optimizer": "FusedAdamW" if args.optimizer == "fused" else "AdamW",
        "peer_precision": args.peer_precision,
        "fused_ops": args.fused_ops,
        "seeds": seeds,
        **_ratios(total, args.epochs),
        "tfft_accuracy": round(float(np.mean(tfft_acc)), 4),
        "peer_accuracy": round(float(np.mean(peer_acc)), 4),
        "tfft_accuracy_std": round(float(np.std(tfft_acc)), 4),
        "peer_accuracy_std": round(float(np.std(peer_acc)), 4),
        "tfft_examples_per_s": [round(len(seeds) * len(train_x) / s, 2) for s in total["tfft"]],
        "peer_examples_per_s": [round(len(seeds) * len(train_x) / s, 2) for s in total["peer"]],
        "per_seed": [{k: v for k, v in run.items() if k != "seconds"} for run in runs],
        "load_average_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
