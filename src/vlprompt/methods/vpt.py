"""VPT: learned prompt tokens inside the vision transformer (Jia et al., ECCV 2022), shallow or deep.

Follows KMnP/vpt (``src/models/vit_prompt``): n tokens after the class token, after the positional
embedding and with none of their own; deep VPT replaces them with a fresh set before each of the
first ``depth`` blocks; init uniform(−v, v) with v = sqrt(6 / (3 · patch² + width)); dropout on the
prompts. The pooled feature excludes the prompt tokens. On CLIP the class side is frozen hand-written
text ("a photo of a {}."), as in the MaPLe repository's VPT baseline (the paper trains a linear head
on a supervised ViT instead). Where prompt tokens sit is the adapter's one rule (see
:meth:`~vlprompt.backbones.Backbone.encode_image`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone
from .base import Batch, BuiltinRow, MethodOptionError, Recipe
from .recipes import CPU_VISUAL, MPL_VPT_RECIPE, VPT_REPO
from .zeroshot import ZeroShot, ZeroShotConfig


@dataclass
class VPTConfig(ZeroShotConfig):
    """VPT hyperparameters.

    Attributes:
        n_tokens: prompt tokens per layer.
        deep: fresh prompts before each of the first ``depth`` blocks (False: the input only).
        depth: how many blocks see fresh prompts when ``deep`` (0: every block).
        dropout: dropout on the prompt tokens in training.
    """

    n_tokens: int = 8
    deep: bool = False
    depth: int = 0
    dropout: float = 0.0


class VPT(ZeroShot):
    """Visual prompt tuning with frozen class text: ``logits = scale · cos(f(x; prompts), class text)``."""

    name = "vpt"
    Config = VPTConfig
    config: VPTConfig
    recipes = {
        # VPT on CLIP as the CLIP prompt-learning papers run it (MaPLe's "deep vision prompting" baseline): 8 tokens
        # in all 12 blocks, frozen "a photo of a {}." class text. Not expressible yet: that release initialises
        # the prompts N(0, 0.02) (clip/model.py) where vlprompt's VPT uses KMnP's uniform init.
        "default": MPL_VPT_RECIPE.with_options(n_tokens=8, deep=True, depth=12),
        # the original VPT paper's recipe (a supervised ViT with a linear head; not a CLIP paper's)
        "kmnp": Recipe(
            train={
                "epochs": 100,
                "batch_size": 128,
                "lr": 0.125,
                "momentum": 0.9,
                "weight_decay": 1e-4,
                "schedule": "cosine",
                "warmup_epochs": 10,
            },
            source=f"{VPT_REPO}:configs/base-prompt.yaml; lr: one point (0.25 x batch/256) of the grid "
            "tune_fgvc.py:151-156 searches, not a released value (configs/prompt/*.yaml set 0.1 / 0.01 on CUB and "
            "NABirds, 0.001 / 1e-4 on Cars, Dogs and Flowers)",
        ),
    }
    builtin_rows = (BuiltinRow("vpt-deep", CPU_VISUAL.but(lr=0.5).with_options(n_tokens=8, deep=True), default=False),)
    tiny = Recipe(options={"n_tokens": 2, "deep": True})
    template_option = "templates"
    authors_template = "a photo of a {}."  # MaPLe's trainers/vpt.py: "a photo of a" + name + "."
    learns = True
    changes_image_tower = True

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: VPTConfig | None = None):
        super().__init__(backbone, classes, config)
        cfg = self.config
        depth = (cfg.depth or backbone.vision_layers) if cfg.deep else 1
        backbone.check_token_prompts(depth)
        if cfg.n_tokens < 1:
            raise MethodOptionError(f"vpt n_tokens must be >= 1, not {cfg.n_tokens}")
        width = backbone.vision_width
        bound = math.sqrt(6.0 / (3 * backbone.patch_size**2 + width))
        self.prompts = nn.Parameter(torch.empty(depth, cfg.n_tokens, width).uniform_(-bound, bound))
        self.to(backbone.device)

    def image_features(self, backbone: Backbone, batch: Batch) -> Tensor:
        prompts: Tensor = self.prompts
        if self.config.dropout > 0:
            prompts = F.dropout(prompts, self.config.dropout, self.training)
        assert batch.pixels is not None  # it changes the image tower: batches carry pixels
        return backbone.encode_image(batch.pixels, token_prompts=prompts[0], deep_prompts=list(prompts[1:]))
