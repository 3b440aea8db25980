"""Text-encoding speed on a ViT-B-32-sized random text tower, measured in one run.

a) CoOp's training step (forward + backward through the text encoder for all classes) as vlprompt runs it
   (the shared start token and context once, each prompt up to its own end-of-text position) vs all prompts
   in one batch cut at the longest end-of-text position (vlprompt's earlier procedure) vs the same step
   padded to the full context (the reference).
b) Batched CoCoOp (B images x C classes in one chunked pass) vs the reference per-image Python loop
   (the original code's procedure: per image, all classes at the full context), and vs the same loop
   with truncation (to separate batching from truncation).

Timings are interleaved and repeated; medians are reported. Results go to
``benchmarks/results/text_encoding.json``. Run: ``python benchmarks/text_encoding.py``
(``--smoke``: tiny text tower and sizes, seconds; see ``benchmarks/common.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

import torch
import torch.nn.functional as F
from common import machine_record, paired_ratios, parse_args, run_rounds, text_tower_record  # beside this script
from common import text_tower_backbone as build_backbone

from vlprompt.backbones import Backbone
from vlprompt.backbones.adapter import encode_text_tower
from vlprompt.methods import Batch, CoCoOp, CoCoOpConfig, CoOp, CoOpConfig

_WORD_LIST = """
red green blue small large striped spotted wooden metal glass old young wild domestic river mountain forest
desert sea garden city bird fish cat dog horse flower tree car boat plane chair table lamp clock shoe hat bag
bottle cup phone guitar piano bicycle truck train bridge tower house castle butterfly beetle spider lizard frog
snake turtle shark whale eagle owl parrot penguin tiger lion
"""
WORDS = _WORD_LIST.split()


def class_names(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct class names of 1 to 3 words."""
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < count:
        name = " ".join(rng.sample(WORDS, rng.randint(1, 3)))
        if name not in names:
            names.append(name)
    return names


