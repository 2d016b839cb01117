"""Discriminative (layer-wise) learning rates for Keras 3 optimizers.

Keras has no per-layer learning rates (keras-team/keras#11934). fastai's
`slice(lo, hi)` and ELECTRA-style layer-wise decay train the head at the full
rate and each backbone block below it at `decay` times the rate of the block
above. `LayerwiseOptimizer` wraps any Keras optimizer: it groups the variables
by multiplier and gives each group its own copy of the optimizer, whose
learning rate is the wrapper's rate (or schedule value) times the multiplier.

Scaling the *update* (the learning rate) is what makes this right for every
optimizer. Scaling gradients is not: Adam divides by the gradient's running
RMS, so a scaled gradient gives the same step.

Each group keeps its own iteration count, so Adam's bias correction starts
when a group first trains (as in PyTorch's per-parameter state). This matters
for gradual unfreezing: with one shared Keras Adam, a block opened at global
step t starts from zero moments but with step-t bias correction, so its first
steps are up to ~3x ((1 - beta_1) / sqrt(1 - beta_2)) larger than a fresh
Adam's late in training and smaller early on. `layerwise_lr` groups by block,
so every block gets its own clock even with `decay=1.0`.

Example:

>>> model = tfft.build_model(backbone, num_classes=5, freeze="full", compile=False)
>>> optimizer = tfft.layerwise_lr(model, 5e-5, decay=0.8, optimizer="adamw")
>>> model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
"""

from __future__ import annotations

import functools
import json
from typing import Any

import keras

from tfft._compat import (
    optimizer_built_variables,
    optimizer_variable_key,
    track_optimizer_variable,
)
from tfft.adapt.freeze import find_backbone_layer
from tfft.utils.walk import walk_layers


def block_depths(model):
    """Depth of every variable below the head: `{variable.path: depth}`.

    The top block has depth 1, the block below depth 2, and so on; layers
    below the first block (embeddings, stem) get depth `len(blocks) + 1`;
    backbone layers above the top block (e.g. a final norm) belong to the top
    block. Everything outside the backbone (pooling, head) has depth 0.
    Blocks are found inside nested models (the offline EfficientNet-Lite0)
    and inside the layers that hold them (KerasHub ViT's and DINOv2's
    encoders); a weight takes the depth of its innermost block.

    Args:
        model: keras.Model. Built by `tfft.build_model`; its backbone must
            declare blocks.
    """
    backbone = find_backbone_layer(model)
    blocks = backbone.block_names
    inner = backbone.backbone
    if not blocks:
        raise ValueError(
            f"The backbone {inner.name!r} declares no blocks, so layer-wise learning rates "
            "have no depth to follow. Pass block_names when loading it "
            "(tfft.load_backbone(model, block_names=[...]))."
        )
    block_of = {}
    for index, entry in enumerate(blocks):
        for name in [entry] if isinstance(entry, str) else entry:
            block_of[name] = index
    # Units in order, looking inside nested models and inside the layers that hold
    # blocks (KerasHub ViT's encoder keeps them in a list); parents come before
    # their children, so a weight ends with the depth of its innermost unit, not
    # that of the encoder holding the blocks.
    units = list(walk_layers(inner, nested=False, include_root=False, reach=block_of))
    # First position of each block among the units.
    starts = {}
    for position, layer in enumerate(units):
        if layer.name in block_of:
            starts.setdefault(block_of[layer.name], position)
    starts = sorted((position, block) for block, position in starts.items())
    depths = {w.path: 0 for w in model.weights}
    for position, layer in enumerate(units):
        if layer.name in block_of:
            block = block_of[layer.name]
        else:
            below = [i for start, i in starts if start <= position]
            block = below[-1] if below else -1
        for w in layer.weights:
            depths[w.path] = len(blocks) - block
    return depths


def layerwise_multipliers(model: keras.Model, decay: float = 0.8) -> dict[str, float]:
    """Learning-rate multipliers per variable: head 1.0, then `decay**depth` down the backbone.

    See `block_depths` for the depths: the top block gets `decay`, the one
    below `decay**2`, ..., the embeddings or stem `decay**(len(blocks) + 1)`.

    Args:
        model: keras.Model. Built by `tfft.build_model`; its backbone must
            declare blocks.
        decay: float in (0, 1]. Factor per block. Defaults to 0.8.

    Returns:
        dict `{variable.path: multiplier}` over all of `model.weights`.
    """
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
        raise ValueError(f"decay must be a number in (0, 1]. Received: decay={decay!r}")
    return {path: float(decay) ** depth for path, depth in block_depths(model).items()}


