"""Pretrain the bundled tiny CLIP (``vlprompt/tiny-shapes``) on the synthetic web domain.

Rebuild the shipped model (about 10 minutes on 2 CPU cores)::

    python scripts/pretrain_tiny_shapes.py --seed 0 --out src/vlprompt/backbones/tiny_shapes

The run is deterministic for a given seed, recipe and number of threads (on one machine and set of
library versions: the weight file comes out byte for byte the same). It writes ``manifest.json``,
``weights.safetensors`` and ``CARD.md`` into ``--out`` atomically and prints zero-shot accuracies
on the web and benchmark domains. ``--steps`` and ``--images`` shorten it (the tests do).

Only the token-table rows the captions use are trained (a small table indexed through a remapping
of token ids); every other row of the 49,408-row table stays zero and is not stored.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from safetensors.torch import save_file

from vlprompt.backbones.adapter import OPENAI_MEAN, OPENAI_STD, encode_text_tower
from vlprompt.backbones.bundled import build_clip, dense_state_dict, sparse_state_dict
from vlprompt.data import synthetic
from vlprompt.io import atomic_directory, file_sha256

NAME = "vlprompt/tiny-shapes"
MODEL_CFG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": synthetic.IMAGE_SIZE,
        "patch_size": 6,
        "width": 128,
        "layers": 3,
        "head_width": 32,
        "pos_embed_type": "sin_cos_2d",
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
    "quick_gelu": False,
}
TEMPLATES = {"plain": "a {colour} {shape}", "photo": "a photo of a {colour} {shape}."}


@dataclasses.dataclass
class Recipe:
    """Everything that determines the pretrained weights (with the thread count).

    Two settings keep the contrastive start from collapsing. At open_clip's usual initialisation both
    towers map every input to nearly the same feature; colour (a mean over pixels) escapes that at
    once, but shape does not, and a text tower trained from step 0 folds all shape words together
    before the image tower has any shape features. So the used token rows start clearly apart
    (``token_init_std``) and the text tower stays frozen for the first ``frozen_text_steps`` steps,
    which the image tower spends learning to separate shapes against fixed, distinct caption
    features; then both towers train.
    """

    seed: int = 0
    images: int = 40_000
    steps: int = 1000
    batch_size: int = 128
    token_init_std: float = 0.5  # std of the trained token rows at initialisation
    frozen_text_steps: int = 300  # the text tower (and token rows) train only after this step
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 50
    threads: int = 2
    eval_web_images: int = 2_000
    eval_seed: int = 12_345


# ------------------------------------------------------------------------------------------ data
def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> normalized float [N, 3, H, W] (the bundled model's eval preprocessing)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def tokenize(captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids cut after the longest caption, and each caption's end-of-text position."""
    tokens = open_clip.get_tokenizer("ViT-B-32")(list(captions))
    eot = tokens.argmax(dim=-1)
    return tokens[:, : int(eot.max()) + 1].contiguous(), eot


