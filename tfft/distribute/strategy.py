"""Distribution strategies: one call picks TPU, several GPUs, many workers or one device.

Everything here is `tf.distribute`: `get_strategy()` returns a real
`tf.distribute.Strategy` (TPUStrategy, MirroredStrategy,
MultiWorkerMirroredStrategy, OneDeviceStrategy or the default strategy).
Keras 3 on TensorFlow does the rest: a model built under `strategy.scope()`
(`tfft.build_model(..., strategy=strategy)`) trains with `model.fit` on every
replica, and `fit` splits each global batch across them.

The helpers cover what the recipe needs around it: the global batch size and
learning-rate scaling, sharding a `tf.data` pipeline, a validated `TF_CONFIG`,
and the "only the chief writes" rule of multi-worker training.

Example:

>>> strategy = tfft.get_strategy()            # TPU, GPUs or CPU, whatever is here
>>> model = tfft.build_model("minilm", num_classes=5, strategy=strategy)
>>> batch = tfft.global_batch_size(32, strategy)
"""

import contextlib
import glob
import importlib.util
import json
import math
import os
import re
import shutil
import tempfile
import threading
import types

import tensorflow as tf

STRATEGY_NAMES = ("auto", "tpu", "mirrored", "multi_worker", "gpu", "cpu", "default")
TASK_TYPES = ("chief", "worker", "ps", "evaluator")
LR_RULES = ("linear", "sqrt", None)
SHARD_POLICIES = {
    "auto": tf.data.experimental.AutoShardPolicy.AUTO,
    "data": tf.data.experimental.AutoShardPolicy.DATA,
    "file": tf.data.experimental.AutoShardPolicy.FILE,
    "off": tf.data.experimental.AutoShardPolicy.OFF,
}
TPU_INIT_TIMEOUT = 300.0

# initialize_tpu_system wipes the TPU's memory and collectives are configured at
# start-up: TPU and multi-worker strategies are made once per process.
_STRATEGIES = {}


class StrategyError(ValueError):
    """A distribution setting is invalid, or the hardware it asks for is not here."""


def _log(verbose, message):
    if verbose:
        print(f"tfft strategy: {message}", flush=True)


# ---------------------------------------------------------------------------- TF_CONFIG


def parse_tf_config(value=None):
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


def _training_tasks(config):
    """Number of chief + worker tasks (the ones that hold replicas)."""
    if config is None:
        return 1
    cluster = config["cluster"]
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def task_info(strategy=None):
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


def is_chief(strategy=None):
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


def chief_only_path(path, strategy=None):
    """Where this process should write `path`: `path` itself on the chief.

    Under MultiWorkerMirroredStrategy every worker must take part in a save
    (reading variables can need collective ops), but only the chief's copy is
    kept. Other workers get a fresh temporary directory with the same base
    name; remove it afterwards with `discard_worker_path`, or use the
    `chief_writes` context manager, which does both.

    Example:

    >>> target = tfft.chief_only_path("runs/model.keras")
    >>> model.save(target)
    >>> tfft.discard_worker_path(target)
    """
    if is_chief(strategy):
        return path
    task_type, index = task_info(strategy)
    base = os.path.basename(os.path.normpath(path)) or "output"
    scratch = tempfile.mkdtemp(prefix=f"tfft-{task_type}-{index}-")
    return os.path.join(scratch, base)


def discard_worker_path(path, strategy=None):
    """Deletes a non-chief worker's scratch copy made by `chief_only_path`."""
    if is_chief(strategy):
        return
    scratch = os.path.dirname(path)
    if os.path.basename(scratch).startswith("tfft-") and scratch.startswith(
        tempfile.gettempdir()
    ):
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def chief_writes(path, strategy=None):
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


# ---------------------------------------------------------------------------- detection


