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
from vlprompt.incontext.evaluate import heldout_metrics
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
    steps: int = 1000
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


CARD = """# vlprompt/tiny-canvas

A tiny inpainter for in-context visual prompting (Bar et al., NeurIPS 2022), shipped inside the
package so that `vlprompt incontext` and the demo run offline on a CPU. It is a plain pixel-regression
masked autoencoder (`vlprompt.incontext.PixelMAE`): 48-px canvases of four 23-px cells, 8-px patches
(a 6×6 grid; the answer is the bottom-right 3×3), a ViT encoder (width {embed_dim}, {depth} blocks)
on the visible patches and a decoder (width {decoder_embed_dim}, {decoder_depth} blocks) that regresses the
ImageNet-normalised pixels of every patch. Load it with `load_inpainter("vlprompt/tiny-canvas")`.

## How it was made

    python scripts/pretrain_tiny_inpainter.py --out src/vlprompt/incontext/tiny_canvas

- Data: {scenes} scenes of the synthetic world (`vlprompt.incontext.world.render_scenes`, seed {seed}:
  both domains, every colour and shape), each mirrored at random, paired on canvases for six tasks
  drawn with weights 0.3 / 0.2 / 0.15 / 0.15 / 0.1 / 0.1: segmentation (the mask), detection (the
  mask's box, filled), colourisation (luma in, colour out), recolour (the shape painted in a colour the
  example shows), cutout (the shape on white) and flip (the mirror image). Example and query of a
  canvas are two different scenes of one task.
- Held out: pretraining never segments or boxes a star, heart or crescent (it sees them in the other
  tasks) and never colourises green or purple.
- Loss: mean squared error on the masked (answer) patches only; every canvas masks the answer quarter,
  as at inference (not MAE's random masking: emergent in-context skills from random masks need far more
  data and compute than a few CPU minutes).
- Recipe: {steps} steps of AdamW (betas 0.9 / 0.95), batch {batch_size}, lr {lr}, weight decay {weight_decay}
  (not on norms, biases, tokens), {warmup} warmup steps then cosine, gradients clipped at 1.
- Time: {wall_time_s} s of training with {threads} torch thread (torch {torch}). One thread on purpose:
  on two cores shared with other work, two threads were several times slower than one.
  Deterministic for a given seed, recipe, thread count and library versions. Stored in float16;
  the metrics below are measured on the stored weights.

## Held-out metrics
Seeds 1, 2, 3 of random example choice (the blank baseline leaves both example cells white), 96
queries and a pool of 96 examples per task (`vlprompt.incontext.evaluate.heldout_metrics`);
segmentation and detection on the held-out shapes, colourisation on the held-out colours
(IoU for segmentation and detection, MSE in [0, 1] pixel units for colourisation;
`segmentation_threshold` uses no example and no model: Otsu's threshold of the query's luma):

| metric | value |
| --- | --- |
{rows}

## Limits
- It knows the synthetic world only: one flat shape per image, 48 px; real photographs are out of scope.
- The example tells it the task (with a blank example its scores collapse), but its masks are blobs
  at the object's place rather than the shape's outline, so on these flat scenes the threshold
  baseline segments better; colourisation is barely learned.
- Answers are 23-px cells of 8-px patches: edges are coarse.
"""


def write_card(out: Path, recipe: dict, metrics: dict) -> None:
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
    (out / "CARD.md").write_text(CARD.format(**asdict(CONFIG), **recipe, rows=rows))


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
    metrics = heldout_metrics(load_inpainter(args.out))  # measured on the stored float16 weights
    save_inpainter(model, args.out, **meta, metrics=metrics)
    write_card(Path(args.out), meta["recipe"], metrics)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {args.out} in {wall} s of training")


if __name__ == "__main__":
    main()
