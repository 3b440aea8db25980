"""Tasks of in-context visual prompting: how an example pair is drawn into cells, how an answer is read back.

An :class:`InContextTask` turns an example's input and output into RGB cells, reads the answer out of the
filled answer cell, and scores it against the target. Conventions follow the reference
(amirbar/visual_prompting, ``evaluate/``):

- segmentation: the output cell is the mask, white foreground on black; the answer is every pixel
  rounded to the nearer of white and black (the reference's ``round_image`` with ``t = 0``: a pixel
  is white when its channel mean is at least one half); scored by foreground IoU.
- detection: the output cell is the box drawn as a filled white rectangle on black; the answer is
  rounded like a mask, and the bounding box of its largest white 4-connected component (the
  reference's ``to_rectangle``) is read back as a :class:`Box`; scored by box IoU.
- colourisation: the input cell is the image's luma (ITU-R 601) in three channels, the output cell is
  the colour image; scored by mean squared error in [0, 1] pixel units.
- :class:`ImageToImage`: any pairs the user gives, drawn as they are; scored by mean squared error.

Targets are scored at the cell's resolution: the target is drawn into a cell and read back exactly
like the answer (the reference rounds its resized ground-truth canvas the same way).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import DataError
from .canvas import resize_cells

__all__ = [
    "TASKS",
    "Box",
    "Colourisation",
    "Detection",
    "ImageToImage",
    "InContextTask",
    "Segmentation",
    "TaskInputError",
    "box_iou",
    "check_examples",
    "get_task",
    "largest_component_box",
    "luma",
    "mask_iou",
    "round_black_white",
    "to_image",
]


class TaskInputError(DataError):
    """An example or query does not fit the task (sizes, counts, a mask that is not binary)."""


class Box(NamedTuple):
    """An axis-aligned box in pixels: left, top, right, bottom (right and bottom exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def scaled(self, sx: float, sy: float) -> Box:
        return Box(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy)


def to_image(value: Any, what: str = "image") -> Tensor:
    """A PIL image, a uint8 / float array [H, W(, 3)] or a tensor [3, H, W] -> float [3, H, W] in [0, 1]."""
    if isinstance(value, Image.Image):
        value = np.asarray(value.convert("RGB"))
    if isinstance(value, np.ndarray):
        array = value.astype(np.float32) / 255.0 if value.dtype == np.uint8 else value.astype(np.float32)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] != 3:
            raise TaskInputError(f"{what}: expected an RGB array [H, W, 3] or a grey one [H, W], got {array.shape}")
        value = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    if not isinstance(value, Tensor) or value.ndim != 3 or value.shape[0] != 3:
        raise TaskInputError(f"{what}: expected an RGB image, got {type(value).__name__} {getattr(value, 'shape', '')}")
    return value.float()


def _binary_mask(value: Any, what: str) -> Tensor:
    """bool [H, W] from a 0/1, 0/255 or bool mask (array, PIL image or tensor; grey or identical RGB channels)."""
    if isinstance(value, Image.Image):
        value = np.asarray(value.convert("RGB") if value.mode not in ("1", "L") else value)
    array = value.cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    if array.ndim == 3:
        if array.shape[0] == 3 and array.shape[2] != 3:
            array = np.moveaxis(array, 0, 2)
        if array.shape[2] != 3 or not (np.all(array == array[..., :1])):
            raise TaskInputError(f"{what} is not a binary mask: its colour channels differ (expected black and white)")
        array = array[..., 0]
    if array.ndim != 2:
        raise TaskInputError(f"{what} is not a binary mask: expected [H, W], got shape {array.shape}")
    values = np.unique(array)
    allowed = [{0, 1}, {0, 255}] if array.dtype != bool else [{False, True}]
    if not any(set(values.tolist()) <= a for a in allowed):
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise TaskInputError(
            f"{what} is not a binary mask: it holds the values {shown}; expected only 0 and 1 (or 0 and 255): "
            "black background, white foreground"
        )
    return torch.from_numpy(array > 0)


def round_black_white(cells: Tensor) -> Tensor:
    """float [..., 3, H, W] -> bool [..., H, W]: True where the pixel is nearer white than black."""
    return cells.mean(dim=-3) >= 0.5


