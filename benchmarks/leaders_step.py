"""Training-step cost of the 2024-25 leaders (TCP, DePT, MMA, PromptKD, CoPrompt, MMRL) against their bare cost (CPU).

For each method, one training step as vlprompt's engine takes it (``logits = method(backbone, batch)``,
``method.loss(backbone, batch, logits)``, ``backward()``; fp32 on the CPU, as ``precision="auto"``; no optimizer
step in either) is timed against its *bare* step: the same computation written out by hand on open_clip's modules,
with the method's own learnable tensors and constant buffers and nothing else around them (no vlprompt encoder,
layout, wrapper or recording). Each bare step is the unavoidable cost of its method:

- ``tcp`` (cached image features, as the engine feeds a method that leaves the image tower alone): the text tower's
  forward and backward over the C prompts "X X X X {class}." truncated after the longest end-of-text token, the
  4 context vectors spliced in at the input and the class-aware tokens (the TKE of the frozen hand-template
  features) replacing them at the input of block 8 (0-based); cross-entropy plus 8 x KgCoOp's knowledge distance.
- ``dept`` wrapping CoOp (16 random context tokens, DePT's CoOp recipe; cached image features): the text tower's
  forward and backward over the C CoOp prompts (truncated), then (1 - 0.7) CE of the scaled cosines plus 0.7 CE of
  the linear head on the channel-transformed text (own class) and image features.
- ``mma`` (pixels): both towers' forward and backward with the adapters' residuals added to blocks 5-12 (1-based)
  (up(shared(down(ln_1(x)))) x 0.001, with the release's gradient scaling, a two-line autograd function here),
  the fixed text "a photo of a {class}." (truncated); cross-entropy.
- ``promptkd`` (pixels; teacher option ``"zeroshot"``: the student's own backbone, un-prompted, with "a photo of a
  {class}.", not the paper's ViT-L/14 PromptSRC, so the teacher's cost here is one frozen ViT-B/16 forward): the
  image tower's forward and backward with 4 prompt tokens at the input and fresh ones before blocks 1-8 (IVLP),
  the projector (BatchNorm on batch statistics, without the method's running-statistics update), the teacher's
  no-grad image forward (open_clip's own ``visual``) and the distillation loss.
- ``coprompt`` (pixels; ``frozen_view="same"``: the frozen tower sees the batch's view, so no RandAugment, which is
  data augmentation the release does in its loader): MaPLe's two towers (2 context tokens, depth 9, text
  truncated) forward and backward, the two adapters, the frozen image tower's no-grad forward, and
  CE + W x (description consistency + image consistency), descriptions encoded once (as the method caches them).
- ``mmrl`` (pixels): both towers' forward and backward with the 5 representation tokens inserted after the class /
  start token at block 6 (1-based; the text's causal mask grown with them), replaced by fresh projections at 7-12,
  the class-token and representation features, the frozen image tower's no-grad forward, and
  0.7 CE + 0.3 CE + consistency with the frozen image and (cached) text features.

Every bare step computes the method's loss itself, so the script asserts, per method, that the two losses agree
(relative 1e-4) and that both steps give the same gradients (per tensor, to 1e-3 of its largest entry plus 1e-4 of
the largest entry of all), that the method's step loss is finite, and that its gradients reach every learnable
tensor of the method and nothing else (no backbone weight, no teacher weight). These checks run first, so each
variant's first call (warm-up) is not timed; timings are then interleaved rounds (medians and per-round paired
ratios, vlprompt / bare). Sizes: the ViT-B-16-sized random CLIP of ``visual_step_cost.py`` (image 768 x 12 at
224 px, text 512 x 12), 20 classes, 4 images a step (MaPLe's, CoPrompt's and MMRL's recipe batch) or 32 cached
features (TCP's), one torch thread (the machine's 2 cores are shared).
Results: ``benchmarks/results/leaders_step.json``. Run: ``python benchmarks/leaders_step.py`` (``--smoke``: the
two-block 32-px CLIP with a tiny text tower, 4 classes, one round, seconds; see ``benchmarks/common.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
from common import machine_record, paired_ratios, parse_args, run_rounds  # beside
from visual_step_cost import SMOKE_MODEL, build_backbone, class_names  # beside

from vlprompt.methods import (
    MMA,
    MMRL,
    TCP,
    Batch,
    CoPrompt,
    CoPromptConfig,
    DePT,
    DePTConfig,
    MMAConfig,
    MMRLConfig,
    PromptKD,
    PromptKDConfig,
    TCPConfig,
)
from vlprompt.methods.promptkd import ZEROSHOT_TEACHER

MODEL = "ViT-B-16-sized random CLIP (image 768 x 12 at 224 px, text 512 x 12)"
LOSS_RTOL = 1e-4
GRAD_RTOL = 1e-3
#: Gradients compare to GRAD_RTOL of their tensor's largest entry plus GRAD_ATOL of the largest entry of all.
GRAD_ATOL = 1e-4


# ---------------------------------------------------------------- open_clip's towers, by hand
def image_input(visual, pixels):
    """Patch embeddings with the class token and positional embeddings (before ``ln_pre``)."""
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    return torch.cat([visual.class_embedding.expand(len(x), 1, -1), x], dim=1) + visual.positional_embedding


def image_output(visual, x):
    return visual.ln_post(x[:, 0]) @ visual.proj


def splice(x, tokens, n):
    """``x`` with positions 1..n replaced by ``tokens`` ([k, d] shared or [N, k, d]); n = 0 inserts them."""
    tokens = tokens.expand(len(x), -1, -1) if tokens.dim() == 2 else tokens
    return torch.cat([x[:, :1], tokens, x[:, 1 + n :]], dim=1)


def prompt_embeds(bb, texts, ctx=None):
    """Token embeddings of ``texts`` cut after the longest end-of-text token, ``ctx`` at positions 1..n; the eot."""
    ids = bb.tokenize(texts)
    eot = ids.argmax(-1)  # CLIP's end-of-text token has the largest id
    embeds = bb.model.token_embedding(ids[:, : int(eot.max()) + 1])
    return (embeds if ctx is None else splice(embeds, ctx, len(ctx))), eot


def text_input(model, embeds):
    length = embeds.shape[1]
    return embeds + model.positional_embedding[:length], model.attn_mask[:length, :length]


def text_output(model, x, eot):
    return model.ln_final(x)[torch.arange(len(x)), eot] @ model.text_projection


def plain_text(model, embeds, eot):
    x, mask = text_input(model, embeds)
    for block in model.transformer.resblocks:
        x = block(x, attn_mask=mask)
    return text_output(model, x, eot)


def prompted_image(bb, pixels, shallow, deep):
    """The image tower with ``shallow`` after the class token, ``deep[i - 1]`` replacing them before block i."""
    visual, n = bb.model.visual, shallow.shape[0]
    x = visual.ln_pre(splice(image_input(visual, pixels), shallow, 0))
    for i, block in enumerate(visual.transformer.resblocks):
        if 0 < i <= len(deep):
            x = splice(x, deep[i - 1], n)
        x = block(x)
    return image_output(visual, x)


def cosine(image, text, scale):
    return scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()


def agreement(a, b, eps):
    """1 − mean over rows of cos(a, b)."""
    return 1.0 - F.cosine_similarity(a, b, dim=-1, eps=eps).mean()


class GradScale(torch.autograd.Function):
    """Identity forward, gradient times ``scale`` backward (MMA's gradient scaling)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


# ---------------------------------------------------------------- the methods and their bare steps
def setup_tcp(bb, names, args):
    cfg = TCPConfig(layer=8) if not args.smoke else TCPConfig(layer=1)
    torch.manual_seed(10)
    tcp = TCP(bb, names, cfg)
    n, model = tcp.n_ctx, bb.model
    embeds, eot = prompt_embeds(bb, [f"{' '.join(['X'] * n)} {c}." for c in names])
    features, targets = cached_features(bb, args.feature_batch, len(names), seed=10)

    def bare():
        tokens = tcp.meta_net(tcp.hand_features).reshape(len(names), n, -1)
        x, mask = text_input(model, splice(embeds, tcp.ctx, n))
        for i, block in enumerate(model.transformer.resblocks):
            if i == cfg.layer:
                x = splice(x, tokens, n)
            x = block(x, attn_mask=mask)
        text = text_output(model, x, eot)
        ce = F.cross_entropy(cosine(features, text, bb.logit_scale), targets)
        return ce + cfg.weight * agreement(text, tcp.hand_features, 1e-7)

    options = {"n_ctx": n, "layer": cfg.layer, "weight": cfg.weight, "prompt": cfg.prompt}
    return tcp, Batch(features=features, targets=targets), bare, options


def setup_dept(bb, names, args):
    cfg = DePTConfig(method="coop", options={"n_ctx": 4 if args.smoke else 16, "ctx_init": ""})
    torch.manual_seed(11)
    dept = DePT(bb, names, cfg)
    ctx, lam = dept.inner.ctx, cfg.weight
    embeds, eot = prompt_embeds(bb, [f"{' '.join(['X'] * len(ctx))} {c}." for c in names])
    features, targets = cached_features(bb, args.feature_batch, len(names), seed=11)

    def bare():
        text = plain_text(bb.model, splice(embeds, ctx, len(ctx)), eot)
        ce = F.cross_entropy(cosine(features, text, bb.logit_scale), targets)
        rows = dept.head(torch.cat([dept.cwt_text(text[targets]), dept.cwt_image(features)]))
        return (1 - lam) * ce + lam * F.cross_entropy(rows, torch.cat([targets, targets]))

    options = {"method": "coop", "options": cfg.options, "weight": lam, "channel_transform": cfg.channel_transform}
    return dept, Batch(features=features, targets=targets), bare, options


def setup_mma(bb, names, args):
    cfg = MMAConfig(start=1, end=2, dim=8) if args.smoke else MMAConfig()
    torch.manual_seed(12)
    mma = MMA(bb, names, cfg)
    model, visual, alpha = bb.model, bb.model.visual, cfg.scale
    embeds, eot = prompt_embeds(bb, [cfg.template.format(c) for c in names])
    pixels, targets = pixel_batch(bb, args.batch, len(names), seed=12)

    def residual(adapter, shared, normed):
        r = adapter.up(shared(adapter.down(GradScale.apply(normed, alpha)))) * alpha
        return GradScale.apply(r, 1.0 / alpha)

    def adapted(blocks, x, adapters, **kwargs):
        for i, block in enumerate(blocks):
            k = i - (cfg.start - 1)
            r = residual(adapters[k], mma.shared[k], block.ln_1(x)) if 0 <= k < len(adapters) else None
            x = block(x, **kwargs)
            x = x if r is None else x + r
        return x

    def bare():
        x = adapted(visual.transformer.resblocks, visual.ln_pre(image_input(visual, pixels)), mma.image_adapters)
        image = image_output(visual, x)
        t, mask = text_input(model, embeds)
        text = text_output(model, adapted(model.transformer.resblocks, t, mma.text_adapters, attn_mask=mask), eot)
        return F.cross_entropy(cosine(image, text, bb.logit_scale), targets)

    options = {"start": cfg.start, "end": cfg.end, "dim": cfg.dim, "scale": alpha, "gradient_scaling": True}
    return mma, Batch(pixels=pixels, targets=targets), bare, options


def setup_promptkd(bb, names, args):
    depth = 2 if args.smoke else 9
    cfg = PromptKDConfig(teacher=ZEROSHOT_TEACHER, depth_vision=depth)
    torch.manual_seed(13)
    kd = PromptKD(bb, names, cfg)
    pixels, targets = pixel_batch(bb, args.batch, len(names), seed=13)
    linear1, norm, _, linear2 = kd.projector
    teacher_text = kd.teacher.text_features()  # encoded once per label space, as the method's teacher does

    def bare():
        image = prompted_image(bb, pixels, kd.vision[0], list(kd.vision[1:]))
        hidden = F.batch_norm(linear1(image), None, None, norm.weight, norm.bias, training=True, eps=norm.eps)
        student = cosine(linear2(F.relu(hidden)), kd.class_features, bb.logit_scale)
        with torch.no_grad():
            teacher = cosine(bb.model.visual(pixels), teacher_text, bb.logit_scale)
        t = cfg.temperature
        kl = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="sum", log_target=True)
        return cfg.kd_weight * kl * t * t / student.numel()

    options = {"teacher": ZEROSHOT_TEACHER, "n_ctx_vision": cfg.n_ctx_vision, "depth_vision": depth}
    options |= {"kd_weight": cfg.kd_weight, "temperature": cfg.temperature}
    return kd, Batch(pixels=pixels, targets=targets), bare, options


