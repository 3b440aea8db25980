"""Prompt methods and their registry (explicit: every method is listed here, once)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..backbones import Backbone
from ..errors import OptionError
from ..labels import ClassNames, LabelSpace, PairSpace, TaskSpace
from .base import CAPABILITIES, DECLARATIONS, Batch, BuiltinRow, MethodConfig, PromptMethod, Recipe, cosine_logits
from .clip_adapter import CLIPAdapter, CLIPAdapterConfig
from .clip_lora import CLIPLoRA, CLIPLoRAConfig
from .cocoop import CoCoOp, CoCoOpConfig
from .compositional import CSP, AttrObjHeads, CZSLCoOp, CZSLZeroShot, PairMethod, PairProjection, pair_space
from .coop import CoOp, CoOpConfig
from .coprompt import CoPrompt, CoPromptConfig
from .dept import DePT, DePTConfig
from .full_finetune import FullFinetune, FullFinetuneConfig
from .ivlp import IVLP, IVLPConfig
from .kgcoop import KgCoOp, KgCoOpConfig
from .linear_probe import LinearProbe, LinearProbeConfig
from .maple import MaPLe, MaPLeConfig
from .mma import MMA, MMAConfig
from .mmrl import MMRL, MMRLConfig
from .multitask import PerTask, PerTaskConfig, TaskMethod
from .promptkd import PromptKD, PromptKDConfig
from .promptsrc import PromptSRC, PromptSRCConfig
from .softcpt import SoftCPT, SoftCPTConfig
from .tcp import TCP, TCPConfig
from .tip_adapter import TipAdapter, TipAdapterConfig, TipAdapterF, TipAdapterFConfig
from .tpt import TPT, TPTConfig
from .upt import UPT, UPTConfig
from .vp import VP, VPConfig
from .vpt import VPT, VPTConfig
from .zeroshot import ZeroShot, ZeroShotConfig

#: Every method, by its lowercase name: the one list the engine, the runs, the CLI and the tests read.
METHODS: dict[str, type[PromptMethod]] = {}


def register(cls: type[PromptMethod], replace: bool = False) -> type[PromptMethod]:
    """Add a method to the registry: this puts it in the CLI of its protocol (by its ``label_kind``), in
    ``vlprompt methods``, in the presets (its ``recipes``), in the built-in benchmark (its ``builtin_rows``) and
    in the contract test suite. Usable as a class decorator. Its declarations are checked here."""
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name or name != name.lower() or " " in name:
        raise TypeError(f"{cls.__name__}.name must be a lowercase name without spaces, not {name!r}")
    if name in METHODS and METHODS[name] is not cls and not replace:
        raise ValueError(f"a method named {name!r} is already registered ({METHODS[name].__name__})")
    missing = [d for d in DECLARATIONS if d not in _own_attributes(cls)]
    if missing:
        raise TypeError(f"{cls.__name__} ({name}) must declare {missing} itself (see PromptMethod's docstring)")
    if not (isinstance(cls.Config, type) and issubclass(cls.Config, MethodConfig)):
        raise TypeError(f"{cls.__name__}.Config must be a MethodConfig dataclass")
    bad = [k for k, r in cls.recipes.items() if not isinstance(r, Recipe) or not k]
    if bad or not all(isinstance(r, BuiltinRow) for r in cls.builtin_rows) or not isinstance(cls.tiny, Recipe):
        raise TypeError(
            f"{cls.__name__}: recipes must map names to Recipe, builtin_rows hold BuiltinRow, tiny a Recipe"
        )
    if cls.template_option is not None and cls.template_option not in {f.name for f in dataclasses.fields(cls.Config)}:
        raise TypeError(
            f"{cls.__name__}.template_option {cls.template_option!r} is not an option of {cls.Config.__name__}"
        )
    if cls.Config.__dict__.get("method_name", "") in ("", name):
        cls.Config.method_name = name  # the config's messages name the method
    METHODS[name] = cls
    return cls


def _own_attributes(cls: type) -> set[str]:
    """Attributes set by ``cls`` itself or by a registered-method-free base below PromptMethod."""
    own: set[str] = set()
    for klass in cls.__mro__:
        if klass is PromptMethod or (klass is not cls and klass in METHODS.values()):
            break
        own |= set(vars(klass))
    return own


# fmt: off
for _cls in (ZeroShot, CoOp, CoCoOp, LinearProbe, VP, VPT, IVLP, MaPLe, UPT, KgCoOp, PromptSRC, CLIPLoRA, FullFinetune,
             CZSLZeroShot, CZSLCoOp, CSP, AttrObjHeads, PairProjection, SoftCPT, CLIPAdapter, TipAdapter, TipAdapterF,
             TPT):
    register(_cls)
# fmt: on
register(TCP)
register(DePT)
register(MMA)
register(PromptKD)
register(CoPrompt)
register(MMRL)

#: Which command trains methods of each label space.
COMMAND_OF_LABELS: dict[type[LabelSpace], str] = {ClassNames: "train", PairSpace: "czsl", TaskSpace: "multitask"}


def methods_for(label_kind: type[LabelSpace]) -> list[str]:
    """Names of the methods that score ``label_kind`` (e.g. :class:`~vlprompt.labels.PairSpace`)."""
    return sorted(name for name, cls in METHODS.items() if cls.label_kind is label_kind)


def method_class(name: str, label_kind: type[LabelSpace] | None = None) -> type[PromptMethod]:
    """The method class registered under ``name`` (lowercase), optionally checked against a protocol."""
    try:
        cls = METHODS[name.lower()]
    except KeyError:
        valid = methods_for(label_kind) if label_kind else sorted(METHODS)
        raise OptionError(f"unknown method {name!r}; valid methods: {', '.join(valid)}") from None
    if label_kind is not None and cls.label_kind is not label_kind:
        command = COMMAND_OF_LABELS.get(cls.label_kind, "another command")
        raise OptionError(
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
    "CAPABILITIES",
    "BuiltinRow",
    "Recipe",
    "register",
    "COMMAND_OF_LABELS",
    "CLIPAdapter",
    "CLIPAdapterConfig",
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
    "DePT",
    "DePTConfig",
    "CoPrompt",
    "CoPromptConfig",
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
    "MMA",
    "MMAConfig",
    "MethodConfig",
    "MMRL",
    "MMRLConfig",
    "PerTask",
    "PerTaskConfig",
    "PromptMethod",
    "SoftCPT",
    "SoftCPTConfig",
    "TaskMethod",
    "TipAdapter",
    "TipAdapterConfig",
    "TipAdapterF",
    "TipAdapterFConfig",
    "TPT",
    "TCP",
    "TCPConfig",
    "TPTConfig",
    "PromptKD",
    "PromptKDConfig",
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
