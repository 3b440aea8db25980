"""UPT: unified prompt tuning, one shared prompt generating both towers' prompts (Zang et al., 2022).

Follows the surviving release (``trainers/unified.py``): 2 · n_ctx shared tokens, N(0, 0.02), through
one light block (1-head self-attention with dropout 0.1, residual then LayerNorm; an MLP d→d, ReLU,
d→d on a LayerNorm'd input with a residual); the first n_ctx outputs are the text context (CoOp-style,
class at the end), the others go through ``Linear(text width, vision width)`` into visual prompt
tokens between the class token and the patches. The block runs once for each tower, as in the release.

Where this differs, deliberately: the prompt tokens attend to each other, as the paper describes. The
release feeds a (1, L, D) tensor to a sequence-first attention layer, so each token attends only to
itself; ``isolate_tokens_in_attention=True`` reproduces that. Widths come from the model, and the
text context length is ``n_ctx`` (the release hard-codes 4 and ignores its CTX_INIT).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone
from ..labels import ClassNames
from .base import Batch, BuiltinRow, MethodConfig, MethodOptionError, PromptMethod, Recipe
from .prompting import PromptLayout
from .recipes import COOP_EPOCHS_BY_SHOTS, COOP_REPO, CPU_TWO_TOWER, UPT_REPO, dassl_recipe


@dataclass
class UPTConfig(MethodConfig):
    """UPT hyperparameters.

    Attributes:
        n_ctx: text context tokens, and visual prompt tokens (2 · n_ctx shared tokens in all).
        dropout: dropout in the generator block.
        isolate_tokens_in_attention: each token attends only to itself (the official release's
            behaviour, see the module docstring); default: the paper's attention across all tokens.
        init_std: std of the N(0, std) shared tokens.
    """

    n_ctx: int = 4
    dropout: float = 0.1
    isolate_tokens_in_attention: bool = False
    init_std: float = 0.02


class UPT(PromptMethod):
    """Text context and visual prompt tokens generated from one shared set of learned tokens."""

    name = "upt"
    Config = UPTConfig
    config: UPTConfig
    labels: ClassNames
    recipes = {
        # the release maps no shots to configs: CoOp's mapping, which its ep50 / ep100 / ep200 configs follow
        "default": dassl_recipe(
            f"{UPT_REPO}:configs/trainers/Unified/vit_b16_ep{{50,100,200}}.yaml; {COOP_REPO}:COOP.md:18-22",
            ("few-shot",),
            epochs_by_shots=COOP_EPOCHS_BY_SHOTS,
            batch_size=32,
            lr=0.002,
        ),
        "base-to-new": dassl_recipe(
            f"{UPT_REPO}:configs/trainers/Unified/vit_b16_ep200.yaml, scripts/unified/base2new_train_*.sh (16 shots; "
            "Caltech-101's names a vit_b16_ep10 config the release does not have)",
            ("base-to-new",),
            epochs=200,
            batch_size=32,
            lr=0.002,
        ),
        "base-to-new-imagenet": dassl_recipe(
            f"{UPT_REPO}:configs/trainers/Unified/vit_b16_ep50.yaml, scripts/unified/base2new_train_imagenet.sh",
            ("base-to-new",),
            epochs=50,
            datasets=("imagenet",),
            batch_size=32,
            lr=0.002,
        ),
    }
    builtin_rows = (BuiltinRow("upt", CPU_TWO_TOWER, default=False),)
    tiny = Recipe(options={"dropout": 0.0})  # dropout draws from each process's own RNG stream
    template_option = None
    changes_image_tower = True

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: UPTConfig | None = None):
        super().__init__(backbone, classes, config)
        cfg, width = self.config, backbone.text_width
        if cfg.n_ctx < 1:
            raise MethodOptionError(f"upt n_ctx must be >= 1, not {cfg.n_ctx}")
        backbone.check_token_prompts()
        self.shared = nn.Parameter(nn.init.normal_(torch.empty(2 * cfg.n_ctx, width), std=cfg.init_std))
        self.attention = nn.MultiheadAttention(width, 1, dropout=cfg.dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.linear1 = nn.Linear(width, width)
        self.linear2 = nn.Linear(width, width)
        self.to_vision = nn.Linear(width, backbone.vision_width)
        self.to(backbone.device)
        self._labels_changed(backbone)

    def _labels_changed(self, backbone: Backbone) -> None:
        self.layout = PromptLayout(backbone, self.labels.names, self.config.n_ctx).to(self.shared.device)

    def generate(self) -> Tensor:
        """The block's output [2 · n_ctx, width]: text context first, then the visual half."""
        drop = partial(F.dropout, p=self.config.dropout, training=self.training)
        x = self.shared[:, None] if self.config.isolate_tokens_in_attention else self.shared[None]
        x = self.norm1(x + drop(self.attention(x, x, x, need_weights=False)[0]))  # post-norm
        x = x + drop(self.linear2(drop(F.relu(self.linear1(self.norm2(x))))))  # pre-norm MLP
        return x.reshape(-1, x.shape[-1])

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        return self.layout.encode(backbone, self.generate()[: self.config.n_ctx])

    def image_features(self, backbone: Backbone, batch: Batch) -> Tensor:
        visual = self.to_vision(self.generate()[self.config.n_ctx :])
        assert batch.pixels is not None  # it changes the image tower: batches carry pixels
        return backbone.encode_image(batch.pixels, token_prompts=visual)
