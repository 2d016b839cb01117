"""Walks over the layers nested inside a Keras layer or model."""

from __future__ import annotations

from collections.abc import Iterator

import keras

from tfft import _compat


def walk_layers(
    root: keras.layers.Layer, *, nested: bool = True, include_root: bool = True
) -> Iterator[keras.layers.Layer]:
    """Yields the layers inside `root` depth-first, parents before children, each once.

    Args:
        root: a Keras layer or model.
        nested: bool. True descends into every layer's sublayers (a
            transformer block's attention and dense layers too); False only
            into models (`model.layers`), which yields a backbone's blocks
            as units. Defaults to True.
        include_root: bool. Yield `root` itself first. Defaults to True.

    Example:

    >>> dense = [layer for layer in walk_layers(model) if isinstance(layer, keras.layers.Dense)]
    """
    seen = set()
    stack = [root]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if include_root or layer is not root:
            yield layer
        children = _compat.sublayers(layer) if nested else list(getattr(layer, "layers", ()) or ())
        stack.extend(reversed(children))


def leaf_layers(root: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Returns the layers inside `root` that hold no sublayers (`root` itself if it holds none).

    Example:

    >>> frozen = [layer for layer in leaf_layers(backbone) if not layer.trainable]
    """
    return [layer for layer in walk_layers(root) if not _compat.sublayers(layer)]
