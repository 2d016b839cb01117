"""tf.data settings shared by every input pipeline tfft builds (data and models layers)."""

from __future__ import annotations

import tensorflow as tf


def pipeline_options(deterministic: bool = True) -> tf.data.Options:
    """The `tf.data.Options` of every dataset tfft builds for training.

    tf.data's autotuning is off: its model thread made deleting an iterator
    that had run for an epoch wait for the thread's next wake-up, up to 25 s
    (seen at `fit`'s return in 10 of 15 two-epoch MiniLM runs of
    `benchmarks/first_epoch.py` on 2 CPU cores; none in 5 runs with it off, at
    the same step times). `AUTOTUNE` parallelism then means one call per CPU
    core, and prefetch buffers still size themselves.

    Args:
        deterministic: bool. Keep the element order. Defaults to True.
    """
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = False
    return options
