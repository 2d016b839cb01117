"""LoRA on a tfft model's backbone with Keras' own `enable_lora`, and merging for export.

`LoRA(rank=8)` (string form `"lora:8"`) freezes the whole backbone and adds
low-rank adapters (`layer.enable_lora(rank)`, Keras 3's built-in LoRA) to its
Dense and EinsumDense layers; only the adapters and the task head train.
`merge_lora(model)` returns a copy with plain kernels (kernel + A @ B *
alpha / rank) that computes the same outputs, for export and serving.

A `.keras` save stores merged kernels (Keras merges on save), so a reload
gives the same outputs. Layers whose config carries `lora_rank` (Dense and
EinsumDense in functional or Sequential backbones) come back with zero
adapters; KerasHub backbones rebuild their layers from their own config and
come back plain. Applying `"lora:R"` again re-arms zero adapters so training
can go on.
"""

from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np

from tfft._compat import dense_kernel_variable
from tfft.adapt.freeze import (
    FreezePolicy,
    _set_all,
    _set_head_trainable,
    find_backbone_layer,
    register_policy,
)
from tfft.utils.walk import walk_layers

LORA_LAYER_TYPES = (keras.layers.Dense, keras.layers.EinsumDense)


@register_policy("lora")
@dataclasses.dataclass(frozen=True)
class LoRA(FreezePolicy):
    """Backbone frozen; LoRA adapters on its Dense/EinsumDense layers and the head train.

    Args:
        rank: int. Rank of the adapters. Defaults to 8.
        alpha: float. Scale numerator: adapters add `A @ B * alpha / rank`.
            Defaults to None (= rank, scale 1).
        target: str. Regex searched in layer paths (e.g.
            `"query|value"`); None targets every Dense/EinsumDense layer of
            the backbone that feeds its output. Defaults to None.

    LoRA changes the backbone's layers in place (Keras has no
    `disable_lora`): build from a freshly loaded backbone to compare policies.

    Example:

    >>> model = tfft.build_model(backbone, num_classes=5, freeze="lora:8")
    """

    rank: int = 8
    alpha: float = None
    target: str = None

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA needs a positive int rank. Received: rank={self.rank!r}")
        if self.alpha is not None and (
            isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float))
            or self.alpha <= 0
        ):
            raise ValueError(f"LoRA alpha must be None or > 0. Received: alpha={self.alpha!r}")
        if self.target is not None:
            try:
                re.compile(self.target)
            except (re.error, TypeError) as error:
                raise ValueError(
                    f"Invalid LoRA target regex: {error}. Received: target={self.target!r}"
                ) from None

    def apply(self, model):
        backbone = find_backbone_layer(model)
        inner = backbone.backbone
        targets = lora_targets(model, self.target)
        if not targets:
            raise ValueError(
                f"No Dense or EinsumDense layer of the backbone {inner.name!r} matches the "
                f"LoRA target {self.target!r}. Layer paths look like "
                f"{[layer.path for layer in _dense_layers(inner)[:3]]}."
            )
        for layer in targets:
            if layer.lora_enabled and layer.lora_rank != self.rank:
                raise ValueError(
                    f"The layer {layer.path!r} already has LoRA of rank {layer.lora_rank}; "
                    f"it cannot change to rank {self.rank}. Merge it first (merge_lora) or "
                    f"use freeze='lora:{layer.lora_rank}'."
                )
        backbone.trainable = True
        _set_all(inner, False)
        for layer in targets:
            if not layer.lora_enabled:
                layer.enable_lora(self.rank, lora_alpha=self.alpha)
            elif not np.any(layer.lora_kernel_a.numpy()) and not np.any(
                    layer.lora_kernel_b.numpy()):
                # A reloaded layer has zero adapters, where no gradient flows.
                layer.lora_kernel_a.assign(
                    keras.initializers.HeUniform()(layer.lora_kernel_a.shape)
                )
            layer.trainable = True
            # `layer.trainable = True` marks all its variables trainable again.
            for variable in layer.trainable_variables:
                if variable is not layer.lora_kernel_a and variable is not layer.lora_kernel_b:
                    variable.trainable = False
        _set_head_trainable(model, True)


