"""The releases' training augmentations, by name (``--train.augmentation``).

Every random draw comes from torch's generator, so a view stays a pure function of (seed, epoch, image) under
:class:`~vlprompt.data.images.SeededViews` (and its frozen features can be cached). The releases draw from
Python's ``random`` (and numpy's), so single draws differ from theirs; the distributions are the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torchvision import transforms as T

from ..errors import OptionError

#: name -> what it is (recipes that use one cite its release).
AUGMENTATIONS = {
    "crop-flip": "random-resized crops (scale crop_scale-1) and horizontal flips (Dassl's random_resized_crop, "
    "random_flip: CoOp, CoCoOp, KgCoOp, MaPLe, PromptSRC)",
    "randaugment": "a resize to the square input size, then RandAugment(2, 10) with Dassl's 16 operations "
    "(dassl/data/transforms/randaugment.py: CoPrompt)",
    "csp": "the centre crop, a horizontal flip, RandomPerspective() and RandomRotation(5) (CSP's "
    "datasets/composition_dataset.py)",
}


def _signed(value: float) -> float:
    """``value`` with a random sign (Dassl's ops negate it when a uniform draw exceeds 0.5)."""
    return -value if float(torch.rand(())) > 0.5 else value


def _affine(image: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, matrix)  # nearest, black outside: PIL's defaults


def _solarize_add(image: Image.Image, addition: float) -> Image.Image:
    added = np.clip(np.asarray(image, dtype=np.float64) + addition, 0, 255).astype(np.uint8)
    return ImageOps.solarize(Image.fromarray(added), 128)


def _cutout(image: Image.Image, length: float) -> Image.Image:
    """A ``length``-pixel grey square at a uniform position (Dassl's CutoutAbs, its draw and rounding kept)."""
    width, height = image.size
    x = width + (1 - width) * float(torch.rand(()))  # numpy's uniform(low=width, high=1), as Dassl calls it
    y = height + (1 - height) * float(torch.rand(()))
    x0, y0 = int(max(0, x - length / 2)), int(max(0, y - length / 2))
    image = image.copy()
    ImageDraw.Draw(image).rectangle((x0, y0, min(width, x0 + length), min(height, y0 + length)), (125, 123, 114))
    return image


#: Dassl's ``randaugment_list``: (name, operation(image, value), value at magnitude 0, value at magnitude 30).
RANDAUGMENT_OPS: tuple[tuple[str, Callable[[Image.Image, float], Image.Image], float, float], ...] = (
    ("autocontrast", lambda im, _: ImageOps.autocontrast(im), 0, 1),
    ("equalize", lambda im, _: ImageOps.equalize(im), 0, 1),
    ("invert", lambda im, _: ImageOps.invert(im), 0, 1),
    ("rotate", lambda im, v: im.rotate(_signed(v)), 0, 30),
    ("posterize", lambda im, v: ImageOps.posterize(im, int(v)), 4, 8),
    ("solarize", lambda im, v: ImageOps.solarize(im, math.ceil(v)), 0, 256),  # i < v iff i < ceil(v)
    ("solarize_add", _solarize_add, 0, 110),
    ("color", lambda im, v: ImageEnhance.Color(im).enhance(v), 0.1, 1.9),
    ("contrast", lambda im, v: ImageEnhance.Contrast(im).enhance(v), 0.1, 1.9),
    ("brightness", lambda im, v: ImageEnhance.Brightness(im).enhance(v), 0.1, 1.9),
    ("sharpness", lambda im, v: ImageEnhance.Sharpness(im).enhance(v), 0.1, 1.9),
    ("shear_x", lambda im, v: _affine(im, (1, _signed(v), 0, 0, 1, 0)), 0, 0.3),
    ("shear_y", lambda im, v: _affine(im, (1, 0, 0, _signed(v), 1, 0)), 0, 0.3),
    ("cutout", _cutout, 0, 40),
    ("translate_x", lambda im, v: _affine(im, (1, 0, _signed(v), 0, 1, 0)), 0, 100),
    ("translate_y", lambda im, v: _affine(im, (1, 0, 0, 0, 1, _signed(v))), 0, 100),
)


class RandAugment:
    """Dassl's RandAugment: ``n`` operations drawn uniformly with replacement, each at magnitude ``m`` of 30.

    Args:
        n: operations per image (Dassl's ``INPUT.RANDAUGMENT_N``, 2).
        m: their magnitude, 0-30 (``INPUT.RANDAUGMENT_M``, 10): value = low + (high - low) m / 30.
    """

    def __init__(self, n: int = 2, m: int = 10):
        if not 0 <= m <= 30:
            raise OptionError(f"RandAugment's magnitude must be in 0..30, not {m}")
        self.n, self.m = n, m

    def __call__(self, image: Image.Image) -> Image.Image:
        for i in torch.randint(len(RANDAUGMENT_OPS), (self.n,)).tolist():
            _, operation, low, high = RANDAUGMENT_OPS[i]
            image = operation(image, self.m / 30 * (high - low) + low)
        return image

    def __repr__(self) -> str:  # part of the feature-cache key of its views
        return f"RandAugment(n={self.n}, m={self.m}, ops=dassl)"


def train_transform(
    augmentation: str,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    crop_scale: float = 0.08,
) -> T.Compose:
    """The training transform ``augmentation`` (see :data:`AUGMENTATIONS`): PIL image -> normalised tensor."""
    mode = T.InterpolationMode(interpolation)
    if augmentation == "crop-flip":
        steps: list = [T.RandomResizedCrop(size, scale=(crop_scale, 1.0), interpolation=mode), T.RandomHorizontalFlip()]
    elif augmentation == "randaugment":
        steps = [T.Resize((size, size), interpolation=mode), RandAugment(2, 10)]
    elif augmentation == "csp":
        steps = [
            T.Resize(size, interpolation=mode),
            T.CenterCrop(size),
            T.RandomHorizontalFlip(),
            T.RandomPerspective(),
            T.RandomRotation(5),
        ]
    else:
        names = ", ".join(AUGMENTATIONS)
        raise OptionError(f"--train.augmentation must be one of {names}, not {augmentation!r}")
    return T.Compose([*steps, T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])
