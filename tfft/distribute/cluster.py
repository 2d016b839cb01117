"""The cluster this process belongs to: `TF_CONFIG`, its task, and the "only the chief writes" rule.

Under MultiWorkerMirroredStrategy every worker runs the same program; the
chief (the `"chief"` task, or worker 0 without one) writes checkpoints,
exports and reports, the other workers write to scratch copies that are
thrown away (`chief_only_path`), except what they need to resume after a
restart, which they keep in a folder of their own (`worker_dir`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow as tf

from tfft.distribute.errors import StrategyError

TASK_TYPES = ("chief", "worker", "ps", "evaluator")


def parse_tf_config(value: str | dict | None = None) -> dict[str, Any] | None:
    """Reads and validates `TF_CONFIG`; returns the dict, or None when unset.

    Args:
        value: str or dict. The config to check; defaults to the `TF_CONFIG`
            environment variable.

    Raises:
        StrategyError: bad JSON, a missing `cluster` or `task`, an unknown task
            type, a task index out of range, addresses that are not
            `host:port`, or more than one chief.

    Example:

    >>> parse_tf_config('{"cluster": {"worker": ["h1:2222", "h2:2222"]},'
    ...                 ' "task": {"type": "worker", "index": 0}}')["task"]
    {'type': 'worker', 'index': 0}
    """
    if value is None:
        value = os.environ.get("TF_CONFIG", "")
        if not value.strip():
            return None
    where = "TF_CONFIG"
    if isinstance(value, str):
        try:
            config = json.loads(value)
        except json.JSONDecodeError as error:
            raise StrategyError(
                f"{where} is not valid JSON ({error.msg} at character {error.pos}). Expected "
                'e.g. {"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
                f'"task": {{"type": "worker", "index": 0}}}}. Received: {value[:200]!r}'
            ) from None
    else:
        config = value
    if not isinstance(config, dict):
        raise StrategyError(
            f"{where} must be a JSON object with 'cluster' and 'task'. Received: "
            f"{type(config).__name__} {config!r}"
        )
    missing = [key for key in ("cluster", "task") if key not in config]
    if missing:
        raise StrategyError(
            f"{where} is missing {missing}: it needs 'cluster' (task type -> list of "
            "'host:port') and 'task' ({'type': ..., 'index': ...}). Received keys: "
            f"{sorted(config)}"
        )
    cluster, task = config["cluster"], config["task"]
    if not isinstance(cluster, dict) or not cluster:
        raise StrategyError(
            f"{where}['cluster'] must be a non-empty object mapping task types to lists of "
            f"'host:port'. Received: {cluster!r}"
        )
    for task_type, addresses in cluster.items():
        if task_type not in TASK_TYPES:
            raise StrategyError(
                f"Unknown task type {task_type!r} in {where}['cluster']. Expected types from "
                f"{list(TASK_TYPES)}. Received cluster keys: {sorted(cluster)}"
            )
        if not isinstance(addresses, list) or not addresses:
            raise StrategyError(
                f"{where}['cluster'][{task_type!r}] must be a non-empty list of 'host:port'. "
                f"Received: {addresses!r}"
            )
        for address in addresses:
            if not isinstance(address, str) or not re.fullmatch(r".+:\d+", address):
                raise StrategyError(
                    f"Each address in {where}['cluster'][{task_type!r}] must be 'host:port'. "
                    f"Received: {address!r}"
                )
    if len(cluster.get("chief", [])) > 1:
        raise StrategyError(
            f"{where} may name at most one chief. Received: chief={cluster['chief']!r}"
        )
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise StrategyError(
            f"{where}['task'] must be an object with 'type' and 'index'. Received: {task!r}"
        )
    task_type, index = task["type"], task["index"]
    if task_type not in TASK_TYPES:
        raise StrategyError(
            f"Unknown task type in {where}['task']. Expected one of {list(TASK_TYPES)}. "
            f"Received: type={task_type!r}"
        )
    if not isinstance(index, int) or isinstance(index, bool):
        raise StrategyError(
            f"{where}['task']['index'] must be an integer. Received: index={index!r}"
        )
    # The evaluator runs beside the cluster; it need not be listed in it.
    if task_type != "evaluator" or "evaluator" in cluster:
        if task_type not in cluster:
            raise StrategyError(
                f"{where}['task'] is a {task_type!r}, but the cluster has no {task_type!r} "
                f"tasks. Cluster task types: {sorted(cluster)}"
            )
        size = len(cluster[task_type])
        if not 0 <= index < size:
            raise StrategyError(
                f"{where}['task']['index'] is out of range: the cluster has {size} "
                f"{task_type!r} task(s), so valid indices are 0..{size - 1}. Received: "
                f"index={index}"
            )
    return config


def training_tasks(config):
    """Number of chief + worker tasks (the ones that hold replicas)."""
    if config is None:
        return 1
    cluster = config["cluster"]
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def task_info(strategy: tf.distribute.Strategy | None = None) -> tuple[str | None, int | None]:
    """`(task_type, task_index)` of this process; `(None, None)` outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is not None and getattr(resolver, "task_type", None) is not None:
        # TPUClusterResolver says "worker" 0 for the single host that drives the TPU.
        if isinstance(resolver, tf.distribute.cluster_resolver.TPUClusterResolver):
            return None, None
        return resolver.task_type, resolver.task_id
    config = parse_tf_config()
    if config is None:
        return None, None
    return config["task"]["type"], config["task"]["index"]


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """True when this process should write checkpoints, exports and reports.

    The chief is the `"chief"` task, or worker 0 when the cluster has no chief;
    a process outside any cluster (no `TF_CONFIG`) is its own chief.

    Args:
        strategy: tf.distribute.Strategy. Read its cluster resolver when it
            has one; defaults to `TF_CONFIG`.
    """
    task_type, index = task_info(strategy)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    if task_type == "worker" and index == 0:
        config = parse_tf_config()
        resolver = getattr(strategy, "cluster_resolver", None)
        if resolver is not None and hasattr(resolver, "cluster_spec"):
            jobs = resolver.cluster_spec().as_dict()
        else:
            jobs = config["cluster"] if config else {}
        return "chief" not in jobs
    return False


