"""The PyTorch + transformers serving peer of `serving.py`, in its own process.

The trained classifier's math (MiniLM, masked mean pooling, the head's
weights read from an `.npz`) called one request at a time, tokenised at the
request's own length, under `torch.inference_mode`. This process never
imports TensorFlow, so neither framework's thread pools spin on the cores
while the other is timed. It answers one JSON line per request on stdin:
`{"text": ..., "requests": N}` -> the seconds of N timed calls (after 5
warm-up calls) and the probabilities of one call.

    python benchmarks/torch_serving_peer.py --model-dir DIR --head HEAD.npz
"""

import argparse
import json
import sys
import time

import numpy as np

MAX_LENGTH = 128


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--head", required=True, help=".npz with kernel and bias")
    args = parser.parse_args()
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model_dir)
    encoder = transformers.AutoModel.from_pretrained(args.model_dir).eval()
    with np.load(args.head, allow_pickle=False) as head_weights:
        kernel, bias = head_weights["kernel"], head_weights["bias"]
    head = torch.nn.Linear(*kernel.shape)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(kernel.T.copy()))
        head.bias.copy_(torch.from_numpy(bias))

    def predict(texts):
        with torch.inference_mode():
            encoded = tokenizer(list(texts), padding=True, truncation=True,
                                max_length=MAX_LENGTH, return_tensors="pt")
            sequence = encoder(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(sequence.dtype)
            pooled = (sequence * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return torch.softmax(head(pooled), -1).numpy()

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        text = request["text"]
        for _ in range(5):
            predict([text])
        seconds = []
        for _ in range(int(request["requests"])):
            start = time.perf_counter()
            predict([text])
            seconds.append(time.perf_counter() - start)
        print(json.dumps({
            "seconds": seconds,
            "probabilities": predict([text]).tolist(),
            "tokens": min(MAX_LENGTH, len(tokenizer(text)["input_ids"])),
        }), flush=True)


if __name__ == "__main__":
    main()
