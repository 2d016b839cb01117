"""Is the input pipeline fast enough to keep fine-tuning busy?

Measures, on BBC News with all-MiniLM-L6-v2 (batch 32, sequence length 128):
- the examples/s of `tfft.data.make_dataset` alone (tokenising inside tf.data
  with a parallel map, batch first), median of several passes;
- the examples/s that fully fine-tuning MiniLM + a Dense head consumes
  (Adam, frozen=False), median over a few train steps on the same batches,
  already materialised so the pipeline is not part of that figure.

Prints one JSON object as the last line; `ratio` is pipeline / training
(target >= 5).

    .venv/bin/python benchmarks/input_pipeline.py [--passes 3] [--train-steps 5]
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfft  # noqa: I001  (sets the Keras backend first)
import keras
import tensorflow as tf

import tfft.data as td


class MaskedMean(keras.layers.Layer):
    """Mean of the token vectors the padding mask keeps (sentence embedding)."""

    def call(self, sequence, mask):
        mask = keras.ops.cast(mask, sequence.dtype)[..., None]
        return keras.ops.sum(sequence * mask, axis=1) / keras.ops.maximum(
            keras.ops.sum(mask, axis=1), 1.0
        )


def build_classifier(backbone, num_classes):
    inputs = {
        name: keras.Input((None,), dtype="int32", name=name)
        for name in ("token_ids", "segment_ids", "padding_mask")
    }
    sequence = backbone.model(inputs)["sequence_output"]
    pooled = MaskedMean()(sequence, inputs["padding_mask"])
    return keras.Model(inputs, keras.layers.Dense(num_classes)(pooled))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    backbone = tfft.load_backbone("minilm", sequence_length=128)
    data = td.load_bbc_news()
    dataset = td.make_dataset(data, backbone, batch_size=args.batch_size)

    pipeline_rates = []
    for _ in range(args.passes):
        start = time.perf_counter()
        count = sum(int(y.shape[0]) for _, y in dataset)
        pipeline_rates.append(count / (time.perf_counter() - start))

    model = build_classifier(backbone, data.num_classes)
    backbone.model.trainable = True
    model.compile(
        optimizer=keras.optimizers.Adam(5e-5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    batches = list(td.make_dataset(data, backbone, batch_size=args.batch_size, shuffle=True)
                   .take(args.train_steps + 1))
    model.train_on_batch(*batches[0])  # traces the train step; not timed
    step_rates = []
    for x, y in batches[1:]:
        start = time.perf_counter()
        model.train_on_batch(x, y)
        step_rates.append(int(y.shape[0]) / (time.perf_counter() - start))

    pipeline = statistics.median(pipeline_rates)
    training = statistics.median(step_rates)
    print(json.dumps({
        "benchmark": "input_pipeline",
        "dataset": "bbc_news",
        "examples": len(data),
        "backbone": backbone.name,
        "batch_size": args.batch_size,
        "sequence_length": 128,
        "pipeline_examples_per_s": round(pipeline, 1),
        "pipeline_runs": [round(r, 1) for r in pipeline_rates],
        "finetune_examples_per_s": round(training, 2),
        "finetune_steps": [round(r, 2) for r in step_rates],
        "ratio": round(pipeline / training, 1),
        "target_ratio": 5,
        "cpu_threads": tf.config.threading.get_inter_op_parallelism_threads() or os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
