"""What every prompt method is: its trainable tensors, its constant buffers, and how it scores."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone


@dataclasses.dataclass
class MethodConfig:
    """Base of every method's hyperparameters (defaults are the paper's)."""

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None, method: str = "") -> MethodConfig:
        """Build from a plain dict, rejecting unknown keys with the list of valid ones."""
        options = dict(options or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for method {method or cls.__name__}; valid: {sorted(names)}")
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class PromptMethod(nn.Module):
    """A prompt-learning method on a frozen backbone.

    Subclasses hold only their trainable parameters (saved) and constant buffers (registered
    non-persistent, rebuilt from the backbone), and declare what the engine must know:
    ``changes_image_tower`` (the image features depend on learned tensors, so they cannot be cached)
    and ``conditions_on_image`` (text features depend on each image).

    ``classes`` is the label set the method scores: a list of class names, or a method-specific
    JSON-able description (e.g. attribute-object pairs). ``set_classes`` swaps it while keeping the
    learned tensors (base-to-new transfer, evaluation on unseen pairs).
    """

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    changes_image_tower: ClassVar[bool] = False
    conditions_on_image: ClassVar[bool] = False

    def __init__(self, backbone: Backbone, classes: Any, config: MethodConfig | None = None):
        super().__init__()
        self.config = config if config is not None else self.Config()
        self.classes = classes

    # ---------------------------------------------------------------- label set
    def set_classes(self, backbone: Backbone, classes: Any) -> None:
        """Score a new label set with the same learned tensors."""
        raise ValueError(f"{self.name} learned one output per training class: it cannot score other classes")

    @property
    def transfers_to_new_classes(self) -> bool:
        """Whether ``set_classes`` can score classes not seen in training (base-to-new)."""
        return type(self).set_classes is not PromptMethod.set_classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_names(self) -> list[str]:
        """Display names of the classes scored, in logit order."""
        return [str(c) for c in self.classes]

    # ---------------------------------------------------------------- scoring
    def image_features(self, backbone: Backbone, pixels: Tensor) -> Tensor:
        """Image features; methods that prompt the image tower override this."""
        return backbone.encode_image(pixels)

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        """[C, D] class features, or [B, C, D] when conditioned on each image."""
        raise NotImplementedError

    def class_features(self, backbone: Backbone) -> Tensor | None:
        """Class features to reuse for every batch at evaluation, or None if they depend on the image."""
        return None if self.conditions_on_image else self.text_features(backbone)

    def forward(self, backbone: Backbone, image_features: Tensor, text_features: Tensor | None = None) -> Tensor:
        """Logits [B, C] = scale · cos(image, class). Pass ``text_features`` to reuse them."""
        if text_features is None:
            text_features = self.text_features(backbone, image_features)
        return cosine_logits(image_features, text_features, backbone.logit_scale)

    def trainable_state(self) -> dict[str, Tensor]:
        """The tensors a prompt file stores."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}


def cosine_logits(image_features: Tensor, text_features: Tensor, scale: Tensor | float) -> Tensor:
    """scale · normalize(image) · normalize(text)ᵀ, for [C, D] or per-image [B, C, D] text features."""
    with torch.autocast(image_features.device.type, enabled=False):  # logits in fp32 even under AMP
        img = F.normalize(image_features.float(), dim=-1)
        txt = F.normalize(text_features.float(), dim=-1)
        if txt.dim() == 3:
            return scale * torch.einsum("bd,bcd->bc", img, txt)
        return scale * img @ txt.t()
