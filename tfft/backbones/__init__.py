"""Backbones from every source behind one spec grammar."""

from tfft.backbones.base import Backbone, BackboneInfo
from tfft.backbones.registry import SOURCES, list_backbones, load_backbone, parse_spec
from tfft.utils.network import NetworkUnavailableError

__all__ = [
    "SOURCES",
    "Backbone",
    "BackboneInfo",
    "NetworkUnavailableError",
    "list_backbones",
    "load_backbone",
    "parse_spec",
]
