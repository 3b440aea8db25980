"""CLIP-Adapter (Gao et al., IJCV 2024): a residual bottleneck MLP on frozen CLIP features.

Image side (the paper's and the release's): x = A(f) on the unnormalised image embedding f, blended
v = alpha · x + (1 - alpha) · f, then logits = CLIP's own scale · cos(v, t) with t the frozen class features of
one hand template (normalisation after the blend). A(f) = W2 · ReLU(W1 · f) as the paper writes it;
``final_relu`` adds the ReLU the release ends its adapter with (CLIP-Adapter@08d07f8:clip_adapter.py:55-67),
so that x >= 0. The width is read from the model (the release hard-codes RN50's 1024, line 97). The text-side
adapter the paper describes (the release has none) blends the class features the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..backbones import Backbone
from ..labels import ClassNames
from .base import Batch, BuiltinRow, MethodConfig, MethodOptionError, PromptMethod, Recipe, cosine_logits, option
from .prompting import clean_classname
from .recipes import COOP_EPOCHS_BY_SHOTS, COOP_REPO, CPU_SGD, dassl_recipe

CLIP_ADAPTER_REPO = "gaopengcuhk/CLIP-Adapter@08d07f8b2ecafc6f1479fe636b26d464d7a5574e"
_RECIPE = (
    f'{CLIP_ADAPTER_REPO}:README.md ("follow CoOp\'s command"), clip_adapter.py:128 (clip_model.float(): fp32); '
    f"{COOP_REPO}:configs/trainers/CoOp/rn50{{_ep50,_ep100,}}.yaml (SGD lr 0.002, batch 32, Dassl's cosine, crops "
    "and flips), COOP.md:13-22 (50 / 100 / 200 epochs by shots; ImageNet: the ep50 config at every shot)"
)


@dataclass
class CLIPAdapterConfig(MethodConfig):
    """CLIP-Adapter's options (defaults: the paper's image adapter, the release's alpha and reduction).

    Attributes:
        template: the dataset's hand template, with ``{}`` for the class name (the release's CUSTOM_TEMPLATES
            are CoOp's table).
        side: where adapters sit: "image" (the paper's main form and the release's), "text" or "both".
        alpha: the residual ratio of the image adapter (the release's 0.2; the paper tunes it per dataset).
        text_alpha: the residual ratio of the text adapter (the paper's beta).
        reduction: the bottleneck's reduction of the width (hidden width = width // reduction).
        final_relu: end each adapter with a ReLU, as the release does (the paper has none).
    """

    template: str = "a photo of a {}."
    side: Literal["image", "text", "both"] = "image"
    alpha: float = option(0.2, low=0.0, high=1.0)
    text_alpha: float = option(0.2, low=0.0, high=1.0)
    reduction: int = option(4, low=1)
    final_relu: bool = False


def bottleneck(width: int, reduction: int, final_relu: bool) -> nn.Sequential:
    """Linear(width, width // reduction) -> ReLU -> Linear(back to width) [-> ReLU], no biases, torch's default
    (kaiming-uniform) initialisation as the release's nn.Linear."""
    hidden = width // reduction
    layers = [nn.Linear(width, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, width, bias=False)]
    return nn.Sequential(*layers, *([nn.ReLU()] if final_relu else []))


def blend(adapter: nn.Module, features: Tensor, ratio: float) -> Tensor:
    """ratio · adapter(features) + (1 - ratio) · features (unnormalised: logits normalise afterwards)."""
    return ratio * adapter(features) + (1 - ratio) * features


class CLIPAdapter(PromptMethod):
    """Learns only the adapters (W1, W2 per side); CLIP and its hand-template class features stay frozen."""

    name = "clip-adapter"
    Config = CLIPAdapterConfig
    config: CLIPAdapterConfig
    labels: ClassNames
    recipes = {
        "default": dassl_recipe(
            _RECIPE, ("few-shot",), epochs_by_shots=COOP_EPOCHS_BY_SHOTS, batch_size=32, lr=0.002, precision="fp32"
        ),
        "imagenet": dassl_recipe(
            _RECIPE, ("few-shot",), epochs=50, datasets=("imagenet",), batch_size=32, lr=0.002, precision="fp32"
        ),
    }
    builtin_rows = (BuiltinRow("clip-adapter", CPU_SGD.but(lr=0.02), default=False),)
    tiny = Recipe()
    template_option = "template"
    hand: Tensor
    templates_by_dataset = {}  # the release's CUSTOM_TEMPLATES (clip_adapter.py:18-34) equal CoOp's table

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: CLIPAdapterConfig | None = None):
        super().__init__(backbone, classes, config)
        cfg, width = self.config, backbone.embed_dim
        if "{}" not in cfg.template:
            raise MethodOptionError(f"{self.name} option template {cfg.template!r} has no '{{}}' for the class name")
        if width // cfg.reduction < 1:
            raise MethodOptionError(f"{self.name} option reduction must be <= the width {width}, not {cfg.reduction}")
        if cfg.side in ("image", "both"):
            self.image_adapter = bottleneck(width, cfg.reduction, cfg.final_relu).to(backbone.device)
        if cfg.side in ("text", "both"):
            self.text_adapter = bottleneck(width, cfg.reduction, cfg.final_relu).to(backbone.device)
        self._labels_changed(backbone)

    def _labels_changed(self, backbone: Backbone) -> None:
        with torch.no_grad():  # encoded once (the release re-encodes them on every forward)
            hand = backbone.encode_text([self.config.template.format(clean_classname(n)) for n in self.labels.names])
        self.register_buffer("hand", hand.float(), persistent=False)

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        if self.config.side == "image":
            return self.hand
        return blend(self.text_adapter, self.hand, self.config.text_alpha)

    def logits(self, backbone: Backbone, batch: Batch, text: Tensor | None = None) -> Tensor:
        image = self.image_features(backbone, batch).float()
        if self.config.side != "text":
            image = blend(self.image_adapter, image, self.config.alpha)
        return cosine_logits(image, self.text_features(backbone) if text is None else text, backbone.logit_scale)
