"""Adaptation methods: freeze policies, gradual unfreezing, LoRA and layer-wise rates.

Each policy registers itself under its string form (`"top_k:2"`, `"lora:8"` ...)
with `register_policy`; `parse_freeze` and the CLI read the registry.
"""

from tfft.adapt.discriminative import LayerwiseOptimizer, layerwise_lr, layerwise_multipliers
from tfft.adapt.freeze import (
    FREEZE_POLICIES,
    FeatureExtraction,
    FreezePolicy,
    Full,
    Regex,
    TopK,
    TopKFrozenBatchNorm,
    apply_freeze,
    find_backbone_layer,
    parse_freeze,
    register_policy,
    string_forms,
    trainable_summary,
)
from tfft.adapt.gradual import Gradual, GradualUnfreezing, gradual_callback
from tfft.adapt.lora import LoRA, has_lora, lora_layers, merge_lora

__all__ = [
    "FREEZE_POLICIES",
    "FeatureExtraction",
    "FreezePolicy",
    "Full",
    "Gradual",
    "GradualUnfreezing",
    "LayerwiseOptimizer",
    "LoRA",
    "Regex",
    "TopK",
    "TopKFrozenBatchNorm",
    "apply_freeze",
    "find_backbone_layer",
    "gradual_callback",
    "has_lora",
    "layerwise_lr",
    "layerwise_multipliers",
    "lora_layers",
    "merge_lora",
    "parse_freeze",
    "register_policy",
    "string_forms",
    "trainable_summary",
]
