"""The PyTorch + transformers peer of `vs_transformers.py`, in its own process.

MiniLM + masked mean pooling + dropout + Linear, trained with AdamW on
length-sorted batches with dynamic padding. This process never imports
TensorFlow: with both frameworks in one process the peer crashed (PyTorch
2.14) or ran at half speed (shared thread pools). It reads the split that
`vs_transformers.py` wrote and answers one JSON line per request on stdin:
`train` (one epoch, its seconds) or `predict` (test accuracy).

    python benchmarks/torch_peer.py --split SPLIT.npz --model-dir DIR
        [--batch-size 32] [--seed 0] [--precision fp32]

`--precision bf16` runs the forward passes under
`torch.autocast("cpu", dtype=torch.bfloat16)` (float32 weights and
optimizer, as Hugging Face's Trainer does with `bf16=True` on a CPU).
"""

import argparse
import contextlib
import json
import sys
import time

import numpy as np

LEARNING_RATE = 5e-5
WEIGHT_DECAY = 0.01
MAX_LENGTH = 128


def _import_peer():
    try:
        import torch
        import transformers
    except ImportError as error:
        raise ImportError(
            "benchmarks/vs_transformers.py needs the peer: pip install -e '.[bench]' "
            "(torch, transformers)."
        ) from error
    return torch, transformers


class Peer:
    """MiniLM + masked mean + Linear in PyTorch + transformers, dynamic padding."""

    def __init__(self, model_dir, num_classes, batch_size, seed, precision="fp32"):
        torch, transformers = _import_peer()
        self.torch = torch
        self.precision = precision
        torch.manual_seed(seed)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        self.encoder = transformers.AutoModel.from_pretrained(model_dir)
        self.dropout = torch.nn.Dropout(0.1)
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, num_classes)
        params = list(self.encoder.parameters()) + list(self.head.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.batches = None

    def _autocast(self):
        if self.precision == "bf16":
            return self.torch.autocast("cpu", dtype=self.torch.bfloat16)
        return contextlib.nullcontext()

    def _logits(self, texts):
        encoded = self.tokenizer(list(texts), padding=True, truncation=True,
                                 max_length=MAX_LENGTH, return_tensors="pt")
        with self._autocast():
            sequence = self.encoder(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(sequence.dtype)
            pooled = (sequence * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return self.head(self.dropout(pooled)).float()

    def train_epoch(self, texts, labels):
        if self.batches is None:
            # Length-sorted batches (counted in the first epoch's time).
            lengths = [len(ids) for ids in self.tokenizer(
                list(texts), truncation=True, max_length=MAX_LENGTH)["input_ids"]]
            order = np.argsort(lengths, kind="stable")
            self.batches = [order[i:i + self.batch_size]
                            for i in range(0, len(order), self.batch_size)]
        self.encoder.train()
        self.dropout.train()
        loss_fn = self.torch.nn.CrossEntropyLoss()
        for b in self.rng.permutation(len(self.batches)):
            index = self.batches[b]
            logits = self._logits(texts[index])
            loss = loss_fn(logits, self.torch.as_tensor(labels[index], dtype=self.torch.long))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()

    def predict(self, texts):
        self.encoder.eval()
        self.dropout.eval()
        order = np.argsort([len(t) for t in texts], kind="stable")
        predictions = np.empty(len(texts), dtype=np.int64)
        with self.torch.inference_mode():
            for i in range(0, len(order), 64):
                index = order[i:i + 64]
                predictions[index] = self._logits(texts[index]).argmax(-1).numpy()
        return predictions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    with np.load(args.split, allow_pickle=False) as split:
        train_x, train_y = split["train_x"].astype(object), split["train_y"]
        test_x, test_y = split["test_x"].astype(object), split["test_y"]
    peer = Peer(args.model_dir, int(train_y.max()) + 1, args.batch_size, args.seed,
                args.precision)
    for line in sys.stdin:
        if line.strip() == "train":
            start = time.perf_counter()
            peer.train_epoch(train_x, train_y)
            answer = {"seconds": time.perf_counter() - start}
        else:
            answer = {"accuracy": float(np.mean(peer.predict(test_x) == test_y))}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
