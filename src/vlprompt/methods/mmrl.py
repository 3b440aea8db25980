"""MMRL: a shared representation space projected into both towers' higher layers (Guo & Gu, CVPR 2025).

Follows yunncheng/MMRL (``trainers/mmrl.py``, ``clip/model_mmrl.py``). Learnable: K representation tokens R
(K x d_r, N(0, 0.02)); per listed layer a ``Linear(d_r, d_vis)`` and a ``Linear(d_r, d_txt)``, deep copies of one
initialisation each; ``proj_rep`` (d_vis x embed, N(0, 1/d_vis)). The text is the frozen hand template, no
learned words. Layers (``rep_layers``, 1-based, acting at the block input): at the first listed block the
projected R is inserted right after the class / start token (no positional embedding; the text's causal mask
grows with it and its feature is read at end-of-text + K); at each later listed block fresh projections replace
those K positions. Features: f_c = the usual image feature (ln_post(CLS) @ proj, frozen), f_r = mean over the
K image tokens of ln_post(token), @ proj_rep; t the text feature. s_c = 100 cos(f_c, t), s_r = 100 cos(f_r, t)
(a literal 100, as the release); logits: α s_c + (1 − α) s_r on the classes it was built with (the release's
base classes, few-shot, ImageNet), s_c alone on any other label space (its new classes, other datasets). Loss:

    α CE(s_c, y) + (1 − α) CE(s_r, y) + λ (1 − mean_b cos(f_c, f⁰_c)) + λ (1 − mean_c cos(t_c, t⁰_c))

f⁰_c the frozen model's image features of the same batch, t⁰ its features of the same template (cos eps 1e-8).

Where this differs, deliberately: widths come from the model; everything stays fp32 outside autocast (the
release's amp autocasts training only); evaluation recomputes the text features and tokens each time (the
release caches them at its first evaluation forward and never refreshes them); the first listed layer must be
2 or later (the insertion is mid-tower). Recipes: the released base-to-new, few-shot and cross-dataset ones, with
per-dataset λ (trainers/config.py) where the release merges them, cropping at the release's scale (0.5, 1)
(``INPUT.RRCROP_SCALE``, ``crop_scale`` 0.5); its ``PREC: "amp"`` is vlprompt's ``precision fp16`` (autocast over
fp32 weights with a gradient scaler).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone
from ..labels import ClassNames
from .base import Batch, BuiltinRow, MethodConfig, MethodOptionError, PromptMethod, Recipe, cosine_logits, option
from .prompting import clean_classname
from .recipes import CPU_ADAMW, TRANSFER, dassl_recipe

#: yunncheng/MMRL, pinned.
MMRL_REPO = "yunncheng/MMRL@27d8821f6ac135a1d0c8e4c5ed78af14df0cd82e"
#: The release's logit scale, a literal (mmrl.py:231-232).
SCALE = 100.0


@dataclass
class MMRLConfig(MethodConfig):
    """MMRL hyperparameters (configs/trainers/MMRL/vit_b16.yaml's).

    Attributes:
        n_rep_tokens: K, the representation tokens (5).
        rep_dim: d_r, their width (512; 2048 on EuroSAT).
        rep_layers: the blocks (1-based, counting the first as 1) whose input sees them ([6 .. 12] of 12).
        alpha: α, the class-token share of the fused logits and of the loss (0.7).
        reg_weight: λ, the weight of the two consistency terms (1.0 in the yaml; per dataset in the recipes).
        template: the hand template, with ``{}`` for the class name.
        init_std: std of R's N(0, std) initialisation.
    """

    n_rep_tokens: int = option(5, low=1)
    rep_dim: int = option(512, low=1)
    rep_layers: list[int] = field(default_factory=lambda: list(range(6, 13)))
    alpha: float = option(0.7, low=0.0, high=1.0)
    reg_weight: float = option(1.0, low=0.0)
    template: str = "a photo of a {}."
    init_std: float = option(0.02, low=0.0)


def consistency(features: Tensor, frozen: Tensor) -> Tensor:
    """1 − mean over rows of cos(features, frozen) (eps 1e-8)."""
    return 1.0 - F.cosine_similarity(features.float(), frozen.float(), dim=1, eps=1e-8).mean()


_SOURCE = f"{MMRL_REPO}:configs/trainers/MMRL/vit_b16.yaml, scripts/mmrl/base2new_train.sh, trainers/config.py"
#: trainers/config.py: λ per dataset (EuroSAT also REP_DIM 2048).
_REG_WEIGHTS = {
    "stanford_cars": 7.0,
    "fgvc_aircraft": 6.0,
    "sun397": 6.0,
    "dtd": 6.0,
    "food101": 5.0,
    "oxford_flowers": 4.0,
    "ucf101": 3.0,
    "caltech101": 0.5,
    "oxford_pets": 0.2,
    "eurosat": 0.01,
}


def _recipe(
    source: str,
    datasets: tuple[str, ...],
    epochs: int = 10,
    batch_size: int = 4,
    protocols: tuple[str, ...] = ("base-to-new",),
    warmup_epochs: int = 1,
    **options,
) -> Recipe:
    train: dict[str, Any] = {"optimizer": "adamw", "lr": 1e-3, "epochs": epochs, "batch_size": batch_size}
    train |= {"crop_scale": 0.5, "warmup_epochs": warmup_epochs}  # INPUT.RRCROP_SCALE (0.5, 1) in every config
    return dassl_recipe(source, protocols, datasets=datasets, **train).with_options(**options)


def _dataset_options(dataset: str) -> dict[str, Any]:
    """trainers/config.py's per-dataset settings, merged after the config file whatever the task (TASK B2N or FS)."""
    return {"reg_weight": _REG_WEIGHTS[dataset], **({"rep_dim": 2048} if dataset == "eurosat" else {})}


_FEW_SHOT = f"{MMRL_REPO}:configs/trainers/MMRL/vit_b16_few_shot.yaml, scripts/mmrl/few_shot.sh, trainers/config.py"


class MMRL(PromptMethod):
    """Representation tokens projected into both towers; class-token and representation logits fused."""

    name = "mmrl"
    Config = MMRLConfig
    config: MMRLConfig
    labels: ClassNames
    changes_image_tower = True
    recipes = {
        "default": _recipe(_SOURCE, (), reg_weight=1.0),
        # base-to-new and few-shot (few_shot.sh: CFG vit_b16_imagenet on ImageNet)
        "imagenet": _recipe(
            f"{MMRL_REPO}:configs/trainers/MMRL/vit_b16_imagenet.yaml, scripts/mmrl/few_shot.sh, trainers/config.py",
            ("imagenet",),
            epochs=5,
            batch_size=32,
            protocols=("base-to-new", "few-shot"),
            reg_weight=0.5,
        ),
        **{dataset: _recipe(_SOURCE, (dataset,), **_dataset_options(dataset)) for dataset in _REG_WEIGHTS},
        "few-shot": _recipe(_FEW_SHOT, (), 50, 32, ("few-shot",), reg_weight=0.5),
        **{
            f"few-shot-{dataset}": _recipe(_FEW_SHOT, (dataset,), 50, 32, ("few-shot",), **_dataset_options(dataset))
            for dataset in _REG_WEIGHTS
        },
        # ImageNet's 16 shots, then every target as it is; the script's REG_WEIGHT 0.2 is merged last
        "cross-dataset": _recipe(
            f"{MMRL_REPO}:configs/trainers/MMRL/vit_b16_cross_datasets.yaml, scripts/mmrl/cross_datasets_train.sh, "
            "train.py:132-135 (command-line options merged after trainers/config.py)",
            (),
            1,
            32,
            TRANSFER,
            warmup_epochs=0,
            reg_weight=0.2,
        ),
    }
    builtin_rows = (BuiltinRow("mmrl", CPU_ADAMW.but(lr=0.01).with_options(rep_layers=[2, 3]), default=False),)
    tiny = Recipe(options={"rep_layers": [2], "rep_dim": 16, "n_rep_tokens": 2})
    template_option = "template"
    embeds: Tensor
    eot: Tensor
    frozen_text: Tensor

    def __init__(self, backbone: Backbone, labels: Sequence[str], config: MMRLConfig | None = None):
        super().__init__(backbone, labels, config)
        cfg = self.config
        layers = sorted(set(cfg.rep_layers))
        depth = min(backbone.text_layers, backbone.vision_layers)
        backbone.check_token_prompts()
        if not layers or layers[0] < 2 or layers[-1] > depth or layers != list(cfg.rep_layers):
            raise MethodOptionError(
                f"mmrl rep_layers must be increasing block numbers from 2 to {depth} (1-based), not {cfg.rep_layers}"
            )
        if "{}" not in cfg.template:
            raise MethodOptionError(f"mmrl template {cfg.template!r} has no '{{}}' for the class name")
        self.layers = layers
        self.rep = nn.Parameter(nn.init.normal_(torch.empty(cfg.n_rep_tokens, cfg.rep_dim), std=cfg.init_std))
        one_v, one_t = nn.Linear(cfg.rep_dim, backbone.vision_width), nn.Linear(cfg.rep_dim, backbone.text_width)
        self.to_vision = nn.ModuleList(copy.deepcopy(one_v) for _ in layers)
        self.to_text = nn.ModuleList(copy.deepcopy(one_t) for _ in layers)
        width = backbone.vision_width
        self.proj_rep = nn.Parameter(torch.randn(width, backbone.embed_dim) * width**-0.5)
        self.trained_labels = self.labels
        self.to(backbone.device)
        self._labels_changed(backbone)
        self._step: tuple[Tensor, ...] | None = None

    def _labels_changed(self, backbone: Backbone) -> None:
        ids = backbone.tokenize([self.config.template.format(clean_classname(n)) for n in self.labels.names])
        self.register_buffer("embeds", backbone.token_embedding(ids), persistent=False)
        self.register_buffer("eot", backbone.eot_index(ids), persistent=False)
        self.register_buffer("frozen_text", backbone.encode_token_ids(ids).detach().float(), persistent=False)

    def _deep(self, projections: nn.ModuleList):
        """The tokens each listed block after the first sees (block index i is layer i + 1)."""
        index = {layer - 1: j for j, layer in enumerate(self.layers)}

        def fresh(i: int, previous: Tensor) -> Tensor | None:
            return projections[index[i]](self.rep) if i in index and i > self.layers[0] - 1 else None

        return fresh

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        return backbone.encode_text_embeddings(
            self.embeds, self.eot, deep_prompts=self._deep(self.to_text), inserted=self.to_text[0](self.rep),
            insert_at=self.layers[0] - 1,
        )  # fmt: skip

    def _image(self, backbone: Backbone, batch: Batch) -> tuple[Tensor, Tensor]:
        """(f_c, f_r): the class-token feature and the representation feature."""
        assert batch.pixels is not None  # it changes the image tower: batches carry pixels
        features, tokens = backbone.encode_image(
            batch.pixels, token_prompts=self.to_vision[0](self.rep), deep_prompts=self._deep(self.to_vision),
            insert_at=self.layers[0] - 1, prompt_outputs=True,
        )  # fmt: skip
        return features, tokens.mean(dim=1) @ self.proj_rep

    def image_features(self, backbone: Backbone, batch: Batch) -> Tensor:
        return self._image(backbone, batch)[0]

    def logits(self, backbone: Backbone, batch: Batch, text: Tensor | None = None) -> Tensor:
        image, rep = self._image(backbone, batch)
        text = self.text_features(backbone) if text is None else text
        class_logits = cosine_logits(image, text, SCALE)
        if self.labels != self.trained_labels:  # new classes, other datasets: the class token's logits only
            return class_logits
        rep_logits = cosine_logits(rep, text, SCALE)
        self._step = (class_logits, rep_logits, image, text) if self.training else None
        alpha = self.config.alpha
        return alpha * class_logits + (1 - alpha) * rep_logits

    def loss(self, backbone: Backbone, batch: Batch, logits: Tensor, label_smoothing: float = 0.0) -> Tensor:
        if self._step is None:
            raise RuntimeError("mmrl's loss needs the logits of a training forward pass (call it in train mode)")
        (class_logits, rep_logits, image, text), self._step = self._step, None
        assert batch.pixels is not None  # it changes the image tower: batches carry pixels
        with torch.no_grad():
            frozen_image = backbone.encode_image(batch.pixels)
        cfg, targets = self.config, batch.targets
        assert targets is not None  # a training batch
        cross_entropy = cfg.alpha * F.cross_entropy(class_logits, targets, label_smoothing=label_smoothing) + (
            1 - cfg.alpha
        ) * F.cross_entropy(rep_logits, targets, label_smoothing=label_smoothing)
        regulariser = consistency(image, frozen_image) + consistency(text, self.frozen_text)
        return cross_entropy + cfg.reg_weight * regulariser
