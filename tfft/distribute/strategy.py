"""Choosing the strategy: one call picks TPU, several GPUs, many workers or one device.

Everything here is `tf.distribute`: `get_strategy()` returns a real
`tf.distribute.Strategy` (TPUStrategy, MirroredStrategy,
MultiWorkerMirroredStrategy, OneDeviceStrategy or the default strategy).
Keras 3 on TensorFlow does the rest: a model built under `strategy.scope()`
(`tfft.build_model(..., strategy=strategy)`) trains with `model.fit` on every
replica, and `fit` splits each global batch across them.

The rest of `tfft.distribute` covers what the recipe needs around it:
`cluster` (a validated `TF_CONFIG`, the "only the chief writes" rule),
`batching` (global batch size, learning-rate scaling, sharding `tf.data`) and
`model` (building a model under a strategy).

Example:

>>> strategy = tfft.get_strategy()            # TPU, GPUs or CPU, whatever is here
>>> model = tfft.build_model("minilm", num_classes=5, strategy=strategy)
>>> batch = tfft.global_batch_size(32, strategy)
"""

from __future__ import annotations

import glob
import importlib.util
import os
import threading

import tensorflow as tf

from tfft.distribute.cluster import parse_tf_config, training_tasks
from tfft.distribute.errors import StrategyError
from tfft.utils.checks import check_positive_number

STRATEGY_NAMES = ("auto", "tpu", "mirrored", "multi_worker", "gpu", "cpu", "default")
TPU_INIT_TIMEOUT = 300.0

# initialize_tpu_system wipes the TPU's memory and collectives are configured at
# start-up: TPU and multi-worker strategies are made once per process.
_STRATEGIES = {}


def _log(verbose, message):
    if verbose:
        print(f"tfft strategy: {message}", flush=True)


def detect_tpu() -> tuple[str | bool | None, str]:
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


def get_strategy(
    name: str = "auto",
    tpu: str | None = None,
    devices: list[str] | None = None,
    verbose: bool = True,
    timeout: float = TPU_INIT_TIMEOUT,
) -> tf.distribute.Strategy:
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
    check_positive_number("timeout", timeout, error=StrategyError)
    # A malformed TF_CONFIG fails here, before any device or collective is touched.
    config = parse_tf_config()
    tasks = training_tasks(config)

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
        strategy = KerasMirroredStrategy(devices=list(devices) if devices else None)
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


class _KerasReduce:
    """`reduce` for what Keras 3 `fit` sends to a mirrored strategy.

    Keras 3.15 averages each replica's scalar logs (loss, metrics) with
    `strategy.reduce("MEAN", value, axis=0)`, which a rank-0 value cannot take
    ("Invalid reduction dimension 0 for input with 0 dimensions"), may pass
    nested structures, and, before the first step on several local devices,
    averages the first input batch to learn its shapes, where a `bool` input
    (a KerasHub padding mask) fails ("Value for attr 'T' of bool ... AddN").
    Here a scalar is reduced across replicas only (the same mean), structures
    are reduced leaf by leaf, and a bool value is reduced as int32 and cast
    back. Everything else is the tf.distribute strategy unchanged.
    """

    def reduce(self, reduce_op, value, axis=None):
        if not isinstance(value, tf.distribute.DistributedValues) and tf.nest.is_nested(value):
            return tf.nest.map_structure(lambda v: self.reduce(reduce_op, v, axis), value)
        if axis is not None and _rank(value) == 0:
            axis = None
        if _dtype(value) == tf.bool:
            as_int = self.run(lambda t: tf.cast(t, tf.int32), args=(value,))
            return tf.cast(super().reduce(reduce_op, as_int, axis), tf.bool)
        return super().reduce(reduce_op, value, axis)


class KerasMirroredStrategy(_KerasReduce, tf.distribute.MirroredStrategy):
    """MirroredStrategy (several devices of one machine) whose `reduce` handles
    what Keras 3 `fit` sends (see `KerasMultiWorkerMirroredStrategy`)."""


class KerasMultiWorkerMirroredStrategy(_KerasReduce, tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose `reduce` handles what Keras 3 `fit` sends.

    Keras 3.15 averages each replica's scalar logs (loss, metrics) with
    `strategy.reduce("MEAN", value, axis=0)`, which a rank-0 value cannot take,
    and may pass nested structures or bool inputs; see `_KerasReduce`.
    """


def _dtype(value):
    if isinstance(value, tf.distribute.DistributedValues):
        value = value.values[0]
    return getattr(value, "dtype", None)


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
        return KerasMirroredStrategy(), f"{len(gpus)} GPUs"
    why = "one GPU" if gpus else f"no TPU ({reason}), no GPU"
    return tf.distribute.get_strategy(), why

