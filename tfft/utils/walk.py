"""Walks over the layers nested inside a Keras layer or model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import keras

from tfft import _compat


def walk_layers(
    root: keras.layers.Layer, *, nested: bool = True, include_root: bool = True,
    reach: Iterable[str] = (),
) -> Iterator[keras.layers.Layer]:
    """Yields the layers inside `root` depth-first, parents before children, each once.

    Args:
        root: a Keras layer or model.
        nested: bool. True descends into every layer's sublayers (a
            transformer block's attention and dense layers too); False only
            into models (`model.layers`), which yields a backbone's blocks
            as units. Defaults to True.
        include_root: bool. Yield `root` itself first. Defaults to True.
        reach: names of layers that a `nested=False` walk must yield although
            they sit inside a layer that is not a model (KerasHub's ViT keeps
            its blocks in its encoder's `encoder_layers` list). The layers
            holding them are entered too; names the walk yields anyway change
            nothing. Defaults to ().

    Example:

    >>> dense = [layer for layer in walk_layers(model) if isinstance(layer, keras.layers.Dense)]
    >>> units = list(walk_layers(vit, nested=False, reach=["transformer_block_2"]))
    """
    enter = set()
    reach = set(reach)
    if reach and not nested:
        missing = reach - {layer.name for layer in walk_layers(root, nested=False)}
        enter = _holders(root, missing) if missing else set()
    seen = set()
    stack = [root]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if include_root or layer is not root:
            yield layer
        if nested or id(layer) in enter:
            children = _compat.sublayers(layer)
        else:
            children = list(getattr(layer, "layers", ()) or ())
        stack.extend(reversed(children))


def _holders(root, names):
    """The ids of the layers that hold a layer named in `names` among their nested sublayers."""
    holders = set()
    seen = set()
    stack = [(root, ())]
    while stack:
        layer, above = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if layer.name in names:
            holders.update(above)
        stack.extend((child, (*above, id(layer))) for child in _compat.sublayers(layer))
    return holders


def leaf_layers(root: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Returns the layers inside `root` that hold no sublayers (`root` itself if it holds none).

    Example:

    >>> frozen = [layer for layer in leaf_layers(backbone) if not layer.trainable]
    """
    return [layer for layer in walk_layers(root) if not _compat.sublayers(layer)]
