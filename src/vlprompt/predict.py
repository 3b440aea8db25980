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
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .backbones import DEFAULT_BACKBONE, Backbone, BackboneError, load_backbone
from .data.images import load_rgb
from .errors import OptionError
from .feed import Feed
from .hub import local_prompt_dir
from .methods import PromptMethod, ZeroShot, ZeroShotConfig
from .prompts import load_prompt, read_prompt_config


@dataclass(frozen=True)
class Prediction:
    """The prediction for one image: the best label, its probability, the top-k and every probability."""

    label: str
    probability: float
    top: list[tuple[str, float]]
    probabilities: dict[str, float]


def backbone_for_prompt(
    prompt_dir: str | Path, name: str | None = None, pretrained: str | None = None, device: str | torch.device = "cpu"
) -> Backbone:
    """The backbone given by ``name`` / ``pretrained``, else the one the prompt records (when it can be loaded)."""
    if name is None:
        from .bank import is_bank, read_bank

        prompt_dir = local_prompt_dir(prompt_dir)
        if is_bank(prompt_dir):  # every prompt of a bank records the same backbone
            prompt_dir = Path(prompt_dir) / read_bank(prompt_dir)["prompts"][0]["path"]
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
        cls,
        prompt_dir: str | Path,
        backbone: Backbone | str | None = None,
        pretrained: str | None = None,
        task: str | None = None,
        **kwargs,
    ) -> Predictor:
        """Load a saved prompt (or ``task`` of a prompt bank or multi-task prompt); the backbone defaults to its own.

        ``prompt_dir`` is a folder or a Hub name, ``hf-hub:org/name[@revision]`` (fetched through the HF cache).
        """
        prompt_dir = local_prompt_dir(prompt_dir)
        if not isinstance(backbone, Backbone):
            backbone = backbone_for_prompt(prompt_dir, backbone, pretrained)
        if task is not None:
            from .bank import load_task_method

            return cls(load_task_method(prompt_dir, backbone, task), backbone, **kwargs)
        return cls(load_prompt(prompt_dir, backbone), backbone, **kwargs)

    #: peft's name for loading: ``Predictor.from_pretrained(prompt_dir)``.
    from_pretrained = from_prompt

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write the predictor's method as a prompt directory (a zero-shot predictor too)."""
        return self.method.save_pretrained(directory, self.backbone, extra)

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

    def probabilities(self, images: Iterable[str | Path | Image.Image], progress: bool = False) -> torch.Tensor:
        """[N, C] class probabilities (CPU), computed ``batch_size`` images at a time."""
        return probabilities([self.method], self.backbone, images, self.batch_size, progress)[0]

    def predict(
        self, images: Iterable[str | Path | Image.Image], topk: int = 5, progress: bool = False
    ) -> list[Prediction]:
        """One :class:`Prediction` per image (paths or PIL images), with the ``topk`` best labels."""
        return predictions(self.method, self.probabilities(images, progress), topk)


class ImageList(Dataset):
    """Images to predict (paths or PIL images) as ``(pixels, -1)`` items, decoded when read."""

    def __init__(self, images: Sequence[str | Path | Image.Image], transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(_as_rgb(self.images[index])), -1


@torch.no_grad()
def probabilities(
    methods: Sequence[PromptMethod],
    backbone: Backbone,
    images: Iterable[str | Path | Image.Image],
    batch_size: int = 64,
    progress: bool = False,
) -> list[torch.Tensor]:
    """[N, C] class probabilities (CPU) of every method over the same images, ``batch_size`` at a time.

    Each image is read and preprocessed once, and encoded once by the frozen image tower for all the
    methods that leave it untouched (those that change it encode it through their own prompts): one
    :class:`~vlprompt.feed.Feed` for all the methods.
    """
    feed = Feed(backbone, ImageList(list(images), backbone.image_transform()), methods)
    texts = [m.eval().reusable_text_features(backbone) for m in methods]
    out = [[torch.empty(0, m.num_classes)] for m in methods]
    for batches in tqdm(feed.in_order(batch_size), desc="predict", disable=not progress, leave=False):
        for method, batch, text, chunks in zip(methods, batches, texts, out):
            chunks.append(method.score(backbone, batch, text).float().softmax(dim=-1).cpu())
    return [torch.cat(chunks) for chunks in out]


def predictions(method: PromptMethod, probs: torch.Tensor, topk: int = 5) -> list[Prediction]:
    """One :class:`Prediction` per row of ``probs`` [N, C] over ``method``'s labels, with the ``topk`` best."""
    if topk < 1:
        raise OptionError(f"topk must be >= 1, not {topk}")
    names = method.class_names()
    k = min(topk, len(names))
    out = []
    for row in probs:
        values, ids = row.topk(k)
        top = [(names[int(i)], float(v)) for v, i in zip(values, ids)]
        out.append(Prediction(top[0][0], top[0][1], top, dict(zip(names, map(float, row)))))
    return out


def predict_tasks(
    prompt_dir: str | Path,
    tasks: Sequence[str],
    images: Iterable[str | Path | Image.Image],
    backbone: Backbone | None = None,
    topk: int = 5,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, list[Prediction]]:
    """Predictions for several tasks of a prompt bank (or multi-task prompt) over the same images.

    Each image is encoded once (see :func:`probabilities`), whatever the number of tasks.
    """
    from .bank import load_task_methods

    backbone = backbone or backbone_for_prompt(prompt_dir)
    methods = load_task_methods(prompt_dir, backbone, tasks)
    probs = probabilities(methods, backbone, images, batch_size, progress)
    return {t: predictions(m, p, topk) for t, m, p in zip(tasks, methods, probs)}


def _as_rgb(image: str | Path | Image.Image) -> Image.Image:
    """An image file or PIL image as 8-bit RGB, by classification's decoding (16-bit grey scaled, not clipped)."""
    from .data.images import to_rgb

    return to_rgb(image) if isinstance(image, Image.Image) else load_rgb(image)
