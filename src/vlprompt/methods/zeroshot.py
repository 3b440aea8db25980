"""Zero-shot CLIP with a hand-written template or a template ensemble."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import Tensor

from ..backbones import Backbone
from .base import BuiltinRow, MethodConfig, MethodOptionError, PromptMethod, Recipe, option
from .prompting import clean_classname
from .recipes import CPU_MULTITASK, CPU_SGD

#: The 7 templates of CoOp's prompt-ensembling baseline (selected from CLIP's ImageNet 80).
COOP_ENSEMBLE_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

CLIP_IMAGENET_TEMPLATES = tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
#: CoOp's ``IMAGENET_TEMPLATES`` (trainers/imagenet_templates.py, also PromptSRC's text teacher): the first
#: 60 of CLIP's 80 ImageNet templates, with "a photo of a {}." (CLIP's 40th) moved to the front.
COOP_IMAGENET_TEMPLATES = (CLIP_IMAGENET_TEMPLATES[39],) + CLIP_IMAGENET_TEMPLATES[:39] + CLIP_IMAGENET_TEMPLATES[40:60]

ENSEMBLES = {
    "": (),
    "imagenet80": CLIP_IMAGENET_TEMPLATES,
    "coop60": COOP_IMAGENET_TEMPLATES,
    "coop7": COOP_ENSEMBLE_TEMPLATES,
}


@dataclass
class ZeroShotConfig(MethodConfig):
    """Zero-shot templates.

    Attributes:
        templates: the dataset's own template(s), with ``{}`` for the class name.
        ensemble: add a template set: "" (none), "imagenet80" (CLIP's 80 ImageNet templates), "coop60"
            (CoOp's 60 of them) or "coop7" (CoOp's 7-template subset; with the dataset template that makes 8).
    """

    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    ensemble: str = option("", choices=ENSEMBLES)

    def all_templates(self) -> list[str]:
        if self.ensemble not in ENSEMBLES:
            raise MethodOptionError(f"ensemble must be one of {sorted(ENSEMBLES)}, not {self.ensemble!r}")
        out = list(dict.fromkeys(list(ENSEMBLES[self.ensemble]) + list(self.templates)))
        for template in out:
            if "{}" not in template:
                raise MethodOptionError(f"template {template!r} has no '{{}}' for the class name")
        return out


def ensemble_text_features(backbone: Backbone, classnames: Sequence[str], templates: Sequence[str]) -> Tensor:
    """For each template encode all classes and normalize; average over templates; normalize."""
    names = [clean_classname(n) for n in classnames]
    per_template = [F.normalize(backbone.encode_text([t.format(n) for n in names]), dim=-1) for t in templates]
    return F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)


class ZeroShot(PromptMethod):
    """Hand-written prompts: nothing is learned; class features are a constant buffer."""

    name = "zeroshot"
    Config = ZeroShotConfig
    recipes = {}  # nothing to train
    builtin_rows = (
        BuiltinRow("zeroshot", CPU_SGD.with_options(templates=["a photo of a {}."])),
        BuiltinRow("zeroshot-ensemble", CPU_SGD.with_options(templates=["a photo of a {}."], ensemble="coop7")),
        BuiltinRow("mt-zeroshot", CPU_MULTITASK.with_options(templates=["a photo of a {}."]), per_task=True),
    )
    tiny = Recipe()
    template_option = "templates"
    learns = False

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: ZeroShotConfig | None = None):
        super().__init__(backbone, classes, config)
        self._labels_changed(backbone)

    def _labels_changed(self, backbone: Backbone) -> None:
        feats = ensemble_text_features(backbone, self.labels.names, self.config.all_templates())
        self.register_buffer("template_features", feats, persistent=False)

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        return self.template_features