def mask_iou(pred: Tensor, target: Tensor) -> float:
    """Foreground IoU of two bool masks (1.0 when both are empty)."""
    union = (pred | target).sum().item()
    return 1.0 if union == 0 else (pred & target).sum().item() / union


def box_iou(a: Box | None, b: Box | None) -> float:
    """IoU of two boxes (0 when either is missing or empty)."""
    if a is None or b is None:
        return 0.0
    w = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    h = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = w * h
    union = (a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - inter
    return inter / union if union > 0 else 0.0


def largest_component_box(mask: Tensor) -> Box | None:
    """Bounding box of the largest 4-connected True region of a bool mask [H, W] (None if it has none)."""
    grid = mask.cpu().numpy().astype(bool)
    seen = np.zeros_like(grid)
    best: tuple[int, Box] | None = None
    height, width = grid.shape
    for y, x in zip(*np.nonzero(grid)):
        if seen[y, x]:
            continue
        seen[y, x] = True
        queue, size = deque([(y, x)]), 0
        y0, y1, x0, x1 = y, y, x, x
        while queue:
            cy, cx = queue.popleft()
            size += 1
            y0, y1, x0, x1 = min(y0, cy), max(y1, cy), min(x0, cx), max(x1, cx)
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < height and 0 <= nx < width and grid[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if best is None or size > best[0]:
            best = (size, Box(float(x0), float(y0), float(x1 + 1), float(y1 + 1)))
    return None if best is None else best[1]


def _mask_image(mask: Tensor) -> Tensor:
    return mask.float().unsqueeze(0).expand(3, -1, -1).clone()


class InContextTask(ABC):
    """How one kind of example pair becomes cells, and how an answer is read and scored.

    (Not :class:`vlprompt.labels.Task`, one task of a multi-task classification run.)
    """

    name: str = ""
    metric: str = ""
    #: True when a larger score is better (IoU) rather than smaller (MSE).
    higher_is_better: bool = True

    def input_cell(self, image: Any, what: str = "input") -> Tensor:
        """The RGB picture of an input (example or query), float [3, H, W] in [0, 1]."""
        return to_image(image, what)

    @abstractmethod
    def output_cell(self, target: Any, size: tuple[int, int], what: str = "output") -> Tensor:
        """The RGB picture of a target for an input of ``size`` (height, width), float [3, H, W]."""

    @abstractmethod
    def read(self, cells: Tensor) -> list[Any]:
        """Answers read out of filled answer cells float [N, 3, c, c]."""

    @abstractmethod
    def score(self, answer: Any, target_answer: Any) -> float:
        """The metric of one answer against the target read back the same way."""

    def target_answer(self, target: Any, size: tuple[int, int], side: int) -> Any:
        """The target drawn into a cell of ``side`` pixels and read back like an answer."""
        return self.read(resize_cells([self.output_cell(target, size)], side))[0]

    def check_pair(self, image: Any, target: Any, what: str) -> tuple[Tensor, Tensor]:
        """The input and output cells of an example pair, checked to be of one size."""
        picture = self.input_cell(image, f"{what} input")
        size = (picture.shape[1], picture.shape[2])
        output = self.output_cell(target, size, f"{what} output")
        if tuple(output.shape[1:]) != size:
            raise TaskInputError(
                f"{what}: the input is {size[1]}x{size[0]} pixels but its output is "
                f"{output.shape[2]}x{output.shape[1]}; an example's input and output must have one size"
            )
        return picture, output

    def answer_at(self, answer: Any, side: int, size: tuple[int, int]) -> Any:
        """An answer read in a cell of ``side`` pixels, brought to the query's size (height, width)."""
        return answer


class Segmentation(InContextTask):
    """Foreground segmentation: the output is a binary mask (white foreground on black)."""

    name, metric = "segmentation", "mIoU"

    def output_cell(self, target: Any, size: tuple[int, int], what: str = "output") -> Tensor:
        return _mask_image(_binary_mask(target, what))

    def read(self, cells: Tensor) -> list[Tensor]:
        return list(round_black_white(cells))

    def score(self, answer: Tensor, target_answer: Tensor) -> float:
        return mask_iou(answer, target_answer)

    def answer_at(self, answer: Tensor, side: int, size: tuple[int, int]) -> Tensor:
        resized = torch.nn.functional.interpolate(answer[None, None].float(), size=size, mode="nearest")
        return resized[0, 0] > 0.5


class Detection(InContextTask):
    """Single-object detection: the output is a box, drawn as a filled white rectangle on black.

    A target is a :class:`Box` (or a 4-tuple) in the input's pixels, or a binary mask whose white
    pixels' bounding box is the box.
    """

    name, metric = "detection", "box IoU"

    def output_cell(self, target: Any, size: tuple[int, int], what: str = "output") -> Tensor:
        box = self.as_box(target, what)
        height, width = size
        canvas = torch.zeros(height, width, dtype=torch.bool)
        x0, y0 = max(0, round(box.x0)), max(0, round(box.y0))
        x1, y1 = min(width, round(box.x1)), min(height, round(box.y1))
        if x1 <= x0 or y1 <= y0:
            raise TaskInputError(f"{what}: the box {tuple(box)} is empty inside a {width}x{height} image")
        canvas[y0:y1, x0:x1] = True
        return _mask_image(canvas)

    @staticmethod
    def as_box(target: Any, what: str = "output") -> Box:
        if isinstance(target, Box) or (isinstance(target, tuple | list) and len(target) == 4):
            box = Box(*map(float, target))
            if box.x1 <= box.x0 or box.y1 <= box.y0:
                raise TaskInputError(f"{what}: a box is (left, top, right, bottom) with right > left, got {target}")
            return box
        ys, xs = torch.nonzero(_binary_mask(target, what), as_tuple=True)
        if len(xs) == 0:
            raise TaskInputError(f"{what}: the box mask has no white pixel")
        return Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))

    def read(self, cells: Tensor) -> list[Box | None]:
        return [largest_component_box(mask) for mask in round_black_white(cells)]

    def score(self, answer: Box | None, target_answer: Box | None) -> float:
        return box_iou(answer, target_answer)

    def answer_at(self, answer: Box | None, side: int, size: tuple[int, int]) -> Box | None:
        return None if answer is None else answer.scaled(size[1] / side, size[0] / side)


