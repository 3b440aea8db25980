"""Full fine-tuning: every weight of the chosen towers trains (a baseline for the parameter-efficient methods).

The comparison the few-shot literature makes (WiSE-FT, FLYP, CLIP-LoRA's tables) is end-to-end
fine-tuning that still scores with text, so that it transfers to new classes: here both towers by
default (``towers: [image]`` is WiSE-FT's image-tower fine-tuning against frozen class features), with
the same loss as CLIP-LoRA: cross-entropy on scale · cos(image, class), class features from the
dataset's hand template through the tuned text tower, logit scale frozen.

The delta is this method's own tensors: a copy of each tuned weight, applied per call with
``Backbone.with_weights`` (``torch.func.functional_call``), so the shared backbone never changes and
other methods never see the delta. Its prompt file holds every tuned weight (all of a tower: large).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..backbones import Backbone
from .base import BuiltinRow, Recipe
from .recipes import CPU_ADAMW
from .tuning import TowerTuning, TowerTuningConfig

#: ParameterDict keys cannot hold "."; backbone parameter names are stored with "/" instead.
_SEP = "/"


@dataclass
class FullFinetuneConfig(TowerTuningConfig):
    """Full fine-tuning hyperparameters (see :class:`~vlprompt.methods.tuning.TowerTuningConfig`)."""


class FullFinetune(TowerTuning):
    """Every weight of the tuned towers is a trainable copy, swapped in per call."""

    name = "full-finetune"
    Config = FullFinetuneConfig
    config: FullFinetuneConfig
    recipes = {
        "default": Recipe(
            train={
                "epochs": 20,
                "batch_size": 32,
                "optimizer": "adamw",
                "lr": 1e-5,
                "weight_decay": 0.1,
                "schedule": "cosine",
                "warmup_epochs": 0,
            },
            source="vlprompt's baseline (no paper recipe): WiSE-FT-like AdamW, small lr, decoupled decay 0.1",
        )
    }
    builtin_rows = (BuiltinRow("full-finetune", CPU_ADAMW.but(lr=1e-4, weight_decay=0.1), default=False),)
    tiny = Recipe()
    template_option = "template"

    @classmethod
    def tiny_recipe(cls, backbone: Backbone) -> Recipe:
        # The tiny ResNet's random weights leave some units dead: no gradient reaches some batch-norm weights.
        return Recipe(options={"towers": ["text"]}) if backbone.vision_layers == 0 else cls.tiny

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: FullFinetuneConfig | None = None):
        super().__init__(backbone, classes, config)
        weights = {}
        for tower in self.config.towers:
            for name, p in backbone.tower_parameters(tower).items():
                weights[name.replace(".", _SEP)] = nn.Parameter(p.detach().clone().float())
        self.weights = nn.ParameterDict(weights)
        self._labels_changed(backbone)

    def delta(self) -> dict[str, Tensor]:
        """The tuned weights by backbone parameter name."""
        return {k.replace(_SEP, "."): v for k, v in self.weights.items()}

    def encode(self, backbone: Backbone, encoder: str, *args: Any) -> Tensor:
        return backbone.with_weights(self.delta(), encoder, *args)