def detect_tpu():
    """Cheaply finds a TPU without contacting one.

    Returns `(tpu, reason)`: the `tpu` argument for `TPUClusterResolver`
    (`"local"` on a Cloud TPU VM or Colab TPU runtime, a gRPC address, or None
    to let the resolver read `TPU_NAME`) and why; `(False, reason)` when
    nothing points to a TPU. Only environment variables and device files are
    read, so it never hangs.
    """
    if os.environ.get("TPU_NAME"):
        return None, f"TPU_NAME={os.environ['TPU_NAME']!r}"
    addr = os.environ.get("COLAB_TPU_ADDR")
    if addr:
        return f"grpc://{addr}", f"COLAB_TPU_ADDR={addr!r}"
    accel = sorted(glob.glob("/dev/accel*"))
    if accel:
        return "local", f"TPU device files {accel[:4]}"
    vfio = [p for p in glob.glob("/dev/vfio/*") if os.path.basename(p).isdigit()]
    # Newer TPU VMs (v5e, v6e) expose chips through vfio, which other passthrough
    # devices use too: ask for a TPU sign beside it.
    tpu_vm = os.environ.get("TPU_ACCELERATOR_TYPE") or os.environ.get("TPU_WORKER_ID")
    if vfio and (tpu_vm or importlib.util.find_spec("libtpu") is not None):
        return "local", f"TPU VM vfio devices {sorted(vfio)[:4]}"
    return False, ("no TPU_NAME or COLAB_TPU_ADDR environment variable and no /dev/accel* or "
                   "TPU vfio devices")


def _connect_tpu(tpu, timeout):
    """Resolves, connects and initialises a TPU; returns a TPUStrategy."""
    key = ("tpu", tpu if tpu is not None else os.environ.get("TPU_NAME"))
    if key in _STRATEGIES:
        return _STRATEGIES[key]
    result = {}

    def work():
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            result["strategy"] = tf.distribute.TPUStrategy(resolver)
        except Exception as error:  # reported to the caller below, with context
            result["error"] = error

    # A wrong gRPC address can block for minutes; the caller gets an answer in time.
    thread = threading.Thread(target=work, daemon=True, name="tfft-tpu-init")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise StrategyError(
            f"The TPU {tpu!r} did not answer within {timeout:.0f} s. Check the address or "
            "runtime type (Colab: Runtime > Change runtime type > TPU), or raise timeout=."
        )
    if "error" in result:
        error = result["error"]
        raise StrategyError(
            f"Could not connect to the TPU {tpu!r}: {type(error).__name__}: "
            f"{_first_line(error)} On a Colab TPU runtime or a Cloud TPU VM "
            "use tpu='local'; elsewhere pass the TPU name or 'grpc://host:8470'."
        ) from error
    _STRATEGIES[key] = result["strategy"]
    return result["strategy"]


def _first_line(error, limit=240):
    line = (str(error).splitlines() or [""])[0]
    return line if len(line) <= limit else line[:limit] + "..."


def _describe(strategy):
    name = type(strategy).__name__
    if name == "_DefaultDistributionStrategy":
        name = "default strategy"
    return f"{name} with {strategy.num_replicas_in_sync} replica(s)"


# ---------------------------------------------------------------------------- strategies