class ImageToImage(InContextTask):
    """Any image-to-image task defined by example pairs; the answer is the filled cell itself."""

    name, metric, higher_is_better = "image", "MSE", False

    def output_cell(self, target: Any, size: tuple[int, int], what: str = "output") -> Tensor:
        return to_image(target, what)

    def read(self, cells: Tensor) -> list[Tensor]:
        return list(cells.clamp(0, 1))

    def score(self, answer: Tensor, target_answer: Tensor) -> float:
        return torch.mean((answer - target_answer) ** 2).item()

    def answer_at(self, answer: Tensor, side: int, size: tuple[int, int]) -> Tensor:
        if size == (side, side):
            return answer
        return torch.nn.functional.interpolate(answer[None], size=size, mode="bicubic", antialias=True)[0].clamp(0, 1)


LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of R, G, B."""


def luma(images: Tensor) -> Tensor:
    """The luma of RGB images [..., 3, H, W] -> [..., 1, H, W]."""
    weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images * weights).sum(dim=-3, keepdim=True)


class Colourisation(ImageToImage):
    """Colourisation: the input cell is the image's luma (grey), the output cell is the colour image."""

    name = "colourisation"

    def input_cell(self, image: Any, what: str = "input") -> Tensor:
        return luma(to_image(image, what)).expand(3, -1, -1).clone()


TASKS: dict[str, type[InContextTask]] = {t.name: t for t in (Segmentation, Detection, Colourisation, ImageToImage)}
"""Task name -> class."""


def get_task(name: str | InContextTask) -> InContextTask:
    """A task by name (``segmentation``, ``detection``, ``colourisation``, ``image``) or the task itself."""
    if isinstance(name, InContextTask):
        return name
    if name not in TASKS:
        raise TaskInputError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name]()


def check_examples(task: InContextTask, inputs: list[Any], outputs: list[Any]) -> list[tuple[Tensor, Tensor]]:
    """Every example pair as (input cell, output cell); counts and sizes checked."""
    if len(inputs) != len(outputs):
        raise TaskInputError(
            f"got {len(inputs)} example input(s) but {len(outputs)} example output(s): give one output per input"
        )
    if not inputs:
        raise TaskInputError("give at least one example pair (input and output)")
    return [task.check_pair(i, o, f"example {k + 1}") for k, (i, o) in enumerate(zip(inputs, outputs))]
