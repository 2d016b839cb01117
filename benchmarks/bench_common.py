"""Flags the benchmark scripts share: `--distribution`, mixed precision and XLA.

`--distribution` takes tfft's strategy names (`tfft.distribute.STRATEGY_NAMES`:
auto, tpu, mirrored, multi_worker, gpu, cpu, default). Mixed precision
(`mixed_float16` on GPU, `mixed_bfloat16` on TPU) and XLA (`jit_compile`)
are on by default where the chosen strategy runs on a GPU or TPU and off on
the CPU, where neither pays off (measured: XLA slowed MiniLM on this 2-core
CPU); `--mixed-precision on|off` and `--xla on|off` override the default.
"""

import keras
import tensorflow as tf

from tfft.distribute import STRATEGY_NAMES, get_strategy


def add_distribution_args(parser):
    parser.add_argument("--distribution", default="auto", choices=STRATEGY_NAMES,
                        help="tfft strategy name (tfft.get_strategy). Defaults to auto.")
    parser.add_argument("--mixed-precision", default="auto", choices=("auto", "on", "off"),
                        help="auto: on for GPU/TPU, off on CPU.")
    parser.add_argument("--xla", default="auto", choices=("auto", "on", "off"),
                        help="jit_compile; auto: on for GPU/TPU, off on CPU.")


def _accelerator(strategy):
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: whatever TensorFlow places on
        return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
    kinds = {(tf.DeviceSpec.from_string(d).device_type or "").upper() for d in devices}
    return "gpu" if "GPU" in kinds else "cpu"


def setup_distribution(args):
    """Returns `(strategy, settings)`; sets the mixed-precision policy.

    `settings` is a JSON-ready dict (device, replicas, mixed_precision,
    jit_compile) that the benchmark prints with its figures.
    """
    strategy = get_strategy(args.distribution, verbose=False)
    device = _accelerator(strategy)
    on_accelerator = device != "cpu"
    mixed = on_accelerator if args.mixed_precision == "auto" else args.mixed_precision == "on"
    xla = on_accelerator if args.xla == "auto" else args.xla == "on"
    if mixed:
        keras.mixed_precision.set_global_policy(
            "mixed_bfloat16" if device in ("tpu", "cpu") else "mixed_float16"
        )
    return strategy, {
        "device": device,
        "distribution": args.distribution,
        "replicas": int(strategy.num_replicas_in_sync),
        "mixed_precision": bool(mixed),
        "jit_compile": bool(xla),
    }