def full_context_features(bb: Backbone, ctx: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Reference procedure: ``[SOT] ctx [name] . [EOT] pad..`` at all 77 positions, full causal mask."""
    n_ctx = ctx.shape[-2]
    ids = bb.tokenize([" ".join(["X"] * n_ctx) + f" {name}." for name in names])
    fixed = bb.token_embedding(ids)
    embeds = torch.cat([fixed[:, :1], ctx.expand(len(names), -1, -1), fixed[:, 1 + n_ctx :]], dim=1)
    m = bb.model
    x = m.transformer(embeds + m.positional_embedding, attn_mask=m.attn_mask)
    x = m.ln_final(x)[torch.arange(len(names)), bb.eot_index(ids)]
    return x @ m.text_projection


def cross_entropy(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    return F.cross_entropy(logits, labels)


def bench_coop(bb: Backbone, args, deadline: float) -> dict:
    names = class_names(args.classes)
    torch.manual_seed(1)
    coop = CoOp(bb, names, CoOpConfig(n_ctx=args.n_ctx))
    images = torch.randn(args.batch, bb.embed_dim)
    labels = torch.randint(0, len(names), (args.batch,))

    def step(encode):
        def run():
            coop.zero_grad(set_to_none=True)
            text = encode()
            loss = cross_entropy(images, text, labels, bb.logit_scale)
            loss.backward()
            return text.detach(), coop.ctx.grad.clone()

        return run

    def one_length() -> torch.Tensor:
        eot = coop.layout.eot_index
        return encode_text_tower(bb.model, coop.layout.assemble(coop.ctx), eot, length=int(eot.max()) + 1)

    variants = {
        "truncated": step(lambda: coop.text_features(bb)),
        "one_length": step(one_length),
        "padded_77": step(lambda: full_context_features(bb, coop.ctx, names)),
    }
    times, out = run_rounds(variants, args.rounds, deadline)
    (t_feat, t_grad), (p_feat, p_grad) = out["truncated"], out["padded_77"]
    o_feat, o_grad = out["one_length"]
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "shared_prefix": coop.layout.shared_positions,
        "mean_length": float(coop.layout.eot_index.float().mean()) + 1,
        "classes": len(names),
        "n_ctx": args.n_ctx,
        "image_batch": args.batch,
        "truncated_length": int(coop.layout.eot_index.max()) + 1,
        "full_length": bb.context_length,
        "rounds": len(times["truncated"]),
        "times_s": times,
        "median_s": med,
        "speedup_truncated_vs_padded": med["padded_77"] / med["truncated"],
        "speedup_truncated_vs_padded_paired": paired_ratios(times, "padded_77", "truncated"),
        "speedup_truncated_vs_one_length": med["one_length"] / med["truncated"],
        "speedup_truncated_vs_one_length_paired": paired_ratios(times, "one_length", "truncated"),
        "max_abs_diff_features_one_length": float((t_feat - o_feat).abs().max()),
        "max_abs_diff_grad_one_length": float((t_grad - o_grad).abs().max()),
        "max_abs_diff_features": float((t_feat - p_feat).abs().max()),
        "max_abs_features": float(p_feat.abs().max()),
        "max_abs_diff_grad": float((t_grad - p_grad).abs().max()),
        "max_abs_grad": float(p_grad.abs().max()),
    }


def bench_cocoop(bb: Backbone, args, deadline: float) -> dict:
    names = class_names(args.cocoop_classes, seed=1)
    torch.manual_seed(2)
    method = CoCoOp(bb, names, CoCoOpConfig())
    images = torch.randn(args.cocoop_images, bb.embed_dim)
    labels = torch.randint(0, len(names), (args.cocoop_images,))
    batch = Batch(features=images, targets=labels)

    def loop_text(feat: torch.Tensor, padded: bool) -> torch.Tensor:
        ctx = method.ctx + method.meta_net(F.normalize(feat, dim=-1))
        return full_context_features(bb, ctx, names) if padded else method.layout.encode(bb, ctx)

    def loop_loss(padded: bool) -> torch.Tensor:
        losses = [cross_entropy(f[None], loop_text(f, padded), y[None], bb.logit_scale) for f, y in zip(images, labels)]
        return torch.stack(losses).mean()

    def step(loss_fn):
        def run():
            method.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            return float(loss.detach()), {k: p.grad.clone() for k, p in method.named_parameters()}

        return run

    variants = {
        "batched": step(lambda: method.loss(bb, batch, method.logits(bb, batch))),
        "loop_truncated": step(lambda: loop_loss(padded=False)),
        "loop_reference_77": step(lambda: loop_loss(padded=True)),
    }
    times, out = run_rounds(variants, args.rounds, deadline)
    med = {k: statistics.median(v) for k, v in times.items()}
    loss_b, grad_b = out["batched"]
    diffs = {
        k: {
            "loss": abs(out[k][0] - loss_b),
            "grad": max(float((out[k][1][n] - g).abs().max()) for n, g in grad_b.items()),
        }
        for k in ("loop_truncated", "loop_reference_77")
    }
    return {
        "images": len(images),
        "classes": len(names),
        "prompts_per_step": len(images) * len(names),
        "n_ctx": method.ctx.shape[0],
        "truncated_length": int(method.layout.eot_index.max()) + 1,
        "rounds": len(times["batched"]),
        "times_s": times,
        "median_s": med,
        "loss": loss_b,
        "speedup_batched_vs_reference_loop": med["loop_reference_77"] / med["batched"],
        "speedup_batched_vs_truncated_loop": med["loop_truncated"] / med["batched"],
        "speedup_batched_vs_reference_loop_paired": paired_ratios(times, "loop_reference_77", "batched"),
        "speedup_batched_vs_truncated_loop_paired": paired_ratios(times, "loop_truncated", "batched"),
        "max_abs_diff_vs_batched": diffs,
    }


def warm_up(bb: Backbone) -> None:
    """One untimed small step: the first backward pass on a fresh process pays one-off setup costs."""
    coop = CoOp(bb, class_names(4), CoOpConfig(n_ctx=4))
    cross_entropy(torch.randn(2, bb.embed_dim), coop.text_features(bb), torch.tensor([0, 1]), bb.logit_scale).backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100, help="CoOp: number of classes")
    parser.add_argument("--n-ctx", type=int, default=16, help="CoOp: context length")
    parser.add_argument("--batch", type=int, default=32, help="CoOp: image features per step")
    parser.add_argument("--cocoop-images", type=int, default=8, help="CoCoOp: images per step (B)")
    parser.add_argument("--cocoop-classes", type=int, default=4, help="CoCoOp: classes (C)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats of every timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=215.0, help="seconds: no round starts that would end later")
    smoke = {"classes": 4, "n_ctx": 4, "batch": 4, "cocoop_images": 2, "cocoop_classes": 2, "rounds": 1}
    args = parse_args(parser, "text_encoding", smoke)

    torch.set_num_threads(args.threads)
    start = time.time()
    load_at_start = list(os.getloadavg())
    bb = build_backbone(tiny=args.smoke)
    warm_up(bb)
    print(
        f"text tower: width {bb.text_width}, {len(bb.model.transformer.resblocks)} layers, context {bb.context_length}"
    )
    print(f"a) CoOp step, {args.classes} classes, n_ctx {args.n_ctx}")
    coop = bench_coop(bb, args, deadline=start + args.budget * 0.6)
    print(f"b) CoCoOp step, {args.cocoop_images} images x {args.cocoop_classes} classes")
    cocoop = bench_cocoop(bb, args, deadline=start + args.budget)
    result = {
        "benchmark": "text_encoding",
        **machine_record(load_at_start, smoke=args.smoke),
        "device": "cpu",
        "dtype": "float32",
        "text_tower": text_tower_record(bb),
        "coop_step": coop,
        "cocoop_step": cocoop,
        "total_seconds": round(time.time() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    rows = [
        ("CoOp step, shared prefix, own lengths", coop["median_s"]["truncated"], 1.0),
        ("CoOp step, one batch at the longest length", coop["median_s"]["one_length"],
         coop["speedup_truncated_vs_one_length"]),
        ("CoOp step, padded to 77", coop["median_s"]["padded_77"], coop["speedup_truncated_vs_padded"]),
        ("CoCoOp step, batched", cocoop["median_s"]["batched"], 1.0),
        ("CoCoOp step, per-image loop (truncated)", cocoop["median_s"]["loop_truncated"],
         cocoop["speedup_batched_vs_truncated_loop"]),
        ("CoCoOp step, per-image loop (reference, 77)", cocoop["median_s"]["loop_reference_77"],
         cocoop["speedup_batched_vs_reference_loop"]),
    ]  # fmt: skip
    paired = [
        1.0,
        coop["speedup_truncated_vs_one_length_paired"]["median"],
        coop["speedup_truncated_vs_padded_paired"]["median"],
        1.0,
        cocoop["speedup_batched_vs_truncated_loop_paired"]["median"],
        cocoop["speedup_batched_vs_reference_loop_paired"]["median"],
    ]
    print(f"\n{'variant':46} {'median s':>9} {'x slower':>9} {'paired':>7}")
    for (name, seconds, ratio), pair in zip(rows, paired):
        print(f"{name:46} {seconds:9.2f} {ratio:9.2f} {pair:7.2f}")
    print("x slower: ratio of medians; paired: median over rounds of the per-round ratio")
    print(f"CoOp features max |truncated - padded| = {coop['max_abs_diff_features']:.2e}")
    d = cocoop["max_abs_diff_vs_batched"]
    print(f"CoCoOp |loss diff| vs loops: {d['loop_truncated']['loss']:.1e}, {d['loop_reference_77']['loss']:.1e}")
    print(f"wrote {args.out} ({result['total_seconds']} s)")


if __name__ == "__main__":
    main()
