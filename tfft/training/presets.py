"""Named compile presets: plain dicts with a description, listable and overridable.

A preset is the optimizer half (per backbone family or stage) and the task half
(loss and metrics) of `model.compile`. `compile_model(model, preset="auto",
task=...)` picks both from the task and the backbone, like KerasHub's
`compile(optimizer="auto")`.
"""

from __future__ import annotations

import copy
import os
import weakref
from typing import Any

import keras

from tfft.training.optimizers import FusedAdamW
from tfft.utils.walk import walk_layers

OPTIMIZER_PRESETS = {
    "transformer": {
        "description": "AdamW with linear warmup (10% of steps) and linear decay, for "
        "fine-tuning transformer backbones",
        "optimizer": "adamw",
        "learning_rate": 5e-5,
        "weight_decay": 0.01,
        "warmup_ratio": 0.1,
        "schedule": "linear",
        "clipnorm": 1.0,
    },
    "head": {
        "description": "Adam at 1e-3, for training a new head on a frozen backbone",
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "schedule": "constant",
    },
    "cnn": {
        "description": "SGD with Nesterov momentum 0.9 at 1e-2 and cosine decay, for "
        "fine-tuning CNNs with BatchNormalization (ResNet, MobileNet, EfficientNet)",
        "optimizer": "sgd",
        "learning_rate": 1e-2,
        "momentum": 0.9,
        "schedule": "cosine",
    },
    "plain_cnn": {
        "description": "Adam at 1e-4 and cosine decay, for fine-tuning CNNs without "
        "BatchNormalization (VGG-style), which SGD at 1e-2 makes diverge",
        "optimizer": "adam",
        "learning_rate": 1e-4,
        "schedule": "cosine",
    },
}

TASK_PRESETS = {
    "binary": {
        "description": "Binary cross-entropy on one sigmoid unit; accuracy, precision, "
        "recall, AUC",
        "loss": "binary_crossentropy",
        "metrics": ["binary_accuracy", "precision", "recall", "auc"],
    },
    "multiclass": {
        "description": "Sparse categorical cross-entropy on integer labels; accuracy",
        "loss": "sparse_categorical_crossentropy",
        "metrics": ["sparse_categorical_accuracy"],
    },
    "multilabel": {
        "description": "Binary cross-entropy per label; binary accuracy, AUC, macro F1",
        "loss": "binary_crossentropy",
        "metrics": ["binary_accuracy", "auc_multilabel", "f1_macro"],
    },
    "regression": {
        "description": "Mean squared error; MAE and RMSE",
        "loss": "mean_squared_error",
        "metrics": ["mean_absolute_error", "root_mean_squared_error"],
    },
    "token_classification": {
        "description": "Sparse categorical cross-entropy per token; accuracy",
        "loss": "sparse_categorical_crossentropy",
        "metrics": ["sparse_categorical_accuracy"],
    },
}

MIXED_PRECISION = ("auto", "mixed_bfloat16", "mixed_float16", "float32", None)


def list_presets() -> dict[str, str]:
    """Returns `{name: description}` for every optimizer and task preset."""
    return {
        **{f"optimizer:{k}": v["description"] for k, v in OPTIMIZER_PRESETS.items()},
        **{f"task:{k}": v["description"] for k, v in TASK_PRESETS.items()},
    }


def get_preset(name: str, **overrides: Any) -> dict[str, Any]:
    """Returns a copy of the optimizer preset `name` with `overrides` applied."""
    if name not in OPTIMIZER_PRESETS:
        raise ValueError(
            f"Unknown compile preset. Expected one of {[*sorted(OPTIMIZER_PRESETS), 'auto']}. "
            f"Received: preset={name!r}"
        )
    preset = copy.deepcopy(OPTIMIZER_PRESETS[name])
    unknown = set(overrides) - set(preset) - {"total_steps", "jit_compile"}
    if unknown:
        raise ValueError(
            f"Unknown preset option(s) {sorted(unknown)} for preset {name!r}. Valid options: "
            f"{sorted(set(preset) - {'description'})}"
        )
    preset.update(overrides)
    return preset


