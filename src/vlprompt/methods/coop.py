"""CoOp: learned context vectors in front of (or around) the class name (Zhou et al., IJCV 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..backbones import Backbone, BackboneError
from ..labels import ClassNames
from .base import BuiltinRow, MethodConfig, MethodInputError, PromptMethod, Recipe, option
from .prompting import CLASS_POSITIONS, PromptLayout, initial_context
from .recipes import COOP_EPOCHS_BY_SHOTS, COOP_REPO, CPU_MULTITASK, CPU_SGD, TRANSFER, dassl_recipe


@dataclass
class CoOpConfig(MethodConfig):
    """CoOp hyperparameters.

    Attributes:
        n_ctx: number of context vectors (ignored when ``ctx_init`` is given: its BPE length is used).
        ctx_init: initialise the context from this phrase's word embeddings (e.g. "a photo of a").
        class_specific: one context per class instead of one shared by all classes. Unlike the
            reference code, this also works together with ``ctx_init``.
        class_token_position: "end", "middle" or "front".
        init_std: standard deviation of the random N(0, std) initialisation.
    """

    n_ctx: int = option(16, low=1)
    ctx_init: str = ""
    class_specific: bool = False
    class_token_position: str = option("end", choices=CLASS_POSITIONS)
    init_std: float = option(0.02, low=0.0)


class CoOp(PromptMethod):
    """Context optimisation: ``[ctx_1 .. ctx_n] [class].`` with learned ``ctx``."""

    name = "coop"
    Config = CoOpConfig
    config: CoOpConfig
    labels: ClassNames
    recipes = {
        # few-shot: 16 random context tokens (N_CTX 16 in scripts/coop/main.sh), epochs by shots (COOP.md)
        "default": dassl_recipe(
            f"{COOP_REPO}:configs/trainers/CoOp/vit_b16{{_ep50,_ep100,}}.yaml, scripts/coop/main.sh, COOP.md",
            ("few-shot",),
            batch_size=32,
            lr=0.002,
            epochs_by_shots=COOP_EPOCHS_BY_SHOTS,
        ).with_options(n_ctx=16, ctx_init=""),
        "imagenet": dassl_recipe(
            f"{COOP_REPO}:configs/trainers/CoOp/vit_b16_ep50.yaml, COOP.md (ImageNet: *_ep50.yaml for all settings)",
            ("few-shot",),
            datasets=("imagenet",),
            epochs=50,
            batch_size=32,
            lr=0.002,
        ).with_options(n_ctx=16, ctx_init=""),
        # base-to-new: CoCoOp's scripts run CoOp with 4 tokens from "a photo of a" (CFG vit_b16_ctxv1, 200 epochs)
        "base-to-new": dassl_recipe(
            f"{COOP_REPO}:configs/trainers/CoOp/vit_b16_ctxv1.yaml, scripts/cocoop/base2new_train.sh (TRAINER=CoOp)",
            ("base-to-new",),
            epochs=200,
            batch_size=32,
            lr=0.002,
        ).with_options(n_ctx=4, ctx_init="a photo of a"),
        # ImageNet (base-to-new, and the source of cross-dataset and domain generalisation): 50 epochs
        "cross-dataset": dassl_recipe(
            f"{COOP_REPO}:configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml, scripts/cocoop/xd_train.sh and "
            "base2new_train.sh (TRAINER=CoOp, DATASET=imagenet)",
            ("base-to-new", *TRANSFER),
            datasets=("imagenet",),
            epochs=50,
            batch_size=32,
            lr=0.002,
        ).with_options(n_ctx=4, ctx_init="a photo of a"),
    }
    builtin_rows: ClassVar[tuple[BuiltinRow, ...]] = (
        BuiltinRow("coop", CPU_SGD.but(lr=0.02).with_options(n_ctx=4)),
        BuiltinRow("mt-coop", CPU_MULTITASK.with_options(n_ctx=4), per_task=True),
    )
    tiny = Recipe(options={"n_ctx": 4})
    template_option: ClassVar[str | None] = None
    has_context = True

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: CoOpConfig | None = None):
        super().__init__(backbone, classes, config)
        cfg = self.config
        n_classes = len(self.labels) if cfg.class_specific else 0
        init = initial_context(backbone, cfg.n_ctx, cfg.ctx_init, cfg.init_std, n_classes)
        self.n_ctx = init.shape[-2]
        self.ctx = nn.Parameter(init.to(backbone.device))
        self._labels_changed(backbone)

    @classmethod
    def transfers_with(cls, config: CoOpConfig) -> bool:  # type: ignore[override]
        return not config.class_specific

    def set_classes(self, backbone: Backbone, classes) -> None:
        labels = self.label_kind.coerce(classes)
        if self.config.class_specific and labels != self.labels:
            raise MethodInputError(
                f"class-specific CoOp learned one context for each of its {len(self.labels)} classes, in order; "
                "it cannot score other classes (train with class_specific=false to transfer)"
            )
        super().set_classes(backbone, labels)

    def _labels_changed(self, backbone: Backbone) -> None:
        layout = PromptLayout(backbone, self.labels.names, self.n_ctx, self.config.class_token_position)
        self.layout = layout.to(self.ctx.device)

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        return self.layout.encode(backbone, self.ctx)

    @torch.no_grad()
    def nearest_words(self, backbone: Backbone, k: int = 3) -> list[list[tuple[str, float]]]:
        """For each learned vector, the ``k`` nearest vocabulary words (Euclidean distance)."""
        return nearest_words(backbone, self.ctx, k)


def nearest_words(backbone: Backbone, ctx: Tensor, k: int = 3) -> list[list[tuple[str, float]]]:
    """For each context vector (rows of ``ctx`` [..., d]), the ``k`` nearest vocabulary words."""
    ctx = ctx.detach().reshape(-1, ctx.shape[-1]).float()
    table = backbone.token_embedding_table.float()
    # Only rows that carry meaning: a model may store unused token rows as zeros (the bundled
    # vlprompt/tiny-shapes keeps 97 of its 49,408), and ties among them mean nothing.
    meaningful = table.abs().sum(-1).nonzero().flatten()
    if len(meaningful) == 0:
        raise BackboneError("the backbone's token embedding table is all zeros: no words to compare with")
    dist = torch.cdist(ctx, table[meaningful], compute_mode="donot_use_mm_for_euclid_dist")
    values, rows = dist.topk(min(k, len(meaningful)), largest=False)
    return [
        [(backbone.token_text(int(meaningful[r])), float(v)) for v, r in zip(row_v, row_r)]
        for row_v, row_r in zip(values, rows)
    ]
