"""Flags the benchmark scripts share: `--distribution`, mixed precision and XLA.

`--distribution` takes tfft's strategy names (`tfft.distribute.STRATEGY_NAMES`:
auto, tpu, mirrored, multi_worker, gpu, cpu, default). Mixed precision
(`mixed_float16` on GPU, `mixed_bfloat16` on TPU and CPU) is on by default on
GPUs, TPUs and CPUs that compute bfloat16 in hardware
(`tfft.training.presets.cpu_has_native_bfloat16`: AVX512-BF16 or AMX; on this
machine's AMD EPYC a MiniLM training step took 0.34 s instead of 0.48 s), and
off on other CPUs, where bfloat16 is emulated. XLA (`jit_compile`) is on by
default on GPUs and TPUs and off on the CPU, where it does not pay off (it
slowed MiniLM training on this 2-core CPU, and recompiles for every new
batch shape). `--mixed-precision on|off` and `--xla on|off` override the
defaults.
"""

import json

import keras
import tensorflow as tf

from tfft.distribute import STRATEGY_NAMES, get_strategy
from tfft.training.presets import cpu_has_native_bfloat16


def add_distribution_args(parser):
    parser.add_argument("--distribution", default="auto", choices=STRATEGY_NAMES,
                        help="tfft strategy name (tfft.get_strategy). Defaults to auto.")
    parser.add_argument("--mixed-precision", default="auto", choices=("auto", "on", "off"),
                        help="auto: on for GPU/TPU and for CPUs with native bfloat16.")
    parser.add_argument("--xla", default="auto", choices=("auto", "on", "off"),
                        help="jit_compile; auto: on for GPU/TPU, off on CPU.")


def add_fused_ops_arg(parser):
    parser.add_argument("--fused-ops", choices=("auto", "on", "off"), default="auto",
                        help="Task.fused_ops on tfft's side: auto (tfft's GELU / layer-norm "
                        "gradients on CPUs), on, or off (Keras' own, as before).")


def fused_ops_setting(choice):
    """`Task.fused_ops` for a `--fused-ops` choice: None (auto), True or False."""
    return None if choice == "auto" else choice == "on"


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
    if args.mixed_precision == "auto":
        mixed = on_accelerator or cpu_has_native_bfloat16()
    else:
        mixed = args.mixed_precision == "on"
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


def read_json_line(process):
    """The next line a child benchmark process prints that is a JSON object.

    Other lines (library logs) are skipped; a process that ended raises.
    """
    while True:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"The peer process ended (exit code {process.wait()}).")
        if line.startswith("{"):
            return json.loads(line)