def resolve_preset(
    preset: str | None,
    family: str = "transformer",
    backbone_trainable: bool = True,
    batch_norm: bool = True,
) -> str:
    """Maps `"auto"` to an optimizer preset name; other names pass through.

    `"auto"` is `"head"` when nothing in the backbone trains; else
    `"transformer"` for transformers; for CNNs `"cnn"` (SGD at 1e-2) when the
    backbone has BatchNormalization layers, `"plain_cnn"` (Adam at 1e-4)
    when it has none: without per-layer normalisation, SGD with momentum at
    1e-2 can blow a VGG-style network's loss up within an epoch.

    Args:
        preset: str or None. A preset name, or `"auto"`/None.
        family: str. `"transformer"` or `"cnn"`. Defaults to `"transformer"`.
        backbone_trainable: bool. Whether any backbone weight trains.
            Defaults to True.
        batch_norm: bool. Whether the backbone has BatchNormalization layers
            (`has_batch_norm`). Defaults to True.
    """
    if preset in (None, "auto"):
        if not backbone_trainable:
            return "head"
        if family != "cnn":
            return "transformer"
        return "cnn" if batch_norm else "plain_cnn"
    return preset


def has_batch_norm(layer: keras.layers.Layer | None) -> bool:
    """Whether `layer` (a backbone) holds a `keras.layers.BatchNormalization` at any depth.

    Layers inside a TF-Hub SavedModel are not Keras layers and do not count,
    so such a CNN gets the cautious `"plain_cnn"` preset from `"auto"`.
    """
    if layer is None:
        return False
    return any(isinstance(sub, keras.layers.BatchNormalization) for sub in walk_layers(layer))


# The resolved preset each optimizer was built from, so a callback can name it in
# messages; weak keys, so a dropped optimizer is not kept alive.
_PRESET_OF_OPTIMIZER = weakref.WeakKeyDictionary()


def record_preset(optimizer: keras.optimizers.Optimizer, preset: dict[str, Any]) -> None:
    """Remembers that `optimizer` was built from the resolved `preset` (see `preset_of`)."""
    _PRESET_OF_OPTIMIZER[optimizer] = dict(preset)


def preset_of(optimizer: keras.optimizers.Optimizer | None) -> dict[str, Any] | None:
    """The resolved preset dict (with its `"name"`) `optimizer` was compiled from, or None.

    Set by `compile_model` and `fine_tune`; None for an optimizer built by hand.
    """
    if optimizer is None:
        return None
    try:
        return _PRESET_OF_OPTIMIZER.get(optimizer)
    except TypeError:  # not weak-referenceable: never recorded
        return None


def make_optimizer(
    preset: dict[str, Any], total_steps: int | None = None
) -> keras.optimizers.Optimizer:
    """Builds the Keras optimizer a preset dict describes."""
    lr = preset["learning_rate"]
    schedule = preset.get("schedule", "constant")
    if total_steps and schedule == "linear":
        warmup = int(preset.get("warmup_ratio", 0.0) * total_steps)
        lr = keras.optimizers.schedules.PolynomialDecay(
            initial_learning_rate=lr, decay_steps=max(total_steps - warmup, 1),
            end_learning_rate=0.0, power=1.0,
        )
        if warmup:
            lr = _WarmUp(lr, warmup, preset["learning_rate"])
    elif total_steps and schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=total_steps)
    kind = preset["optimizer"]
    clip = {"clipnorm": preset["clipnorm"]} if preset.get("clipnorm") else {}
    if kind == "adamw":
        # Keras' AdamW math in a training graph half the size (faster first step).
        return FusedAdamW(lr, weight_decay=preset.get("weight_decay", 0.01), **clip)
    if kind == "adam":
        return keras.optimizers.Adam(lr, **clip)
    if kind == "sgd":
        return keras.optimizers.SGD(lr, momentum=preset.get("momentum", 0.0), nesterov=True,
                                    **clip)
    raise ValueError(
        f"Unknown optimizer in preset. Expected 'adamw', 'adam' or 'sgd'. Received: {kind!r}"
    )


