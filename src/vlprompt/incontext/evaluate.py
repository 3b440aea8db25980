"""Metrics and protocols: in-context predictions over (example, query) pairs with seeded example choice.

A protocol fills one canvas per (example, query) pair and scores the answer read from it
(:mod:`.tasks`: mIoU for segmentation, box IoU for detection, MSE for colourisation and other
image-to-image tasks). The reference's segmentation mIoU is the mean over queries of the
foreground IoU of the rounded answer cell (``evaluate/segmentation_utils.py``); so is ours.

Examples come from a pool, chosen per query by

- ``random``: uniformly, from a generator seeded by the run's seed (the reference draws its support
  image with numpy's global generator);
- ``nearest``: the pool images whose CLIP image features (cosine) are nearest the query's (Zhang et
  al.'s "what makes good examples" follow-up; the paper reports that the choice matters);
- ``blank``: a white example (both example cells left empty), the baseline that ignores the example.

:func:`threshold_baseline` is a second baseline without any example or model: the query's luma
split by Otsu's threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..errors import OptionError
from .canvas import answer_cell, build_canvases, resize_cells, to_uint8
from .models import Inpainter
from .tasks import InContextTask, get_task, luma

__all__ = [
    "SELECTIONS",
    "choose_examples",
    "clip_image_features",
    "evaluate_pairs",
    "heldout_metrics",
    "heldout_set",
    "run_incontext",
    "threshold_baseline",
    "threshold_masks",
]

SELECTIONS = ("random", "nearest", "blank")


@torch.no_grad()
def clip_image_features(backbone: Any, images: Tensor, batch_size: int = 128) -> Tensor:
    """L2-normalised image features [N, D] of pixel images [N, 3, H, W] in [0, 1], with the backbone's preprocessing."""
    transform = backbone.image_transform()
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pil = [Image.fromarray(to_uint8(img)) for img in chunk]
        pixels = torch.stack([transform(p) for p in pil])
        out.append(F.normalize(backbone.encode_image(pixels).float().cpu(), dim=-1))
    return torch.cat(out)


def choose_examples(
    n_queries: int,
    pool_size: int,
    selection: str,
    seed: int = 0,
    k: int = 1,
    query_features: Tensor | None = None,
    pool_features: Tensor | None = None,
) -> np.ndarray:
    """Indices [n_queries, k] of the pool examples each query gets (``random`` or ``nearest``)."""
    if k < 1 or k > pool_size:
        raise OptionError(f"k must be between 1 and the pool size {pool_size}, not {k}")
    if selection == "random":
        rng = np.random.default_rng(np.random.SeedSequence([seed, 3117]))
        return np.stack([rng.choice(pool_size, size=k, replace=False) for _ in range(n_queries)])
    if selection == "nearest":
        if query_features is None or pool_features is None:
            raise ValueError("nearest example selection needs query_features and pool_features")
        similarity = query_features @ pool_features.T
        return similarity.topk(k, dim=1).indices.numpy()
    raise OptionError(f"unknown example selection {selection!r}; choose from {SELECTIONS[:2]}")


@torch.no_grad()
def run_incontext(
    model: Inpainter,
    example_inputs: Tensor,
    example_outputs: Tensor,
    queries: Tensor,
    batch_size: int = 256,
) -> Tensor:
    """Filled canvases [N, 3, S, S] for N (example input, example output, query) picture triples."""
    filled = []
    for start in range(0, len(queries), batch_size):
        part = slice(start, start + batch_size)
        canvases = build_canvases(example_inputs[part], example_outputs[part], queries[part], model.layout)
        filled.append(model.fill(canvases))
    return torch.cat(filled)


