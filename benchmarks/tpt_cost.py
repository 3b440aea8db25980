"""TPT's cost per test image, vlprompt vs the reference procedure, each as a ratio to N plain forward passes.

Per test image with N views and C classes:

- ``forward_n``: the frozen model's no-grad forward over the N views (the image tower on N views, the text
  tower once on the C prompts at the full 77-token context): what predicting the N views costs, the unit.
- ``reference`` (TPT@63ecbac:tpt_classification.py:54-77, 240-270): the image tower on the N views, the text
  tower with gradients on the C prompts at the full context, the confident views' entropy, one AdamW step, then
  view 0 again through the image tower and the text tower to predict.
- ``vlprompt`` (:class:`vlprompt.methods.TPT`): the N views through the image tower once, the text tower with
  gradients at the prompts' exact length, one AdamW step, view 0 predicted from its cached feature.

Both tuned predictions must agree (recorded: their largest logit difference). Run:
``python benchmarks/tpt_cost.py`` (ViT-B/16 towers, random weights, N 64, 1000 classes: minutes on a CPU;
``--smoke``: tiny towers, seconds; see ``benchmarks/common.py``). Results: ``benchmarks/results/tpt_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
from common import (  # beside this script
    TINY_TEXT,
    TINY_VISION,
    machine_record,
    paired_ratios,
    parse_args,
    random_backbone,
    run_rounds,
)
from text_encoding import class_names, full_context_features

from vlprompt.methods import Batch, build_method, cosine_logits

#: ViT-B/16's image tower (open_clip config fields).
VIT_B_16 = {"layers": 12, "width": 768, "patch_size": 16, "image_size": 224, "head_width": 64}


def reference_image(bb, names, views, ctx0, lr: float, select: float) -> torch.Tensor:
    """One test image as the release tunes and predicts it (its formulas written out, not the library's)."""
    ctx = ctx0.clone().requires_grad_()
    optimizer = torch.optim.AdamW([ctx], lr)
    with torch.no_grad():
        image = bb.encode_image(views)
    logits = cosine_logits(image, full_context_features(bb, ctx, names), bb.logit_scale)
    entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    kept = logits[torch.argsort(entropy, stable=True)[: int(len(logits) * select)]]
    log_probs = kept - kept.logsumexp(dim=-1, keepdim=True)
    avg = (log_probs.logsumexp(dim=0) - math.log(len(kept))).clamp(min=torch.finfo(kept.dtype).min)
    loss = -(avg * avg.exp()).sum(-1)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        return cosine_logits(bb.encode_image(views[:1]), full_context_features(bb, ctx, names), bb.logit_scale)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=64)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--images", type=int, default=3, help="test images per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="tiny towers")
    args = parse_args(parser, "tpt_cost", {"views": 8, "classes": 10, "images": 2, "rounds": 1, "tiny": True}, argv)
    load = list(os.getloadavg())
    torch.manual_seed(0)
    if args.tiny:
        bb = random_backbone(TINY_VISION, "bench-tiny", 0, TINY_TEXT, embed_dim=64)
    else:
        bb = random_backbone(VIT_B_16, "bench-vit-b-16")
    size = bb.preprocess_cfg["size"]
    names = class_names(args.classes)
    select = 0.1 if args.views * 0.1 >= 1 else 1 / args.views
    options = {"views": args.views, "select": select, "options": {"n_ctx": 4, "ctx_init": "a photo of a"}}
    tpt = build_method("tpt", bb, names, options).eval()
    ctx0 = tpt.inner.ctx.detach().clone()
    images = [
        torch.randn(args.views, 3, size, size, generator=torch.Generator().manual_seed(i)) for i in range(args.images)
    ]

    def forward_n():
        with torch.no_grad():
            text = full_context_features(bb, ctx0, names)
            return [cosine_logits(bb.encode_image(v), text, bb.logit_scale) for v in images]

    def reference():
        return [reference_image(bb, names, v, ctx0, 5e-3, select) for v in images]

    def vlprompt():
        with torch.no_grad():
            return [tpt.score(bb, Batch(pixels=v[None])) for v in images]

    variants = {"forward_n": forward_n, "reference": reference, "vlprompt": vlprompt}
    times, outputs = run_rounds(variants, args.rounds, time.time() + 240)
    difference = max(float((r - v).abs().max()) for r, v in zip(outputs["reference"], outputs["vlprompt"]))
    per_image = {k: [t / args.images for t in ts] for k, ts in times.items()}
    result = {
        "what": "seconds per test image of TPT (one step) and of N no-grad forward passes; ratios to forward_n",
        "views": args.views,
        "classes": args.classes,
        "select": select,
        "image_tower": "tiny" if args.tiny else "ViT-B/16 (random weights)",
        "seconds_per_image": per_image,
        "reference_over_forward_n": paired_ratios(times, "reference", "forward_n"),
        "vlprompt_over_forward_n": paired_ratios(times, "vlprompt", "forward_n"),
        "reference_over_vlprompt": paired_ratios(times, "reference", "vlprompt"),
        "max_logit_difference_reference_vs_vlprompt": difference,
        "rounds": len(times["vlprompt"]),
        **machine_record(load, args.smoke),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("seconds_per_image", "max_logit_difference_reference_vs_vlprompt")}))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
