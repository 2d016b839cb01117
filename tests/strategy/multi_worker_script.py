"""One worker of a two-process MultiWorkerMirroredStrategy fine-tune on 127.0.0.1.

Run by test_strategy.py as `python multi_worker_script.py OUT_DIR` with
TF_CONFIG set. Fine-tunes a tiny BERT text classifier built by tfft for a few
steps, writes `OUT_DIR/weights_<index>.npz` (the weights before and after
training); every worker exports, and only the chief's SavedModel (raw strings
in) is kept, in `OUT_DIR/export`. The test imports `build_model` and
`dataset` to train the same model on one process with the same global batch.
"""

import json
import os
import sys
import time

import keras
import keras_hub
import numpy as np
import tensorflow as tf

import tfft
from tfft.distribute import (
    chief_writes,
    distribute_dataset,
    get_strategy,
    global_batch_size,
    is_chief,
)

VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "the", "a", "of", "to", "and", "in", "is", "on", "for", "with", "news", "sport", "game",
    "team", "win", "match", "election", "vote", "party", "minister", "market", "shares",
    "profit", "bank", "film", "music", "star", "award",
]
TEXTS = [
    "the team win the match", "election vote for the party", "market shares and profit",
    "film music star award", "the game is on", "minister and the vote",
    "bank profit news", "a star of the film",
]
LABELS = [0, 1, 2, 3, 0, 1, 2, 3]
CLASS_NAMES = ["sport", "politics", "business", "entertainment"]


def build_model(strategy):
    """The seeded tiny BERT classifier (no dropout) and its preprocessor."""
    with strategy.scope():
        keras.utils.set_random_seed(0)
        bert = keras_hub.models.BertBackbone(
            vocabulary_size=len(VOCAB), num_layers=2, num_heads=2, hidden_dim=8,
            intermediate_dim=16, max_sequence_length=12, dropout=0.0,
        )
    backbone = tfft.load_backbone(bert)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        keras_hub.models.BertTokenizer(vocabulary=VOCAB), sequence_length=12
    )
    backbone.preprocessor = preprocessor
    model = tfft.build_model(backbone, num_classes=4, freeze="full", dropout=0.0,
                             compile=False, strategy=strategy)
    with strategy.scope():
        model.compile(optimizer=keras.optimizers.SGD(0.5),
                      loss="sparse_categorical_crossentropy")
    return model, preprocessor


def dataset(preprocessor, strategy, batch):
    """16 examples in a fixed order, in global batches of `batch`."""
    ds = tf.data.Dataset.from_tensor_slices((TEXTS * 2, LABELS * 2))
    ds = ds.map(lambda x, y: (preprocessor(x), y))
    return distribute_dataset(ds, strategy, global_batch_size=batch, drop_remainder=True)


def main(out_dir, strategy):
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    model, preprocessor = build_model(strategy)
    initial = model.get_weights()
    batch = global_batch_size(2, strategy)
    model.fit(dataset(preprocessor, strategy, batch), epochs=1, verbose=0)
    np.savez(
        os.path.join(out_dir, f"weights_{task['index']}.npz"),
        replicas=strategy.num_replicas_in_sync, chief=is_chief(strategy),
        same_strategy=get_strategy("multi_worker", verbose=False) is strategy,
        steps=int(model.optimizer.iterations.numpy()), global_batch=batch,
        **{f"w{i}": w for i, w in enumerate(model.get_weights())},
        **{f"initial{i}": w for i, w in enumerate(initial)},
    )
    # predict() gathers results from every worker: all of them must call it.
    probs = model.predict(preprocessor(tf.constant(TEXTS)), verbose=0)
    if is_chief(strategy):
        np.save(os.path.join(out_dir, "chief_probs.npy"), probs)
    # Every worker exports (the standard pattern); only the chief's copy is kept.
    with chief_writes(os.path.join(out_dir, "export"), strategy) as target:
        written = tfft.export_saved_model(model, target, preprocessor=preprocessor,
                                     class_names=CLASS_NAMES, task="multiclass", verify=False)
    with open(os.path.join(out_dir, f"written_{task['index']}.txt"), "w") as f:
        f.write(written)
    print(f"worker {task['index']} done; CPU seconds {time.process_time():.1f}", flush=True)


if __name__ == "__main__":
    # The strategy comes before TensorFlow runs anything else (collectives need it).
    main(sys.argv[1], get_strategy("auto"))
