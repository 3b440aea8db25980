"""Prompt methods and their registry (explicit: every method is listed here)."""

from __future__ import annotations

from typing import Any

from ..backbones import Backbone
from .base import MethodConfig, PromptMethod, cosine_logits
from .cocoop import CoCoOp, CoCoOpConfig
from .compositional import CSP, AttrObjHeads, CZSLCoOp, CZSLZeroShot, PairMethod, PairProjection, pair_space
from .coop import CoOp, CoOpConfig
from .linear_probe import LinearProbe, LinearProbeConfig
from .zeroshot import ZeroShot, ZeroShotConfig

CLASSIFICATION_METHODS = (ZeroShot, CoOp, CoCoOp, LinearProbe)
COMPOSITIONAL_METHODS = (CZSLZeroShot, CZSLCoOp, CSP, AttrObjHeads, PairProjection)
METHODS: dict[str, type[PromptMethod]] = {cls.name: cls for cls in CLASSIFICATION_METHODS + COMPOSITIONAL_METHODS}


def method_class(name: str) -> type[PromptMethod]:
    """The method class registered under ``name`` (lowercase)."""
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}") from None


def build_method(
    name: str, backbone: Backbone, classes: Any, options: dict[str, Any] | MethodConfig | None = None
) -> PromptMethod:
    """Instantiate a registered method with options given as a dict or its config dataclass."""
    cls = method_class(name)
    config = options if isinstance(options, MethodConfig) else cls.Config.from_dict(options, cls.name)
    return cls(backbone, classes, config)


__all__ = [
    "CLASSIFICATION_METHODS",
    "COMPOSITIONAL_METHODS",
    "CSP",
    "AttrObjHeads",
    "CZSLCoOp",
    "CZSLZeroShot",
    "PairMethod",
    "PairProjection",
    "pair_space",
    "METHODS",
    "CoCoOp",
    "CoCoOpConfig",
    "CoOp",
    "CoOpConfig",
    "LinearProbe",
    "LinearProbeConfig",
    "MethodConfig",
    "PromptMethod",
    "ZeroShot",
    "ZeroShotConfig",
    "build_method",
    "cosine_logits",
    "method_class",
]