def setup_coprompt(bb, names, args):
    sentences = {c: [f"a photo of a {c}, {w}." for w in ("seen up close", "in the wild", "on a table")] for c in names}
    cfg = CoPromptConfig(depth=2 if args.smoke else 9, frozen_view="same", sentences=sentences)
    torch.manual_seed(14)
    co = CoPrompt(bb, names, cfg)
    n, model = co.ctx.shape[0], bb.model
    embeds, eot = prompt_embeds(bb, [f"a photo of a {c}." for c in names])
    descriptions = co.description_features(bb)  # encoded once, as the method caches them
    pixels, targets = pixel_batch(bb, args.batch, len(names), seed=14)

    def bare():
        deep_text = list(co.deep_text)
        image = prompted_image(bb, pixels, co.proj(co.ctx), [p(t) for p, t in zip(co.deep_proj, deep_text)])
        x, mask = text_input(model, splice(embeds, co.ctx, n))
        for i, block in enumerate(model.transformer.resblocks):
            if 0 < i <= len(deep_text):
                x = splice(x, deep_text[i - 1], n)
            x = block(x, attn_mask=mask)
        text = text_output(model, x, eot)
        image = cfg.image_ratio * co.adapter_image(image) + (1 - cfg.image_ratio) * image
        text = cfg.text_ratio * co.adapter_text(text) + (1 - cfg.text_ratio) * text
        k = int(torch.randint(len(descriptions), ()))
        with torch.no_grad():
            frozen = bb.model.visual(pixels)
        ce = F.cross_entropy(cosine(image, text, bb.logit_scale), targets)
        text_term = agreement(F.normalize(text, dim=-1), descriptions[k], 1e-7)
        image_term = agreement(F.normalize(image, dim=-1), F.normalize(frozen, dim=-1), 1e-7)
        return ce + cfg.weight * (text_term + image_term)

    options = {"n_ctx": n, "depth": cfg.depth, "weight": cfg.weight, "frozen_view": "same", "sentences_per_class": 3}
    return co, Batch(pixels=pixels, targets=targets), bare, options


