"""Backbones: the adapter over open_clip and the ways to load one."""

from .adapter import Backbone, BackboneError, Identity
from .bundled import DEFAULT_BACKBONE
from .loading import available_backbones, load_backbone, tiny_random_backbone, tiny_random_clip

__all__ = [
    "Backbone",
    "BackboneError",
    "DEFAULT_BACKBONE",
    "Identity",
    "available_backbones",
    "load_backbone",
    "tiny_random_backbone",
    "tiny_random_clip",
]
