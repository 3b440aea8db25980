"""ImageNet-scale training steps: CoOp, KgCoOp, CoCoOp, MaPLe and PromptSRC with 1,000 classes on a ViT-B/16-sized
random CLIP, vlprompt against the reference procedure, in one run: saved-activation memory and step time.

Each method runs with its authors' ImageNet recipe (the preset ``vlprompt bench`` picks: coop-imagenet, kgcoop,
cocoop, maple, promptsrc; their options and batch sizes) and its own loss. The reference procedure is the same
loss with every class prompt encoded at the full 77-token context (padding tokens after end-of-text, as the
authors' text encoders run), and for CoCoOp one image a step (its authors' batch 1: each image's 1,000 prompts).
vlprompt runs the positions the prompts share (start token, context) once and each prompt up to its own
end-of-text position (exact: the mask is causal; the losses of both are recorded), batches CoCoOp's images
(batch 8 here), and with ``TrainConfig.activation_checkpointing`` recomputes each text block in the backward pass.
CoOp, KgCoOp and CoCoOp see cached image features in both (the frozen image tower runs once per view either way);
MaPLe and PromptSRC run their prompted image tower on 224-px pixels.
PromptSRC's frozen class features (a constant of the step, built once) average CoOp's 7 templates here, not 60.

- Memory: the bytes of every tensor the forward pass leaves alive for the backward pass (saved activations and
  checkpoint inputs; weights and inputs excluded), counted on PyTorch's meta device, where tensors have sizes but
  no data, so the reference's 1,000-class steps are measured without the RAM they need. The same count on the CPU
  (attention by the math kernel, which is what the meta device dispatches to) is checked equal at a small class
  count in the same run. A fused attention kernel (CPU flash, CUDA) stores less than the math kernel.
- Time: the median of ``--rounds`` steps (forward and backward, the variants interleaved) of every variant, at
  ``--ref-classes`` and at ``--classes``, on the CPU, except a variant that holds more than ``--max-gib`` (it does
  not fit this 24 GB machine: the reference at 1,000 classes, and CoCoOp at batch 8 without checkpointing, which
  a first run of this script showed by being killed for memory). Speed-ups are per image (CoCoOp's reference
  takes one image a step).

The class names are ImageNet's (OpenAI's curated names, ``open_clip.zero_shot_metadata``; the first
``--ref-classes`` of them at the smaller count): the longest sets the length recorded as ``text_length``.

Run: ``python benchmarks/imagenet_step.py`` (``--smoke``: tiny towers and sizes, seconds; see
``benchmarks/common.py``). Results: ``benchmarks/results/imagenet_step.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator

import torch
from common import TINY_TEXT, TINY_VISION, machine_record, parse_args, random_backbone, timed  # beside this script
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from torch.nn.attention import SDPBackend, sdpa_kernel

from vlprompt.backbones import Backbone
from vlprompt.backbones.adapter import encode_text_tower
from vlprompt.engine.memory import held_bytes
from vlprompt.engine.presets import preset_recipe, protocol_preset
from vlprompt.methods import Batch, PromptMethod, build_method

#: ViT-B/16's image tower (open_clip config fields).
VIT_B_16 = {"layers": 12, "width": 768, "patch_size": 16, "image_size": 224, "head_width": 64}
#: (method, the bench protocol whose ImageNet preset it trains with).
METHODS = (("coop", "few-shot"), ("kgcoop", "few-shot"), ("cocoop", "base-to-new"), ("maple", "base-to-new"),
           ("promptsrc", "base-to-new"))  # fmt: skip
GiB = 2**30


@contextlib.contextmanager
def full_context(bb: Backbone, pad: torch.Tensor) -> Iterator[None]:
    """The reference text encoder: every prompt runs over all ``context_length`` positions (``pad``: the padding
    token's embedding after end-of-text), the same blocks and prompts otherwise."""

    def padded(embeds, eot_index, deep_prompts=None, n_prompts=None, block_residuals=None, **rest):
        rest = {k: v for k, v in rest.items() if k not in ("shared_prefix", "prefix_groups")}  # nothing shared here
        assert not rest, "the five methods here insert no tokens"
        missing = bb.context_length - embeds.shape[-2]
        embeds = torch.cat([embeds, pad.to(embeds.dtype).expand(embeds.shape[0], missing, -1)], dim=1)
        return encode_text_tower(
            bb.model, embeds, eot_index, deep_prompts, n_prompts, bb.context_length, block_residuals
        )

    bb.encode_text_embeddings = padded  # type: ignore[method-assign]
    try:
        yield
    finally:
        del bb.encode_text_embeddings


def imagenet_names(classes: int) -> list[str]:
    """The first ``classes`` ImageNet class names, a repeated one numbered ("missile", ..., "missile 2")."""
    seen: Counter[str] = Counter()
    names = []
    for name in IMAGENET_CLASSNAMES[:classes]:
        seen[name] += 1
        names.append(name if seen[name] == 1 else f"{name} {seen[name]}")
    return names


def recipe(name: str, protocol: str) -> tuple[str, dict, int]:
    """(preset, method options, batch size) of ``name``'s authors' ImageNet recipe for ``protocol``."""
    preset = protocol_preset(name, protocol, "imagenet")
    assert preset is not None, name
    found = preset_recipe(preset)
    options = dict(found.options)
    if name == "promptsrc":  # its frozen class features are built once at setup: 7 templates, not the 60, save minutes
        options["teacher_templates"] = "coop7"
    return preset, options, int(found.train.get("batch_size", 32))


def step_loss(bb: Backbone, method: PromptMethod, batch: Batch) -> torch.Tensor:
    return method.loss(bb, batch, method.logits(bb, batch))


def make_batch(bb: Backbone, method: PromptMethod, size: int, classes: int, device: str) -> Batch:
    g = torch.Generator().manual_seed(size)
    targets = torch.randint(0, classes, (size,), generator=g).to(device)
    if method.changes_image_tower:
        pixels = torch.randn(size, 3, bb.image_size, bb.image_size, generator=g).to(device)
        return Batch(pixels=pixels, targets=targets)
    return Batch(features=torch.randn(size, bb.embed_dim, generator=g).to(device), targets=targets)


def per_image_loss(bb: Backbone, method: PromptMethod, batch: Batch) -> torch.Tensor:
    """The reference CoCoOp step over ``batch``: one image at a time (its authors' batch 1), losses averaged."""
    assert batch.features is not None and batch.targets is not None
    losses = [
        step_loss(bb, method, Batch(features=f[None], targets=y[None])) for f, y in zip(batch.features, batch.targets)
    ]
    return torch.stack(losses).mean()


def variants(name: str, batch_size: int, cocoop_batch: int) -> dict[str, tuple[int, bool, bool]]:
    """{variant: (images a step, full context, checkpointing)}: the reference and vlprompt (CoCoOp: both
    stored and checkpointed at ``cocoop_batch``)."""
    if name == "cocoop":
        return {"reference": (1, True, False), "vlprompt": (cocoop_batch, False, False),
                "vlprompt_checkpointed": (cocoop_batch, False, True)}  # fmt: skip
    return {"reference": (batch_size, True, False), "vlprompt": (batch_size, False, False)}


class Setup:
    """One method at one class count on one device, and how to run each variant's step."""

    def __init__(self, bb: Backbone, name: str, protocol: str, classes: int, device: str, cocoop_batch: int):
        self.preset, options, self.batch_size = recipe(name, protocol)
        torch.manual_seed(0)
        self.method = build_method(name, bb, imagenet_names(classes), options)
        self.method.train()
        pad = bb.token_embedding(torch.zeros(1, dtype=torch.long))
        layouts = [m for m in self.method.modules() if hasattr(m, "eot_index")]
        eot = [m.eot_index.clone() for m in layouts]
        self.text_length = max(int(index.max()) + 1 for index in eot)  # vlprompt's truncated prompt length
        bb.to(device)
        self.method.to(device)
        for m, index in zip(layouts, eot):
            m.eot_index = index  # the truncation length is read on the host (a meta tensor has no value)
        self.bb, self.pad, self.device = bb, pad.to(device), device
        self.variants = variants(name, self.batch_size, cocoop_batch)
        self.batches = {
            size: make_batch(bb, self.method, size, classes, device) for size, _, _ in self.variants.values()
        }

    def loss_fn(self, variant: str) -> Callable[[], torch.Tensor]:
        size, full, checkpoint = self.variants[variant]
        batch = self.batches[size]
        cocoop_reference = self.method.name == "cocoop" and full

        def run() -> torch.Tensor:
            with (
                full_context(self.bb, self.pad) if full else contextlib.nullcontext(),
                self.bb.checkpointing(checkpoint),
            ):
                return (
                    per_image_loss(self.bb, self.method, batch)
                    if cocoop_reference
                    else step_loss(self.bb, self.method, batch)
                )

        return run

    def held_bytes(self, variant: str) -> int:
        with no_autocast(self.device):
            return held_bytes(self.loss_fn(variant))

    def timed_step(self, variant: str) -> tuple[float, float]:
        """Seconds of one step (forward and backward) and its loss."""

        def step() -> float:
            self.method.zero_grad(set_to_none=True)
            loss = self.loss_fn(variant)()
            loss.backward()
            return float(loss.detach())

        return timed(step)  # type: ignore[return-value]


@contextlib.contextmanager
def no_autocast(device: str) -> Iterator[None]:
    """The meta device has no autocast state: the methods' fp32 logits context becomes a no-op there."""
    if device != "meta":
        yield
        return
    original = torch.autocast
    torch.autocast = lambda *a, **k: contextlib.nullcontext()  # type: ignore[assignment, misc]
    try:
        yield
    finally:
        torch.autocast = original  # type: ignore[misc]


def measure(make_bb: Callable[[], Backbone], args) -> dict:
    """Per method and class count (``--ref-classes``, ``--classes``): each variant's held bytes (meta device) and,
    unless it needs more than ``--max-gib`` of them (it would not fit this machine), one timed step on the CPU."""
    out: dict = {}
    for name, protocol in METHODS:
        out[name] = {}
        for classes in dict.fromkeys((args.ref_classes, args.classes)):
            meta = Setup(make_bb(), name, protocol, classes, "meta", args.cocoop_batch)
            cells = {v: {"images": size, "held_bytes": meta.held_bytes(v)} for v, (size, _, _) in meta.variants.items()}
            cpu = None if args.no_timing else Setup(make_bb(), name, protocol, classes, "cpu", args.cocoop_batch)
            fits = [v for v, cell in cells.items() if cell["held_bytes"] <= args.max_gib * GiB]
            rounds: dict[str, list] = {v: [] for v in fits} if cpu is not None else {}
            for _ in range(args.rounds if cpu is not None else 0):  # interleaved: a load change hits every variant
                for variant in fits:
                    rounds[variant].append(cpu.timed_step(variant))
            for variant, cell in cells.items():
                held = f"{cell['held_bytes'] / GiB:.2f} GiB held"
                if variant not in rounds:
                    print(f"  {name} {classes} classes {variant}: {held}, not timed", flush=True)
                    continue
                cell["seconds_per_round"] = [seconds for seconds, _ in rounds[variant]]
                cell["seconds"], cell["loss"] = statistics.median(cell["seconds_per_round"]), rounds[variant][0][1]
                cell["seconds_per_image"] = cell["seconds"] / cell["images"]
                print(f"  {name} {classes} classes {variant}: {held}, {cell['seconds']:.1f} s, loss {cell['loss']:.6f}",
                      flush=True)  # fmt: skip
            row = {"preset": meta.preset, "text_length": meta.text_length, "variants": cells}
            out[name][str(classes)] = {**row, **_ratios(name, cells)}
    return out


def _ratios(name: str, cells: dict) -> dict:
    """The reference's held bytes and per-image time over vlprompt's (its fastest timed variant), where measured."""
    ours = [v for v in cells if v != "reference"]
    ratios: dict = {"memory_ratio": {v: cells["reference"]["held_bytes"] / cells[v]["held_bytes"] for v in ours}}
    timed_ours = [v for v in ours if "seconds" in cells[v]]
    if "seconds" in cells["reference"] and timed_ours:
        fastest = min(timed_ours, key=lambda v: cells[v]["seconds_per_image"])
        ratios["speedup_per_image"] = cells["reference"]["seconds_per_image"] / cells[fastest]["seconds_per_image"]
        ratios["speedup_of"] = fastest
        if name != "cocoop":  # the same images: the same loss
            ratios["loss_abs_diff"] = abs(cells["reference"]["loss"] - cells["vlprompt"]["loss"])
    return ratios


def meta_check(make_bb: Callable[[], Backbone], classes: int, cocoop_batch: int) -> dict:
    """The held bytes on the meta device equal the CPU's with the math attention kernel, for every variant."""
    counts: dict = {}
    for name, protocol in METHODS:
        counts[name] = {}
        for device in ("meta", "cpu"):
            setup = Setup(make_bb(), name, protocol, classes, device, cocoop_batch)
            with sdpa_kernel(SDPBackend.MATH):
                counts[name][device] = {v: setup.held_bytes(v) for v in setup.variants}
    unequal = [name for name, c in counts.items() if c["meta"] != c["cpu"]]
    if unequal:
        raise AssertionError(f"held bytes on the meta device differ from the CPU's for {unequal}: {counts}")
    return {"classes": classes, "counts": counts, "equal": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--ref-classes", type=int, default=250, help="the class count the reference is timed at")
    parser.add_argument("--check-classes", type=int, default=8, help="the meta-vs-CPU memory check's classes")
    parser.add_argument("--cocoop-batch", type=int, default=8, help="vlprompt's CoCoOp images a step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-timing", action="store_true", help="memory only (seconds)")
    parser.add_argument("--max-gib", type=float, default=14.0, help="time no variant that holds more (RAM)")
    parser.add_argument("--rounds", type=int, default=2, help="timed steps per variant (interleaved; median)")
    smoke = {"classes": 12, "ref_classes": 6, "check_classes": 4, "cocoop_batch": 2, "rounds": 1}
    args = parse_args(parser, "imagenet_step", smoke)
    torch.set_num_threads(args.threads)
    start, load_at_start = time.time(), list(os.getloadavg())
    if args.smoke:
        vision = {**TINY_VISION, "layers": 12}  # the recipes prompt 9 blocks

        def make_bb() -> Backbone:
            return random_backbone(vision, "bench-tiny", 0, {**TINY_TEXT, "layers": 12}, embed_dim=64)
    else:

        def make_bb() -> Backbone:
            return random_backbone(VIT_B_16, "bench-vit-b-16")

    check = meta_check(make_bb, args.check_classes, args.cocoop_batch)
    print(
        f"held bytes on the meta device equal the CPU's (math attention kernel, {args.check_classes} classes): "
        f"{check['equal']}"
    )
    measured = measure(make_bb, args)
    result = {
        "benchmark": "imagenet_step",
        **machine_record(load_at_start, smoke=args.smoke),
        "backbone": "tiny" if args.smoke else "ViT-B/16-sized random CLIP (ViT-B text tower), fp32",
        "classes": [args.ref_classes, args.classes],
        "cocoop_batch": args.cocoop_batch,
        "max_gib_timed": args.max_gib,
        "meta_equals_cpu_math_attention": check,
        "methods": measured,
        "total_seconds": round(time.time() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'method':10} {'classes':>7} {'variant':22} {'held GiB':>9} {'s/image':>8}")
    for name, by_classes in measured.items():
        for classes, row in by_classes.items():
            for variant, cell in row["variants"].items():
                per_image = f"{cell['seconds_per_image']:8.2f}" if "seconds" in cell else f"{'-':>8}"
                print(f"{name:10} {classes:>7} {variant:22} {cell['held_bytes'] / GiB:9.2f} {per_image}")
            if "speedup_per_image" in row:
                print(
                    f"{'':10} {classes:>7} reference / {row['speedup_of']}: {row['speedup_per_image']:.2f}x per image"
                )
    print(f"wrote {args.out} ({result['total_seconds']} s)")


if __name__ == "__main__":
    main()
