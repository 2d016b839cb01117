"""Keras layers tfft composes into tasks; each saves and reloads through `.keras` files.

They import nothing from tfft above `tfft.utils`, so every other part can use them.
"""

from tfft.layers.backbone_layer import BackboneLayer
from tfft.layers.fused_ops import (
    dot_product_attention,
    fusable_layers,
    fused_training_ops,
    gelu_tanh,
    layer_norm_last_axis,
)
from tfft.layers.heads import TASKS, TaskHead
from tfft.layers.hub_layer import HubLayer, allow_hub_handles
from tfft.layers.image_preprocessor import NORMALISATIONS, ImagePreprocessor
from tfft.layers.pooling import POOLING_MODES, Pooling
from tfft.layers.shared_blocks import repeated_blocks

__all__ = [
    "NORMALISATIONS",
    "POOLING_MODES",
    "TASKS",
    "BackboneLayer",
    "HubLayer",
    "ImagePreprocessor",
    "Pooling",
    "TaskHead",
    "allow_hub_handles",
    "dot_product_attention",
    "fusable_layers",
    "fused_training_ops",
    "gelu_tanh",
    "layer_norm_last_axis",
    "repeated_blocks",
]
