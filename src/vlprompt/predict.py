"""Prediction for practitioners: a saved prompt (or class names, zero-shot) in, labels and probabilities out.

>>> from vlprompt import Predictor
>>> Predictor.from_prompt("runs/pets/seed1/prompt").predict(["cat.jpg"])[0].label
>>> Predictor.zero_shot(["cat", "dog"], "ViT-B-32", "openai").predict([pil_image], topk=2)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from .backbones import DEFAULT_BACKBONE, Backbone, BackboneError, load_backbone
from .data.images import load_rgb
from .methods import Batch, PromptMethod, ZeroShot, ZeroShotConfig
from .prompts import load_prompt, read_prompt_config


@dataclass(frozen=True)
class Prediction:
    """The prediction for one image: the best label, its probability, the top-k and every probability."""

    label: str
    probability: float
    top: list[tuple[str, float]]
    probabilities: dict[str, float]


def backbone_for_prompt(
    prompt_dir: str | Path, name: str | None = None, pretrained: str | None = None, device: str = "cpu"
) -> Backbone:
    """The backbone given by ``name`` / ``pretrained``, else the one the prompt records (when it can be loaded)."""
    if name is None:
        identity = read_prompt_config(prompt_dir)["backbone"]
        name, tag = identity["model"], str(identity.get("pretrained", ""))
        if tag.startswith("sha256:") or name.startswith("openai-format:"):
            raise BackboneError(
                f"{prompt_dir} was trained on weights from a local file ({name}); pass --backbone.name / "
                "--backbone.pretrained to say where that file is"
            )
        pretrained = tag if tag not in ("bundled", "") else None
    return load_backbone(name, pretrained, device=device)


class Predictor:
    """Classify images with a method on a backbone, in batches of ``batch_size`` (flat memory).

    Args:
        method: a trained or zero-shot method (its label space gives the labels).
        backbone: the backbone it scores with.
        batch_size: images per forward pass.
    """

    def __init__(self, method: PromptMethod, backbone: Backbone, batch_size: int = 64):
        self.method = method.eval()
        self.backbone = backbone
        self.batch_size = batch_size
        self.transform = backbone.image_transform()

    @classmethod
    def from_prompt(
        cls, prompt_dir: str | Path, backbone: Backbone | str | None = None, pretrained: str | None = None, **kwargs
    ) -> Predictor:
        """Load a saved prompt; the backbone defaults to the one it was trained on."""
        if not isinstance(backbone, Backbone):
            backbone = backbone_for_prompt(prompt_dir, backbone, pretrained)
        return cls(load_prompt(prompt_dir, backbone), backbone, **kwargs)

    @classmethod
    def zero_shot(
        cls,
        classes: Sequence[str],
        backbone: Backbone | str = DEFAULT_BACKBONE,
        pretrained: str | None = None,
        template: str = "a photo of a {}.",
        **kwargs,
    ) -> Predictor:
        """Zero-shot CLIP over ``classes`` with ``template``."""
        if not isinstance(backbone, Backbone):
            backbone = load_backbone(backbone, pretrained)
        return cls(ZeroShot(backbone, list(classes), ZeroShotConfig(templates=[template])), backbone, **kwargs)

    @torch.no_grad()
    def probabilities(self, images: Iterable[str | Path | Image.Image], progress: bool = False) -> torch.Tensor:
        """[N, C] class probabilities (CPU), computed ``batch_size`` images at a time."""
        images = list(images)
        text = self.method.reusable_text_features(self.backbone)
        out = [torch.empty(0, self.method.num_classes)]
        starts = range(0, len(images), self.batch_size)
        for start in tqdm(starts, desc="predict", disable=not progress, leave=False):
            chunk = images[start : start + self.batch_size]
            pixels = torch.stack([self.transform(_as_rgb(image)) for image in chunk])
            logits = self.method.logits(self.backbone, Batch(pixels=pixels), text)
            out.append(logits.float().softmax(dim=-1).cpu())
        return torch.cat(out)

    def predict(
        self, images: Iterable[str | Path | Image.Image], topk: int = 5, progress: bool = False
    ) -> list[Prediction]:
        """One :class:`Prediction` per image (paths or PIL images), with the ``topk`` best labels."""
        if topk < 1:
            raise ValueError(f"topk must be >= 1, not {topk}")
        names = self.method.class_names()
        k = min(topk, len(names))
        predictions = []
        for row in self.probabilities(images, progress):
            values, ids = row.topk(k)
            top = [(names[int(i)], float(v)) for v, i in zip(values, ids)]
            predictions.append(Prediction(top[0][0], top[0][1], top, dict(zip(names, map(float, row)))))
        return predictions


def _as_rgb(image: str | Path | Image.Image) -> Image.Image:
    return image.convert("RGB") if isinstance(image, Image.Image) else load_rgb(image)
