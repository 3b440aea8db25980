"""Linear probe: a linear classifier on frozen, L2-normalized image features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone
from .base import MethodConfig, PromptMethod
from .zeroshot import ensemble_text_features


@dataclass
class LinearProbeConfig(MethodConfig):
    """Attributes:
    init: "random" (the CoOp paper's baseline) or "zeroshot" (start from the zero-shot classifier
        of ``template``, scaled by the logit scale).
    template: template for the zero-shot initialisation.
    """

    init: str = "random"
    template: str = "a photo of a {}."


class LinearProbe(PromptMethod):
    """``logits = W · normalize(image feature) + b``."""

    name = "linear-probe"
    Config = LinearProbeConfig

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: LinearProbeConfig | None = None):
        super().__init__(backbone, list(classes), config)
        self.head = nn.Linear(backbone.embed_dim, len(self.classes)).to(backbone.device)
        if self.config.init == "zeroshot":
            with torch.no_grad():
                feats = ensemble_text_features(backbone, self.classes, [self.config.template])
                self.head.weight.copy_(feats * backbone.logit_scale)
                self.head.bias.zero_()
        elif self.config.init != "random":
            raise ValueError(f"linear-probe init must be 'random' or 'zeroshot', not {self.config.init!r}")

    def forward(self, backbone: Backbone, image_features: Tensor, text_features: Tensor | None = None) -> Tensor:
        return self.head(F.normalize(image_features.float(), dim=-1))

    def class_features(self, backbone: Backbone) -> None:
        return None