def setup_mmrl(bb, names, args):
    cfg = MMRLConfig(rep_layers=[2], rep_dim=16, n_rep_tokens=2) if args.smoke else MMRLConfig()
    torch.manual_seed(15)
    mmrl = MMRL(bb, names, cfg)
    model, visual, k, first = bb.model, bb.model.visual, cfg.n_rep_tokens, cfg.rep_layers[0] - 1
    index = {layer - 1: j for j, layer in enumerate(cfg.rep_layers)}
    embeds, eot = prompt_embeds(bb, [cfg.template.format(c) for c in names])
    pixels, targets = pixel_batch(bb, args.batch, len(names), seed=15)

    def represented(blocks, x, projections, mask=None):
        for i, block in enumerate(blocks):
            if i in index:
                x = splice(x, projections[index[i]](mmrl.rep), 0 if i == first else k)
                if i == first and mask is not None:  # the causal mask of the longer sequence
                    mask = torch.full((x.shape[1], x.shape[1]), float("-inf")).triu(1)
            x = block(x) if mask is None else block(x, attn_mask=mask)
        return x

    def bare():
        x = represented(visual.transformer.resblocks, visual.ln_pre(image_input(visual, pixels)), mmrl.to_vision)
        image, rep = image_output(visual, x), visual.ln_post(x[:, 1 : 1 + k]).mean(1) @ mmrl.proj_rep
        t, mask = text_input(model, embeds)
        text = text_output(model, represented(model.transformer.resblocks, t, mmrl.to_text, mask), eot + k)
        with torch.no_grad():
            frozen = bb.model.visual(pixels)
        a = cfg.alpha
        ce = a * F.cross_entropy(cosine(image, text, 100.0), targets)
        ce = ce + (1 - a) * F.cross_entropy(cosine(rep, text, 100.0), targets)
        return ce + cfg.reg_weight * (agreement(image, frozen, 1e-8) + agreement(text, mmrl.frozen_text, 1e-8))

    options = {"n_rep_tokens": k, "rep_dim": cfg.rep_dim, "rep_layers": cfg.rep_layers, "alpha": cfg.alpha}
    options |= {"reg_weight": cfg.reg_weight}
    return mmrl, Batch(pixels=pixels, targets=targets), bare, options


