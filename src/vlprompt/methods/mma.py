"""MMA, the multi-modal adapter (Yang, Zhang, Wang & Xie, CVPR 2024).

Follows ZjjConan/Multi-Modal-Adapter (``trainers/mmadapter.py``, ``clip/model.py:188-215``, ``clip/gsl.py``): no
learned tokens (the text is the fixed "a photo of a {class}."); on each block with 1-based index l in
[``start``, ``end``] = [5, 12] of *both* towers, the block's output gains, at every token,

    r = up_l(shared_l(down_l(ln_1(x)))) · α

with x the block's input and ln_1 its own frozen LayerNorm; down_l = Linear(d, 32) + ReLU and up_l = Linear(32, d)
belong to each tower, shared_l = Linear(32, 32) + ReLU is one module per layer called by both towers; α =
``scale`` = 0.001. Gradient scaling (``gradient_scaling``, the release's GSL): the adapter reads x with its
gradient scaled by α and emits r with its gradient scaled by 1/α, so its parameters get 1/α times their true
gradient while x gets the exact one. Every Linear starts kaiming_normal_(fan_out, relu) with zero bias, drawn in
the release's order (text adapters, image adapters, shared). Loss: cross-entropy.

Where this differs, deliberately: widths come from the model; evaluation encodes the class features once per
evaluation (the release caches them at its first test forward and never refreshes them); ``start`` 0 (the
release's adapter on the token embeddings and ``ln_pre``'s output) is not offered; the shared adapters number
``end − start + 1`` (the release sizes that list by the image tower's depth, its unused entries empty). The recipe
is the release's (its "amp" is fp16 autocast over fp32 weights, as ``precision: fp16`` here): it reproduces it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from ..backbones import Backbone
from ..labels import ClassNames
from .base import Batch, BuiltinRow, MethodConfig, MethodOptionError, PromptMethod, Recipe, option
from .prompting import clean_classname
from .recipes import CPU_TWO_TOWER, dassl_recipe

MMA_REPO = "ZjjConan/Multi-Modal-Adapter@547ee345a4dc5d60d43d3aa54e8eee50a107f591"


@dataclass
class MMAConfig(MethodConfig):
    """MMA hyperparameters (the release's base-to-new config).

    Attributes:
        template: the fixed text, ``{}`` for the class name (``TEXT_CTX_INIT`` "a photo of a" + class + ".").
        start: the first adapted block, 1-based (``ADAPTER_START``).
        end: the last adapted block, 1-based (``ADAPTER_END``).
        dim: the adapters' bottleneck width (``ADAPTER_DIM``).
        scale: α, the adapters' output scale (``ADAPTER_SCALE``; the yaml's 0.001, train.py's default 0.1).
        gradient_scaling: the release's gradient scaling (False: plain autograd, the adapters' true gradient).
    """

    template: str = "a photo of a {}."
    start: int = option(5, low=1)
    end: int = option(12, low=1)
    dim: int = option(32, low=1)
    scale: float = option(0.001, low=1e-12)
    gradient_scaling: bool = True


class _ScaleGradient(torch.autograd.Function):
    """The identity forward; the gradient times ``scale`` backward (the release's ``GradientScaleLayer``)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` forward, its gradient multiplied by ``scale`` backward."""
    return _ScaleGradient.apply(x, scale)


class TowerAdapter(nn.Module):
    """One tower's adapter of one block: ``down`` (Linear(width, dim) + ReLU) and ``up`` (Linear(dim, width))."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        self.down = nn.Sequential(nn.Linear(width, dim), nn.ReLU())
        self.up = nn.Linear(dim, width)


def _kaiming(modules: nn.ModuleList) -> nn.ModuleList:
    """kaiming_normal_(fan_out, relu) weights and zero biases for every Linear (the release's ``_build_adapter``)."""
    for m in modules.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return modules


class MMA(PromptMethod):
    """Adapters on the higher blocks of both towers, coupled by a shared projection per block."""

    name = "mma"
    Config = MMAConfig
    config: MMAConfig
    labels: ClassNames
    changes_image_tower = True
    recipes = {
        "default": dassl_recipe(
            f"{MMA_REPO}:configs/trainers/MultiModalAdapter/vit_b16_ep5.yaml, scripts/mmadapter/base2new_train.sh, "
            "run_examples.sh",
            ("base-to-new",),
            epochs=5,
            batch_size=16,
            lr=0.0015,
            warmup_epochs=0,
        ).with_options(start=5, end=12, dim=32, scale=0.001),
        "imagenet": dassl_recipe(
            f"{MMA_REPO}:configs/trainers/MultiModalAdapter/vit_b16_ep5_imnet.yaml, run_examples.sh",
            ("base-to-new",),
            datasets=("imagenet",),
            epochs=5,
            batch_size=128,
            lr=0.0015,
            warmup_epochs=0,
        ).with_options(start=5, end=12, dim=32, scale=0.001),
    }
    # the bundled model has 3 blocks a tower: blocks 2-3 (5-12 of 12)
    builtin_rows = (BuiltinRow("mma", CPU_TWO_TOWER.with_options(start=2, end=3), default=False),)
    tiny = Recipe(options={"start": 1, "end": 2, "dim": 8})  # the tiny towers have 2 blocks
    template_option = "template"
    authors_template = "a photo of a {}."
    embeds: Tensor
    eot: Tensor

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: MMAConfig | None = None):
        super().__init__(backbone, classes, config)
        cfg = self.config
        if "{}" not in cfg.template:
            raise MethodOptionError(f"mma option template {cfg.template!r} has no '{{}}' for the class name")
        if cfg.start > cfg.end:
            raise MethodOptionError(f"mma option start ({cfg.start}) must not exceed end ({cfg.end})")
        backbone.check_block_residuals(cfg.end)
        count = cfg.end - cfg.start + 1
        self.text_adapters = _kaiming(nn.ModuleList(TowerAdapter(backbone.text_width, cfg.dim) for _ in range(count)))
        self.image_adapters = _kaiming(
            nn.ModuleList(TowerAdapter(backbone.vision_width, cfg.dim) for _ in range(count))
        )
        self.shared = _kaiming(
            nn.ModuleList(nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.ReLU()) for _ in range(count))
        )
        self.to(backbone.device)
        self._labels_changed(backbone)

    def _labels_changed(self, backbone: Backbone) -> None:
        ids = backbone.tokenize([self.config.template.format(clean_classname(n)) for n in self.labels.names])
        eot = backbone.eot_index(ids)
        self.register_buffer("embeds", backbone.token_embedding(ids[:, : int(eot.max()) + 1]), persistent=False)
        self.register_buffer("eot", eot, persistent=False)

    def residuals(self, adapters: nn.ModuleList) -> dict[int, Callable[[Tensor], Tensor]]:
        """The tower's block residuals (block index, 0-based -> r of that block's normalised input)."""
        first = self.config.start - 1
        return {
            first + k: self._residual(cast(TowerAdapter, adapter), shared)
            for k, (adapter, shared) in enumerate(zip(adapters, self.shared))
        }

    def _residual(self, adapter: TowerAdapter, shared: nn.Module) -> Callable[[Tensor], Tensor]:
        alpha, scaled = self.config.scale, self.config.gradient_scaling

        def residual(normed: Tensor) -> Tensor:
            x = scale_gradient(normed, alpha) if scaled else normed
            r = adapter.up(shared(adapter.down(x))) * alpha
            return scale_gradient(r, 1.0 / alpha) if scaled else r

        return residual

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        return backbone.encode_text_embeddings(
            self.embeds, self.eot, block_residuals=self.residuals(self.text_adapters)
        )

    def image_features(self, backbone: Backbone, batch: Batch) -> Tensor:
        assert batch.pixels is not None  # it changes the image tower: batches carry pixels
        return backbone.encode_image(batch.pixels, block_residuals=self.residuals(self.image_adapters))
