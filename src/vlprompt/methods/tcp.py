"""TCP: textual-based class-aware prompt tuning (Yao, Zhang & Xu, CVPR 2024).

Follows htyao89/Textual-based_Class-aware_prompt_tuning (``trainers/tcp.py`` and
``trainers/clip_text/model.py``): CoOp's shared context (``n_ctx`` = 4 vectors drawn N(0, 0.02)) replaces the
first tokens of the dataset's prompt (``prompt``: "X X X X {}, a type of pet." on OxfordPets, the release's
``CUSTOM_TEMPLATES``); the class prior h_c is the normalised frozen feature of the dataset's hand template
(``template``: ``CUSTOM_TEMPLATES_ori``); the textual knowledge embedding (TKE, the release's ``meta_net``)

    h_c -> Linear(D, D/4) -> QuickGELU -> Linear(D/4, n_ctx · d)

gives ``n_ctx`` class-aware tokens per class that *replace* the context positions at the input of text block
``layer`` (8 of 12, 0-based; no positional embedding), so the context acts only through attention in the
blocks before. Loss: CE(scale · cos(image, t_c)) + 8 · (1 − mean_c cos(t_c, h_c)) over all classes
(KgCoOp's term, :func:`~vlprompt.methods.kgcoop.knowledge_distance`). New classes get tokens from their own h_c.

Where this differs, deliberately: widths come from the model (the release reshapes to 512, and makes 4 tokens
whatever ``N_CTX``: here ``n_ctx`` tokens, the same at its 4); everything stays fp32 (the release runs the
TKE in fp16 under ``PREC fp16`` and encodes h_c with a second fp16 CLIP); the text tower runs with exact
truncation; the release's "amp" branch cannot run (it calls the model without labels) and is not offered.
``TRAINER.COOP.W`` is ignored by the release (8.0 is a literal): ``weight`` is that 8.0. The default recipe
is the release's (Adam with eps 1e-3 as its README edits Dassl, fp16): it reproduces the reference.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..backbones import Backbone
from .base import BuiltinRow, MethodOptionError, Recipe, option
from .kgcoop import KgCoOp, KgCoOpConfig
from .prompting import PromptLayout
from .recipes import CPU_SGD, dassl_recipe

TCP_REPO = "htyao89/Textual-based_Class-aware_prompt_tuning@bd97bec6bd4901baaf318e9e8f073f618d12066e"

#: The release's learned prompts by dataset (``CUSTOM_TEMPLATES``, trainers/tcp.py:60-76; the others "X X X X {}.").
PROMPTS = {
    "oxford_pets": "X X X X {}, a type of pet.",
    "oxford_flowers": "X X X X {}, a type of flower.",
    "fgvc_aircraft": "X X X X {}, a type of aircraft.",
    "dtd": "X X X X {} texture.",
    "stanford_cars": "X X X X {}, a type of car",
    "food101": "X X X X {}, a type of food.",
    "ucf101": "a photo of a person doing {}.",
}


@dataclass
class TCPConfig(KgCoOpConfig):
    """TCP hyperparameters (the release's base-to-new ones; CoOp's otherwise).

    Attributes:
        n_ctx: learned context tokens, the first ``n_ctx`` tokens of ``prompt`` (also the number of class-aware
            tokens).
        ctx_init: initialise the context from this phrase (the release's scripts: random, CTX_INIT False).
        weight: weight of the knowledge-guided term (the release's literal 8.0).
        template: the hand template whose frozen features are the class priors h_c.
        prompt: the learned prompt's words, ``{}`` for the class name; its first ``n_ctx`` tokens are learned.
        layer: the text block (0-based) at whose input the class-aware tokens replace the context positions.
    """

    n_ctx: int = option(4, low=1)
    ctx_init: str = ""
    weight: float = option(8.0, low=0.0)
    template: str = "a photo of a {}."
    prompt: str = "X X X X {}."
    layer: int = option(8, low=1)


class TCP(KgCoOp):
    """CoOp plus class-aware tokens made from the hand-crafted class features, inserted at a text layer."""

    name = "tcp"
    Config = TCPConfig
    config: TCPConfig
    recipes = {
        "default": dassl_recipe(
            f"{TCP_REPO}:configs/trainers/TCP/vit_b16_ep100_ctxv1.yaml, scripts/base2new_train.sh, "
            "README.md (Adam eps 1e-3)",
            ("base-to-new",),
            epochs=50,
            batch_size=32,
            lr=0.002,
            optimizer="adam",
            adam_eps=1e-3,
        ).with_options(n_ctx=4, ctx_init="", weight=8.0, layer=8),
        "imagenet": dassl_recipe(
            f"{TCP_REPO}:configs/trainers/TCP/vit_b16_ep100_ctxv1.yaml, train.py:136-137 (25 epochs on ImageNet and "
            "SUN397), scripts/base2new_train.sh, README.md (Adam eps 1e-3)",
            ("base-to-new",),
            datasets=("imagenet", "sun397"),
            epochs=25,
            batch_size=32,
            lr=0.002,
            optimizer="adam",
            adam_eps=1e-3,
        ).with_options(n_ctx=4, ctx_init="", weight=8.0, layer=8),
    }
    # the bundled model has 3 text blocks: the tokens enter at block 2 (8 of 12 in ViT-B/16)
    builtin_rows = (BuiltinRow("tcp", CPU_SGD.but(lr=0.02).with_options(layer=2), default=False),)
    tiny = Recipe(options={"layer": 1})  # the tiny towers have 2 blocks
    template_option = "template"
    #: The release's hand templates (``CUSTOM_TEMPLATES_ori``, trainers/tcp.py:42-58) where they differ from CoOp's.
    templates_by_dataset = {
        "fgvc_aircraft": "a photo of an aircraft {}.",
        "food101": "a photo of a {}, a type of food.",
        "dtd": "a photo of a {}, a type of texture.",
    }

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: TCPConfig | None = None):
        cfg = config or self.Config()
        if cfg.prompt.count("{}") != 1:
            raise MethodOptionError(f"tcp option prompt {cfg.prompt!r} needs one '{{}}' for the class name")
        if cfg.layer >= backbone.text_layers:
            raise MethodOptionError(
                f"tcp option layer {cfg.layer} must be below the text tower's {backbone.text_layers} blocks"
            )
        super().__init__(backbone, classes, cfg)
        hidden = backbone.embed_dim // 4
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(backbone.embed_dim, hidden)),
            ("relu", QuickGELU()),
            ("linear2", nn.Linear(hidden, self.n_ctx * backbone.text_width)),
        ])).to(backbone.device)  # fmt: skip

    @classmethod
    def with_dataset_template(cls, options: Mapping[str, Any], dataset: str, template: str | None) -> dict[str, Any]:
        """The authors' hand template and learned prompt for ``dataset``, unless the user set either."""
        chosen = super().with_dataset_template(options, dataset, template)
        if cls.template_option not in options and "prompt" not in options and dataset in PROMPTS:
            chosen["prompt"] = PROMPTS[dataset]
        return chosen

    def _labels_changed(self, backbone: Backbone) -> None:
        super()._labels_changed(backbone)  # hand_features: h_c of the label space
        before, after = self.config.prompt.split("{}")
        layout = PromptLayout(
            backbone, self.labels.names, self.n_ctx, suffix_template=after, prefix_text=before.strip()
        )
        self.layout = layout.to(self.ctx.device)

    def class_tokens(self) -> Tensor:
        """[C, n_ctx, d] class-aware tokens from the class priors h_c."""
        tokens = self.meta_net(self.hand_features)
        return tokens.reshape(tokens.shape[0], self.n_ctx, -1)

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        deep = [None] * (self.config.layer - 1) + [self.class_tokens()]
        embeds = self.layout.assemble(self.ctx)
        text = backbone.encode_text_embeddings(embeds, self.layout.eot_index, deep_prompts=deep, n_prompts=self.n_ctx)
        self._step_text = text if self.training else None  # the loss reuses this step's features
        return text


class QuickGELU(nn.Module):
    """x · sigmoid(1.702 x), CLIP's activation (the release's TKE uses it)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * (1.702 * x).sigmoid()
