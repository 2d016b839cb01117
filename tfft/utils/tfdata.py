"""tf.data settings and batch trimming shared by the data, models and export layers."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

#: What `trim_to_longest` rounds widths up to for XLA, which compiles once per
#: input shape: at most `sequence_length / 16` widths per batch size.
XLA_WIDTH_MULTIPLE = 16


def pipeline_options(deterministic: bool = True) -> tf.data.Options:
    """The `tf.data.Options` of every dataset tfft builds for training.

    tf.data's autotuning is off: its model thread made deleting an iterator
    that had run for an epoch wait for the thread's next wake-up, up to 25 s
    (seen at `fit`'s return in 10 of 15 two-epoch MiniLM runs of
    `benchmarks/first_epoch.py` on 2 CPU cores; none in 5 runs with it off, at
    the same step times). `AUTOTUNE` parallelism then means one call per CPU
    core, and prefetch buffers still size themselves.

    Warm start is on: the pipeline's parallel maps and prefetch start
    working when the iterator is made, not at the first `next()`. `fit`
    makes its iterator before it traces the train step, so the first
    batches are tokenised while the step is traced and optimised (~2 s for
    MiniLM) instead of after: the first step of `benchmarks/first_epoch.py`
    took 2.7-3.0 s instead of 3.4-3.6 s on 2 CPU cores.

    Args:
        deterministic: bool. Keep the element order. Defaults to True.
    """
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = False
    options.experimental_warm_start = True
    return options


def with_pipeline_options(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with `pipeline_options()` wherever it has not set an option itself.

    For a pipeline tfft extends from a user's dataset (a `Task` mapping its
    preprocessor over raw texts): tf.data's autotuning otherwise sizes the
    map's parallelism, which on 2 CPU cores made `Task.predict` over a
    dataset of 1,024 Rotten Tomatoes reviews take 5.9-10.5 s instead of
    5.7-6.4 s (MiniLM, batches cut; `benchmarks/text_batches.py`). Options
    the dataset sets keep their values.
    """
    return dataset.with_options(pipeline_options()).with_options(dataset.options())


def continuous_epochs(x: Any, steps_per_epoch: Any = None) -> tuple[Any, Any]:
    """`fit`'s input and `steps_per_epoch` for running every epoch from one pipeline.

    Keras makes a new iterator of a finite `tf.data.Dataset` for every epoch,
    and one more after the last epoch, which `fit` then discards. Each starts
    its pipeline cold: it instantiates the pipeline's functions and refills
    its buffers before the epoch's first batch (a length-bucketed MiniLM
    dataset tokenises a whole pool first: the first step of every epoch after
    the first took 0.54-0.75 s instead of ~0.15 s, 640 examples on 2 CPU
    cores), and deleting the discarded one waits for its start (~0.2 s at
    `fit`'s return). Repeated, with its size as `steps_per_epoch`, one iterator
    serves every epoch, and the prefetch after the repeat starts the next pass
    while the current epoch's last batches train. Each pass reshuffles as a
    new iterator would: the batches are those `fit` gives with
    `steps_per_epoch` set (one iterator per epoch). Without it Keras made two
    iterators per epoch and a reshuffling dataset skipped every other draw,
    so the same seed now trains on other, equally random, orders.

    Args:
        x: what `fit` trains on.
        steps_per_epoch: `fit`'s argument.

    Returns:
        `(x, steps_per_epoch)`, unchanged unless `x` is a `tf.data.Dataset` of
        known, finite, non-zero size and `steps_per_epoch` is None.
    """
    if steps_per_epoch is not None or not isinstance(x, tf.data.Dataset):
        return x, steps_per_epoch
    size = int(x.cardinality())
    if size <= 0:  # unknown (-2), infinite (-1) or empty
        return x, steps_per_epoch
    return x.repeat().prefetch(2), size


def takes_any_length(model: Any) -> bool:
    """Whether every sequence input of `model` takes any length (`[batch, None]`)."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return False
    return all(len(x.shape) != 2 or x.shape[1] is None for x in tf.nest.flatten(inputs))


def trim_to_longest(features: Any, multiple: int = 1) -> Any:
    """Cuts a padded text batch to its longest sequence (at least 1 token).

    A text preprocessor pads every request to its fixed `sequence_length`
    (128 for MiniLM); a short request then pays for 128 tokens of attention
    and feed-forward compute. Right padding that the model masks out changes
    no output, so the export serves each request at its own longest
    sequence instead (text exports), and `tfft.data.make_text_dataset`
    cuts each length-bucketed batch the same way. Features without a
    `padding_mask`, or whose second axis is not the mask's, pass through as
    they are.

    Args:
        features: dict of `[batch, sequence_length]` tensors with a
            `padding_mask`, as KerasHub text preprocessors return.
        multiple: int. Round the cut up to a multiple of this (never past the
            padded width), so a compiler that specialises on shapes (XLA)
            meets fewer widths. Defaults to 1.

    Returns:
        The same dict with each sequence feature cut to the batch's longest
        unpadded length (rounded up to `multiple`).
    """
    if not isinstance(features, dict) or "padding_mask" not in features:
        return features
    mask = features["padding_mask"]
    width = tf.shape(mask)[1]
    lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    # The appended 0 keeps an empty batch's maximum defined.
    longest = tf.reduce_max(tf.concat([lengths, [0]], axis=0))
    if multiple > 1:
        longest = (longest + multiple - 1) // multiple * multiple
    longest = tf.clip_by_value(longest, 1, width)

    def cut(value):
        if value.shape.rank != 2:
            return value
        return tf.cond(tf.equal(tf.shape(value)[1], width),
                       lambda: value[:, :longest], lambda: value)

    return {key: cut(value) for key, value in features.items()}


def pad_to_multiple(features: Any, multiple: int, limit: int | None = None,
                    pad_token_id: int = 0) -> Any:
    """Pads a text batch's width up to a multiple of `multiple` (never past `limit`).

    The other half of `trim_to_longest` for batches that arrive cut already
    (`tfft.data.make_text_dataset(bucketing=True)` cuts each to its longest
    sequence, up to 128 widths): XLA compiles a program per input shape, so
    under `jit_compile` or on TPUs a `Task` rounds such widths up to
    `XLA_WIDTH_MULTIPLE` and compiles at most `limit / multiple` programs.
    Right padding that the model masks out changes no output.

    Args:
        features: dict of `[batch, width]` tensors with a `padding_mask`.
            Features without one, or not of the mask's width, pass through.
        multiple: int. Round the width up to a multiple of this.
        limit: int or None. The widest a batch may become (the
            preprocessor's `sequence_length`); a width already past it stays.
        pad_token_id: int. What `token_ids` are padded with; every other
            sequence feature (the mask, segment ids) is padded with zeros.

    Returns:
        The same dict, sequence features padded on the right.
    """
    if not isinstance(features, dict) or "padding_mask" not in features or multiple <= 1:
        return features
    width = tf.shape(features["padding_mask"])[1]
    target = (width + multiple - 1) // multiple * multiple
    if limit is not None:
        target = tf.maximum(tf.minimum(target, limit), width)

    def pad(key, value):
        if len(value.shape) != 2:
            return value
        fill = tf.cast(pad_token_id if key == "token_ids" else 0, value.dtype)
        return tf.cond(
            tf.equal(tf.shape(value)[1], width),
            lambda: tf.pad(value, [[0, 0], [0, target - width]], constant_values=fill),
            lambda: value,
        )

    return {key: pad(key, value) for key, value in features.items()}
