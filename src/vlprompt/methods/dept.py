"""DePT, decoupled prompt tuning (Zhang, Wu, Gao, Shen & Song, CVPR 2024): a base-class head over any prompt method.

Follows Koorye/DePT (``trainers/elp_coop.py``, ``elp_kgcoop.py``, ``elp_maple.py``, ``optim.py``, ``train.py``):
a :class:`~vlprompt.methods.wrapper.MethodWrapper` that adds the channel-wise transform (cwT: ``x · γ + β`` per
channel on the *raw* features, one for the image and one for the text side, γ = 1, β = 0 at first) and a
linear head ``Linear(D, n_base)`` (torch's default init; no normalisation, no logit scale) over the base classes.
With s the wrapped method's logits, t its raw class features and v its raw image features, training minimises

    (1 − λ) · CE(s, y) + λ · CE(head(cat(cwT_t(t)[y], cwT_v(v))), cat(y, y)) + the wrapped method's own terms

(λ = ``weight`` 0.7; the head learns from text and image rows, 2B of them, and the prompt gets a gradient through
it too). Scoring classes that are all base classes gives ``(1 − λ) · s + λ · head(cwT_v(v))`` (the head's rows of
those classes: ImageNet-A/R's subsets, as the release clips its head); any other label space (new classes, base
and new together) gives s alone, as the release rebuilds the model with an identity head. The head and cwT train
at ``head_lr_scale`` (6.5) times the recipe's lr (the release's ``STAGED_LR``), the prompt at the lr.

It wraps any method that scores with class text features (CoOp, KgCoOp, MaPLe, PromptSRC, CoCoOp, ...): their raw
features are recorded as they score, so their own terms (KgCoOp's, PromptSRC's) stay theirs; a method without
class features (a classifier head) is refused. ``base_classes`` holds the head's classes (the label space the
method is built on), so that a prompt file saved after ``set_classes`` still loads.

Where this differs, deliberately: everything stays fp32 (the release's PREC fp16 runs the head in fp16 too);
(1 − λ) · CE is computed as the wrapped loss minus λ · CE (the same number up to rounding); the release's KgCoOp
also trains its unused ``bias_vectors`` and ``meta_net``, not here. As the release, both groups run at the warmup
lr (1e-5) during Dassl's warmup epoch and anneal from their own lr.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone
from ..labels import ClassNames
from .base import Batch, BuiltinRow, MethodConfig, MethodInputError, MethodOptionError, PromptMethod, Recipe, option
from .recipes import CPU_SGD, CPU_TWO_TOWER, TRANSFER, dassl_recipe
from .wrapper import MethodWrapper, WrapperConfig

DEPT_REPO = "Koorye/DePT@d4ff41684bac42da30ebb6898496772dec3157f2"


@dataclass
class DePTConfig(WrapperConfig):
    """DePT's options (the release's) besides the wrapped method's.

    Attributes:
        weight: λ, the head's share of the loss and of the base-class logits (``LINEAR_PROBE.WEIGHT``).
        head_lr_scale: the head's and cwT's lr as a multiple of the recipe's (``OPTIM.LR_EXP``).
        channel_transform: the cwT before the head (``FILM.LINEAR_PROBE``; False: the head reads raw features).
        base_classes: the classes of the head (default: the label space the method is built on).
    """

    weight: float = option(0.7, low=0.0, high=1.0)
    head_lr_scale: float = option(6.5, low=0.0)
    channel_transform: bool = True
    base_classes: list[str] = field(default_factory=list)


class ChannelTransform(nn.Module):
    """x · γ + β per channel (the release's ``FiLM``), γ = 1 and β = 0 at first."""

    def __init__(self, width: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.bias


@contextmanager
def recorded(method: PromptMethod, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Within: what ``method``'s calls of its methods ``names`` return (the last call of each), as it scores."""
    seen: dict[str, Tensor] = {}

    def recorder(name: str):
        original = getattr(method, name)

        def call(*args, **kwargs):
            seen[name] = out = original(*args, **kwargs)
            return out

        return call

    for name in names:
        method.__dict__[name] = recorder(name)  # an instance attribute shadows the method while recording
    try:
        yield seen
    finally:
        for name in names:
            method.__dict__.pop(name, None)


_SOURCE = (
    f"{DEPT_REPO}:configs/trainers/ExtrasLinearProbe{{}}.yaml, train.py (extend_cfg), configs.py; templates.py "
    "(mode xd: the same config on all ImageNet classes, evaluated on the others)"
)


def _dept_recipe(config: str, batch_size: int = 4, lr: float = 0.0035) -> Recipe:
    protocols = ("base-to-new", *TRANSFER)
    return dassl_recipe(_SOURCE.format(config), protocols, epochs=10, batch_size=batch_size, lr=lr)


class DePT(MethodWrapper):
    """The wrapped prompt method plus a channel-wise transformed linear head over the base classes."""

    name = "dept"
    Config = DePTConfig
    config: DePTConfig
    labels: ClassNames
    recipes = {
        # the wrapped method and its options come from --method_options (default: CoOp's 16 random tokens)
        "default": _dept_recipe("CoOp/vit_b16_ep10_bs4_lr35"),
        "coop": _dept_recipe("CoOp/vit_b16_ep10_bs4_lr35").with_options(
            method="coop", options={"n_ctx": 16, "ctx_init": ""}
        ),
        # configs.py cocoop_dept: ExtrasLinearProbeCoCoOp with CoCoOp's own config (batch 1, lr 0.002)
        "cocoop": _dept_recipe("CoCoOp/vit_b16_c4_ep10_batch1_ctxv1", batch_size=1, lr=0.002).with_options(
            method="cocoop", options={"n_ctx": 4, "ctx_init": "a photo of a"}
        ),
        "kgcoop": _dept_recipe("KgCoOp/vit_b16_ep10_ctxv1_bs4_lr35").with_options(
            method="kgcoop", options={"n_ctx": 4, "ctx_init": "a photo of a", "weight": 2.0}
        ),
        "maple": _dept_recipe("MaPLe/vit_b16_c2_ep10_batch4_2ctx").with_options(
            method="maple", options={"n_ctx": 2, "ctx_init": "a photo of a", "depth": 9}
        ),
    }
    builtin_rows = (
        BuiltinRow("dept-coop", CPU_SGD.but(lr=0.02).with_options(method="coop", options={"n_ctx": 4}), default=False),
        BuiltinRow(
            "dept-promptsrc",  # PromptSRC's own built-in row (its lr, 3 prompted blocks of 3)
            CPU_TWO_TOWER.but(lr=0.005).with_options(
                method="promptsrc", options={"depth_text": 3, "depth_vision": 3, "gpa_mean": 7.5}
            ),
            default=False,
        ),
    )
    tiny = Recipe(options={"method": "coop", "options": {"n_ctx": 4}})
    template_option = None

    def __init__(self, backbone: Backbone, labels: Any, config: DePTConfig | None = None):
        config = config if config is not None else self.Config()
        self.wrapped(config)  # refuses a method without class features before building anything
        if not config.base_classes:
            names = self.label_kind.coerce(labels).display_names()
            config = dataclasses.replace(config, base_classes=list(names))
        super().__init__(backbone, labels, config)
        width = backbone.embed_dim
        if self.config.channel_transform:
            self.cwt_image = ChannelTransform(width)
            self.cwt_text = ChannelTransform(width)
        self.head = nn.Linear(width, len(self.config.base_classes))
        self.to(backbone.device)
        self._step: tuple[Tensor, Tensor] | None = None
        self._labels_changed(backbone)

    @classmethod
    def wrapped(cls, config: WrapperConfig) -> tuple[type[PromptMethod], MethodConfig]:
        inner, inner_config = super().wrapped(config)
        if not inner.capabilities(inner_config)["scores_with_text"]:
            raise MethodOptionError(
                f"dept option method {config.method!r}: {inner.name} scores with a classifier head, not class text "
                "features; dept transforms class features: wrap a prompt method (coop, kgcoop, maple, promptsrc, ...)"
            )
        return inner, inner_config

    def _labels_changed(self, backbone: Backbone) -> None:
        super()._labels_changed(backbone)
        base = {name: i for i, name in enumerate(self.config.base_classes)}
        names = self.labels.names
        rows = [base[n] for n in names] if all(n in base for n in names) else None
        self._rows = torch.tensor(rows, device=self.head.weight.device) if rows is not None else None

    # ---------------------------------------------------------------- scoring
    def _transformed(self, features: Tensor, side: str) -> Tensor:
        features = features.float()
        if not self.config.channel_transform:
            return features
        return (self.cwt_image if side == "image" else self.cwt_text)(features)

    def head_logits(self, features: Tensor, side: str = "image") -> Tensor:
        """[N, n_base] head logits of raw features (fp32, outside autocast)."""
        with torch.autocast(features.device.type, enabled=False):
            return self.head(self._transformed(features, side))

    def logits(self, backbone: Backbone, batch: Batch, text: Tensor | None = None) -> Tensor:
        """The wrapped method's logits s while training (the loss adds the head's); evaluating, fused with the
        head's where every class scored is a base class."""
        with recorded(self.inner, ("image_features", "text_features")) as seen:
            logits = self.inner.logits(backbone, batch, text)
        if "image_features" not in seen or (text is None and "text_features" not in seen):
            raise MethodInputError(f"dept needs {self.inner.name} to score with its image and class text features")
        image, text = seen["image_features"], seen.get("text_features", text)
        assert text is not None  # checked above
        if self.training:
            self._step = (image, text)
            return logits
        if self._rows is None:
            return logits
        lam = self.config.weight
        return (1 - lam) * logits.float() + lam * self.head_logits(image)[:, self._rows]

    def loss(self, backbone: Backbone, batch: Batch, logits: Tensor, label_smoothing: float = 0.0) -> Tensor:
        if self._step is None or self._rows is None:
            raise MethodInputError("dept's loss needs a training forward pass on its base classes (in train mode)")
        (image, text), self._step = self._step, None
        targets = batch.targets
        assert targets is not None  # a training batch
        own = text[targets] if text.dim() == 2 else text[torch.arange(len(targets), device=text.device), targets]
        rows = torch.cat([self.head_logits(own, "text"), self.head_logits(image)])[:, self._rows]
        head_ce = F.cross_entropy(rows, torch.cat([targets, targets]), label_smoothing=label_smoothing)
        ce = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
        wrapped = self.inner.loss(backbone, batch, logits, label_smoothing)  # CE(s, y) + its own terms
        lam = self.config.weight
        return wrapped - lam * ce + lam * head_ce

    def param_groups(self) -> list[dict[str, Any]]:
        groups = super().param_groups()
        inner = {id(p) for p in self.inner.parameters()}
        for group in groups:
            if group["params"] and all(id(p) not in inner for p in group["params"]):
                group["lr_scale"] = self.config.head_lr_scale  # the head and cwT (STAGED_LR)
        return groups
