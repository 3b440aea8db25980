"""A whole CoOp run with augmentation, vlprompt vs the reference procedure, on the same views, in one run.

Reference procedure (CoOp's trainer through Dassl): every step decodes and augments its images, runs them
through the frozen image tower, encodes every class prompt at the full 77-token context with gradients,
and takes an SGD step. vlprompt (:func:`vlprompt.engine.fit` with ``augment``): each epoch's augmented views
are encoded once in large no-grad batches (:mod:`vlprompt.feed`), and the class prompts are encoded at their
exact length. Both draw the same views (:class:`~vlprompt.data.images.SeededViews`, a pure function of seed,
epoch and image) in the same order, so their per-epoch losses must agree (recorded: max difference).

The bare cost: every view once through the frozen image tower, in one no-grad batch per epoch, and nothing
else. No procedure that trains on these views with these numerics can take less, so ``reference_s / bare_s``
bounds any speed-up of one run: with a few classes the image tower is most of the reference's time, and the
bound is near 1 (the class prompts, which vlprompt makes cheap, are the rest).

A second figure: three runs that draw the same views (e.g. three methods of a sweep on one seed) with a
feature cache on disk: the views are encoded once for all three.

Each variant runs once per round, the rounds interleaved (``--rounds``, ``--budget``): medians, and ratios paired
within a round. Run: ``python benchmarks/augmented_training.py`` (``--smoke``: tiny towers and sizes, seconds; see
``benchmarks/common.py``). Results: ``benchmarks/results/augmented_training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import (  # beside this script
    TINY_TEXT,
    TINY_VISION,
    machine_record,
    paired_ratios,
    parse_args,
    random_backbone,
    run_rounds,
    timed,
)
from PIL import Image
from text_encoding import class_names, full_context_features
from torch.utils.data import DataLoader

from vlprompt.data import image_folder
from vlprompt.data.images import SeededViews
from vlprompt.engine import FeatureCache, TrainConfig, fit
from vlprompt.engine.trainer import StepPlan
from vlprompt.methods import CoOp, CoOpConfig

#: ViT-B/16's image tower (open_clip config fields).
VIT_B_16 = {"layers": 12, "width": 768, "patch_size": 16, "image_size": 224, "head_width": 64}


def write_images(root: Path, classes: list[str], shots: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        folder = root / name.replace(" ", "_")
        folder.mkdir(parents=True)
        for i in range(shots):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[: size // 2, : size // 2] = (37 * c) % 256  # a class-coloured quarter
            Image.fromarray(pixels).save(folder / f"{i}.png")


def reference_run(backbone, data, names, config: TrainConfig) -> tuple[list[float], torch.Tensor]:
    """CoOp's procedure: per step, augmented pixels -> frozen image tower -> full-context text -> SGD."""
    torch.manual_seed(config.seed)
    coop = CoOp(backbone, names, CoOpConfig(n_ctx=16))
    optimizer = torch.optim.SGD(
        [coop.ctx], lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )  # fmt: skip
    plan = StepPlan.build(len(data), config)
    prompt_names = [name.replace("_", " ") for name in names]  # as CoOp's trainer writes class names
    losses = []
    for epoch in range(config.epochs):
        order = plan.order(config.seed, epoch).reshape(-1, plan.micro)
        views = data.with_transform(SeededViews(backbone.image_transform(train=True), config.seed, epoch))
        loader = DataLoader(views, batch_sampler=order.tolist())
        total = 0.0
        for pixels, labels in loader:
            with torch.no_grad():
                image = backbone.encode_image(pixels)
            text = full_context_features(backbone, coop.ctx, prompt_names)
            logits = backbone.logit_scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(labels)
        losses.append(total / (plan.steps_per_epoch * plan.per_step))
    return losses, coop.ctx.detach()


