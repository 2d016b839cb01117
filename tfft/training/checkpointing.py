"""Gradient checkpointing: recompute a layer's activations in the backward pass.

`checkpoint_layers(layers)` makes each layer keep only its inputs during a
training forward pass and recompute the rest when the gradient is taken
(`tf.recompute_grad`), trading about one extra forward pass for the memory of
every activation inside the layer. For a transformer, checkpointing each block
keeps one hidden-state tensor per block instead of the attention scores, MLP
activations and LoRA intermediates.

Written here, not taken from Keras: `keras.RematScope` (Keras 3.15) wraps a
layer's `call` in `tf.recompute_grad`, whose `tf.custom_gradient` refuses
keyword tensor arguments in graph mode ("supports keywords arguments only when
eager execution is enabled"), and KerasHub's decoder blocks take their padding
mask as a keyword. This wrapper passes keyword tensors positionally.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import keras
import tensorflow as tf

_ORIGINAL_CALL = "_tfft_call_before_checkpointing"


def _checkpointed(call: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # Only training passes with no decoding cache are recomputed: inference and
        # cached generation run as before.
        if not kwargs.get("training") or any(
                "cache" in name and value is not None for name, value in kwargs.items()):
            return call(*args, **kwargs)
        # Floating tensors go in positionally (custom_gradient takes no keyword tensors
        # in graph mode); masks and other integer tensors are closed over.
        tensor_names = [name for name, value in kwargs.items()
                        if tf.is_tensor(value) and value.dtype.is_floating]
        static = {name: value for name, value in kwargs.items() if name not in tensor_names}
        count = len(args)

        def inner(*flat: Any) -> Any:
            return call(*flat[:count], **static, **dict(zip(tensor_names, flat[count:],
                                                            strict=True)))

        return tf.recompute_grad(inner)(*args, *(kwargs[name] for name in tensor_names))

    return wrapper


def checkpoint_layers(layers: Iterable[keras.layers.Layer], enabled: bool = True) -> int:
    """Turns gradient checkpointing on (or off) for each layer; returns how many changed.

    Takes effect in train steps traced afterwards: recompile (or call `fit`
    on a model not yet trained) after changing it. A layer with dropout draws
    new masks when it is recomputed, so its gradient is that of a slightly
    different forward pass (Llama-family blocks have no dropout by default).
    """
    changed = 0
    for layer in layers:
        has = _ORIGINAL_CALL in layer.__dict__
        if enabled and not has:
            original = layer.call
            object.__setattr__(layer, _ORIGINAL_CALL, original)
            object.__setattr__(layer, "call", _checkpointed(original))
            changed += 1
        elif not enabled and has:
            object.__setattr__(layer, "call", layer.__dict__[_ORIGINAL_CALL])
            object.__delattr__(layer, _ORIGINAL_CALL)
            changed += 1
    return changed


def is_checkpointed(layer: keras.layers.Layer) -> bool:
    """Whether `checkpoint_layers` turned checkpointing on for `layer`."""
    return _ORIGINAL_CALL in layer.__dict__