SETUPS = {
    "tcp": setup_tcp,
    "dept": setup_dept,
    "mma": setup_mma,
    "promptkd": setup_promptkd,
    "coprompt": setup_coprompt,
    "mmrl": setup_mmrl,
}
BASELINES = {
    "tcp": "text tower fwd+bwd over the C truncated prompts with the 4 context vectors at the input and the TKE's "
    "class-aware tokens replacing them at block 8; CE + 8 x knowledge distance (cached image features)",
    "dept": "text tower fwd+bwd over the C truncated CoOp prompts (16 context vectors); 0.3 CE + 0.7 CE of the "
    "channel-transformed linear head on text and image features (cached image features)",
    "mma": "image and text towers fwd+bwd with the adapters' gradient-scaled residuals on blocks 5-12 (text: the "
    "fixed truncated template); CE",
    "promptkd": "image tower fwd+bwd with 4 IVLP prompt tokens at the input and before blocks 1-8, the projector "
    "(batch-statistics BatchNorm, no running-statistics update), the zero-shot teacher's no-grad image forward "
    "(open_clip's visual, the same ViT-B/16) and the KD loss",
    "coprompt": "MaPLe's image and text towers fwd+bwd (2 context tokens, depth 9, truncated text), the two "
    "adapters, the frozen image tower's no-grad forward (same view) and CE + W x (text + image consistency)",
    "mmrl": "image and text towers fwd+bwd with the 5 representation tokens inserted at block 6 and replaced at "
    "7-12 (text mask grown), the frozen image tower's no-grad forward; 0.7 CE + 0.3 CE + consistency terms",
}


