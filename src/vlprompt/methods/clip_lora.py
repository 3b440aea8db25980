"""CLIP-LoRA: low-rank updates of the attention projections of both towers (Zanella & Ben Ayed, CVPRW 2024).

Follows MaxZanella/CLIP-LoRA (``lora.py``, ``loralib/``): LoRA of rank 2 on the query, key and value
projections of every block of both towers, scaling alpha / sqrt(rank) with alpha 1, dropout 0.25 on
the input of each LoRA branch (one mask per projection), A initialised Kaiming-uniform (a = sqrt 5)
and B zero; class features from the dataset's hand template through the tuned text tower, logits
scale · cos with the logit scale frozen, cross-entropy; only the adapter weights train and are saved.

The LoRA layers are peft's (``lora.Linear``, ``use_rslora`` for the alpha / sqrt(rank) scaling) on a
private copy of the backbone whose attention modules compute q, k, v and the output through separate
linear layers (``Backbone.split_attention_copy``; the release does the same with its own
``PlainMultiheadAttentionLoRA``). Why a copy and not peft's ``nn.MultiheadAttention`` layer: that
layer puts one low-rank update on the fused in-projection *and* one on the output projection, merged
into the weights around each call, so it can neither adapt q, k, v separately nor apply dropout, and
cannot reproduce the reference. Why not ``Backbone.with_weights``: dropout on the LoRA input is not a
weight. The copy is held outside this module's children, so the method's tensors, prompt file, cache
key, optimizer and DDP see only the adapter weights; the shared backbone is never modified. The copy
costs one backbone's memory per method instance.

The ``default`` recipe is the release's run: 500 · shots AdamW steps at batch 32 (``max_steps``; the last
epoch cut short), the last partial batch of each epoch kept (``drop_last`` false), a per-step cosine
schedule to 1e-6 without warmup, fp16 autocast, random-resized crops and flips. The release fixes the
logit scale at 100 whatever the checkpoint; ``logit_scale: 100`` does the same (the default, 0, takes the
backbone's own, which is 100 for OpenAI's released weights to within float rounding).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..backbones import Backbone
from .base import Batch, BuiltinRow, MethodOptionError, Recipe, cosine_logits, option
from .recipes import CLIP_LORA_REPO, CPU_ADAMW
from .tuning import TowerTuning, TowerTuningConfig

#: The attention projections LoRA can target, by the release's names.
PROJECTIONS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}


@dataclass
class CLIPLoRAConfig(TowerTuningConfig):
    """CLIP-LoRA hyperparameters (the release's defaults).

    Attributes:
        rank: r, the rank of each update.
        alpha: the update is scaled by alpha / sqrt(r).
        dropout: dropout on the input of each LoRA branch while training.
        projections: which attention projections get an update: "q", "k", "v", "o".
        layers: block indices that get updates (empty: every block, the release's position "all").
        zero_init_b: B starts at zero, so training starts from the backbone (False: peft's random B too).
        logit_scale: the logits' scale (0: the backbone's exp(logit scale); the release fixes 100).
    """

    rank: int = option(2, low=1)
    alpha: float = option(1.0, low=0.0)
    dropout: float = option(0.25, low=0.0, high=0.99)
    projections: list[str] = field(default_factory=lambda: ["q", "k", "v"])
    layers: list[int] = field(default_factory=list)
    zero_init_b: bool = True
    logit_scale: float = option(0.0, low=0.0)


class CLIPLoRA(TowerTuning):
    """peft LoRA layers on the q / k / v projections of a private, attention-split copy of the backbone."""

    name = "clip-lora"
    Config = CLIPLoRAConfig
    config: CLIPLoRAConfig
    recipes = {
        "default": Recipe(
            train={
                "epochs": 100,
                "batch_size": 32,
                "optimizer": "adamw",
                "lr": 2e-4,
                "weight_decay": 0.01,
                "schedule": "cosine",
                "warmup_epochs": 0,
                "min_lr": 1e-6,
                "augment": True,
                "cache_features": False,
                "precision": "fp16",
                "select": "last",
                "drop_last": False,
            },
            options={"logit_scale": 100.0},
            steps_per_shot=500,
            source=f"{CLIP_LORA_REPO}:run_utils.py (n_iters 500, batch 32), lora.py (500 x shots iterations, AdamW wd "
            "1e-2, CosineAnnealingLR over them to eta_min 1e-6, fp16 autocast with a GradScaler), main.py "
            "(RandomResizedCrop scale 0.08-1 + flip; logit_scale = 100), datasets/utils.py (drop_last False)",
        )
    }
    builtin_rows = (BuiltinRow("clip-lora", CPU_ADAMW.but(lr=2e-3, weight_decay=0.01), default=False),)
    tiny = Recipe(options={"zero_init_b": False, "dropout": 0.0})  # with B = 0 no gradient reaches A in one step
    template_option = "template"
    authors_template = "a photo of a {}."  # datasets/*.py reassign every dataset's template to it

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: CLIPLoRAConfig | None = None):
        super().__init__(backbone, classes, config)
        cfg = self.config
        if not cfg.projections or any(p not in PROJECTIONS for p in cfg.projections):
            raise MethodOptionError(
                f"clip-lora option projections must be a non-empty list of {list(PROJECTIONS)}, not {cfg.projections!r}"
            )
        tuned = backbone.split_attention_copy(cfg.towers)
        targets = {}
        for tower in cfg.towers:
            blocks = tuned.attention_modules(tower)
            outside = [i for i in cfg.layers if not 0 <= i < len(blocks)]
            if outside:
                raise MethodOptionError(
                    f"clip-lora option layers {outside} outside the {len(blocks)}-block {tower} tower"
                )
            for i, attention in enumerate(blocks):
                if not cfg.layers or i in cfg.layers:
                    for p in cfg.projections:
                        targets[f"{tower}_{i}_{p}"] = f"{attention.removeprefix('model.')}.{PROJECTIONS[p]}"
        self.lora = _inject_lora(tuned.model, targets, cfg)
        self.__dict__["tuned"] = tuned  # not a child module: its frozen weights are the backbone's, not the method's
        self._labels_changed(backbone)

    def encode(self, backbone: Backbone, encoder: str, *args: Any) -> Tensor:
        return getattr(self.tuned, encoder)(*args)

    def logits(self, backbone: Backbone, batch: Batch, text: Tensor | None = None) -> Tensor:
        if not self.config.logit_scale:
            return super().logits(backbone, batch, text)
        image = self.image_features(backbone, batch)
        text = self.text_features(backbone) if text is None else text
        return cosine_logits(image, text, self.config.logit_scale)


def _inject_lora(model: nn.Module, targets: dict[str, str], cfg: CLIPLoRAConfig) -> nn.ModuleDict:
    """peft LoRA layers on the ``targets`` (key -> module name) of ``model``; their A, B and dropout by key."""
    try:  # imported here: peft pulls in transformers (slow)
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise ImportError(f"clip-lora needs peft's LoRA layers: pip install 'vlprompt[lora]' ({err})") from None

    config = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # peft annotates an int; its scaling divides it
        lora_dropout=cfg.dropout,
        # one regex of the exact names: a list would also match by suffix ("visual.transformer..." ends like
        # the text tower's "transformer...")
        target_modules="|".join(re.escape(name) for name in targets.values()),
        use_rslora=True,  # scaling alpha / sqrt(r), as the release
        init_lora_weights=cfg.zero_init_b,  # True: A Kaiming-uniform (a = sqrt 5), B zero
        bias="none",
    )
    inject_adapter_in_model(config, model)
    parts = {}
    for key, name in targets.items():
        layer: Any = model.get_submodule(name)  # a peft LoRA layer (its lora_* ModuleDicts are untyped)
        parts[key] = nn.ModuleDict(
            {"A": layer.lora_A["default"], "B": layer.lora_B["default"], "dropout": layer.lora_dropout["default"]}
        )
    return nn.ModuleDict(parts)
