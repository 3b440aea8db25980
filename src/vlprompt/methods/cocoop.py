"""CoCoOp: CoOp's context shifted per image by a meta-network (Zhou et al., CVPR 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone
from ..labels import ClassNames
from .base import BuiltinRow, MethodConfig, PromptMethod, Recipe, option
from .coop import nearest_words
from .prompting import PromptLayout, initial_context
from .recipes import COOP_REPO, CPU_SGD, TRANSFER, dassl_recipe


@dataclass
class CoCoOpConfig(MethodConfig):
    """CoCoOp hyperparameters.

    Attributes:
        n_ctx: context length when ``ctx_init`` is empty (random N(0, 0.02) init).
        ctx_init: phrase whose word embeddings initialise the context.
        meta_reduction: hidden width of the meta-network = image feature dim // this.
        chunk_size: prompts per text-encoder pass (all images × classes are batched).
    """

    n_ctx: int = option(4, low=1)
    ctx_init: str = "a photo of a"
    meta_reduction: int = option(16, low=1)
    chunk_size: int = option(8192, low=1)


class CoCoOp(PromptMethod):
    """Conditional context: ``ctx + meta_net(normalize(image feature))`` for every image.

    The reference loops over images and encodes all classes per image (batch size 1). Here the
    prompts for all B images × C classes go through the text tower in one chunked, batched pass.
    """

    name = "cocoop"
    Config = CoCoOpConfig
    config: CoCoOpConfig
    labels: ClassNames
    recipes = {
        "default": dassl_recipe(
            f"{COOP_REPO}:configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml, scripts/cocoop/base2new_train.sh, "
            "xd_train.sh",
            ("base-to-new", *TRANSFER),
            epochs=10,
            batch_size=1,
            lr=0.002,
        ).with_options(n_ctx=4, ctx_init="a photo of a")
    }
    builtin_rows = (BuiltinRow("cocoop", CPU_SGD.but(epochs=4, batch_size=16, lr=0.02)),)
    tiny = Recipe(options={"meta_reduction": 1})  # a wide meta-net: no all-dead ReLU layer
    template_option = None
    conditions_on_image = True
    has_context = True

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: CoCoOpConfig | None = None):
        super().__init__(backbone, classes, config)
        cfg = self.config
        self.ctx = nn.Parameter(initial_context(backbone, cfg.n_ctx, cfg.ctx_init).float().to(backbone.device))
        hidden = max(1, backbone.embed_dim // cfg.meta_reduction)
        self.meta_net = nn.Sequential(
            nn.Linear(backbone.embed_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, backbone.text_width),
        ).to(backbone.device)
        self._labels_changed(backbone)

    def _labels_changed(self, backbone: Backbone) -> None:
        self.layout = PromptLayout(backbone, self.labels.names, self.ctx.shape[0]).to(self.ctx.device)

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        if image_features is None:
            raise ValueError("CoCoOp's class features depend on the image: pass image_features")
        shift = self.meta_net(F.normalize(image_features.float(), dim=-1))  # [B, d]
        ctx = self.ctx.unsqueeze(0) + shift.unsqueeze(1)  # [B, n, d]
        return self.layout.encode(backbone, ctx.unsqueeze(1), self.config.chunk_size)  # [B, C, D]

    @torch.no_grad()
    def nearest_words(self, backbone: Backbone, k: int = 3) -> list[list[tuple[str, float]]]:
        """For each learned (image-independent) context vector, the ``k`` nearest vocabulary words."""
        return nearest_words(backbone, self.ctx, k)