def cached_features(bb, batch, classes, seed):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, bb.embed_dim, generator=generator)
    return features, torch.randint(0, classes, (batch,), generator=generator)


def pixel_batch(bb, batch, classes, seed):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, bb.image_size, bb.image_size, generator=generator)
    return pixels, torch.randint(0, classes, (batch,), generator=generator)


def stepper(method, loss_fn):
    """One step: zero the gradients, the loss, backward; returns the loss."""

    def run():
        method.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        return loss.detach()

    return run


def engine_loss(bb, method, batch):
    """What vlprompt's engine computes per micro-batch (``_train_epoch``)."""

    def loss():
        logits = method(bb, batch)
        return method.loss(bb, batch, logits, 0.0)

    return loss


def check(name, bb, method, steps) -> dict:
    """Assert that the two steps compute the same loss and gradients, and that the gradients reach exactly the
    method's learnable tensors (none of the backbone's or the teacher's)."""
    learnable = {k: p for k, p in method.named_parameters() if p.requires_grad}
    assert learnable, f"{name}: no learnable tensors"
    grads, losses = {}, {}
    for variant in ("bare", "vlprompt"):
        torch.manual_seed(99)  # the same random draws (CoPrompt's description index) in both
        losses[variant] = float(steps[variant]())
        grads[variant] = {k: None if p.grad is None else p.grad.clone() for k, p in learnable.items()}
    loss, ref = losses["vlprompt"], losses["bare"]
    assert torch.isfinite(torch.tensor(loss)), f"{name}: step loss {loss}"
    frozen = [k for k, p in bb.named_parameters() if p.requires_grad or p.grad is not None]
    teacher = getattr(method, "teacher", None)
    if teacher is not None:
        frozen += [k for k, p in teacher.method.named_parameters() if p.requires_grad or p.grad is not None]
    assert not frozen, f"{name}: gradients reach frozen weights {frozen[:5]}"
    missing = [k for k, g in grads["vlprompt"].items() if g is None or not torch.isfinite(g).all()]
    assert not missing, f"{name}: no finite gradient for {missing}"
    assert abs(loss - ref) <= LOSS_RTOL * abs(ref), f"{name}: loss {loss} vs bare {ref}"
    assert all(g is not None for g in grads["bare"].values()), f"{name}: the bare step leaves a tensor without gradient"
    atol = GRAD_ATOL * max(float(g.abs().max()) for g in grads["bare"].values())
    worst, vanishing = 0.0, []  # worst: the largest |difference| / (GRAD_RTOL · max |bare| + atol) over tensors
    for k, g in grads["vlprompt"].items():
        b = grads["bare"][k]
        if float(b.abs().max()) < atol:  # e.g. a bias before BatchNorm: its true gradient is 0, both are rounding
            vanishing.append(k)
        worst = max(worst, float((g - b).abs().max()) / (GRAD_RTOL * float(b.abs().max()) + atol))
    assert worst <= 1.0, f"{name}: gradients differ from the bare step's by {worst:.2f} x the tolerance"
    return {
        "loss": loss,
        "bare_loss": ref,
        "loss_abs_diff": abs(loss - ref),
        "grad_diff_over_tolerance": worst,
        "vanishing_gradients": vanishing,
        "learnable_tensors": len(learnable),
        "learnable_values": sum(p.numel() for p in learnable.values()),
        "all_learnable_get_gradients": True,
        "no_frozen_weight_gets_gradients": True,
    }