# ------------------------------------------------------------------------------------- the model
def encode_text_ids(model: CLIP, table: torch.nn.Embedding, ids: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """The adapter's text tower on the captions' token rows, cut where ``tokenize`` cut every caption."""
    return encode_text_tower(model, table(ids), eot, length=ids.shape[1])


def contrastive_loss(logits: torch.Tensor, labels: torch.Tensor, mentions: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every caption that fits an image counts as its positive.

    A caption fits an image when each primitive it names (colour, shape, texture) is the image's:
    "something red" fits every red image of the batch, so it is not pushed away from them.

    Args:
        logits: [B, B] scaled image-caption similarities (images along rows).
        labels: [B, 3] colour, shape and texture index of each image (and of its own caption).
        mentions: [B, 3] whether each caption names its colour, shape, texture.
    """
    same = labels[:, None, :] == labels[None, :, :]  # [image, caption, primitive]
    fits = (same | ~mentions[None, :, :]).all(dim=-1).float()
    image_to_text = -(fits / fits.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    text_to_image = -(fits / fits.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def _is_text(name: str) -> bool:
    return not name.startswith(("visual.", "logit_")) and name != "token_embedding.weight"


def _param_groups(model: CLIP, table: torch.nn.Embedding, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if name == "token_embedding.weight":
            continue
        skip = param.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name or "embedding" in name
        (no_decay if skip else decay).append(param)
    no_decay.append(table.weight)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """Run with ``count`` intra-op threads, then give the caller (the tests) back its own setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pretrain(recipe: Recipe, log: bool = True) -> tuple[CLIP, torch.Tensor]:
    """Contrastive pretraining (symmetric InfoNCE, learnable temperature) on web images and captions.

    Returns:
        The trained model (its token table holds the trained rows, zeros elsewhere) and the ids of
        those rows.
    """
    with _threads(recipe.threads):
        torch.manual_seed(recipe.seed)
        start = time.time()
        data = synthetic.web_dataset(recipe.images, recipe.seed)
        pixels_u8 = torch.from_numpy(data.images)
        ids, eot = tokenize(data.captions)
        used = torch.unique(ids)
        remap = torch.zeros(MODEL_CFG["text_cfg"]["vocab_size"], dtype=torch.int64)
        remap[used] = torch.arange(len(used))
        compact = remap[ids]
        labels = torch.from_numpy(np.stack([data.colours, data.shapes, data.textures], axis=1))
        mentions = torch.from_numpy(data.mentions)
        if log:
            print(f"data: {len(data.captions)} images, {len(used)} token ids, {time.time() - start:.1f}s", flush=True)

        model = build_clip(MODEL_CFG)
        table = torch.nn.Embedding(len(used), model.token_embedding.embedding_dim)
        torch.nn.init.normal_(table.weight, std=recipe.token_init_std)
        model.token_embedding.weight.requires_grad_(False)
        model.train()
        optimizer = torch.optim.AdamW(_param_groups(model, table, recipe.weight_decay), lr=recipe.lr, betas=(0.9, 0.98))

        def lr_at(step: int) -> float:
            if step < recipe.warmup:
                return recipe.lr * (step + 1) / recipe.warmup
            progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
            return 0.5 * recipe.lr * (1 + math.cos(math.pi * progress))

        generator = torch.Generator().manual_seed(recipe.seed)
        batch = min(recipe.batch_size, recipe.images)
        order, cursor = torch.randperm(recipe.images, generator=generator), 0
        text_params = [table.weight] + [p for n, p in model.named_parameters() if _is_text(n)]
        for step in range(recipe.steps):
            for param in text_params:  # the text tower starts frozen: see Recipe.frozen_text_steps
                param.requires_grad_(step >= recipe.frozen_text_steps)
            if cursor + batch > recipe.images:
                order, cursor = torch.randperm(recipe.images, generator=generator), 0
            index, cursor = order[cursor : cursor + batch], cursor + batch
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            image_features = F.normalize(model.encode_image(to_pixels(pixels_u8[index].numpy())), dim=-1)
            text_features = F.normalize(encode_text_ids(model, table, compact[index], eot[index]), dim=-1)
            logits = model.logit_scale.exp() * image_features @ text_features.T
            loss = contrastive_loss(logits, labels[index], mentions[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            if log and (step % 50 == 0 or step == recipe.steps - 1):
                print(
                    f"step {step:4d}  loss {loss.item():.3f}  scale {model.logit_scale.exp().item():.1f}  "
                    f"{time.time() - start:.0f}s",
                    flush=True,
                )

        with torch.no_grad():
            model.token_embedding.weight.zero_()
            model.token_embedding.weight[used] = table.weight
        return model.eval(), used


# ------------------------------------------------------------------------------------ evaluation
@functools.cache
def _benchmark_test_images() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return synthetic.benchmark_images(0, "test")


def eval_sets(recipe: Recipe) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Held-out web images and the benchmark's test images (classification views), with labels."""
    web = synthetic.web_dataset(recipe.eval_web_images, recipe.eval_seed, with_captions=False)
    return {"web": (web.images, web.colours, web.shapes), "benchmark": _benchmark_test_images()}


@torch.no_grad()
def zero_shot(model: CLIP, recipe: Recipe) -> dict[str, float]:
    """Zero-shot accuracy (%) over the 100 pair classes per domain and template.

    Also reports the colour and shape accuracy of the predicted pair, for the plain template.
    """
    with _threads(recipe.threads):
        tokenizer = open_clip.get_tokenizer("ViT-B-32")
        colours = list(synthetic.COLOURS)
        pairs = [(c, s) for c in colours for s in synthetic.SHAPES]
        text = {}
        for key, template in TEMPLATES.items():
            prompts = [template.format(colour=c, shape=s) for c, s in pairs]
            text[key] = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
        metrics: dict[str, float] = {}
        for domain, (images, colour_ids, shape_ids) in eval_sets(recipe).items():
            features = torch.cat([model.encode_image(to_pixels(chunk)) for chunk in np.array_split(images, 8)])
            features = F.normalize(features, dim=-1)
            truth = torch.from_numpy(colour_ids * len(synthetic.SHAPES) + shape_ids)
            for key in TEMPLATES:
                predicted = (features @ text[key].T).argmax(dim=-1)
                suffix = "" if key == "plain" else f"_{key}_template"
                metrics[f"zero_shot_{domain}_pairs{suffix}"] = round(
                    100 * (predicted == truth).float().mean().item(), 2
                )
                if key == "plain":
                    colour_ok = predicted // len(synthetic.SHAPES) == truth // len(synthetic.SHAPES)
                    shape_ok = predicted % len(synthetic.SHAPES) == truth % len(synthetic.SHAPES)
                    metrics[f"zero_shot_{domain}_colour_of_pair"] = round(100 * colour_ok.float().mean().item(), 2)
                    metrics[f"zero_shot_{domain}_shape_of_pair"] = round(100 * shape_ok.float().mean().item(), 2)
        return metrics


# ---------------------------------------------------------------------------------------- output
def _manifest(recipe: Recipe, sha256: str, metrics: dict[str, float], rows: int, wall_time: float) -> dict[str, Any]:
    return {
        "name": NAME,
        "model_cfg": MODEL_CFG,
        "preprocess": {
            "image_size": synthetic.IMAGE_SIZE,
            "mean": list(OPENAI_MEAN),
            "std": list(OPENAI_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
        "weights": "weights.safetensors",
        "sha256": sha256,
        "seed": recipe.seed,
        "recipe": {
            **dataclasses.asdict(recipe),
            "optimizer": "AdamW(betas=(0.9, 0.98)), no decay on gains, biases, embeddings, logit scale",
            "schedule": "linear warmup then cosine to zero",
            "loss": "symmetric InfoNCE with every fitting caption a positive, learnable temperature (max 100)",
            "trained_token_rows": rows,
            "stored_dtype": "float16",
            "synthetic_version": synthetic.VERSION,
            "benchmark_eval_seed": 0,
            "torch": torch.__version__.split("+")[0],
            "open_clip": open_clip.__version__,
            "wall_time_s": round(wall_time, 1),
        },
        "metrics": metrics,
    }


def _card(manifest: dict[str, Any]) -> str:
    recipe, metrics, cfg = manifest["recipe"], manifest["metrics"], manifest["model_cfg"]
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    rows = "\n".join(f"| {key} | {value:.2f} |" for key, value in metrics.items())
    command = (
        f"python scripts/pretrain_tiny_shapes.py --seed {manifest['seed']} --out src/vlprompt/backbones/tiny_shapes"
    )
    for field in dataclasses.fields(Recipe):
        if field.name != "seed" and recipe[field.name] != field.default:
            command += f" --{field.name.replace('_', '-')} {recipe[field.name]}"
    architecture = (
        f"a ViT image tower ({vision['image_size']} px, patch {vision['patch_size']}, width {vision['width']}, "
        f"{vision['layers']} layers, fixed 2-D sin-cos position embedding) and a causal text tower (width "
        f"{text['width']}, {text['layers']} layers, {text['heads']} heads, context {text['context_length']}, "
        f"open_clip's BPE tokenizer and {text['vocab_size']:,}-token vocabulary), embedding dimension "
        f"{cfg['embed_dim']}"
    )
    intro = textwrap.fill(
        "A tiny CLIP pretrained on vlprompt's synthetic world of coloured shapes, shipped inside the package "
        f"so that every method runs offline on a laptop CPU. It is a standard open_clip `CLIP`: {architecture}. "
        f'Load it with `load_backbone("{manifest["name"]}")`.',
        width=100,
    )
    return f"""# {manifest["name"]}

{intro}

## How it was made

    {command}

- Data: {recipe["images"]:,} "web"-domain images of 48 px (`vlprompt.data.synthetic.web_dataset`, seed
  {manifest["seed"]}) covering the 100 colour-shape pairs uniformly, each with one caption from a varied
  grammar: synonyms ("crimson", "scarlet", "plus sign", "crescent moon", ...), texture words, and
  captions naming only the colour or only the shape. No caption contains "photo".
- Loss: {recipe["loss"]}.
  A caption fits an image when every primitive it names (colour, shape, texture) is the image's,
  so "something red" is not pushed away from the other red images of its batch.
- Recipe: {recipe["steps"]} steps of AdamW (betas 0.9/0.98), batch {recipe["batch_size"]}, lr {recipe["lr"]},
  weight decay {recipe["weight_decay"]}, {recipe["warmup"]} warmup steps then cosine. The text tower is frozen for
  the first {recipe["frozen_text_steps"]} steps and the trained token rows start with std
  {recipe["token_init_std"]}: without this, the text tower folds all shape words together early and the
  model never learns shapes (see `Recipe` in the script).
- Token table: only the {recipe["trained_token_rows"]} rows the captions use were trained; every other row is
  zero, and only these rows are stored (`token_embedding.rows`, `token_embedding.values`). Weights are
  stored in float16; the metrics below are measured on the stored weights.
- Time: {recipe["wall_time_s"]:.0f} s wall clock with {recipe["threads"]} CPU threads (torch {recipe["torch"]},
  open_clip {recipe["open_clip"]}); about 0.5 s a step on 2 idle cores, longer on a shared machine.
  Deterministic for a given seed, recipe, thread count and library versions.

## What it knows
Ten colours (red, orange, brown, pink, yellow, green, cyan, blue, purple, gray), ten shapes (circle,
square, triangle, star, heart, cross, pentagon, hexagon, diamond, crescent), the textures solid,
striped and dotted, and the {recipe["trained_token_rows"]} tokens of its captions. Zero-shot accuracy (%)
over the 100 pair classes on {recipe["eval_web_images"]:,} held-out web images and on the 2,400 test images of the
built-in benchmark (seed 0: clutter, smaller shapes, a warm camera illuminant), with the prompt
"a {{colour}} {{shape}}" (`_photo_template`: "a photo of a {{colour}} {{shape}}."); `colour_of_pair` and
`shape_of_pair` say how often the predicted pair has the right colour or shape (chance: 10%):

| metric | accuracy |
| --- | --- |
{rows}

## Limits
- It knows nothing outside this world: real photographs and other objects or colours are out of scope.
- Words its captions never used ("photo", "of", ...) have all-zero token embeddings, so hand prompts
  built from them add nothing; learned prompts can take their place.
- The benchmark domain differs on purpose (warm illuminant, clutter, smaller shapes): zero-shot drops
  there, mostly on colour, and prompts learned from a few labelled benchmark images recover part of it.
- At 48 px with 6-px patches, small pentagons, hexagons and circles are hard to tell apart; shape, not
  colour, limits accuracy on the web domain.
"""


def write_model(model: CLIP, rows: torch.Tensor, recipe: Recipe, out: Path, start: float) -> dict[str, Any]:
    """Write weights, manifest and card into ``out`` atomically; return the manifest.

    The metrics are measured on the weights as stored (float16), reloaded.
    """
    state = sparse_state_dict({k: v.detach() for k, v in model.state_dict().items()}, rows)
    state = {k: v if k.endswith(".rows") else v.half().contiguous() for k, v in state.items()}
    with atomic_directory(out, replace=True) as tmp:
        weights = tmp / "weights.safetensors"
        # One metadata key: safetensors writes its metadata map in hash order, so two keys would make
        # the bytes (and the sha256) differ from run to run. The name lives in the manifest.
        save_file(state, str(weights), metadata={"format": "pt"})
        sha256 = file_sha256(weights)
        stored = build_clip(MODEL_CFG)
        stored.load_state_dict({k: v.float() for k, v in dense_state_dict(state, stored.vocab_size).items()})
        metrics = zero_shot(stored.eval(), recipe)
        manifest = _manifest(recipe, sha256, metrics, len(rows), time.time() - start)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / "CARD.md").write_text(_card(manifest))
        for path in tmp.iterdir():
            path.chmod(0o644)
    return manifest


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; returns the manifest written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the model into")
    for field in dataclasses.fields(Recipe):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
    start = time.time()
    model, rows = pretrain(recipe, log=not args.quiet)
    manifest = write_model(model, rows, recipe, args.out, start)
    if not args.quiet:
        print(json.dumps(manifest["metrics"], indent=2))
        print(f"wrote {args.out} in {time.time() - start:.0f}s")
    return manifest


if __name__ == "__main__":
    main(sys.argv[1:])