def bare_run(backbone, data, config: TrainConfig) -> None:
    """The work no procedure can skip: each epoch's views decoded, augmented and encoded once, no grad."""
    for epoch in range(config.epochs):
        views = data.with_transform(SeededViews(backbone.image_transform(train=True), config.seed, epoch))
        pixels = torch.stack([views[i][0] for i in range(len(views))])
        with torch.no_grad():
            backbone.encode_image(pixels)


def vlprompt_run(backbone, data, names, config: TrainConfig, cache: FeatureCache) -> tuple[list[float], torch.Tensor]:
    torch.manual_seed(config.seed)
    coop = CoOp(backbone, names, CoOpConfig(n_ctx=16))
    result = fit(coop, backbone, data, config, cache=cache, progress=False)
    return [r["loss"] for r in result.history], coop.ctx.detach()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tiny", action="store_true", help="tiny towers instead of ViT-B/16's")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (at most)")
    parser.add_argument("--budget", type=float, default=600, help="seconds after which no further round starts")
    smoke = {"classes": 3, "shots": 2, "epochs": 1, "batch": 2, "tiny": True, "rounds": 1}
    args = parse_args(parser, "augmented_training", smoke)
    load = list(os.getloadavg())
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    vision, text, dim = (TINY_VISION, TINY_TEXT, 64) if args.tiny else (VIT_B_16, None, 512)
    backbone = random_backbone(vision, "bench-vit-b-16" if not args.tiny else "bench-tiny", 0, text, embed_dim=dim)
    names = class_names(args.classes)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch, lr=0.002, schedule="constant", warmup_epochs=0, augment=True
    )  # CoOp's optimizer at a constant lr: the reference loop needs no scheduler
    with tempfile.TemporaryDirectory() as tmp:
        write_images(Path(tmp) / "images", names, args.shots, size=vision["image_size"] + 32)
        data = image_folder(Path(tmp) / "images", backbone.image_transform())
        names = data.classnames
        outputs: dict = {}
        variants = {  # interleaved rounds: each variant's median, and paired ratios robust to the load changing
            "reference": lambda: outputs.setdefault("reference", reference_run(backbone, data, names, config)),
            "bare": lambda: bare_run(backbone, data, config),
            "vlprompt": lambda: outputs.setdefault(
                "vlprompt", vlprompt_run(backbone, data, names, config, FeatureCache())
            ),
        }
        times, _ = run_rounds(variants, args.rounds, deadline=time.time() + args.budget)
        (ref_losses, ref_ctx), (ours_losses, ours_ctx) = outputs["reference"], outputs["vlprompt"]
        shared = FeatureCache(Path(tmp) / "cache")
        three_s, _ = timed(lambda: [vlprompt_run(backbone, data, names, config, shared) for _ in range(3)])
        # three runs drawing the same views (one seed): encoded once, read from disk after
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "augmented_training",
        "backbone": "tiny" if args.tiny else "ViT-B/16-sized random CLIP (ViT-B text tower)",
        "classes": len(names),
        "images": len(data),
        "epochs": args.epochs,
        "batch_size": args.batch,
        "rounds": len(times["reference"]),
        "seconds": times,
        "median_s": median,
        "speedup_one_run": paired_ratios(times, "reference", "vlprompt"),
        "bound_one_run": paired_ratios(times, "reference", "bare"),
        "vlprompt_over_bare": paired_ratios(times, "vlprompt", "bare"),
        "three_runs_same_views_s": three_s,
        "speedup_three_runs_vs_3x_reference": 3 * median["reference"] / three_s,
        "losses_reference": ref_losses,
        "losses_vlprompt": ours_losses,
        "max_abs_diff_loss": max(abs(a - b) for a, b in zip(ref_losses, ours_losses)),
        "max_abs_diff_ctx": float((ref_ctx - ours_ctx).abs().max()),
        **machine_record(load, args.smoke),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    shown = {k: v for k, v in result.items() if k not in ("seconds", "machine", "losses_reference", "losses_vlprompt")}
    print(json.dumps(shown, indent=1))
    return result


if __name__ == "__main__":
    main()
