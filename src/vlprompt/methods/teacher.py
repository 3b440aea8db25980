"""A teacher: a frozen, prompted model (a saved vlprompt prompt on its own backbone) a student method learns from.

A ``Teacher`` is deliberately not an ``nn.Module``: a method holds it as a plain attribute, so its weights
(backbone and prompt) never enter the student's state dict, checkpoints or prompt file; the student's file
records only :meth:`Teacher.identity`. The teacher's backbone may be another architecture and width (PromptKD
distils a ViT-L/14 PromptSRC into a ViT-B/16 student); its class features are encoded once per label space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..backbones import Backbone, BackboneError
from .base import Batch, PromptMethod


class Teacher:
    """A trained method on its backbone, frozen, scoring the student's images.

    Args:
        method: the teacher's method (loaded from its prompt directory).
        backbone: the teacher's backbone.
        source: where it was loaded from (recorded by the student).
    """

    def __init__(self, method: PromptMethod, backbone: Backbone, source: str = ""):
        self.method = method.eval().requires_grad_(False)
        self.backbone = backbone
        self.source = source
        self._text: Tensor | None = None

    @classmethod
    def from_pretrained(cls, prompt_dir: str | Path, backbone: Backbone | None = None) -> Teacher:
        """The prompt in ``prompt_dir`` on ``backbone`` (default: the backbone the prompt records)."""
        if backbone is None:
            from ..predict import backbone_for_prompt

            backbone = backbone_for_prompt(prompt_dir, None, None)
        return cls(PromptMethod.from_pretrained(prompt_dir, backbone), backbone, str(prompt_dir))

    def identity(self) -> dict[str, Any]:
        """What a student's prompt file records of its teacher (no weights)."""
        from ..prompts import read_prompt_config

        saved = read_prompt_config(self.source) if self.source else {}
        return {
            "prompt": self.source,
            "method": self.method.name,
            "backbone": self.backbone.identity.to_dict(),
            "tensors_sha256": saved.get("tensors_sha256"),
        }

    def set_classes(self, labels: Any) -> None:
        """Score ``labels`` (the student's label space); class features are encoded again on next use."""
        if labels != self.method.labels:
            self.method.set_classes(self.backbone, labels)
            self._text = None

    @torch.no_grad()
    def logits(self, pixels: Tensor) -> Tensor:
        """[B, C] teacher logits of the student's preprocessed images (the teacher's logit scale)."""
        if pixels.shape[-1] != self.backbone.image_size:
            raise BackboneError(
                f"the teacher ({self.backbone.identity.model}) takes {self.backbone.image_size} px images, the "
                f"student's are {pixels.shape[-1]} px: use backbones with the same input size"
            )
        batch = Batch(pixels=pixels.to(self.backbone.device))
        return self.method.score(self.backbone, batch, self.text_features())

    @torch.no_grad()
    def text_features(self) -> Tensor | None:
        """[C, D] the teacher's class features of its label space, encoded once per label space (None where they
        depend on the image)."""
        if self._text is None:
            self._text = self.method.reusable_text_features(self.backbone)
        return self._text
