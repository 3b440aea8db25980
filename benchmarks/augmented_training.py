"""A whole CoOp run with augmentation, vlprompt vs the reference procedure, on the same views, in one run.

Reference procedure (CoOp's trainer through Dassl): every step decodes and augments its images, runs them
through the frozen image tower, encodes every class prompt at the full 77-token context with gradients,
and takes an SGD step. vlprompt (:func:`vlprompt.engine.fit` with ``augment``): each epoch's augmented views
are encoded once in large no-grad batches (:mod:`vlprompt.feed`), and the class prompts are encoded at their
exact length. Both draw the same views (:class:`~vlprompt.data.images.SeededViews`, a pure function of seed,
epoch and image) in the same order, so their per-epoch losses must agree (recorded: max difference).

A second figure: three runs that draw the same views (e.g. three methods of a sweep on one seed) with a
feature cache on disk: the views are encoded once for all three.

Run: ``python benchmarks/augmented_training.py`` (``--smoke``: tiny towers and sizes, seconds; see
``benchmarks/common.py``). Results: ``benchmarks/results/augmented_training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import TINY_TEXT, TINY_VISION, machine_record, parse_args, random_backbone  # beside this script
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
    args = parse_args(parser, "augmented_training", {"classes": 3, "shots": 2, "epochs": 1, "batch": 2, "tiny": True})
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
        start = time.perf_counter()
        ref_losses, ref_ctx = reference_run(backbone, data, names, config)
        reference_s = time.perf_counter() - start
        start = time.perf_counter()
        ours_losses, ours_ctx = vlprompt_run(backbone, data, names, config, FeatureCache())
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        shared = FeatureCache(Path(tmp) / "cache")
        for _ in range(3):  # three runs drawing the same views (one seed): encoded once, read from disk after
            vlprompt_run(backbone, data, names, config, shared)
        three_s = time.perf_counter() - start
    result = {
        "benchmark": "augmented_training",
        "backbone": "tiny" if args.tiny else "ViT-B/16-sized random CLIP (ViT-B text tower)",
        "classes": len(names),
        "images": len(data),
        "epochs": args.epochs,
        "batch_size": args.batch,
        "reference_s": reference_s,
        "vlprompt_s": ours_s,
        "speedup_one_run": reference_s / ours_s,
        "three_runs_same_views_s": three_s,
        "speedup_three_runs_vs_3x_reference": 3 * reference_s / three_s,
        "losses_reference": ref_losses,
        "losses_vlprompt": ours_losses,
        "max_abs_diff_loss": max(abs(a - b) for a, b in zip(ref_losses, ours_losses)),
        "max_abs_diff_ctx": float((ref_ctx - ours_ctx).abs().max()),
        **machine_record(load, args.smoke),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))}, indent=2))
    return result


if __name__ == "__main__":
    main()
