"""One worker of a two-process multi-worker `tfft.run_job`, for test_worker_resume.py.

Run as `python worker_resume_script.py PRESET OUT_DIR NAME [NAME ...]` with
TF_CONFIG set: runs the job on `OUT_DIR/NAME` for each NAME in turn (the same
run directory on every worker, as a user would pass `--run-dir`), and writes
`OUT_DIR/NAME_<task index>.npz` (final weights, `resumed_from_epoch` of
each stage) after each.

A NAME written `NAME!` stands for a job that is killed: the process ends
abruptly (`os._exit(KILLED)`, no clean-up) as the fine-tuning stage is about
to start its epoch `DIE_AT_EPOCH + 1`, so the backup of epoch `DIE_AT_EPOCH`
is on disk. That hook is patched into Keras here, in the test's process only.
"""

import json
import os
import sys

import keras
import numpy as np

from tfft.distribute import get_strategy
from tfft.jobs.finetune import run_job

KILLED = 3
DIE_AT_EPOCH = 1
SETTINGS = dict(dataset="bbc_news", max_examples=40, sequence_length=16, batch_size=4,
                head_epochs=1, epochs=2, unfreeze_top=1, export_dir=None, seed=0,
                distribution="multi_worker")

# The strategy must exist before TensorFlow runs anything else; run_job's own
# get_strategy call returns this same object.
strategy = get_strategy("multi_worker")
_doomed = False
_epoch_begin = keras.callbacks.BackupAndRestore.on_epoch_begin


def _on_epoch_begin(self, epoch, logs=None):
    if (_doomed and epoch == DIE_AT_EPOCH
            and os.path.basename(os.path.normpath(self.backup_dir)) == "fine_tune"):
        print(f"killed before fine-tuning epoch {epoch + 1}", flush=True)
        os._exit(KILLED)
    return _epoch_begin(self, epoch, logs)


keras.callbacks.BackupAndRestore.on_epoch_begin = _on_epoch_begin


def main(preset, out_dir, names):
    global _doomed
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    for name in names:
        _doomed = name.endswith("!")
        name = name.rstrip("!")
        result = run_job(backbone=f"keras_hub:{preset}", run_dir=os.path.join(out_dir, name),
                         verbose=0, **SETTINGS)
        np.savez(
            os.path.join(out_dir, f"{name}_{index}.npz"),
            resumed=json.dumps({s["name"]: s.get("resumed_from_epoch") for s in
                                result["stages"]}),
            **{f"w{i}": w for i, w in enumerate(result["model"].get_weights())},
        )
        print(f"worker {index}: {name} done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