def layerwise_lr(model: keras.Model, base_lr: float, decay: float = 0.8,
                optimizer: str | keras.optimizers.Optimizer = "adam",
                **optimizer_kwargs: Any) -> LayerwiseOptimizer:
    """An optimizer with layer-wise learning rates for a tfft model.

    Args:
        model: keras.Model. Built by `tfft.build_model`.
        base_lr: float or `LearningRateSchedule`. The head's learning rate.
        decay: float in (0, 1]. Factor per backbone block. Defaults to 0.8.
            With 1.0 every block trains at `base_lr` but still keeps its own
            optimizer clock (see `LayerwiseOptimizer`), which is what gradual
            unfreezing with Adam wants.
        optimizer: str. A Keras optimizer name (`"adam"`, `"adamw"`, `"sgd"`
            ...). Defaults to `"adam"`.
        **optimizer_kwargs: passed to the optimizer (`weight_decay`,
            `momentum`, `clipnorm` ...).

    Returns:
        A `LayerwiseOptimizer` for `model.compile(optimizer=...)`.

    Example:

    >>> opt = tfft.layerwise_lr(model, 1e-3, decay=0.5, optimizer="sgd")
    >>> model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    """
    if not isinstance(optimizer, str):
        raise TypeError(
            "layerwise_lr takes an optimizer name such as 'adam', 'adamw' or 'sgd'; to wrap "
            "an optimizer object use LayerwiseOptimizer(optimizer, multipliers). "
            f"Received: optimizer={type(optimizer).__name__}"
        )
    try:
        inner = keras.optimizers.get(
            {"class_name": optimizer, "config": {"learning_rate": base_lr, **optimizer_kwargs}}
        )
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"Could not make the optimizer {optimizer!r} with learning_rate={base_lr!r} and "
            f"{optimizer_kwargs}: {error}"
        ) from None
    multipliers = layerwise_multipliers(model, decay)
    return LayerwiseOptimizer(inner, multipliers, groups=block_depths(model))


def _scaled_rate(wrapper, factor):
    return wrapper.learning_rate * factor


class _Groups:
    """Plain holder for the per-group optimizers.

    Keras' saver walks an optimizer's attributes and would save lists of
    optimizers a second time; their variables are tracked by the wrapper.
    """

    def __init__(self):
        self.optimizers = []
        self.index = {}


