"""In-context pairs from vlprompt's synthetic world of shapes: pretraining canvases and held-out sets.

Every scene is one shape in one colour (:func:`vlprompt.data.synthetic.render_scene`, both domains),
with its coverage mask, so each scene gives pairs for several tasks: its mask (segmentation), the
mask's box (detection), its colours from its luma (colourisation), and three more image-to-image
tasks only pretraining uses (``recolour``: the shape painted in a colour the example shows;
``cutout``: the shape on white; ``flip``: the mirror image).

Held out (so a table measures in-context learning, not memorisation): pretraining never segments or
boxes the shapes in :data:`HELD_OUT_SHAPES` (it sees them in the other tasks) and never colourises
the colours in :data:`HELD_OUT_COLOURS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..data.synthetic import COLOURS, DOMAINS, SHAPES, render_scene
from ..errors import OptionError
from .tasks import luma

__all__ = [
    "HELD_OUT_COLOURS",
    "HELD_OUT_SHAPES",
    "PRETRAIN_TASKS",
    "Scenes",
    "heldout_scenes",
    "pretraining_batch",
    "render_scenes",
    "task_batch",
]

HELD_OUT_SHAPES: tuple[str, ...] = ("star", "heart", "crescent")
"""Shapes pretraining never segments or boxes."""

HELD_OUT_COLOURS: tuple[str, ...] = ("green", "purple")
"""Colours pretraining never colourises."""

PRETRAIN_TASKS: tuple[str, ...] = ("segmentation", "detection", "colourisation", "recolour", "cutout", "flip")
#: How often each pretraining task is drawn (the two evaluated mask tasks most).
PRETRAIN_WEIGHTS: tuple[float, ...] = (0.3, 0.2, 0.15, 0.15, 0.1, 0.1)


@dataclass
class Scenes:
    """Rendered scenes: images float [N, 3, 48, 48] in [0, 1], masks float [N, 48, 48], primitive indices."""

    images: Tensor
    masks: Tensor
    colours: np.ndarray
    shapes: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def render_scenes(
    n: int, seed: int, shapes: tuple[str, ...] = SHAPES, colours: tuple[str, ...] = tuple(COLOURS)
) -> Scenes:
    """``n`` scenes with uniformly drawn shape, colour and domain; a pure function of the arguments."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7001]))
    images, masks, cs, ss = [], [], [], []
    for _ in range(n):
        colour, shape = colours[int(rng.integers(len(colours)))], shapes[int(rng.integers(len(shapes)))]
        image, mask = render_scene(colour, shape, DOMAINS[int(rng.integers(len(DOMAINS)))], rng)
        images.append(image)
        masks.append(mask)
        cs.append(list(COLOURS).index(colour))
        ss.append(SHAPES.index(shape))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return Scenes(pixels, torch.from_numpy(np.stack(masks)), np.asarray(cs), np.asarray(ss))


def heldout_scenes(task: str, n: int, seed: int) -> Scenes:
    """Scenes for evaluating ``task`` on what pretraining never paired with it."""
    if task == "colourisation":
        return render_scenes(n, seed, colours=HELD_OUT_COLOURS)
    return render_scenes(n, seed, shapes=HELD_OUT_SHAPES)


def _boxes(binary: Tensor) -> Tensor:
    """Filled bounding boxes [N, H, W] of bool masks [N, H, W] (empty masks stay empty)."""
    rows, cols = binary.any(dim=2), binary.any(dim=1)  # [N, H], [N, W]

    def span(hit: Tensor) -> Tensor:
        index = torch.arange(hit.shape[1])
        first = torch.where(hit, index, hit.shape[1]).min(dim=1).values
        last = torch.where(hit, index, -1).max(dim=1).values
        return (index >= first[:, None]) & (index <= last[:, None])

    return span(rows)[:, :, None] & span(cols)[:, None, :]


def task_batch(task: str, images: Tensor, masks: Tensor, colours: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(input pictures, output pictures) [N, 3, H, W] of scenes for a task; ``colours`` [N, 3] for recolour.

    Segmentation, detection and colourisation draw exactly what :class:`~.tasks.Segmentation`,
    :class:`~.tasks.Detection` and :class:`~.tasks.Colourisation` draw for the mask thresholded at 0.5.
    """
    soft = masks.unsqueeze(1)
    if task == "segmentation":
        return images, (soft > 0.5).float().expand(-1, 3, -1, -1)
    if task == "detection":
        return images, _boxes(masks > 0.5).float().unsqueeze(1).expand(-1, 3, -1, -1)
    if task == "colourisation":
        return luma(images).expand(-1, 3, -1, -1), images
    if task == "recolour":
        assert colours is not None  # recolour draws the given colours
        return images, images * (1 - soft) + colours[:, :, None, None] * soft
    if task == "cutout":
        return images, images * soft + (1 - soft)
    if task == "flip":
        return images, images.flip(-1)
    raise OptionError(f"unknown pretraining task {task!r}; choose from {PRETRAIN_TASKS}")


def _allowed(task: str, scenes: Scenes) -> np.ndarray:
    if task in ("segmentation", "detection"):
        held = [SHAPES.index(s) for s in HELD_OUT_SHAPES]
        return np.flatnonzero(~np.isin(scenes.shapes, held))
    if task == "colourisation":
        held = [list(COLOURS).index(c) for c in HELD_OUT_COLOURS]
        return np.flatnonzero(~np.isin(scenes.colours, held))
    return np.arange(len(scenes))


_PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255.0


def pretraining_batch(scenes: Scenes, size: int, rng: np.random.Generator) -> list[Tensor]:
    """``size`` pretraining canvases' cells: [example inputs, example outputs, query inputs, query outputs].

    Each canvas draws a task (:data:`PRETRAIN_WEIGHTS`), two different scenes allowed for it, a mirror
    flip of each, and for ``recolour`` one target colour shared by its example and query.
    """
    tasks = rng.choice(len(PRETRAIN_TASKS), size=size, p=PRETRAIN_WEIGHTS)
    pairs = np.zeros((size, 2), dtype=np.int64)
    for t in range(len(PRETRAIN_TASKS)):
        allowed = _allowed(PRETRAIN_TASKS[t], scenes)
        for i in np.flatnonzero(tasks == t):
            pairs[i] = allowed[rng.choice(len(allowed), size=2, replace=False)]
    flips = torch.from_numpy(rng.random((size, 2)) < 0.5)
    colours = _PALETTE[torch.from_numpy(rng.integers(len(_PALETTE), size=size))]
    cells = []
    for side in (0, 1):
        index = torch.from_numpy(pairs[:, side])
        images, masks = scenes.images[index].clone(), scenes.masks[index].clone()
        flip = flips[:, side]
        images[flip], masks[flip] = images[flip].flip(-1), masks[flip].flip(-1)
        inputs, outputs = torch.empty_like(images), torch.empty_like(images)
        for t in range(len(PRETRAIN_TASKS)):
            chosen = torch.from_numpy(tasks == t)
            if chosen.any():
                inputs[chosen], outputs[chosen] = task_batch(
                    PRETRAIN_TASKS[t], images[chosen], masks[chosen], colours[chosen]
                )
        cells += [inputs, outputs]
    return cells