def get_strategy(name="auto", tpu=None, devices=None, verbose=True, timeout=TPU_INIT_TIMEOUT):
    """Returns the `tf.distribute.Strategy` for this machine or the one asked for.

    `"auto"` picks, in order: a TPU when one is reachable; MultiWorkerMirrored
    when `TF_CONFIG` describes a cluster of more than one chief/worker task;
    MirroredStrategy on several GPUs; the default strategy on one GPU or the
    CPU. A TPU that is detected but fails to start falls back with a message.
    The choice and its replica count are printed.

    Args:
        name: str. One of `"auto"`, `"tpu"`, `"mirrored"`, `"multi_worker"`,
            `"gpu"`, `"cpu"`, `"default"`. Defaults to `"auto"`.
        tpu: str. TPU to connect to: `"local"` on a Cloud TPU VM or Colab
            TPU runtime, a TPU name or `"grpc://host:port"`. Defaults to what
            the environment says (`detect_tpu()`).
        devices: list of str. Devices for `"mirrored"`, e.g.
            `["/gpu:0", "/gpu:1"]`. Defaults to all GPUs.
        verbose: bool. Print the choice. Defaults to True.
        timeout: float. Seconds to wait for a TPU to initialise.

    Raises:
        StrategyError: an unknown name, a malformed `TF_CONFIG`, or hardware
            that is not here (`"tpu"` without a TPU, `"gpu"` without a GPU).

    Note:
        Call it at the start of the program: MultiWorkerMirroredStrategy and
        TPUs must be set up before TensorFlow runs other ops.

    Example:

    >>> strategy = tfft.get_strategy()
    tfft strategy: default strategy with 1 replica(s) (auto: ... no GPU)
    >>> with strategy.scope():
    ...     model = tfft.build_model("minilm", num_classes=5)
    """
    if name not in STRATEGY_NAMES:
        raise StrategyError(
            f"Unknown strategy. Expected one of {list(STRATEGY_NAMES)}. Received: name={name!r}"
        )
    if devices is not None and (
        name != "mirrored" or not isinstance(devices, (list, tuple)) or not devices
        or not all(isinstance(d, str) for d in devices)
    ):
        raise StrategyError(
            "devices= is a non-empty list of device names such as ['/gpu:0', '/gpu:1'] and "
            f"only applies to name='mirrored'. Received: name={name!r}, devices={devices!r}"
        )
    if tpu is not None and (name not in ("auto", "tpu") or not isinstance(tpu, str)):
        raise StrategyError(
            "tpu= is a TPU name, 'local' or 'grpc://host:port' and only applies to "
            f"name='tpu' or 'auto'. Received: name={name!r}, tpu={tpu!r}"
        )
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise StrategyError(f"timeout must be a positive number. Received: timeout={timeout!r}")
    # A malformed TF_CONFIG fails here, before any device or collective is touched.
    config = parse_tf_config()
    tasks = _training_tasks(config)

    if name == "auto":
        strategy, why = _auto(tpu, config, tasks, verbose, timeout)
    elif name == "tpu":
        target, reason = (tpu, "tpu argument") if tpu is not None else detect_tpu()
        if target is False:
            raise StrategyError(
                f"No TPU is reachable: {reason}. On Colab choose a TPU runtime (Runtime > "
                "Change runtime type); on a Cloud TPU VM pass tpu='local'; for a remote TPU "
                "pass its name or 'grpc://host:8470'. Use get_strategy('auto') to fall back "
                "to GPUs or the CPU."
            )
        strategy, why = _connect_tpu(target, timeout), reason
    elif name == "multi_worker":
        strategy = _multi_worker()
        why = (f"TF_CONFIG: {config['task']['type']} {config['task']['index']} of {tasks} "
               "task(s)" if config else "no TF_CONFIG: a single worker")
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
        why = f"devices {list(strategy.extended.worker_devices)}"
    elif name == "gpu":
        gpus = tf.config.list_logical_devices("GPU")
        if not gpus:
            raise StrategyError(
                "name='gpu' needs a GPU, but TensorFlow sees none "
                f"(devices: {[d.name for d in tf.config.list_logical_devices()]}). Install a "
                "CUDA build of TensorFlow (pip install 'tensorflow[and-cuda]'), or use 'auto' "
                "or 'cpu'."
            )
        strategy = tf.distribute.OneDeviceStrategy(gpus[0].name)
        why = f"one GPU, {gpus[0].name}" + (f" of {len(gpus)}" if len(gpus) > 1 else "")
    elif name == "cpu":
        if tf.config.list_logical_devices("GPU"):
            strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
        else:
            strategy = tf.distribute.get_strategy()
        why = "CPU only"
    else:
        strategy, why = tf.distribute.get_strategy(), "requested"
    _log(verbose, f"{_describe(strategy)} ({name}: {why})")
    return strategy


