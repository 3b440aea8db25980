"""Prompt methods and their registry (explicit: every method is listed here, once)."""

from __future__ import annotations

from typing import Any

from ..backbones import Backbone
from ..labels import ClassNames, PairSpace, TaskSpace
from .base import Batch, MethodConfig, PromptMethod, cosine_logits
from .clip_lora import CLIPLoRA, CLIPLoRAConfig
from .cocoop import CoCoOp, CoCoOpConfig
from .compositional import CSP, AttrObjHeads, CZSLCoOp, CZSLZeroShot, PairMethod, PairProjection, pair_space
from .coop import CoOp, CoOpConfig
from .full_finetune import FullFinetune, FullFinetuneConfig
from .ivlp import IVLP, IVLPConfig
from .kgcoop import KgCoOp, KgCoOpConfig
from .linear_probe import LinearProbe, LinearProbeConfig
from .maple import MaPLe, MaPLeConfig
from .multitask import PerTask, PerTaskConfig, TaskMethod
from .promptsrc import PromptSRC, PromptSRCConfig
from .softcpt import SoftCPT, SoftCPTConfig
from .upt import UPT, UPTConfig
from .vp import VP, VPConfig
from .vpt import VPT, VPTConfig
from .zeroshot import ZeroShot, ZeroShotConfig

#: Every method, by its lowercase name. Registering a method here is all it takes to put it in the CLI
#: of its protocol (by its ``label_kind``) and in the contract test suite.
METHODS: dict[str, type[PromptMethod]] = {
    cls.name: cls
    for cls in (ZeroShot, CoOp, CoCoOp, LinearProbe, VP, VPT, IVLP, MaPLe, UPT)
    + (KgCoOp, PromptSRC, CLIPLoRA, FullFinetune)
    + (CZSLZeroShot, CZSLCoOp, CSP, AttrObjHeads, PairProjection)
    + (SoftCPT,)
}

#: Which command trains methods of each label space.
COMMAND_OF_LABELS: dict[type, str] = {ClassNames: "train", PairSpace: "czsl", TaskSpace: "multitask"}


def methods_for(label_kind: type) -> list[str]:
    """Names of the methods that score ``label_kind`` (e.g. :class:`~vlprompt.labels.PairSpace`)."""
    return sorted(name for name, cls in METHODS.items() if cls.label_kind is label_kind)


def method_class(name: str, label_kind: type | None = None) -> type[PromptMethod]:
    """The method class registered under ``name`` (lowercase), optionally checked against a protocol."""
    try:
        cls = METHODS[name.lower()]
    except KeyError:
        valid = methods_for(label_kind) if label_kind else sorted(METHODS)
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(valid)}") from None
    if label_kind is not None and cls.label_kind is not label_kind:
        command = COMMAND_OF_LABELS.get(cls.label_kind, "another command")
        raise ValueError(
            f"method {name!r} scores {cls.label_kind.kind}, not {label_kind.kind}: run it with `vlprompt {command}`; "
            f"methods here: {', '.join(methods_for(label_kind))}"
        )
    return cls


def build_method(
    name: str, backbone: Backbone, labels: Any, options: dict[str, Any] | MethodConfig | None = None
) -> PromptMethod:
    """Instantiate a registered method with options given as a dict or its config dataclass."""
    cls = method_class(name)
    config = options if isinstance(options, MethodConfig) else cls.Config.from_dict(options, cls.name)
    return cls(backbone, labels, config)


__all__ = [
    "COMMAND_OF_LABELS",
    "CLIPLoRA",
    "CLIPLoRAConfig",
    "CSP",
    "AttrObjHeads",
    "Batch",
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
    "FullFinetune",
    "FullFinetuneConfig",
    "IVLP",
    "IVLPConfig",
    "KgCoOp",
    "KgCoOpConfig",
    "LinearProbe",
    "LinearProbeConfig",
    "MaPLe",
    "MaPLeConfig",
    "MethodConfig",
    "PerTask",
    "PerTaskConfig",
    "PromptMethod",
    "SoftCPT",
    "SoftCPTConfig",
    "TaskMethod",
    "PromptSRC",
    "PromptSRCConfig",
    "UPT",
    "UPTConfig",
    "VP",
    "VPConfig",
    "VPT",
    "VPTConfig",
    "ZeroShot",
    "ZeroShotConfig",
    "build_method",
    "cosine_logits",
    "method_class",
    "methods_for",
]
