"""What methods with a backbone delta share: tuned towers scored against a hand template's class features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..backbones import Backbone, BackboneError
from ..backbones.adapter import TOWERS
from ..io import tensors_sha256
from ..labels import ClassNames
from .base import Batch, MethodConfig, MethodOptionError, PromptMethod
from .prompting import clean_classname


@dataclass
class TowerTuningConfig(MethodConfig):
    """Attributes:
    towers: the towers tuned, "text" and / or "image".
    template: the dataset's hand template, with ``{}`` for the class name: class features are the tuned
        text tower's encodings of it.
    """

    towers: list[str] = field(default_factory=lambda: ["text", "image"])
    template: str = "a photo of a {}."


class TowerTuning(PromptMethod):
    """Base of the methods that change backbone weights (their delta is theirs alone, see ``encode``).

    Logits are scale · cos(image, class) with class features from ``template`` through the (tuned) text
    tower, as zero-shot CLIP scores, so they transfer to new classes. The image tower is marked changed
    (no feature cache) only when it is tuned.
    """

    changes_image_tower = True
    changes_backbone = True
    config: TowerTuningConfig
    labels: ClassNames
    prompt_ids: Tensor

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: TowerTuningConfig | None = None):
        super().__init__(backbone, classes, config)
        cfg = self.config
        bad = [t for t in cfg.towers if t not in TOWERS]
        if bad or not cfg.towers or len(set(cfg.towers)) != len(cfg.towers):
            raise MethodOptionError(
                f"{self.name} option towers must be a non-empty list of distinct {list(TOWERS)}, not {cfg.towers!r}"
            )
        if "{}" not in cfg.template:
            raise MethodOptionError(f"{self.name} option template {cfg.template!r} has no '{{}}'")
        if "image" not in cfg.towers:
            self.changes_image_tower = False  # image features are the frozen ones: cacheable

    @classmethod
    def capabilities(cls, config: MethodConfig | None = None) -> dict[str, bool]:
        flags = super().capabilities(config)
        towers = (config if config is not None else cls.Config()).towers  # type: ignore[attr-defined]
        flags["changes_image_tower"] = "image" in towers  # text-only tuning leaves image features cacheable
        return flags

    def _labels_changed(self, backbone: Backbone) -> None:
        ids = backbone.tokenize([self.config.template.format(clean_classname(n)) for n in self.labels.names])
        ids = ids[:, : int(backbone.eot_index(ids).max()) + 1]  # exact truncation
        self.register_buffer("prompt_ids", ids, persistent=False)

    def encode(self, backbone: Backbone, encoder: str, *args: Any) -> Tensor:
        """Run a backbone encoder ("encode_image", "encode_token_ids") with this method's delta."""
        raise NotImplementedError

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        return self.encode(backbone, "encode_token_ids", self.prompt_ids)

    def image_features(self, backbone: Backbone, batch: Batch) -> Tensor:
        if "image" not in self.config.towers:
            return super().image_features(backbone, batch)
        if batch.pixels is None:
            raise BackboneError(f"{self.name} tunes the image tower: it needs pixels, not cached features")
        return self.encode(backbone, "encode_image", batch.pixels)

    def cache_key(self) -> str:
        return tensors_sha256(self.trainable_state())
