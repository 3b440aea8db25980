"""MaPLe: multi-modal prompt learning, text prompts coupled to the image tower (Khattak et al., CVPR 2023).

Follows muzairkhattak/multimodal-prompt-learning (``trainers/maple.py`` and its ``clip/model.py``):
the prompt is "a photo of a {class}." with its first ``n_ctx`` tokens learned (so "of a" stay fixed
words); the learned context, projected by ``Linear(text width, vision width)``, is the image tower's
input prompt; for blocks 1 .. depth-1 a separate learned text prompt replaces the text tower's prompt
positions and, through its own projection, the image tower's. The deep projections start as copies of
one initialisation, as the reference's ``_get_clones`` makes them.

Where this differs, deliberately: widths come from the model (the release hard-codes 512 / 768);
everything stays fp32 (the release casts every visual and deep prompt to fp16 with ``.half()`` even
in fp32 runs, which moves logits by about 1e-4); the text tower runs with exact truncation; image
prompt tokens sit after the class token (the release appends them; same features up to rounding).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..backbones import Backbone
from ..labels import ClassNames
from .base import Batch, BuiltinRow, MethodConfig, MethodOptionError, PromptMethod, Recipe
from .coop import nearest_words
from .prompting import PromptLayout, initial_context
from .recipes import CPU_TWO_TOWER, MPL_REPO, TRANSFER, dassl_recipe


@dataclass
class MaPLeConfig(MethodConfig):
    """MaPLe hyperparameters (the paper's).

    Attributes:
        n_ctx: learned context tokens (the first ``n_ctx`` of ``ctx_init``; random N(0, 0.02) when
            ``ctx_init`` is empty or shorter).
        ctx_init: the prompt's opening words.
        depth: blocks that see prompts, counting the input (J; 1 = shallow MaPLe).
        init_std: std of the N(0, std) deep text prompts.
    """

    n_ctx: int = 2
    ctx_init: str = "a photo of a"
    depth: int = 9
    init_std: float = 0.02


class PhraseContextPrompts(PromptMethod):
    """What MaPLe and IVLP share: context on the first n tokens of an opening phrase, deep text prompts.

    Subclasses call :meth:`_init_context`, then create ``deep_text`` (one [n, width] prompt per text
    block after the first, as a ParameterList or a [depth - 1, n, width] tensor) and their image side.
    """

    changes_image_tower = True
    has_context = True
    labels: ClassNames
    deep_text: nn.ParameterList | Tensor

    def _init_context(self, backbone: Backbone, n_ctx: int, ctx_init: str, std: float, depth_text: int) -> None:
        if depth_text > backbone.text_layers:
            raise MethodOptionError(
                f"{self.name} text depth {depth_text} exceeds the {backbone.text_layers}-layer text tower"
            )
        if ctx_init and backbone.bpe_length(ctx_init) >= n_ctx:
            ctx, self.prefix_text = initial_context(backbone, 0, ctx_init)[:n_ctx].clone(), ctx_init
        else:
            ctx, self.prefix_text = initial_context(backbone, n_ctx, "", std), ""
        self.ctx = nn.Parameter(ctx.to(backbone.device))

    def _labels_changed(self, backbone: Backbone) -> None:
        layout = PromptLayout(backbone, self.labels.names, self.ctx.shape[0], prefix_text=self.prefix_text)
        self.layout = layout.to(self.ctx.device)

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        return self.layout.encode(backbone, self.ctx, deep_prompts=list(self.deep_text) or None)

    @torch.no_grad()
    def nearest_words(self, backbone: Backbone, k: int = 3) -> list[list[tuple[str, float]]]:
        """For each learned (input-layer) text context vector, the ``k`` nearest vocabulary words."""
        return nearest_words(backbone, self.ctx, k)


class MaPLe(PhraseContextPrompts):
    """Coupled prompts: text context and deep text prompts, each projected into the image tower."""

    name = "maple"
    Config = MaPLeConfig
    config: MaPLeConfig
    recipes = {
        "default": dassl_recipe(
            f"{MPL_REPO}:configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml, scripts/maple/base2new_train_maple.sh",
            ("base-to-new",),
            epochs=5,
            batch_size=4,
            lr=0.0035,
        ).with_options(n_ctx=2, ctx_init="a photo of a", depth=9),
        "cross-dataset": dassl_recipe(
            f"{MPL_REPO}:configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml, "
            "scripts/maple/xd_train_maple.sh",
            TRANSFER,
            epochs=2,
            batch_size=4,
            lr=0.0026,
        ).with_options(n_ctx=2, ctx_init="a photo of a", depth=3),
    }
    builtin_rows = (BuiltinRow("maple", CPU_TWO_TOWER.with_options(depth=3)),)
    tiny = Recipe(options={"depth": 2})  # the tiny towers have 2 blocks
    template_option = None

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: MaPLeConfig | None = None):
        super().__init__(backbone, classes, config)
        cfg = self.config
        if cfg.depth < 1 or cfg.n_ctx < 1:
            raise MethodOptionError(f"maple needs depth >= 1 and n_ctx >= 1, not depth={cfg.depth}, n_ctx={cfg.n_ctx}")
        backbone.check_token_prompts(cfg.depth)
        self._init_context(backbone, cfg.n_ctx, cfg.ctx_init, cfg.init_std, cfg.depth)
        text_width, vision_width = backbone.text_width, backbone.vision_width
        self.proj = nn.Linear(text_width, vision_width)
        self.deep_text = nn.ParameterList(
            nn.Parameter(nn.init.normal_(torch.empty(cfg.n_ctx, text_width), std=cfg.init_std))
            for _ in range(cfg.depth - 1)
        )
        one = nn.Linear(text_width, vision_width)
        self.deep_proj = nn.ModuleList(copy.deepcopy(one) for _ in range(cfg.depth - 1))
        self.to(backbone.device)
        self._labels_changed(backbone)

    def image_features(self, backbone: Backbone, batch: Batch) -> Tensor:
        deep = [proj(prompts) for proj, prompts in zip(self.deep_proj, self.deep_text)]
        assert batch.pixels is not None  # it changes the image tower: batches carry pixels
        return backbone.encode_image(batch.pixels, token_prompts=self.proj(self.ctx), deep_prompts=deep)
