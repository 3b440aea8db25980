"""Pretrain the bundled tiny inpainter (vlprompt/tiny-canvas) on canvases from the synthetic world.

    python scripts/pretrain_tiny_inpainter.py --out src/vlprompt/incontext/tiny_canvas

Deterministic for a given seed, recipe, thread count and library versions. See the model's CARD.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vlprompt.incontext.canvas import answer_cell, build_canvases, resize_cells
from vlprompt.incontext.models import MAEConfig, PixelMAE, load_inpainter, save_inpainter
from vlprompt.incontext.world import pretraining_batch, render_scenes

CONFIG = MAEConfig(
    image_size=48,
    patch_size=8,
    embed_dim=128,
    depth=4,
    num_heads=4,
    decoder_embed_dim=128,
    decoder_depth=2,
    decoder_num_heads=4,
    head="pixels",
)


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    scenes: int = 12000
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    threads: int = 1


def batches(recipe: Recipe, layout):
    """Canvases and their targets (the same canvases with the answer drawn in), ``recipe.steps`` batches."""
    scenes = render_scenes(recipe.scenes, recipe.seed)
    rng = np.random.default_rng(np.random.SeedSequence([recipe.seed, 4242]))
    for _ in range(recipe.steps):
        ex_in, ex_out, q_in, q_out = pretraining_batch(scenes, recipe.batch_size, rng)
        canvases = build_canvases(ex_in, ex_out, q_in, layout)
        targets = canvases.clone()
        answer_cell(targets, layout)[:] = resize_cells(q_out, layout.cell)
        yield canvases, targets


def lr_at(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train(recipe: Recipe, log_every: int = 50) -> PixelMAE:
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    model = PixelMAE(CONFIG).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "token" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "token" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.95),
    )
    mask = model.layout.answer_mask()
    start = time.time()
    for step, (canvases, targets) in enumerate(batches(recipe, model.layout)):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, recipe)
        loss = model.loss(canvases, targets, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % log_every == 0 or step == recipe.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:6.1f} s", flush=True)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--out", default="src/vlprompt/incontext/tiny_canvas")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=Recipe.steps)
    args = parser.parse_args()
    recipe = Recipe(seed=args.seed, steps=args.steps)
    start = time.time()
    model = train(recipe)
    wall = round(time.time() - start, 1)
    meta = {
        "name": "vlprompt/tiny-canvas",
        "recipe": {**asdict(recipe), "wall_time_s": wall, "torch": torch.__version__},
    }
    save_inpainter(model, args.out, **meta)
    from vlprompt.incontext.evaluate import heldout_metrics

    metrics = heldout_metrics(load_inpainter(args.out))
    save_inpainter(model, args.out, **meta, metrics=metrics)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {Path(args.out)} in {wall} s of training")


if __name__ == "__main__":
    main()