def bench(name, bb, names, args, deadline) -> dict:
    method, batch, bare_loss, options = SETUPS[name](bb, names, args)
    method.train()
    steps = {"vlprompt": stepper(method, engine_loss(bb, method, batch)), "bare": stepper(method, bare_loss)}
    checked = check(name, bb, method, steps)  # also the warm-up: neither variant's first call is timed
    times, _ = run_rounds(steps, args.rounds, deadline)
    ratio = paired_ratios(times, "vlprompt", "bare")
    return {
        "baseline": BASELINES[name],
        "input": "pixels" if batch.pixels is not None else "cached image features",
        "batch": len(batch),
        "options": options,
        "rounds": len(times["vlprompt"]),
        "times_s": times,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "vlprompt_over_bare": ratio | {"min": min(ratio["per_round"]), "max": max(ratio["per_round"])},
        "checks": checked,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4, help="images per step (methods that see pixels; MaPLe's 4)")
    parser.add_argument("--feature-batch", type=int, default=32, help="cached features per step (tcp, dept)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the 2 shared cores are busy)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds; rounds stop early to stay within it")
    smoke = {"classes": 4, "batch": 4, "feature_batch": 8, "rounds": 1}
    args = parse_args(parser, "leaders_step", smoke=smoke)
    torch.set_num_threads(args.threads)
    start, load = time.time(), list(os.getloadavg())
    bb = build_backbone(tiny=args.smoke)
    names = class_names(args.classes)
    results = {}
    for i, name in enumerate(args.methods):
        print(f"{name}: {args.classes} classes", flush=True)
        deadline = start + args.budget * (i + 1) / len(args.methods)
        results[name] = bench(name, bb, names, args, deadline)
        r = results[name]["vlprompt_over_bare"]
        print(f"{name}: vlprompt / bare = {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})", flush=True)
    record = {
        "benchmark": "leaders_step",
        **machine_record(load, smoke=args.smoke),
        "device": "cpu",
        "dtype": "float32",
        "model": SMOKE_MODEL if args.smoke else MODEL,
        "classes": args.classes,
        "step": "vlprompt: method.zero_grad, logits = method(backbone, batch), method.loss(...), backward (the "
        "engine's micro-batch, no optimizer step); bare: zero_grad, the hand-written loss, backward",
        "checks": f"the bare and vlprompt losses equal to {LOSS_RTOL} relative; their gradients equal to {GRAD_RTOL} "
        f"of each tensor's largest entry plus {GRAD_ATOL} of the largest entry of all (vanishing_gradients: tensors "
        "whose whole gradient is below that, e.g. a bias before BatchNorm, rounding only); the step's loss finite; "
        "every learnable tensor of the method gets a finite gradient, no backbone or teacher weight gets one",
        "results": results,
        "total_seconds": round(time.time() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for name, r in results.items():
        m = r["median_s"]
        print(f"{name:9s} vlprompt {m['vlprompt']:.3f} s  bare {m['bare']:.3f} s  "
              f"ratio {r['vlprompt_over_bare']['median']:.3f}")  # fmt: skip
    print(f"wrote {args.out} ({record['total_seconds']} s)")


if __name__ == "__main__":
    main()
