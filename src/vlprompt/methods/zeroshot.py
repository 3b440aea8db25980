"""Zero-shot CLIP with a hand-written template or a template ensemble, or with class descriptions (CuPL).

Descriptions (:mod:`vlprompt.methods.descriptions`): option ``descriptions`` names CuPL's JSON file (or
``builtin``, the built-in benchmark's); its sentences are read once, when the options are checked, into option
``sentences``, which prompt.json saves, so a saved prompt scores without the file. VP and VPT, which score with
zero-shot's class features, take the same options; the other methods with a hand template do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import Tensor

from ..backbones import Backbone
from ..labels import ClassNames
from .base import BuiltinRow, MethodConfig, MethodOptionError, PromptMethod, Recipe, option
from .descriptions import (
    BUILTIN,
    DESCRIPTION_MODES,
    FALLBACKS,
    check_descriptions,
    class_sentences,
    description_features,
    read_descriptions,
)
from .prompting import clean_classname
from .recipes import CPU_MULTITASK, CPU_SGD

CUPL_REPO = "sarahpratt/CuPL@719619c829792ff8f37298266e941b7f077c7f5c"

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
        descriptions: a CuPL descriptions file (JSON: class name -> sentences), or "builtin" (the built-in
            benchmark's); read into ``sentences``.
        description_mode: "cupl" (the sentences only) or "cupl+templates" (the templates and the sentences in one
            pool, CuPL's "both").
        descriptions_fallback: "error" (a class without sentences is an error) or "template" (it scores with the
            templates; a warning counts them and the prompt file records them).
        sentences: class name -> sentences (from ``descriptions``; saved in prompt.json); empty: templates only.
    """

    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    ensemble: str = option("", choices=ENSEMBLES)
    descriptions: str = ""
    description_mode: str = option("cupl", choices=DESCRIPTION_MODES)
    descriptions_fallback: str = option("error", choices=FALLBACKS)
    sentences: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"{self.method_name or 'zeroshot'} option sentences"
        if self.sentences:
            self.sentences = check_descriptions(self.sentences, where)
        elif self.descriptions:
            self.sentences = read_descriptions(self.descriptions)

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
    config: ZeroShotConfig
    labels: ClassNames
    recipes = {  # nothing to train: options only; CuPL's classify_imagenet.py reports all three classifiers
        "cupl-imagenet": Recipe(
            options={"ensemble": "imagenet80", "description_mode": "cupl+templates"},
            source=f"{CUPL_REPO}:classify_imagenet.py:73-75, 121 (use_both: CLIP's 80 templates and the sentences)",
        ),
        "cupl-sentences-imagenet": Recipe(
            options={"description_mode": "cupl"},
            source=f'{CUPL_REPO}:classify_imagenet.py:69-71, 118 ("CuPL": the sentences only)',
        ),
        "imagenet80": Recipe(
            options={"ensemble": "imagenet80"},
            source=f'{CUPL_REPO}:classify_imagenet.py:65-67, 115 ("standard": CLIP\'s 80 ImageNet templates)',
        ),
    }
    builtin_rows: ClassVar[tuple[BuiltinRow, ...]] = (
        BuiltinRow("zeroshot", CPU_SGD.with_options(templates=["a photo of a {}."])),
        BuiltinRow("zeroshot-ensemble", CPU_SGD.with_options(templates=["a photo of a {}."], ensemble="coop7")),
        BuiltinRow("mt-zeroshot", CPU_MULTITASK.with_options(templates=["a photo of a {}."]), per_task=True),
        BuiltinRow("cupl", CPU_SGD.with_options(templates=["a photo of a {}."], descriptions=BUILTIN), default=False),
    )
    tiny = Recipe()
    template_option = "templates"
    template_features: Tensor
    learns = False

    def __init__(self, backbone: Backbone, classes: Sequence[str] | ClassNames, config: ZeroShotConfig | None = None):
        super().__init__(backbone, classes, config)
        self._labels_changed(backbone)

    def _labels_changed(self, backbone: Backbone) -> None:
        cfg, names = self.config, self.labels.names
        if cfg.sentences:
            where = f"descriptions {cfg.descriptions or '(option sentences)'}"
            sentences = class_sentences(cfg.sentences, names, where, cfg.descriptions_fallback)
            self.fallback_classes = [n for n, s in zip(names, sentences) if not s]
            feats = description_features(backbone, names, sentences, cfg.all_templates(), cfg.description_mode)
        else:
            feats = ensemble_text_features(backbone, names, cfg.all_templates())
        self.register_buffer("template_features", feats, persistent=False)

    def prompt_record(self) -> dict[str, Any]:
        """The classes that fell back to the templates for want of sentences (``descriptions_fallback``)."""
        fallback = getattr(self, "fallback_classes", [])
        return {"description_fallback_classes": fallback} if fallback else {}

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        return self.template_features