class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose `reduce` handles what Keras 3 `fit` sends.

    Keras 3.15 averages each replica's scalar logs (loss, metrics) with
    `strategy.reduce("MEAN", value, axis=0)`, which a rank-0 value cannot take
    ("Invalid reduction dimension 0 for input with 0 dimensions"), and may
    pass nested structures. Here a scalar is reduced across replicas only
    (the same mean) and structures are reduced leaf by leaf. Everything else
    is the tf.distribute strategy unchanged.
    """

    def reduce(self, reduce_op, value, axis=None):
        if not isinstance(value, tf.distribute.DistributedValues) and tf.nest.is_nested(value):
            return tf.nest.map_structure(lambda v: self.reduce(reduce_op, v, axis), value)
        if axis is not None and _rank(value) == 0:
            axis = None
        return super().reduce(reduce_op, value, axis)


def _rank(value):
    if isinstance(value, tf.distribute.DistributedValues):
        value = value.values[0]
    shape = getattr(value, "shape", None)
    return shape.rank if shape is not None else None


def _multi_worker():
    # Collectives are configured once per process: a second strategy would fail.
    if "multi_worker" not in _STRATEGIES:
        _STRATEGIES["multi_worker"] = KerasMultiWorkerMirroredStrategy()
    return _STRATEGIES["multi_worker"]


def _auto(tpu, config, tasks, verbose, timeout):
    target, reason = (tpu, "tpu argument") if tpu is not None else detect_tpu()
    if target is not False:
        try:
            return _connect_tpu(target, timeout), f"TPU found via {reason}"
        except StrategyError as error:
            _log(verbose, f"a TPU was indicated ({reason}) but could not be used; falling "
                          f"back to GPUs/CPU. {error}")
            reason = "the indicated TPU failed to start"
    if tasks > 1:
        return _multi_worker(), (f"TF_CONFIG cluster of {tasks} tasks, this is "
                                 f"{config['task']['type']} {config['task']['index']}")
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy(), f"{len(gpus)} GPUs"
    why = "one GPU" if gpus else f"no TPU ({reason}), no GPU"
    return tf.distribute.get_strategy(), why


def num_replicas(strategy=None):
    """Replicas that train in sync under `strategy` (the current one if None)."""
    strategy = strategy if strategy is not None else tf.distribute.get_strategy()
    return int(strategy.num_replicas_in_sync)


def _positive_int(value, name):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise StrategyError(f"{name} must be a positive integer. Received: {name}={value!r}")


def global_batch_size(per_replica, strategy=None):
    """The global batch for `per_replica` examples on each replica.

    Example:

    >>> tfft.global_batch_size(32, tf.distribute.MirroredStrategy(["/cpu:0"]))
    32
    """
    _positive_int(per_replica, "per_replica")
    return per_replica * num_replicas(strategy)


def per_replica_batch_size(global_batch, strategy=None):
    """Examples per replica; raises `StrategyError` unless the split is exact."""
    _positive_int(global_batch, "global_batch")
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


def scale_learning_rate(learning_rate, strategy=None, rule="linear", base_replicas=1):
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
    if not isinstance(learning_rate, (int, float)) or isinstance(learning_rate, bool) or not (
        learning_rate > 0
    ):
        raise StrategyError(
            f"learning_rate must be a positive number. Received: learning_rate={learning_rate!r}"
        )
    _positive_int(base_replicas, "base_replicas")
    factor = num_replicas(strategy) / base_replicas
    if rule == "linear":
        return learning_rate * factor
    if rule == "sqrt":
        return learning_rate * math.sqrt(factor)
    return learning_rate


def distribute_dataset(dataset, strategy=None, global_batch_size=None, shard_policy="data",
                       drop_remainder=False, distribute=False):
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


def check_built_in_scope(model, strategy):
    """Raises `StrategyError` unless every variable of `model` belongs to `strategy`.

    A layer built outside `strategy.scope()` keeps plain variables: replicas
    would not share its updates. Build (or load) it inside the scope.
    """
    extended = strategy.extended
    outside = [w.path if hasattr(w, "path") else w.name for w in model.weights
               if not extended.variable_created_in_scope(_tf_variable(w))]
    if outside:
        raise StrategyError(
            f"{len(outside)} of {len(model.weights)} variables of {model.name!r} were created "
            f"outside the scope of the {type(strategy).__name__} (e.g. {outside[0]!r}), so the "
            "replicas would not share their updates. Pass the backbone as a spec string to "
            "tfft.build_model(..., strategy=strategy), or create it inside "
            "`with strategy.scope():`."
        )


def prepare_model(model, strategy):
    """Lets `model.fit` run under `strategy`; returns `model`.

    Keras 3.15's `fit` under MultiWorkerMirroredStrategy first all-reduces one
    input batch to build the model, which fails for (x, y) tuples and dict
    inputs ("Attempt to convert a value ... PerReplica", keras-team/keras#20329).
    For that strategy the build uses this worker's local batch instead: only
    its shapes and dtypes matter. Other strategies are left alone.
    `tfft.build_model(..., strategy=...)` calls this.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return model

    def build_from_local_batch(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(_local_value, next(it))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    # Set on the instance, past Keras's attribute tracking: it is not model state.
    object.__setattr__(model, "_maybe_symbolic_build",
                       types.MethodType(build_from_local_batch, model))
    return model


def _local_value(value):
    if isinstance(value, tf.distribute.DistributedValues):
        return value.values[0]
    return value


def _tf_variable(weight):
    # A Keras 3 variable holds its tf.Variable (a distributed one under a strategy).
    value = getattr(weight, "_value", None)
    return value if value is not None else weight


__all__ = [
    "KerasMultiWorkerMirroredStrategy",
    "STRATEGY_NAMES",
    "StrategyError",
    "check_built_in_scope",
    "chief_only_path",
    "chief_writes",
    "detect_tpu",
    "discard_worker_path",
    "distribute_dataset",
    "get_strategy",
    "global_batch_size",
    "is_chief",
    "num_replicas",
    "parse_tf_config",
    "per_replica_batch_size",
    "prepare_model",
    "scale_learning_rate",
    "task_info",
]
