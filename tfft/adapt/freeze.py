"""Freeze policies on the trainable flags.

Every policy has a string form (`"feature_extraction"`, `"full"`, `"top_k:2"`,
`"regex:PATTERN"`, ...) usable from Python and the CLI, and an object form
with the same options. `apply_freeze(model, policy)` sets the flags on a model
built by `tfft.build_model` (its backbone is the layer named `"backbone"`).

Keras compiles the train step with the trainable variables of the moment:
after changing flags, recompile (`tfft.compile_model`) before `fit`. tfft's
training entry points do that for you.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import keras

from tfft import _compat
from tfft.layers import BackboneLayer
from tfft.utils.walk import leaf_layers, walk_layers


@dataclasses.dataclass(frozen=True)
class FreezePolicy:
    """Base class: a policy sets trainable flags on a built model."""

    name = "base"

    def apply(self, model):
        raise NotImplementedError

    @classmethod
    def string_forms(cls, name):
        """This policy's string forms: the bare name, and `name:FIRST_FIELD` if it has options."""
        fields = dataclasses.fields(cls)
        if not fields:
            return [name]
        return [name, f"{name}:{fields[0].name.upper()}"]

    def to_dict(self):
        return {"policy": self.name, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data):
        """Rebuilds a policy from `to_dict()` output (e.g. a YAML/JSON config).

        Example:

        >>> FreezePolicy.from_dict({"policy": "top_k", "k": 2})
        TopK(k=2)
        """
        if not isinstance(data, dict) or "policy" not in data:
            raise ValueError(
                "A freeze policy dict needs a 'policy' key naming one of "
                f"{sorted(FREEZE_POLICIES)}. Received: {data!r}"
            )
        options = dict(data)
        name = options.pop("policy")
        if name not in FREEZE_POLICIES:
            raise ValueError(
                f"Unknown freeze policy. Expected one of {sorted(FREEZE_POLICIES)}. "
                f"Received: policy={name!r}"
            )
        target = FREEZE_POLICIES[name]
        valid = {f.name for f in dataclasses.fields(target)}
        unknown = set(options) - valid
        if unknown:
            raise ValueError(
                f"Unknown option(s) {sorted(unknown)} for the freeze policy {name!r}. "
                f"Valid options: {sorted(valid)}"
            )
        return target(**options)


FREEZE_POLICIES = {}


def register_policy(name: str) -> Callable[[type], type]:
    """Class decorator: registers a `FreezePolicy` under its string-form name.

    Each adaptation method registers itself (like PEFT's method registry); a
    second registration of the same name is refused, so two methods can never
    shadow each other. The string forms in messages and `--freeze` help come
    from here.

    Example:

    >>> @register_policy("my_policy")
    ... @dataclasses.dataclass(frozen=True)
    ... class MyPolicy(FreezePolicy):
    ...     def apply(self, model): ...
    """
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(
            "A freeze policy name must be lower_snake_case. Received: "
            f"name={name!r}"
        )

    def decorate(cls):
        if not (isinstance(cls, type) and issubclass(cls, FreezePolicy)):
            raise TypeError(f"register_policy needs a FreezePolicy subclass. Received: {cls!r}")
        if name in FREEZE_POLICIES:
            raise ValueError(
                f"A freeze policy named {name!r} is already registered "
                f"({FREEZE_POLICIES[name].__name__}); pick another name."
            )
        cls.name = name
        FREEZE_POLICIES[name] = cls
        return cls

    return decorate


@register_policy("feature_extraction")
@dataclasses.dataclass(frozen=True)
class FeatureExtraction(FreezePolicy):
    """Backbone frozen and called in inference mode; only the head trains."""


    def apply(self, model):
        backbone = find_backbone_layer(model)
        backbone.trainable = False
        _set_head_trainable(model, True)


@register_policy("full")
@dataclasses.dataclass(frozen=True)
class Full(FreezePolicy):
    """Everything trains."""


    def apply(self, model):
        model.trainable = True
        for layer in model.layers:
            layer.trainable = True
        backbone = find_backbone_layer(model)
        backbone.trainable = True
        _set_all(backbone.backbone, True)
        _freeze_unused(backbone)