@keras.saving.register_keras_serializable(package="tfft")
class LayerwiseOptimizer(keras.optimizers.Optimizer):
    """Wraps a Keras optimizer so that each variable trains at its own rate.

    Variables are grouped by multiplier (and by `groups` key); each group
    gets a copy of `optimizer` (same class and options) whose learning rate
    is the base rate times the group's multiplier. Works with `model.compile`, `fit`,
    `.keras` save and reload (with or without the optimizer state), and the
    TensorFlow backend's train step.

    Args:
        optimizer: keras.optimizers.Optimizer, str or dict. The template; its
            learning rate (float or schedule) is the base rate. Must not be
            built yet.
        multipliers: dict. `{variable.path: multiplier}`, e.g. from
            `layerwise_multipliers(model, decay)`.
        default_multiplier: float. For variables not in `multipliers`.
            Defaults to 1.0.
        groups: dict. `{variable.path: key}`: variables with different keys
            get separate optimizers (and clocks) even at the same rate, e.g.
            `block_depths(model)`. Defaults to None (group by multiplier).
        name: str. Defaults to `"layerwise"`.

    Each group's rate is the wrapper's `learning_rate` times its multiplier,
    read at every step: a schedule runs on the wrapper's step count (so warmup
    and decay are global), and setting `learning_rate` (e.g. from
    `ReduceLROnPlateau`) moves every group. Each group keeps its own step
    count for the rest (Adam's bias correction). Gradient clipping
    (`clipnorm`, `global_clipnorm`) applies within each group.
    """

    def __init__(self, optimizer, multipliers=None, default_multiplier=1.0, groups=None,
                 name="layerwise", **kwargs):
        template = keras.optimizers.get(optimizer)
        if isinstance(template, LayerwiseOptimizer):
            raise TypeError("LayerwiseOptimizer cannot wrap another LayerwiseOptimizer.")
        if template.built:
            raise ValueError(
                "LayerwiseOptimizer needs an optimizer that is not built yet (it makes one "
                f"copy per group). Received a built {type(template).__name__}."
            )
        multipliers = dict(multipliers or {})
        for path, value in [*list(multipliers.items()), ("default", default_multiplier)]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(
                    "Learning-rate multipliers must be non-negative numbers. "
                    f"Received: {path!r}: {value!r}"
                )
        if kwargs:
            raise TypeError(
                "LayerwiseOptimizer takes its options from the wrapped optimizer (pass "
                f"clipnorm, weight_decay ... there). Received: {sorted(kwargs)}"
            )
        serialized = keras.optimizers.serialize(template)
        rate = serialized["config"]["learning_rate"]
        rate = (keras.optimizers.schedules.deserialize(rate) if isinstance(rate, dict)
                else float(rate))
        super().__init__(learning_rate=rate, name=name)
        # A JSON string: TF wraps dict attributes, which then cannot be copied in a graph.
        self._template = json.dumps(serialized)
        self.multipliers = {str(k): float(v) for k, v in multipliers.items()}
        self.default_multiplier = float(default_multiplier)
        self.groups = {str(k): v for k, v in (groups or {}).items()}
        self._groups = _Groups()

    def multiplier(self, variable):
        """The learning-rate multiplier of `variable`."""
        return self.multipliers.get(variable.path, self.default_multiplier)

    def group_optimizers(self):
        """`[(multiplier, optimizer), ...]` once built.

        A method, not a property: Keras' saver walks properties and would save
        the groups a second time.
        """
        return list(self._groups.optimizers)

    def _make_group(self, index, factor):
        config = json.loads(self._template)
        config["config"]["learning_rate"] = 1.0  # replaced below
        config["config"]["name"] = f"{self.name}_group{index}"
        optimizer = keras.optimizers.deserialize(config)
        # The group's rate follows the wrapper's rate (and the wrapper's step for
        # schedules): warmup and decay stay global, bias correction is per group.
        optimizer.learning_rate = functools.partial(_scaled_rate, self, factor)
        return optimizer

    def build(self, variables):
        if self.built:
            return
        by_key = {}
        for variable in variables:
            key = (self.groups.get(variable.path), self.multiplier(variable))
            by_key.setdefault(key, []).append(variable)
        groups = _Groups()
        for index, ((_, factor), members) in enumerate(by_key.items()):
            optimizer = self._make_group(index, factor)
            optimizer.build(members)
            for v in optimizer.variables:
                track_optimizer_variable(self, v)
            groups.optimizers.append((factor, optimizer))
            for v in members:
                groups.index[optimizer_variable_key(self, v)] = index
        self._groups = groups
        super().build(variables)

    def apply(self, grads, trainable_variables=None):
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "LayerwiseOptimizer.apply needs trainable_variables before it is built."
                )
            trainable_variables = optimizer_built_variables(self)
        trainable_variables = list(trainable_variables)
        grads = list(grads)
        if not grads:
            return
        if not self.built:
            self.build(trainable_variables)
        self._check_variables_are_known(trainable_variables)
        per_group = [([], []) for _ in self._groups.optimizers]
        for grad, variable in zip(grads, trainable_variables, strict=True):
            index = self._groups.index[optimizer_variable_key(self, variable)]
            per_group[index][0].append(grad)
            per_group[index][1].append(variable)
        groups = zip(self._groups.optimizers, per_group, strict=True)
        for (_, optimizer), (group_grads, group_vars) in groups:
            if group_vars:
                optimizer.apply(group_grads, group_vars)
        self.iterations.assign_add(1)

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": json.loads(self._template),
            "multipliers": dict(self.multipliers),
            "default_multiplier": self.default_multiplier,
            "groups": dict(self.groups),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)