def chief_only_path(path: str, strategy: tf.distribute.Strategy | None = None) -> str:
    """Where this process should write `path`: `path` itself on the chief.

    Under MultiWorkerMirroredStrategy every worker must take part in a save
    (reading variables can need collective ops), but only the chief's copy is
    kept. Other workers get a fresh temporary directory with the same base
    name; remove it afterwards with `discard_worker_path`, or use the
    `chief_writes` context manager, which does both.

    Example:

    >>> target = tfft.distribute.chief_only_path("runs/model.keras")
    >>> model.save(target)
    >>> tfft.distribute.discard_worker_path(target)
    """
    if is_chief(strategy):
        return path
    task_type, index = task_info(strategy)
    base = os.path.basename(os.path.normpath(path)) or "output"
    scratch = tempfile.mkdtemp(prefix=f"tfft-{task_type}-{index}-")
    return os.path.join(scratch, base)


def worker_dir(path: str, strategy: tf.distribute.Strategy | None = None) -> str:
    """Where this process keeps its own files of the run in `path`: `path` itself on the chief.

    A non-chief worker gets `path/workers/<task_type>-<index>`, the same
    folder on every launch and never deleted, so what it writes to resume
    (backups, finished stages) is still there when the job restarts.
    Unlike `chief_only_path`, whose scratch copy is new on every call, this
    is for state; the run's final outputs stay chief-only.

    Args:
        path: str. The run directory (the same on every worker).
        strategy: tf.distribute.Strategy. Read its cluster resolver when it
            has one; defaults to `TF_CONFIG`.

    Example:

    >>> state_dir = tfft.distribute.worker_dir("runs/news")  # worker 1: runs/news/workers/worker-1
    """
    if is_chief(strategy):
        return path
    task_type, index = task_info(strategy)
    return os.path.join(path, "workers", f"{task_type}-{index}")


def gather_from_workers(
    values: Sequence[int], strategy: tf.distribute.Strategy
) -> list[tuple[int, ...]]:
    """Every process's `values`, one row per replica; `[tuple(values)]` outside a cluster.

    Under MultiWorkerMirroredStrategy this is one collective op: every
    training task must call it at the same point, with as many values.
    Several replicas in one process give identical rows.

    Args:
        values: sequence of int. This process's values (e.g. the stages it
            finished, its completed epochs).
        strategy: tf.distribute.Strategy. The job's strategy.

    Example:

    >>> rows = gather_from_workers([completed_epochs(backup)], strategy)
    >>> len(set(rows)) == 1  # every worker stopped after the same epoch
    """
    values = tuple(int(v) for v in values)
    if task_info(strategy)[0] is None or strategy.num_replicas_in_sync == 1:
        return [values]
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda _: tf.constant([values], dtype=tf.int64)
    )
    gathered = strategy.gather(per_replica, axis=0).numpy()
    return [tuple(int(v) for v in row) for row in gathered]


def discard_worker_path(path: str, strategy: tf.distribute.Strategy | None = None) -> None:
    """Deletes a non-chief worker's scratch copy made by `chief_only_path`."""
    if is_chief(strategy):
        return
    scratch = os.path.dirname(path)
    if os.path.basename(scratch).startswith("tfft-") and scratch.startswith(
        tempfile.gettempdir()
    ):
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def chief_writes(path: str, strategy: tf.distribute.Strategy | None = None) -> Iterator[str]:
    """Yields the path to write to; a non-chief worker's copy is deleted afterwards.

    Example:

    >>> with tfft.chief_writes("runs/weights.weights.h5") as target:
    ...     model.save_weights(target)
    """
    target = chief_only_path(path, strategy)
    try:
        yield target
    finally:
        discard_worker_path(target, strategy)
