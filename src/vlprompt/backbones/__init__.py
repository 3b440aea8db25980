"""Backbones: the adapter over open_clip and the ways to load one."""

from .adapter import Backbone, BackboneError, Identity
from .loading import available_backbones, load_backbone, tiny_random_backbone, tiny_random_clip

__all__ = [
    "Backbone",
    "BackboneError",
    "Identity",
    "available_backbones",
    "load_backbone",
    "tiny_random_backbone",
    "tiny_random_clip",
]
