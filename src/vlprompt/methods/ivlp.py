"""IVLP: independent deep prompts on both towers, no coupling (Khattak et al., CVPR 2023 baseline).

Follows muzairkhattak/multimodal-prompt-learning (``trainers/independentVL.py`` and the IVLP blocks of
its ``clip/model.py``): text context from the first ``n_ctx_text`` tokens of "a photo of a" with
fresh N(0, 0.02) text prompts replacing the prompt positions before text blocks 1 .. depth_text-1;
N(0, 0.02) image prompt tokens at the input and fresh ones before image blocks 1 .. depth_vision-1.
Widths come from the model; everything stays fp32; the text tower runs with exact truncation; image
prompts sit after the class token (the release appends them; same features up to rounding). The
initial random prompts are drawn in vlprompt's order (the release draws them while building CLIP).

Either depth may be 0 (not both): that tower gets no prompt tokens and runs as frozen CLIP. Image depth 0 is
the release's "language-only" config (deep text prompts, the image tower untouched: ``clip/model.py`` builds
no visual prompts at ``vision_depth`` 0), and its image features are cacheable. The release refuses text
depth 0 (its trainer asserts ``PROMPT_DEPTH_TEXT >= 1`` and points to its VPT trainer); that VPT trainer is
IVLP's image side with the frozen hand-written text "a photo of a {class}.", which is what text depth 0 does
here: the class text is the frozen features of "{ctx_init} {class}." (the release's phrase by default), with
no learned context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..backbones import Backbone
from .base import Batch, BuiltinRow, MethodConfig, MethodOptionError, Recipe
from .maple import PhraseContextPrompts
from .prompting import clean_classname
from .recipes import CPU_TWO_TOWER, MPL_REPO, MPL_VPT_RECIPE, MPL_XD_NOTE, TRANSFER, dassl_recipe


@dataclass
class IVLPConfig(MethodConfig):
    """IVLP hyperparameters (the paper's: 2 + 2 context tokens, depth 9 on both towers).

    Attributes:
        n_ctx_text: learned text context tokens (the first of ``ctx_init``).
        n_ctx_vision: image prompt tokens per block.
        ctx_init: the text prompt's opening words.
        depth_text: text blocks that see prompts, counting the input (0: no text prompts; the class text is the
            frozen "{ctx_init} {class}.").
        depth_vision: image blocks that see prompts, counting the input (0: the frozen image tower).
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
    config: IVLPConfig
    recipes = {
        # the released IVLP config prompts all 12 blocks of each tower (train.py's default is 9)
        "default": dassl_recipe(
            f"{MPL_REPO}:configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml, "
            f"scripts/independent-vlp/base2new_train_ivlp.sh, xd_train_ivlp.sh; {MPL_XD_NOTE}",
            ("base-to-new", *TRANSFER),
            epochs=5,
            batch_size=4,
            lr=0.0035,
        ).with_options(n_ctx_text=2, n_ctx_vision=2, ctx_init="a photo of a", depth_text=12, depth_vision=12),
        # the release's deep language prompting baseline: trainer IVLP with no image prompts (N_CTX_VISION and
        # PROMPT_DEPTH_VISION 0), all four words of "a photo of a" learned, text depth 12
        "language-only": dassl_recipe(
            f"{MPL_REPO}:configs/trainers/IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only.yaml, "
            f"scripts/language-prompting/base2new_train_lp.sh, xd_train_lp.sh; {MPL_XD_NOTE}",
            ("base-to-new", *TRANSFER),
            epochs=5,
            batch_size=4,
            lr=0.0025,
        ).with_options(n_ctx_text=4, n_ctx_vision=0, ctx_init="a photo of a", depth_text=12, depth_vision=0),
        # the release's deep vision prompting baseline: trainer VPT, which builds IVLP's image prompts (clip/model.py:
        # the same blocks, N(0, 0.02) init, no text prompts) and scores with frozen "a photo of a {class}." text
        "vision-only": MPL_VPT_RECIPE.with_options(
            n_ctx_text=0, n_ctx_vision=8, ctx_init="a photo of a", depth_text=0, depth_vision=12
        ),
    }
    builtin_rows = (BuiltinRow("ivlp", CPU_TWO_TOWER.with_options(depth_text=3, depth_vision=3), default=False),)
    tiny = Recipe(options={"depth_text": 2, "depth_vision": 2})  # the tiny towers have 2 blocks
    template_option = None
    hand_text: Tensor

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: IVLPConfig | None = None):
        super().__init__(backbone, classes, config)
        cfg = self.config
        self._check_depths(cfg)
        self.has_context = cfg.depth_text > 0  # this instance's flags (see capabilities)
        self.changes_image_tower = cfg.depth_vision > 0  # a frozen image tower's features are cacheable
        if cfg.depth_vision > 0:
            backbone.check_token_prompts(cfg.depth_vision)
        if cfg.depth_text > 0:
            self._init_context(backbone, cfg.n_ctx_text, cfg.ctx_init, cfg.init_std, cfg.depth_text)
            shape = (cfg.depth_text - 1, cfg.n_ctx_text, backbone.text_width)
            self.deep_text = nn.Parameter(nn.init.normal_(torch.empty(shape), std=cfg.init_std))
        if cfg.depth_vision > 0:
            shape = (cfg.depth_vision, cfg.n_ctx_vision, backbone.vision_width)
            self.vision = nn.Parameter(nn.init.normal_(torch.empty(shape), std=cfg.init_std))
        self.to(backbone.device)
        self._labels_changed(backbone)

    def _check_depths(self, cfg: IVLPConfig) -> None:
        if cfg.depth_text < 0 or cfg.depth_vision < 0:
            raise MethodOptionError(
                f"{self.name} options depth_text and depth_vision must be >= 0, not {cfg.depth_text} and "
                f"{cfg.depth_vision}"
            )
        if cfg.depth_text == 0 and cfg.depth_vision == 0:
            raise MethodOptionError(
                f"{self.name} options depth_text and depth_vision are both 0: at least one tower needs prompts "
                "(0 leaves that tower frozen; method zeroshot prompts neither)"
            )
        towers = (("text", cfg.depth_text, cfg.n_ctx_text), ("vision", cfg.depth_vision, cfg.n_ctx_vision))
        for tower, depth, n_ctx in towers:
            if depth > 0 and n_ctx < 1:
                raise MethodOptionError(
                    f"{self.name} option n_ctx_{tower} must be >= 1 with depth_{tower} {depth}, not {n_ctx}"
                )

    @classmethod
    def capabilities(cls, config: IVLPConfig | None = None) -> dict[str, bool]:  # type: ignore[override]
        config = config if config is not None else cls.Config()
        flags = super().capabilities(config)
        flags["changes_image_tower"] = config.depth_vision > 0
        flags["has_context"] = config.depth_text > 0
        return flags

    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device  # one tower at least has prompts

    def _labels_changed(self, backbone: Backbone) -> None:
        if self.config.depth_text > 0:
            super()._labels_changed(backbone)
            return
        texts = [f"{self.config.ctx_init} {clean_classname(n)}.".strip() for n in self.labels.names]
        self.register_buffer("hand_text", backbone.encode_text(texts).to(self._device), persistent=False)

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        if self.config.depth_text == 0:
            return self.hand_text  # frozen CLIP on the hand-written prompt
        deep = list(self.deep_text) or None  # depth 1: the input prompts only (an empty list would count no prompts)
        return self.layout.encode(backbone, self.ctx, deep_prompts=deep)

    def image_features(self, backbone: Backbone, batch: Batch) -> Tensor:
        if self.config.depth_vision == 0:
            return super().image_features(backbone, batch)  # frozen CLIP: cached features, or the plain tower
        assert batch.pixels is not None  # it changes the image tower: batches carry pixels
        return backbone.encode_image(batch.pixels, token_prompts=self.vision[0], deep_prompts=list(self.vision[1:]))

    @torch.no_grad()
    def nearest_words(self, backbone: Backbone, k: int = 3) -> list[list[tuple[str, float]]]:
        if self.config.depth_text == 0:
            raise MethodOptionError(f"{self.name} with depth_text 0 learns no text context to interpret")
        return super().nearest_words(backbone, k)
