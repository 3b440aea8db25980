"""IVLP: independent deep prompts on both towers, no coupling (Khattak et al., CVPR 2023 baseline).

Follows muzairkhattak/multimodal-prompt-learning (``trainers/independentVL.py`` and the IVLP blocks of
its ``clip/model.py``): text context from the first ``n_ctx_text`` tokens of "a photo of a" with
fresh N(0, 0.02) text prompts replacing the prompt positions before text blocks 1 .. depth_text-1;
N(0, 0.02) image prompt tokens at the input and fresh ones before image blocks 1 .. depth_vision-1.
Widths come from the model; everything stays fp32; the text tower runs with exact truncation; image
prompts sit after the class token (the release appends them; same features up to rounding). The
initial random prompts are drawn in vlprompt's order (the release draws them while building CLIP).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..backbones import Backbone
from .base import Batch, BuiltinRow, MethodConfig, MethodOptionError, Recipe
from .maple import PhraseContextPrompts
from .recipes import CPU_TWO_TOWER, MPL_REPO, TRANSFER, dassl_recipe


@dataclass
class IVLPConfig(MethodConfig):
    """IVLP hyperparameters (the paper's: 2 + 2 context tokens, depth 9 on both towers).

    Attributes:
        n_ctx_text: learned text context tokens (the first of ``ctx_init``).
        n_ctx_vision: image prompt tokens per block.
        ctx_init: the text prompt's opening words.
        depth_text: text blocks that see prompts, counting the input.
        depth_vision: image blocks that see prompts, counting the input.
        init_std: std of the N(0, std) prompts.
    """

    n_ctx_text: int = 2
    n_ctx_vision: int = 2
    ctx_init: str = "a photo of a"
    depth_text: int = 9
    depth_vision: int = 9
    init_std: float = 0.02


class IVLP(PhraseContextPrompts):
    """Independent vision-language prompting: deep prompts on each tower, learned separately."""

    name = "ivlp"
    Config = IVLPConfig
    recipes = {
        # the released IVLP config prompts all 12 blocks of each tower (train.py's default is 9); its
        # language-only config (vit_b16_c2_ep5_batch4_4ctx_language_only.yaml: lr 0.0025, 4 text tokens, depth 12,
        # no image prompts) is not expressible yet: ivlp needs depth_vision >= 1
        "default": dassl_recipe(
            f"{MPL_REPO}:configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml, "
            "scripts/independent-vlp/base2new_train_ivlp.sh, xd_train_ivlp.sh",
            ("base-to-new", *TRANSFER),
            epochs=5,
            batch_size=4,
            lr=0.0035,
        ).with_options(n_ctx_text=2, n_ctx_vision=2, ctx_init="a photo of a", depth_text=12, depth_vision=12)
    }
    builtin_rows = (BuiltinRow("ivlp", CPU_TWO_TOWER.with_options(depth_text=3, depth_vision=3), default=False),)
    tiny = Recipe(options={"depth_text": 2, "depth_vision": 2})  # the tiny towers have 2 blocks
    template_option = None

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: IVLPConfig | None = None):
        super().__init__(backbone, classes, config)
        cfg = self.config
        if min(cfg.depth_text, cfg.depth_vision, cfg.n_ctx_text, cfg.n_ctx_vision) < 1:
            raise MethodOptionError("ivlp needs depths and context sizes >= 1")
        backbone.check_token_prompts(cfg.depth_vision)
        self._init_context(backbone, cfg.n_ctx_text, cfg.ctx_init, cfg.init_std, cfg.depth_text)
        shape = (cfg.depth_text - 1, cfg.n_ctx_text, backbone.text_width)
        self.deep_text = nn.Parameter(nn.init.normal_(torch.empty(shape), std=cfg.init_std))
        shape = (cfg.depth_vision, cfg.n_ctx_vision, backbone.vision_width)
        self.vision = nn.Parameter(nn.init.normal_(torch.empty(shape), std=cfg.init_std))
        self.to(backbone.device)
        self._labels_changed(backbone)

    def image_features(self, backbone: Backbone, batch: Batch) -> Tensor:
        return backbone.encode_image(batch.pixels, token_prompts=self.vision[0], deep_prompts=list(self.vision[1:]))