def evaluate_pairs(
    model: Inpainter,
    task: str | InContextTask,
    queries: tuple[Tensor, Tensor],
    pool: tuple[Tensor, Tensor],
    selection: str = "random",
    seed: int = 0,
    features: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Any]:
    """Score a task over queries, one example each from the pool.

    Args:
        model: the inpainter.
        task: the task (or its name).
        queries: (input pictures, output pictures) [N, 3, H, W], as the task draws them.
        pool: (input pictures, output pictures) [M, 3, H, W] of the candidate examples.
        selection: ``random``, ``nearest`` or ``blank`` (see the module docstring).
        seed: seed of the random choice.
        features: (query features, pool features) for ``nearest``.

    Returns:
        ``{"score": mean, "scores": per query, "examples": pool index per query (-1: blank), "canvases": filled}``
    """
    task = get_task(task)
    query_in, query_out = queries
    if selection == "blank":
        index = np.full(len(query_in), -1)
        ex_in = ex_out = torch.ones_like(query_in)
    else:
        q_feat, p_feat = features if features is not None else (None, None)
        index = choose_examples(len(query_in), len(pool[0]), selection, seed, 1, q_feat, p_feat)[:, 0]
        ex_in, ex_out = pool[0][index], pool[1][index]
    canvases = run_incontext(model, ex_in, ex_out, query_in)
    answers = task.read(answer_cell(canvases, model.layout))
    targets = task.read(resize_cells(query_out, model.layout.cell, model.layout.style))
    scores = [task.score(a, t) for a, t in zip(answers, targets)]
    return {"score": float(np.mean(scores)), "scores": scores, "examples": index, "canvases": canvases}


def threshold_masks(images: Tensor) -> list[Tensor]:
    """The example-free segmentation baseline: each image's luma split by Otsu's threshold, the side
    holding most of the border taken as background. ``images`` float [N, 3, H, W] -> bool masks [H, W]."""
    masks = []
    for image in images:
        grey = luma(image)[0]
        values = grey.flatten().double().sort().values
        n, sums = len(values), values.cumsum(0)
        low = torch.arange(1, n, dtype=torch.float64)  # pixels below each split point of the sorted values
        mean_low, mean_high = sums[:-1] / low, (sums[-1] - sums[:-1]) / (n - low)
        between = low * (n - low) * (mean_low - mean_high) ** 2  # Otsu's between-class variance (times n^2)
        mask = grey >= values[1 + int(between.argmax())].float()
        border = torch.cat([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        masks.append(~mask if border.float().mean() > 0.5 else mask)
    return masks


def threshold_baseline(task: str | InContextTask, queries: tuple[Tensor, Tensor], side: int) -> float:
    """Mean segmentation IoU of :func:`threshold_masks` on the queries resized to cells of ``side`` pixels."""
    task = get_task(task)
    targets = task.read(resize_cells(queries[1], side))
    answers = threshold_masks(resize_cells(queries[0], side))
    return float(np.mean([task.score(a, t) for a, t in zip(answers, targets)]))


def heldout_set(task: str, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """(input pictures, output pictures) of ``n`` held-out scenes for a task (see :mod:`.world`)."""
    from .world import heldout_scenes, task_batch

    scenes = heldout_scenes(task, n, seed)
    return task_batch(task, scenes.images, scenes.masks)


#: Seeds of the held-out query and pool scenes (never used by pretraining, whose scenes use seed 0).
QUERY_SEED, POOL_SEED = 1001, 1002


def heldout_metrics(
    model: Inpainter,
    seeds: Sequence[int] = (1, 2, 3),
    n: int = 96,
    tasks: Sequence[str] = ("segmentation", "detection", "colourisation"),
    backbone: Any = None,
) -> dict[str, float]:
    """Mean held-out score of each task and selection over ``seeds`` (``nearest`` only with a backbone)."""
    out: dict[str, float] = {}
    for task in tasks:
        queries, pool = heldout_set(task, n, QUERY_SEED), heldout_set(task, n, POOL_SEED)
        features = None
        selections = ["random", "blank"]
        if backbone is not None:
            features = (clip_image_features(backbone, queries[0]), clip_image_features(backbone, pool[0]))
            selections.append("nearest")
        for selection in selections:
            runs = seeds if selection == "random" else seeds[:1]  # the others do not depend on the seed
            scores = [evaluate_pairs(model, task, queries, pool, selection, s, features)["score"] for s in runs]
            out[f"{task}_{selection}"] = round(float(np.mean(scores)), 4)
        if task == "segmentation":
            out["segmentation_threshold"] = round(threshold_baseline(task, queries, model.layout.cell), 4)
    return out
