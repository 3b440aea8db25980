"""The 2×2 visual-prompt canvas of Bar et al. (NeurIPS 2022): example input, example output, query, answer.

Layout (the reference's ``evaluate/`` code, generalised to any size): a white square of ``size``
pixels holding four square cells of ``size // 2 - padding`` pixels (111 at 224 with a 1-pixel
padding), flush with the four corners, so a ``2 * padding``-pixel white cross separates them:

    example input  | example output
    ---------------+---------------
    query          | answer (masked)

The model sees the canvas on a grid of ``patch_size`` patches and fills the bottom-right quarter of
that grid (7×7 of 14×14 at 224/16). ImageNet normalisation is applied after the canvas is built
(:func:`normalize`), as in the reference.

Where vlprompt differs, deliberately:

- Cells are resized with torch's antialiased bicubic interpolation and clamped to [0, 1] (the
  reference resizes 8-bit PIL images with PIL's bicubic filter, ``torchvision.transforms.Resize((111, 111), 3)``
  then ``ToTensor``, amirbar/visual_prompting@6923923:evaluate/evaluate_segmentation.py): one code path
  for batches of tensors, in training and at inference. ``CanvasStyle(resize="pil")`` reproduces the
  reference: each cell quantised to 8 bits, resized by PIL with ``resample``, read back as ``k / 255``.
- The answer cell of a canvas is white (the reference puts the ground truth there, which the mask
  hides anyway): a canvas never carries the answer.
- Several examples make several canvases, one per example, whose predictions are averaged
  (the reference's ``sum`` ensemble of two canvases); see :meth:`~.models.Inpainter.fill`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..errors import OptionError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CanvasError",
    "CanvasLayout",
    "CanvasStyle",
    "answer_cell",
    "build_canvases",
    "denormalize",
    "normalize",
    "resize_cells",
    "to_uint8",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CanvasError(OptionError):
    """A canvas cannot be built as asked (size, patch grid, images)."""


#: PIL's resampling filters by name (``CanvasStyle.resample``).
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class CanvasStyle:
    """How cells are drawn on a canvas.

    Attributes:
        resize: "torch" (antialiased interpolation of float images, batched; vlprompt's default) or "pil"
            (the reference's: each cell quantised to 8 bits and resized by PIL, then ``k / 255``).
        resample: the filter: bicubic (the reference's), bilinear, nearest, lanczos, box or hamming
            (torch offers bicubic, bilinear and nearest).
        background: the canvas colour, RGB in [0, 1] (white in the reference); the answer cell has it too.
    """

    resize: Literal["torch", "pil"] = "torch"
    resample: str = "bicubic"
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.resize not in ("torch", "pil"):
            raise CanvasError(f"canvas resize must be 'torch' or 'pil', not {self.resize!r}")
        allowed = tuple(RESAMPLE) if self.resize == "pil" else ("bicubic", "bilinear", "nearest")
        if self.resample not in allowed:
            raise CanvasError(f"canvas resample {self.resample!r} with resize {self.resize!r}: choose from {allowed}")
        background = tuple(float(v) for v in self.background)
        if len(background) != 3 or not all(0.0 <= v <= 1.0 for v in background):
            raise CanvasError(f"canvas background must be 3 values in [0, 1] (RGB), not {list(self.background)}")
        object.__setattr__(self, "background", background)


@dataclass(frozen=True)
class CanvasLayout:
    """Geometry of a square 2×2 canvas and its patch grid.

    Attributes:
        size: side of the canvas in pixels (224 in the reference).
        patch_size: side of the model's patches (16 in the reference); must divide ``size`` into an
            even number of patches so that the answer quarter is whole patches.
        padding: background pixels between a cell and the canvas centre line (1 in the reference).
        style: how the cells are resized and the background coloured (:class:`CanvasStyle`).
    """

    size: int = 224
    patch_size: int = 16
    padding: int = 1
    style: CanvasStyle = field(default_factory=CanvasStyle)

    def __post_init__(self) -> None:
        if self.size <= 0 or self.patch_size <= 0 or self.padding < 0:
            raise CanvasError(f"canvas size, patch size and padding must be positive, got {self}")
        if self.size % self.patch_size:
            raise CanvasError(
                f"canvas size {self.size} is not divisible by the patch size {self.patch_size}: "
                f"use a multiple of {self.patch_size} (e.g. {self.patch_size * max(2, self.size // self.patch_size)})"
            )
        if (self.size // self.patch_size) % 2:
            raise CanvasError(
                f"canvas size {self.size} makes an odd patch grid ({self.size // self.patch_size} patches a side): "
                "the masked answer quarter must be whole patches; use an even number of patches a side"
            )
        if self.cell < 1:
            raise CanvasError(f"canvas size {self.size} leaves no room for cells with padding {self.padding}")

    @property
    def cell(self) -> int:
        """Side of each of the four cells, in pixels."""
        return self.size // 2 - self.padding

    @property
    def grid(self) -> int:
        """Patches along a side of the canvas."""
        return self.size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def origin(self, row: int, col: int) -> tuple[int, int]:
        """(top, left) pixel of cell ``(row, col)``, rows and columns in {0, 1}."""
        far = self.size - self.cell
        return (far if row else 0, far if col else 0)

    def answer_mask(self) -> Tensor:
        """bool [num_patches], row-major: True for the patches of the bottom-right quarter (to be filled)."""
        half = self.grid // 2
        rows = torch.arange(self.grid).unsqueeze(1) >= half
        cols = torch.arange(self.grid).unsqueeze(0) >= half
        return (rows & cols).flatten()


def resize_cells(images: Sequence[Tensor] | Tensor, side: int, style: CanvasStyle | None = None) -> Tensor:
    """Images float [3, H, W] in [0, 1] (any sizes) -> float [N, 3, side, side], resized as ``style`` says
    (default: torch's antialiased bicubic, clamped)."""
    style = style or CanvasStyle()
    for image in images:
        if image.ndim != 3 or image.shape[0] != 3:
            raise CanvasError(f"expected an RGB image tensor [3, H, W], got shape {tuple(image.shape)}")
    if len(images) == 0:
        return torch.empty(0, 3, side, side)
    if style.resize == "pil":
        return torch.stack([_pil_resize(image, side, style.resample) for image in images])
    if len({tuple(image.shape) for image in images}) == 1:  # one call for a batch of one size
        return _resize(torch.stack(list(images)) if not isinstance(images, Tensor) else images, side, style.resample)
    return torch.cat([_resize(image[None], side, style.resample) for image in images])


def _resize(batch: Tensor, side: int, mode: str = "bicubic") -> Tensor:
    if tuple(batch.shape[-2:]) == (side, side):
        return batch.float()
    antialias = mode != "nearest"
    return F.interpolate(batch.float(), size=(side, side), mode=mode, antialias=antialias).clamp(0, 1)


def to_uint8(image: Tensor) -> np.ndarray:
    """A float image [3, H, W] in [0, 1] -> uint8 [H, W, 3], rounded to the nearest level (PIL's and PNG's form)."""
    return (image.detach().float().cpu().permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)


def _pil_resize(image: Tensor, side: int, resample: str) -> Tensor:
    """The reference's cell: float [3, H, W] -> 8 bits -> PIL resize -> float [3, side, side] of k / 255."""
    resized = np.asarray(Image.fromarray(to_uint8(image)).resize((side, side), RESAMPLE[resample]))
    return torch.from_numpy(resized.copy()).permute(2, 0, 1).float().div(255)


def build_canvases(
    example_inputs: Sequence[Tensor] | Tensor,
    example_outputs: Sequence[Tensor] | Tensor,
    queries: Sequence[Tensor] | Tensor,
    layout: CanvasLayout,
) -> Tensor:
    """One canvas per (example input, example output, query) triple, in pixel space.

    Args:
        example_inputs, example_outputs, queries: N RGB images each, float [3, H, W] in [0, 1], of any
            sizes (each is resized to a cell).
        layout: the canvas geometry.

    Returns:
        float [N, 3, size, size] in [0, 1]: the background (white by default), the three cells filled, the
        answer cell left in the background colour.
    """
    counts = {len(example_inputs), len(example_outputs), len(queries)}
    if len(counts) != 1:
        raise CanvasError(
            f"need as many example inputs, example outputs and queries per canvas, got "
            f"{len(example_inputs)}, {len(example_outputs)} and {len(queries)}"
        )
    n, cell = len(queries), layout.cell
    background = torch.tensor(layout.style.background).view(1, 3, 1, 1)
    canvases = background.expand(n, 3, layout.size, layout.size).clone()
    for (row, col), images in (((0, 0), example_inputs), ((0, 1), example_outputs), ((1, 0), queries)):
        top, left = layout.origin(row, col)
        canvases[:, :, top : top + cell, left : left + cell] = resize_cells(images, cell, layout.style)
    return canvases


def answer_cell(canvases: Tensor, layout: CanvasLayout) -> Tensor:
    """The bottom-right cell of filled canvases [N, 3, size, size] -> [N, 3, cell, cell]."""
    top, left = layout.origin(1, 1)
    return canvases[..., top : top + layout.cell, left : left + layout.cell]


def _stats(like: Tensor) -> tuple[Tensor, Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, dtype=like.dtype, device=like.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=like.dtype, device=like.device).view(3, 1, 1)
    return mean, std


def normalize(canvases: Tensor) -> Tensor:
    """Pixel-space canvases in [0, 1] -> ImageNet-normalised model input."""
    mean, std = _stats(canvases)
    return (canvases - mean) / std


def denormalize(canvases: Tensor) -> Tensor:
    """Inverse of :func:`normalize` (not clamped)."""
    mean, std = _stats(canvases)
    return canvases * std + mean
