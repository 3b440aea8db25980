"""Training-step cost of VPT-deep and MaPLe on a ViT-B-16-sized random CLIP, measured in one run (CPU).

For each method, one training step (forward, loss, backward) through vlprompt's method and adapter is
timed against:
- the bare cost that cannot be avoided: the image tower's forward and backward with the prompt tokens
  (and, for MaPLe, the text tower's over the truncated prompts), written out by hand on open_clip's
  modules with nothing else around them;
- for MaPLe, the reference procedure, whose text tower runs over all 77 positions.
Timings are interleaved and repeated (medians and per-round ratios). The memory part counts the bytes the
forward pass of one step leaves alive for its backward pass (saved activations and checkpointed blocks' inputs;
exact, not sampled: :func:`vlprompt.engine.memory.held_bytes`), with and without activation checkpointing of
both towers' blocks. Results: ``benchmarks/results/visual_step_cost.json``.
Run: ``python benchmarks/visual_step_cost.py`` (``--smoke``: a two-block 32-px CLIP with a tiny text
tower, 4 classes, one round, seconds; see ``benchmarks/common.py``).
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
from common import TINY_TEXT, machine_record, paired_ratios, parse_args, random_backbone, run_rounds  # beside

from vlprompt.backbones import Backbone
from vlprompt.engine.memory import held_bytes
from vlprompt.methods import VPT, Batch, MaPLe, MaPLeConfig, VPTConfig

SMOKE_MODEL = "tiny random CLIP (image 64 x 2 at 32 px, text 64 x 2)"
WORDS = [
    "red",
    "green",
    "blue",
    "small",
    "large",
    "striped",
    "wooden",
    "metal",
    "glass",
    "old",
    "bird",
    "fish",
    "cat",
    "dog",
    "horse",
    "flower",
    "tree",
    "car",
    "boat",
]


def build_backbone(seed: int = 0, tiny: bool = False) -> Backbone:
    """ViT-B-16's towers (image: width 768, 12 layers, 224 px, patch 16; text: width 512, 12 layers), random.

    ``tiny``: a two-block 32-px image tower and a two-block text tower (``--smoke``).
    """
    if tiny:
        vision = {"layers": 2, "width": 64, "patch_size": 16, "image_size": 32, "head_width": 32}
        return random_backbone(vision, "bench-tiny", seed, TINY_TEXT, embed_dim=64)
    vision = {"layers": 12, "width": 768, "patch_size": 16, "image_size": 224, "head_width": 64}
    return random_backbone(vision, "bench-vit-b-16", seed)


def class_names(count: int) -> list[str]:
    rng = random.Random(0)
    names: list[str] = []
    while len(names) < count:
        name = " ".join(rng.sample(WORDS, rng.randint(1, 3)))
        if name not in names:
            names.append(name)
    return names


def bare_image(bb: Backbone, pixels, shallow, deep):
    """The image tower with prompt tokens after the class token, the deep ones replacing them per block."""
    visual, n = bb.model.visual, shallow.shape[0]
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(len(x), 1, -1), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(torch.cat([x[:, :1], shallow.expand(len(x), -1, -1), x[:, 1:]], dim=1))
    for i, block in enumerate(visual.transformer.resblocks):
        if 0 < i <= len(deep):
            x = torch.cat([x[:, :1], deep[i - 1].expand(len(x), -1, -1), x[:, 1 + n :]], dim=1)
        x = block(x)
    return visual.ln_post(x[:, 0]) @ visual.proj


def bare_text(bb: Backbone, embeds, eot, deep, n, length):
    """The text tower over ``length`` positions with the deep prompts replacing positions 1..n per block."""
    model = bb.model
    x = embeds[:, :length] + model.positional_embedding[:length]
    mask = model.attn_mask[:length, :length]
    for i, block in enumerate(model.transformer.resblocks):
        if 0 < i <= len(deep):
            x = torch.cat([x[:, :1], deep[i - 1].expand(len(x), -1, -1), x[:, 1 + n :]], dim=1)
        x = block(x, attn_mask=mask)
    return model.ln_final(x)[torch.arange(len(x)), eot] @ model.text_projection


def loss_of(image, text, labels, scale):
    return F.cross_entropy(scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t(), labels)


def activation_memory(bb, method, pixels, labels) -> dict[str, int]:
    """Held activations of one training step, without and with activation checkpointing (both towers' blocks)."""
    batch = Batch(pixels=pixels, targets=labels)
    memory = {}
    for checkpointing in (False, True):
        with bb.checkpointing(checkpointing):
            held = held_bytes(lambda: method.loss(bb, batch, method(bb, batch)))
            memory["checkpointed" if checkpointing else "stored"] = held
    return memory


def method_step(bb, method, pixels, labels):
    """One training step through vlprompt: the method's logits and loss, then backward."""

    def run():
        method.zero_grad(set_to_none=True)
        batch = Batch(pixels=pixels, targets=labels)
        loss = method.loss(bb, batch, method(bb, batch))
        loss.backward()
        return loss.detach()

    return run


def bench_vpt(bb, args, deadline) -> dict:
    names = class_names(args.classes)
    torch.manual_seed(1)
    vpt = VPT(bb, names, VPTConfig(n_tokens=args.tokens, deep=True)).train()
    pixels = torch.randn(args.batch, 3, bb.image_size, bb.image_size)
    labels = torch.randint(0, len(names), (args.batch,))
    text = vpt.template_features

    def bare():
        vpt.zero_grad(set_to_none=True)
        prompts = vpt.prompts
        loss = loss_of(bare_image(bb, pixels, prompts[0], list(prompts[1:])), text, labels, bb.logit_scale)
        loss.backward()
        return loss.detach()

    times, out = run_rounds({"vlprompt": method_step(bb, vpt, pixels, labels), "bare": bare}, args.rounds, deadline)
    memory = activation_memory(bb, vpt, pixels, labels)
    return _summary(times, out, "bare", memory, tokens=args.tokens, depth=bb.vision_layers)


def bench_maple(bb, args, deadline) -> dict:
    names = class_names(args.classes)
    torch.manual_seed(2)
    maple = MaPLe(bb, names, MaPLeConfig(depth=min(MaPLeConfig().depth, bb.text_layers))).train()
    pixels = torch.randn(args.batch, 3, bb.image_size, bb.image_size)
    labels = torch.randint(0, len(names), (args.batch,))
    layout, n = maple.layout, maple.config.n_ctx
    ids = bb.tokenize([f"a photo of a {name}." for name in names])
    full = bb.token_embedding(ids)

    def by_hand(length):
        def run():
            maple.zero_grad(set_to_none=True)
            deep_text = list(maple.deep_text)
            image = bare_image(bb, pixels, maple.proj(maple.ctx), [p(t) for p, t in zip(maple.deep_proj, deep_text)])
            embeds = torch.cat([full[:, :1], maple.ctx.expand(len(names), -1, -1), full[:, 1 + n :]], dim=1)
            text = bare_text(bb, embeds, layout.eot_index, deep_text, n, length)
            loss = loss_of(image, text, labels, bb.logit_scale)
            loss.backward()
            return loss.detach()

        return run

    truncated = int(layout.eot_index.max()) + 1
    variants = {
        "vlprompt": method_step(bb, maple, pixels, labels),
        "bare": by_hand(truncated),
        "reference_77": by_hand(bb.context_length),
    }
    times, out = run_rounds(variants, args.rounds, deadline)
    memory = activation_memory(bb, maple, pixels, labels)
    summary = _summary(times, out, "bare", memory, n_ctx=n, depth=maple.config.depth, text_length=truncated)
    summary["reference_over_vlprompt"] = paired_ratios(times, "reference_77", "vlprompt")
    summary["max_abs_loss_diff_vs_reference"] = float(abs(out["reference_77"] - out["vlprompt"]))
    return summary


def _summary(times, out, bare: str, memory: dict, **setup) -> dict:
    return {
        **setup,
        "rounds": len(times["vlprompt"]),
        "times_s": times,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "vlprompt_over_bare": paired_ratios(times, "vlprompt", bare),
        "max_abs_loss_diff_vs_bare": float(abs(out[bare] - out["vlprompt"])),
        "saved_activation_bytes": memory,
        "checkpointing_memory_ratio": memory["checkpointed"] / memory["stored"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4, help="images per step (MaPLe's recipe uses 4)")
    parser.add_argument("--tokens", type=int, default=8, help="VPT prompt tokens per block")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=300.0, help="seconds: no round starts that would end later")
    args = parse_args(parser, "visual_step_cost", smoke={"classes": 4, "batch": 2, "tokens": 2, "rounds": 1})
    torch.set_num_threads(args.threads)
    start, load = time.time(), list(os.getloadavg())
    bb = build_backbone(tiny=args.smoke)
    print(f"VPT-deep step, {args.batch} images, {args.tokens} tokens in all {bb.vision_layers} blocks")
    vpt = bench_vpt(bb, args, deadline=start + args.budget * 0.4)
    print(f"MaPLe step, {args.batch} images, {args.classes} classes")
    maple = bench_maple(bb, args, deadline=start + args.budget)
    result = {
        "benchmark": "visual_step_cost",
        **machine_record(load, smoke=args.smoke),
        "device": "cpu",
        "dtype": "float32",
        "model": SMOKE_MODEL if args.smoke else "ViT-B-16-sized random CLIP (image 768 x 12 at 224 px, text 512 x 12)",
        "vpt_deep_step": vpt,
        "maple_step": maple,
        "total_seconds": round(time.time() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, r in (("VPT-deep", vpt), ("MaPLe", maple)):
        print(f"{name}: vlprompt / bare = {r['vlprompt_over_bare']['median']:.2f}; "
              f"saved activations {r['saved_activation_bytes']['stored'] / 2**20:.0f} MiB, "
              f"{r['checkpointing_memory_ratio']:.2f}x with checkpointing")  # fmt: skip
    print(f"MaPLe: reference (77 tokens) / vlprompt = {maple['reference_over_vlprompt']['median']:.2f}")
    print(f"wrote {args.out} ({result['total_seconds']} s)")


if __name__ == "__main__":
    main()