def lora_targets(model, target=None):
    """The backbone layers LoRA adapts: Dense/EinsumDense, matching `target`.

    Layers that do not feed the backbone's output (BERT's pooler when the
    head pools the sequence) are left out: they would get no gradient.
    """
    backbone = find_backbone_layer(model)
    inner = backbone.backbone
    unused = backbone.unused_layer_names()
    regex = re.compile(target) if target is not None else None
    layers = []
    for top in inner.layers:
        if top.name in unused:
            continue
        for layer in _dense_layers(top):
            if regex is None or regex.search(layer.path):
                layers.append(layer)
    return layers


def lora_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Every layer of `model` with LoRA enabled."""
    return [layer for layer in _dense_layers(model) if getattr(layer, "lora_enabled", False)]


def has_lora(model: keras.layers.Layer) -> bool:
    """True when any layer of `model` has LoRA enabled."""
    return bool(lora_layers(model))


def merge_lora(model: keras.Model) -> keras.Model:
    """Returns a copy of `model` with LoRA merged into plain kernels.

    Each adapted kernel becomes `kernel + A @ B * alpha / rank`; the copy
    has no adapters and computes the same outputs (float rounding aside). A
    model without LoRA is returned as is. A `tfft.Task` comes back as a
    `tfft.Task` with the same preprocessor, backbone info and class names,
    and no freeze policy (nothing is left to adapt).

    Args:
        model: keras.Model. E.g. built with `freeze="lora:8"` and trained.

    Returns:
        A new keras.Model.

    Example:

    >>> plain = tfft.merge_lora(model)
    >>> tfft.export_saved_model(plain, "export_dir", ...)
    """
    adapted = lora_layers(model)
    if not adapted:
        return model
    merged = {}
    for layer in adapted:
        merged[id(dense_kernel_variable(layer))] = keras.ops.convert_to_numpy(layer.kernel)
    lora_ids = {id(v) for layer in adapted for v in (layer.lora_kernel_a, layer.lora_kernel_b)}
    config = _strip_lora(keras.saving.serialize_keras_object(model))
    if isinstance(config.get("config"), dict) and "freeze_policy" in config["config"]:
        config["config"]["freeze_policy"] = None
    clone = keras.saving.deserialize_keras_object(config)
    if getattr(model, "preprocessor", None) is not None:
        # Share it: a preprocessor rebuilt from its config alone lacks its assets
        # (a tokenizer's vocabulary).
        clone.preprocessor = model.preprocessor
    source = [w for w in model.weights if id(w) not in lora_ids]
    target = clone.weights
    if len(source) != len(target):
        raise ValueError(
            f"merge_lora could not match weights: the model has {len(source)} non-LoRA "
            f"weights, its plain copy {len(target)}."
        )
    for src, dst in zip(source, target, strict=True):
        value = merged.get(id(src))
        if value is None:
            value = src.numpy()
        if tuple(dst.shape) != tuple(value.shape):
            raise ValueError(
                f"merge_lora could not match {src.path!r} {tuple(value.shape)} with "
                f"{dst.path!r} {tuple(dst.shape)}."
            )
        dst.assign(value)
    for layer, original in zip(walk_layers(clone), walk_layers(model), strict=True):
        layer.trainable = original.trainable
    return clone


def _strip_lora(config):
    if isinstance(config, dict):
        out = {k: _strip_lora(v) for k, v in config.items()}
        if out.get("class_name") in ("Dense", "EinsumDense") and isinstance(
                out.get("config"), dict):
            out["config"].pop("lora_rank", None)
            out["config"].pop("lora_alpha", None)
        return out
    if isinstance(config, list):
        return [_strip_lora(v) for v in config]
    return config


def _dense_layers(layer):
    seen, out = set(), []
    for x in walk_layers(layer):
        if isinstance(x, LORA_LAYER_TYPES) and id(x) not in seen:
            seen.add(id(x))
            out.append(x)
    return out
