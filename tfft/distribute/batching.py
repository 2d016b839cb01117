"""Batches and data under a strategy: global batch size, learning-rate scaling, sharding."""

from __future__ import annotations

import math

import tensorflow as tf

from tfft.distribute.errors import StrategyError
from tfft.utils.checks import check_int, check_positive_number

LR_RULES = ("linear", "sqrt", None)
SHARD_POLICIES = {
    "auto": tf.data.experimental.AutoShardPolicy.AUTO,
    "data": tf.data.experimental.AutoShardPolicy.DATA,
    "file": tf.data.experimental.AutoShardPolicy.FILE,
    "off": tf.data.experimental.AutoShardPolicy.OFF,
}


def num_replicas(strategy: tf.distribute.Strategy | None = None) -> int:
    """Replicas that train in sync under `strategy` (the current one if None)."""
    strategy = strategy if strategy is not None else tf.distribute.get_strategy()
    return int(strategy.num_replicas_in_sync)


def global_batch_size(per_replica: int, strategy: tf.distribute.Strategy | None = None) -> int:
    """The global batch for `per_replica` examples on each replica.

    Example:

    >>> tfft.global_batch_size(32, tf.distribute.MirroredStrategy(["/cpu:0"]))
    32
    """
    check_int("per_replica", per_replica, error=StrategyError)
    return per_replica * num_replicas(strategy)


def per_replica_batch_size(
    global_batch: int, strategy: tf.distribute.Strategy | None = None
) -> int:
    """Examples per replica; raises `StrategyError` unless the split is exact."""
    check_int("global_batch", global_batch, error=StrategyError)
    replicas = num_replicas(strategy)
    if global_batch % replicas:
        raise StrategyError(
            f"The global batch size must divide evenly across the {replicas} replicas, so "
            f"every replica gets the same number of examples. Received: global batch "
            f"{global_batch}; use a multiple of {replicas}, e.g. "
            f"{max(global_batch // replicas, 1) * replicas} or "
            f"tfft.global_batch_size(per_replica, strategy)."
        )
    return global_batch // replicas


def scale_learning_rate(
    learning_rate: float,
    strategy: tf.distribute.Strategy | None = None,
    rule: str | None = "linear",
    base_replicas: int = 1,
) -> float:
    """Scales a learning rate tuned on `base_replicas` to the strategy's replicas.

    Args:
        learning_rate: float. The rate tuned for `base_replicas` replicas.
        strategy: tf.distribute.Strategy. Defaults to the current one.
        rule: str. `"linear"` (Goyal et al.: rate grows with the global
            batch), `"sqrt"` (common for Adam), or None (unchanged).
        base_replicas: int. Replicas the rate was tuned on. Defaults to 1.
    """
    if rule not in LR_RULES:
        raise StrategyError(
            f"Unknown learning-rate scaling rule. Expected one of {list(LR_RULES)}. "
            f"Received: rule={rule!r}"
        )
    check_positive_number("learning_rate", learning_rate, error=StrategyError)
    check_int("base_replicas", base_replicas, error=StrategyError)
    factor = num_replicas(strategy) / base_replicas
    if rule == "linear":
        return learning_rate * factor
    if rule == "sqrt":
        return learning_rate * math.sqrt(factor)
    return learning_rate


def distribute_dataset(
    dataset: tf.data.Dataset,
    strategy: tf.distribute.Strategy | None = None,
    global_batch_size: int | None = None,
    shard_policy: str = "data",
    drop_remainder: bool = False,
    distribute: bool = False,
) -> tf.data.Dataset | tf.distribute.DistributedDataset:
    """Prepares a `tf.data` pipeline for a strategy, with the right sharding.

    Sets the auto-shard policy (`"data"` by default: every worker reads the
    pipeline and keeps its share of each global batch, which is what
    in-memory sources such as `from_tensor_slices` need; `"file"` for
    pipelines that read many files), batches to the global batch when asked,
    and checks the global batch divides across the replicas.

    Args:
        dataset: tf.data.Dataset. Unbatched when `global_batch_size` is set,
            else already batched with the global batch.
        strategy: tf.distribute.Strategy. Defaults to the current one.
        global_batch_size: int. Batch the dataset to this size.
        shard_policy: str. `"data"`, `"file"`, `"auto"` or `"off"`.
        drop_remainder: bool. Drop a last partial batch.
        distribute: bool. Return `strategy.experimental_distribute_dataset(...)`
            for custom training loops; `model.fit` wants the plain dataset
            (the default) and distributes it itself.

    Example:

    >>> ds = tf.data.Dataset.from_tensor_slices((x, y))
    >>> ds = tfft.distribute_dataset(ds, strategy, global_batch_size=64)
    >>> model.fit(ds)
    """
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            f"distribute_dataset expects a tf.data.Dataset. Received: {type(dataset).__name__}; "
            "wrap arrays with tf.data.Dataset.from_tensor_slices((x, y))."
        )
    if shard_policy not in SHARD_POLICIES:
        raise StrategyError(
            f"Unknown shard policy. Expected one of {sorted(SHARD_POLICIES)}. Received: "
            f"shard_policy={shard_policy!r}"
        )
    strategy = strategy if strategy is not None else tf.distribute.get_strategy()
    if global_batch_size is not None:
        per_replica_batch_size(global_batch_size, strategy)
        dataset = dataset.batch(global_batch_size, drop_remainder=drop_remainder)
    else:
        batch = _static_batch(dataset)
        if batch is not None:
            per_replica_batch_size(batch, strategy)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = SHARD_POLICIES[shard_policy]
    dataset = dataset.with_options(options)
    if distribute:
        return strategy.experimental_distribute_dataset(dataset)
    return dataset


def _static_batch(dataset):
    """The static batch size of a batched dataset, or None when unknown."""
    specs = tf.nest.flatten(dataset.element_spec)
    sizes = {s.shape[0] for s in specs if getattr(s, "shape", None) is not None
             and s.shape.rank and s.shape[0] is not None}
    return sizes.pop() if len(sizes) == 1 else None
