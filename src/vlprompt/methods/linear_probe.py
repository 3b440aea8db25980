"""Linear probe: a linear classifier on frozen, L2-normalized image features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone
from .base import Batch, BuiltinRow, MethodConfig, MethodOptionError, PromptMethod, Recipe, option
from .zeroshot import ensemble_text_features


@dataclass
class LinearProbeConfig(MethodConfig):
    """Attributes:
    init: "random" (the CoOp paper's baseline) or "zeroshot" (start from the zero-shot classifier
        of ``template``, scaled by the logit scale).
    template: template for the zero-shot initialisation.
    """

    init: str = option("random", choices=("random", "zeroshot"))
    template: str = "a photo of a {}."


class LinearProbe(PromptMethod):
    """``logits = W · normalize(image feature) + b``."""

    name = "linear-probe"
    Config = LinearProbeConfig
    recipes = {
        "default": Recipe(
            train={
                "epochs": 100,
                "optimizer": "adamw",
                "lr": 1e-3,
                "weight_decay": 1e-4,
                "schedule": "cosine",
                "warmup_epochs": 0,
            },
            source="vlprompt's: AdamW with a cosine schedule on frozen features; not expressible yet: CoOp's "
            "baseline (KaiyangZhou/CoOp@ff61507c790454bce7c5052c3ac39e60772f1f89:lpclip/) is sklearn's L-BFGS "
            "logistic regression with its regularisation searched on validation",
        )
    }
    builtin_rows = (
        BuiltinRow(
            "linear-probe",
            Recipe(
                train={
                    "epochs": 60,
                    "batch_size": 64,
                    "optimizer": "adamw",
                    "lr": 1e-2,
                    "weight_decay": 1e-4,
                    "schedule": "cosine",
                    "warmup_epochs": 0,
                },
                source="vlprompt's CPU recipe for the built-in benchmark",
            ),
        ),
    )
    tiny = Recipe(options={"init": "zeroshot"})
    template_option = "template"
    scores_with_text = False
    transfers = False

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: LinearProbeConfig | None = None):
        super().__init__(backbone, classes, config)
        self.head = nn.Linear(backbone.embed_dim, len(self.labels)).to(backbone.device)
        if self.config.init == "zeroshot":
            with torch.no_grad():
                feats = ensemble_text_features(backbone, self.labels.names, [self.config.template])
                self.head.weight.copy_(feats * backbone.logit_scale)
                self.head.bias.zero_()
        elif self.config.init != "random":
            raise MethodOptionError(f"linear-probe init must be 'random' or 'zeroshot', not {self.config.init!r}")

    def logits(self, backbone: Backbone, batch: Batch, text: Tensor | None = None) -> Tensor:
        return self.head(F.normalize(self.image_features(backbone, batch).float(), dim=-1))
