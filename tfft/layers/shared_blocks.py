"""Repeated blocks traced once: one graph for a model's identical layers.

A transformer is the same block N times over (MiniLM: 6, BERT-base: 12):
the same class, config and variable shapes, different weights. Traced
into a training graph the usual way, each block is traced anew, and its
gradient too; tracing a train step costs about the same per graph node
(0.3-0.4 ms on a 2-core CPU, nearly all of it TensorFlow creating ops), so
a 6-block MiniLM step spends most of its ~1.2 s trace tracing six copies
of one block.

`SharedTrace` traces a block's `call` once, as a `tf.function` taking the
block's weights as arguments (Keras' `StatelessScope` maps the first
block's variables to them), and every block of the group calls that one
function with its own weights. TensorFlow's gradient of a function call
is itself traced once per function, so the backward pass is shared too.
When the train step runs, TensorFlow inlines the calls before its graph
optimiser and executor see them, so the steps compute what they computed
before, op for op (see `tests/training/test_shared_blocks.py`).

Neither Keras nor TensorFlow does this for a `fit` step (JAX users get it
from `jax.lax.scan` over stacked weights, which TensorFlow's `fit` path
has no counterpart for), hence this module.
"""

from __future__ import annotations

import json
from typing import Any

import keras
import tensorflow as tf

from tfft._compat import sublayers, variable_value


def _signature(layer: Any) -> str:
    """What two layers must share for one trace to compute both (names aside)."""
    config = dict(layer.get_config())
    config.pop("name", None)
    parts = [
        f"{type(layer).__module__}.{type(layer).__qualname__}",
        config,
        bool(layer.trainable),
        getattr(layer.dtype_policy, "name", None),
        [(list(v.shape), str(v.dtype), bool(v.trainable)) for v in layer.variables],
        [_signature(child) for child in sublayers(layer)],
    ]
    return json.dumps(parts, sort_keys=True, default=repr)


def _shareable(layer: Any) -> bool:
    # Composite layers only (a block of sublayers: what is worth one trace), not
    # models (their call runs a graph of their own), built, not already patched.
    return (isinstance(layer, keras.layers.Layer) and not isinstance(layer, keras.Model)
            and layer.built and len(sublayers(layer)) >= 2 and "call" not in vars(layer))


def _signature_if_shareable(layer: Any) -> str | None:
    if not _shareable(layer):
        return None
    try:
        return _signature(layer)
    except Exception:  # a layer whose config Keras cannot make: not shared
        return None


def repeated_blocks(model: Any) -> list[list]:
    """Groups of `model`'s sibling layers that one trace can compute.

    Siblings (sublayers of one parent) of the same class, with the same
    config but for the name, the same variables (shape, dtype, trainable),
    trainability, dtype policy and, recursively, the same sublayers; only
    composite layers (two sublayers or more) and no models. A grouped
    block's own sublayers are not grouped again. A layer whose config
    cannot be read (`get_config` raises) is never grouped.

    Example:

    >>> [len(group) for group in repeated_blocks(minilm_task)]
    [6]
    """
    groups, seen, stack = [], set(), [model]
    while stack:
        parent = stack.pop()
        if id(parent) in seen:
            continue
        seen.add(id(parent))
        by_signature: dict[str, list] = {}
        for child in sublayers(parent):
            if id(child) in seen:
                continue
            signature = _signature_if_shareable(child)
            if signature is not None:
                by_signature.setdefault(signature, []).append(child)
            else:
                stack.append(child)
        for group in by_signature.values():
            if len(group) >= 2:
                groups.append(group)
                seen.update(id(layer) for layer in group)
            else:
                stack.extend(group)
    return groups


def _stored(variable: Any) -> Any:
    # The variable's stored value (a read the gradient tape sees); not `.value`,
    # which a mixed-precision layer's call autocasts.
    return tf.convert_to_tensor(variable_value(variable))


class SharedTrace:
    """One `tf.function` of `template.call` that every block of its group calls.

    `shared(layer, args, kwargs)` computes `layer.call(*args, **kwargs)`
    with the function traced on `template`: `layer`'s stored variable values
    go in as arguments, the non-trainable values the call updates (dropout
    seed states) and the losses it adds come back and are applied to
    `layer`. Outside a traced graph, or under a strategy with several
    replicas, it calls `layer`'s own `call`. So does every block of the group
    when the trace captured anything from outside (a `tf.Variable` read
    past Keras, a random draw from Keras' global seed generator, a tensor
    kept on the layer): what it captured would be the first block's, or one
    for all, so the blocks are traced one by one as without sharing.
    """

    def __init__(self, template: Any):
        self.template = template
        self.call_method = type(template).call
        self.function = tf.function(self._traced, autograph=False, reduce_retracing=True)
        # Indices of the non-trainable variables a trace assigned (dropout seed
        # states), over every trace so far.
        self.updated: set[int] = set()
        self.usable = True

    def _traced(self, trainable, non_trainable, args, kwargs):
        template = self.template
        mapping = list(zip(template.trainable_variables, trainable, strict=True))
        mapping += list(zip(template.non_trainable_variables, non_trainable, strict=True))
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            before = [scope.get_current_value(v) for v in template.non_trainable_variables]
            outputs = self.call_method(template, *args, **kwargs)
        after = [scope.get_current_value(v) for v in template.non_trainable_variables]
        changed = zip(before, after, strict=True)
        self.updated.update(i for i, (old, new) in enumerate(changed) if new is not old)
        # Every value, so that each trace returns the same structure.
        return outputs, after, list(scope.losses)

    def __call__(self, layer: Any, args: tuple, kwargs: dict) -> Any:
        replica = tf.distribute.get_replica_context()
        if (not tf.inside_function()
                or (replica is not None and replica.num_replicas_in_sync > 1)):
            return self.call_method(layer, *args, **kwargs)
        trainable = [_stored(v) for v in layer.trainable_variables]
        non_trainable = [_stored(v) for v in layer.non_trainable_variables]
        if self.usable:
            traced = self.function.get_concrete_function(trainable, non_trainable, args, kwargs)
            self.usable = not traced.captured_inputs
        if not self.usable:
            return self.call_method(layer, *args, **kwargs)
        outputs, after, losses = self.function(trainable, non_trainable, args, kwargs)
        variables = layer.non_trainable_variables
        for index in sorted(self.updated):
            variables[index].assign(after[index])
        for loss in losses:
            layer.add_loss(loss)
        return outputs


def shared_call(shared: SharedTrace):
    """A `call` method for the blocks of `shared`'s group (see `fused_training_ops`)."""

    def call(self, *args, **kwargs):
        return shared(self, args, kwargs)

    return call