@register_policy("top_k")
@dataclasses.dataclass(frozen=True)
class TopK(FreezePolicy):
    """Only the top `k` blocks of the backbone (and what sits above them) train.

    A block follows the backbone's own structure: transformer layers for
    KerasHub text models, stages for CNNs, layers for TF Hub models.
    """

    k: int = 2

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 0:
            raise ValueError(f"top_k needs a non-negative int k. Received: k={self.k!r}")

    def apply(self, model):
        backbone = find_backbone_layer(model)
        blocks = backbone.block_names
        if not blocks:
            raise ValueError(
                f"The backbone {backbone.backbone.name!r} declares no blocks, so top_k "
                "cannot choose layers; use freeze='regex:PATTERN' instead."
            )
        if self.k > len(blocks):
            raise ValueError(
                f"top_k asks for {self.k} blocks but the backbone "
                f"{backbone.backbone.name!r} has {len(blocks)}: use k <= {len(blocks)}, "
                "or freeze='full'."
            )
        inner = backbone.backbone
        backbone.trainable = True
        inner.trainable = True
        # Units in order, looking inside nested models (EfficientNet's blocks sit in
        # an inner functional model) and inside the layers that hold blocks (KerasHub
        # ViT's encoder keeps them in a list); a layer with sublayers of its own, such
        # as a transformer block, is one unit.
        block_layers = [n for b in blocks for n in ([b] if isinstance(b, str) else b)]
        units = [layer for layer in walk_layers(inner, nested=False, include_root=False,
                                                reach=block_layers)
                 if not isinstance(layer, keras.Model)]
        names = [layer.name for layer in units]
        unit_ids = {id(layer) for layer in units}
        holders = {id(layer) for layer in units
                   if any(id(sub) in unit_ids for sub in _compat.sublayers(layer))}
        if self.k == 0:
            first = len(names)
        else:
            top = blocks[len(blocks) - self.k:]
            top_names = [n for b in top for n in ([b] if isinstance(b, str) else b)]
            found = [names.index(n) for n in top_names if n in names]
            if not found:
                raise ValueError(
                    f"None of the top blocks {top_names[:3]} is a layer of the backbone "
                    f"{inner.name!r}; its block names do not match its layers."
                )
            first = min(found)
        for index, layer in enumerate(units):
            if id(layer) in holders:
                # Its blocks get their own flags; its own weights sit below them.
                _set_own_weights(layer, index >= first)
            else:
                _set_all(layer, index >= first)
        _freeze_unused(backbone)
        _set_head_trainable(model, True)


@register_policy("top_k_frozen_batch_norm")
@dataclasses.dataclass(frozen=True)
class TopKFrozenBatchNorm(TopK):
    """`top_k`, with every BatchNormalization layer of the backbone kept frozen.

    Keras' transfer-learning recipe: a frozen BatchNorm layer runs in
    inference mode, so fine-tuning the top blocks on small batches of new
    images neither overwrites the pretrained moving statistics nor
    normalises with noisy batch statistics. The job's image stage uses it.
    """

    def apply(self, model):
        super().apply(model)
        for layer in walk_layers(find_backbone_layer(model).backbone):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


@register_policy("regex")
@dataclasses.dataclass(frozen=True)
class Regex(FreezePolicy):
    """Backbone weights whose path matches `pattern` train; others are frozen."""

    pattern: str = ".*"

    def __post_init__(self):
        try:
            re.compile(self.pattern)
        except re.error as error:
            raise ValueError(
                f"Invalid regex for the freeze policy: {error}. Received: "
                f"pattern={self.pattern!r}"
            ) from None

    def apply(self, model):
        backbone = find_backbone_layer(model)
        backbone.trainable = True
        inner = backbone.backbone
        inner.trainable = True
        regex = re.compile(self.pattern)
        matched = 0
        for layer in leaf_layers(inner):
            train = any(regex.search(w.path) for w in layer.weights)
            layer.trainable = train
            matched += train
        if not matched:
            raise ValueError(
                f"The freeze regex {self.pattern!r} matches no backbone weight. Weight paths "
                f"look like {[w.path for w in inner.weights[:3]]}."
            )
        _set_head_trainable(model, True)


def string_forms() -> str:
    """Every registered policy's string forms (`'top_k:K'` ...), read from the registry."""
    forms = []
    for name, cls in FREEZE_POLICIES.items():
        forms.extend(cls.string_forms(name))
    return ", ".join(repr(f) for f in forms)


