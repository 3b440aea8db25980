"""The in-context table of ``vlprompt demo``: the bundled tiny inpainter on held-out pairs, and a picture."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..evaluation import markdown_table, summarize
from ..io import atomic_write_text
from ..plots import _save, plt
from .evaluate import POOL_SEED, QUERY_SEED, clip_image_features, evaluate_pairs, heldout_set, threshold_baseline
from .models import BUNDLED_INPAINTER, Inpainter, load_inpainter
from .tasks import get_task

__all__ = ["plot_canvases", "run_incontext_demo"]

#: The demo's tasks (their metric), queries and pool size per task.
DEMO_TASKS = ("segmentation", "detection", "colourisation")
DEMO_QUERIES = 64


def plot_canvases(canvases: torch.Tensor, titles: list[str], path: str | Path, columns: int = 4) -> None:
    """Filled canvases [N, 3, S, S] in a grid, one title each."""
    rows = -(-len(canvases) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, canvas, title in zip(axes.flat, canvases, titles):
        ax.imshow(canvas.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=8)
    fig.suptitle("In-context prompts filled by vlprompt/tiny-canvas (bottom-right: the model's answer)", fontsize=9)
    fig.tight_layout()
    _save(fig, Path(path))


def _row(task: Any, examples: str, seed: int, score: float) -> dict[str, Any]:
    return {"task": task.name, "metric": task.metric, "examples": examples, "seed": seed, "score": score}


def run_incontext_demo(
    out: str | Path,
    seeds: list[int] | None = None,
    progress: bool = True,
    model: Inpainter | None = None,
    backbone: Any = None,
    queries: int = DEMO_QUERIES,
) -> dict[str, Any]:
    """Held-out in-context scores with random, CLIP-nearest and blank examples, over seeds of example choice.

    Writes ``incontext.json``, ``incontext.md`` and ``incontext_canvases.png`` into ``out``.

    Returns:
        ``{"table": markdown, "results": {"per_seed": rows, "summary": summary}, "seconds": float}``
    """
    from ..backbones import DEFAULT_BACKBONE, load_backbone

    start = time.time()
    seeds = seeds or [1, 2, 3]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model or load_inpainter(BUNDLED_INPAINTER)
    backbone = backbone or load_backbone(DEFAULT_BACKBONE)
    rows, pictures, titles = [], [], []
    for task_name in DEMO_TASKS:
        task = get_task(task_name)
        query_set, pool = heldout_set(task_name, queries, QUERY_SEED), heldout_set(task_name, queries, POOL_SEED)
        features = (clip_image_features(backbone, query_set[0]), clip_image_features(backbone, pool[0]))
        for selection in ("random", "nearest", "blank"):
            # Only the random choice depends on the seed: the others run once and count for every seed.
            for seed in seeds if selection == "random" else seeds[:1]:
                result = evaluate_pairs(model, task, query_set, pool, selection, seed, features)
                runs = [seed] if selection == "random" else seeds
                rows += [_row(task, selection, s, result["score"]) for s in runs]
                if selection == "nearest":
                    pictures += list(result["canvases"][:4])
                    titles += [f"{task_name} {i + 1}" for i in range(4)]
            if progress:
                print(f"in-context {task_name:<13} {selection:<8} done", flush=True)
        if task_name == "segmentation":  # the baseline without example or model: Otsu's threshold of the query
            score = threshold_baseline(task, query_set, model.layout.cell)
            rows += [_row(task, "none (query thresholded)", s, score) for s in seeds]
    summary = summarize(rows, ["task", "metric", "examples"], ["score"])
    masks = [r for r in summary if r["task"] != "colourisation"]
    colour = [r for r in summary if r["task"] == "colourisation"]
    table = (
        "## In-context visual prompting (vlprompt/tiny-canvas, held-out shapes and colours)\n\n"
        f"{queries} held-out queries per task, one example each from a pool of {queries}; mean ± std over "
        f"{len(seeds)} seed(s) of the random choice (nearest, blank and the threshold do not depend on it).\n\n"
        f"{markdown_table(masks, ['task', 'metric', 'examples'], ['score'])}\n"
        "Colourisation, mean squared error ×1000 (lower is better):\n\n"
        f"{markdown_table(colour, ['task', 'metric', 'examples'], ['score'], scale=1000.0)}"
    )
    plot_canvases(torch.stack(pictures), titles, out / "incontext_canvases.png")
    seconds = round(time.time() - start, 1)
    results = {"per_seed": rows, "summary": summary, "seconds": seconds}
    atomic_write_text(out / "incontext.json", json.dumps(results, indent=2))
    atomic_write_text(out / "incontext.md", table)
    return {"table": table, "results": results, "seconds": seconds}
