"""`FusedAdamW`: AdamW with one TensorFlow kernel per variable update.

Keras' AdamW writes its update out of generic ops: about twenty graph nodes
per variable (casts, powers, the two moments, the step) plus the decoupled
weight decay's own. For a transformer's ~100 variables that is half of the
training graph (MiniLM: 4,209 nodes for the forward and backward pass, 8,694
with Keras' AdamW), and TensorFlow traces and optimises all of it before the
first step. `FusedAdamW` computes the same update with TensorFlow's
`ResourceApplyAdam` kernel and the decay as one multiply into a buffer that
replaces the variable's, sharing the step's scalars (bias corrections, decay
factor) across variables.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from tfft._compat import adam_variable_state

_FUSED_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def _handle(variable: Any) -> Any:
    """The resource handle of a Keras or TensorFlow variable, or None."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle if isinstance(variable, tf.Variable) else None


@keras.saving.register_keras_serializable(package="tfft")
class FusedAdamW(keras.optimizers.AdamW):
    """AdamW (decoupled weight decay) whose per-variable update is one fused kernel.

    The same update as `keras.optimizers.AdamW` with the same arguments and
    defaults (equal to float32 round-off), in a training graph about 30%
    smaller for a transformer, so `fit` traces and optimises its train step
    sooner. The decay multiplies each variable by `1 - learning_rate *
    weight_decay`, as PyTorch's `AdamW` does (Keras subtracts
    `learning_rate * weight_decay * variable`); that factor has the
    variable's dtype, so in float32 each step's decay is rounded to a
    multiple of 2**-24 (~6e-8, up to 6% of `5e-5 * 0.01`). On a backend
    other than TensorFlow, with `amsgrad=True`, or for a variable
    TensorFlow has no fused kernel for, each update is Keras' own.

    Args:
        learning_rate: float or schedule. Defaults to 0.001.
        weight_decay: float. Decoupled weight decay rate (the variable shrinks
            by `learning_rate * weight_decay` of itself every step; exclude
            variables with `exclude_from_weight_decay`). Defaults to 0.004.
        beta_1, beta_2, epsilon, amsgrad and the remaining keyword arguments:
            as in `keras.optimizers.AdamW`.

    Example:

    >>> task.compile(optimizer=tfft.training.FusedAdamW(5e-5, weight_decay=0.01),
    ...              loss="sparse_categorical_crossentropy")
    """

    def __init__(self, learning_rate: Any = 0.001, weight_decay: float = 0.004,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
                 amsgrad: bool = False, name: str = "fused_adamw", **kwargs: Any) -> None:
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) \
                or weight_decay < 0:
            raise ValueError(
                "weight_decay must be a float >= 0 (the decoupled decay rate). "
                f"Received: weight_decay={weight_decay!r}"
            )
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay,
                         beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, amsgrad=amsgrad,
                         name=name, **kwargs)
        # Keras' own decay pass (run when `weight_decay` is set) would add
        # nodes per variable: the decay runs inside `update_step` instead.
        self.decoupled_weight_decay = float(weight_decay)
        self.weight_decay = None
        object.__setattr__(self, "_scalars", None)

    def _step_scalars(self, dtype: Any, learning_rate: Any) -> tuple:
        """The step's shared scalars, made once per traced graph, dtype and learning rate."""
        graph = tf.compat.v1.get_default_graph() if tf.inside_function() else None
        cached = self._scalars
        key = (graph, dtype, learning_rate)
        if (graph is not None and cached is not None and cached[0][0] is graph
                and cached[0][1] == dtype and cached[0][2] is learning_rate):
            return cached[1]
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        lr = tf.cast(learning_rate, dtype)
        scalars = (lr, beta_1, beta_2, tf.pow(beta_1, step), tf.pow(beta_2, step),
                   tf.cast(self.epsilon, dtype), 1 - lr * self.decoupled_weight_decay)
        if graph is not None:
            object.__setattr__(self, "_scalars", (key, scalars))
        return scalars

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        momentum, velocity, decays = adam_variable_state(self, variable)
        decays = decays and self.decoupled_weight_decay > 0
        handle = _handle(variable)
        # Several replicas update per-device copies: Keras' own update handles them.
        if (keras.backend.backend() != "tensorflow" or self.amsgrad or handle is None
                or variable.dtype not in _FUSED_DTYPES
                or tf.distribute.get_strategy().num_replicas_in_sync > 1):
            if decays:
                rate = keras.ops.cast(learning_rate, variable.dtype) * self.decoupled_weight_decay
                self.assign_sub(variable, variable * rate)
            return super().update_step(gradient, variable, learning_rate)
        lr, beta_1, beta_2, beta_1_power, beta_2_power, epsilon, keep = self._step_scalars(
            variable.dtype, learning_rate
        )
        if decays:
            # var *= 1 - lr * weight_decay, before the Adam step (as AdamW), in one
            # pass: the product's buffer becomes the variable's. Subtracting in place
            # (ResourceApplyGradientDescent, the variable's value as delta) copied the
            # variable first, its buffer being shared with that read: MiniLM's CPU
            # step spent ~27 ms on it, ~13 ms this way.
            value = tf.raw_ops.ReadVariableOp(resource=handle, dtype=variable.dtype)
            tf.raw_ops.AssignVariableOp(resource=handle, value=value * keep)
        tf.raw_ops.ResourceApplyAdam(
            var=handle, m=_handle(momentum), v=_handle(velocity),
            beta1_power=beta_1_power, beta2_power=beta_2_power, lr=lr, beta1=beta_1,
            beta2=beta_2, epsilon=epsilon, grad=tf.cast(gradient, variable.dtype),
        )
        return None

    def get_config(self) -> dict:
        config = super().get_config()
        config["weight_decay"] = self.decoupled_weight_decay
        return config