def parse_freeze(policy: str | FreezePolicy) -> FreezePolicy:
    """Turns a string form or a policy object into a `FreezePolicy`.

    Example:

    >>> parse_freeze("top_k:2")
    TopK(k=2)
    """
    if isinstance(policy, FreezePolicy):
        return policy
    if not isinstance(policy, str):
        raise TypeError(
            f"A freeze policy must be a string ({string_forms()}) or a FreezePolicy. "
            f"Received: {type(policy).__name__}"
        )
    name, _, arg = policy.strip().partition(":")
    if name not in FREEZE_POLICIES:
        raise ValueError(
            f"Unknown freeze policy. Expected one of {sorted(FREEZE_POLICIES)} "
            f"(string forms {string_forms()}). Received: freeze={policy!r}"
        )
    cls = FREEZE_POLICIES[name]
    fields = [f for f in dataclasses.fields(cls)]
    if not arg:
        return cls()
    if not fields:
        raise ValueError(f"The freeze policy {name!r} takes no argument. Received: {policy!r}")
    field = fields[0]
    if field.type in (int, "int"):
        try:
            value = int(arg)
        except ValueError:
            raise ValueError(
                f"The freeze policy {name!r} needs an integer after ':'. "
                f"Received: freeze={policy!r}"
            ) from None
    else:
        value = arg
    return cls(**{field.name: value})


def apply_freeze(model: keras.Model, policy: str | FreezePolicy) -> FreezePolicy:
    """Applies a freeze policy to a `tfft.Task` (or any model with a `BackboneLayer`).

    A task records the policy in `task.freeze_policy`, which its `.keras`
    file keeps.

    Returns:
        The `FreezePolicy` applied.
    """
    policy = parse_freeze(policy)
    policy.apply(model)
    if hasattr(model, "freeze_policy"):
        model.freeze_policy = policy
    return policy


class TrainableSummary(dict):
    """`{"trainable": n, "frozen": m}` parameter counts that print as one readable line.

    A plain dict for code (`summary["trainable"]`, `==`, `json.dumps`);
    `print(summary)` and `str(summary)` give
    `"1,925 trainable / 22,565,376 frozen parameters (0.01% trainable)"`.
    """

    def __str__(self):
        total = self["trainable"] + self["frozen"]
        share = 100.0 * self["trainable"] / total if total else 0.0
        return (f"{self['trainable']:,} trainable / {self['frozen']:,} frozen parameters "
                f"({share:.2f}% trainable)")


def trainable_summary(model: keras.Model) -> TrainableSummary:
    """Counts the trainable and frozen parameters of `model`.

    Returns:
        A `TrainableSummary`: the dict `{"trainable": n, "frozen": m}`, which
        prints as one line (`print(tfft.trainable_summary(task))`).

    Example:

    >>> counts = tfft.trainable_summary(task)
    >>> counts["trainable"]
    1925
    >>> print(counts)
    1,925 trainable / 22,565,376 frozen parameters (0.01% trainable)
    """
    trainable = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
    frozen = sum(int(keras.ops.size(w)) for w in model.non_trainable_weights)
    return TrainableSummary(trainable=trainable, frozen=frozen)


def find_backbone_layer(model: keras.Model) -> BackboneLayer:
    """Returns the `BackboneLayer` named "backbone" inside a tfft model."""
    for layer in getattr(model, "layers", []):
        if isinstance(layer, BackboneLayer):
            return layer
    raise ValueError(
        f"The model {getattr(model, 'name', model)!r} has no tfft backbone layer; "
        "build it with tfft.build_model(...)."
    )


def _set_head_trainable(model, value):
    model.trainable = True
    for layer in model.layers:
        if layer.name != "backbone":
            layer.trainable = value


def _freeze_unused(backbone_layer):
    unused = backbone_layer.unused_layer_names()
    for layer in backbone_layer.backbone.layers:
        if layer.name in unused:
            layer.trainable = False


def _set_own_weights(layer, value):
    inside = {id(w) for sub in walk_layers(layer, include_root=False) for w in sub.weights}
    for weight in layer.weights:
        if id(weight) not in inside:
            weight.trainable = value


def _set_all(layer, value):
    layer.trainable = value
    for sub in getattr(layer, "layers", []) or []:
        _set_all(sub, value)