@keras.saving.register_keras_serializable(package="tfft")
class _WarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `peak`, then `after` (Keras has no warmup wrapper)."""

    def __init__(self, after, warmup_steps, peak):
        self.after = after
        self.warmup_steps = warmup_steps
        self.peak = peak

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.peak * (step + 1.0) / float(self.warmup_steps)
        return keras.ops.where(step < self.warmup_steps, warm,
                               self.after(step - self.warmup_steps))

    def get_config(self):
        return {
            "after": keras.saving.serialize_keras_object(self.after),
            "warmup_steps": self.warmup_steps,
            "peak": self.peak,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["after"] = keras.saving.deserialize_keras_object(config["after"])
        return cls(**config)


def task_metrics(task, num_classes=None):
    """Keras metric objects for a task (F1 and AUC configured for it)."""
    names = TASK_PRESETS[task]["metrics"]
    metrics = []
    for name in names:
        if name == "precision":
            metrics.append(keras.metrics.Precision(name="precision"))
        elif name == "recall":
            metrics.append(keras.metrics.Recall(name="recall"))
        elif name == "auc":
            metrics.append(keras.metrics.AUC(name="auc"))
        elif name == "auc_multilabel":
            metrics.append(keras.metrics.AUC(multi_label=True, num_labels=num_classes,
                                             name="auc"))
        elif name == "f1_macro":
            metrics.append(keras.metrics.F1Score(average="macro", threshold=0.5, name="f1"))
        elif name == "root_mean_squared_error":
            metrics.append(keras.metrics.RootMeanSquaredError(name="rmse"))
        else:
            metrics.append(name)
    return metrics


def compile_model(
    model: keras.Model,
    preset: str = "auto",
    task: str = "multiclass",
    family: str = "transformer",
    total_steps: int | None = None,
    jit_compile: bool | str = "auto",
    num_classes: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Compiles `model` with a named preset.

    Args:
        model: keras.Model.
        preset: str. An optimizer preset name (`list_presets()`) or `"auto"`:
            `"head"` when nothing in the backbone trains, else the backbone
            family's preset (`"transformer"`; `"cnn"` for a CNN with
            BatchNormalization, `"plain_cnn"` for one without).
        task: str. Picks the loss and metrics.
        family: str. `"transformer"` or `"cnn"`, used by `"auto"`.
        total_steps: int. Training steps, for warmup and decay schedules.
        jit_compile: bool or `"auto"`. XLA compilation.
        **overrides: preset options, e.g. `learning_rate=1e-4`.

    Returns:
        The resolved preset dict.
    """
    if task not in TASK_PRESETS:
        raise ValueError(
            f"Unknown task. Expected one of {sorted(TASK_PRESETS)}. Received: task={task!r}"
        )
    backbone = _find_backbone(model)
    trainable_backbone = backbone is not None and any(
        w.trainable for w in backbone.weights
    )
    policy = getattr(model, "freeze_policy", None)
    if getattr(policy, "name", None) == "gradual":
        # Frozen now, but the schedule will open the backbone's blocks: a head-sized
        # learning rate would make them diverge once they train.
        trainable_backbone = True
    name = resolve_preset(preset, family, trainable_backbone, has_batch_norm(backbone))
    resolved = get_preset(name, **overrides)
    resolved["name"] = name
    optimizer = make_optimizer(resolved, total_steps)
    record_preset(optimizer, resolved)
    model.compile(
        optimizer=optimizer,
        loss=TASK_PRESETS[task]["loss"],
        metrics=task_metrics(task, num_classes),
        jit_compile=resolved.get("jit_compile", jit_compile),
    )
    return resolved


def _find_backbone(model):
    for layer in getattr(model, "layers", []):
        if layer.name == "backbone":
            return layer
    return None


def cpu_has_native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16).

    Reads the Linux CPU flags; False where they cannot be read. Without these
    instructions bfloat16 is emulated and slower than float32.

    Args:
        cpuinfo: str. Path of the CPU description. Defaults to `/proc/cpuinfo`.
    """
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[-1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return False
    return False


def _on_tpu(tf) -> bool:
    """A TPU is attached or named (before the TPU system starts, it lists no devices)."""
    return bool(tf.config.list_logical_devices("TPU") or tf.config.list_physical_devices("TPU")
                or os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"))


def set_mixed_precision(mode: str | None = "auto") -> str:
    """Sets Keras' global dtype policy before a model is built.

    Args:
        mode: str. `"auto"` (`mixed_float16` on a GPU, `mixed_bfloat16` on a
            TPU or on a CPU with native bfloat16 (`cpu_has_native_bfloat16`),
            `float32` on other CPUs), `"mixed_bfloat16"`, `"mixed_float16"`,
            `"float32"`.

    Returns:
        The policy name set.
    """
    if mode not in MIXED_PRECISION:
        raise ValueError(
            f"Unknown mixed precision mode. Expected one of {list(MIXED_PRECISION)}. "
            f"Received: {mode!r}"
        )
    if mode == "auto":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            mode = "mixed_float16"
        elif _on_tpu(tf) or cpu_has_native_bfloat16():
            mode = "mixed_bfloat16"
        else:
            mode = "float32"
    keras.mixed_precision.set_global_policy(mode or "float32")
    return mode or "float32"
