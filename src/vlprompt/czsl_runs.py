"""Compositional zero-shot runs: train on seen pairs, select by validation AUC, test closed / open world."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .backbones import Backbone
from .data.czsl import CZSLSplit, load_czsl
from .data.images import DataError, LabeledImages, Sample
from .engine import FeatureCache, TrainConfig, fit, preset
from .engine import distributed as dist
from .evaluation import markdown_table, summarize
from .evaluation.czsl import (
    REFERENCE_GLOVE_ALIASES,
    CZSLResult,
    calibrate_feasibility,
    evaluate_split,
    feasibility_scores,
    load_glove,
)
from .io import atomic_write_text
from .methods import PromptMethod, build_method, method_class, pair_space
from .methods.compositional import primitive_text
from .plots import plot_seen_unseen_curve
from .prompts import load_prompt, save_pretrained
from .runs import BackboneConfig, DemoEntry, prepare_out_dir, write_config, write_tables

WORLDS = ("closed", "open", "both")


@dataclass
class CZSLRun:
    """One compositional method on one CZSL dataset over several seeds.

    Attributes:
        root: dataset root (images/, <split>/{train,val,test}_pairs.txt, metadata_<split>.t7).
        split: split folder name.
        world: evaluate in the "closed" world, the "open" world, or "both".
        calibrate: in the open world, also remove infeasible pairs with the threshold chosen on
            validation (feasibility from ``word_vectors``).
        word_vectors: "backbone" (the backbone's word-averaged token embeddings, no download) or
            the path of a GloVe text file.
        glove_fallback: what to do with a word the GloVe file lacks: "error", "zeros" or "skip".
        topk: top-k accuracy.
        skip_bad_images: leave out missing / unreadable images (counted and reported).
        prompt: evaluate this saved prompt directory instead of training (seeds are ignored).
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    root: str = ""
    split: str = "compositional-split-natural"
    method: str = "csp"
    method_options: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=lambda: preset("csp-mit-states"))
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    world: str = "both"
    calibrate: bool = True
    word_vectors: str = "backbone"
    glove_fallback: str = "error"
    topk: int = 1
    skip_bad_images: bool = False
    out: str = "runs/czsl"
    resume: bool = False
    overwrite: bool = False
    prompt: str | None = None


def phase_images(split: CZSLSplit, phase: str, columns: list, skip_bad_images: bool = False) -> LabeledImages:
    """The images of ``phase`` as a labelled dataset whose labels index ``columns``."""
    index = split.pair_index(columns)
    outside = [s for s in split.samples[phase] if (s.attr, s.obj) not in index]
    if outside:
        s = outside[0]
        raise DataError(
            f"{split.root}: {len(outside)} {phase} image(s) have a pair outside the {phase} label space, "
            f"e.g. {s.image} ({s.attr} {s.obj})"
        )
    samples = [Sample(str(split.image_dir / s.image), index[(s.attr, s.obj)]) for s in split.samples[phase]]
    names = [f"{a} {o}" for a, o in columns]
    return LabeledImages(samples, names, skip_bad_images=skip_bad_images)


@contextlib.contextmanager
def scoring(method: PromptMethod, backbone: Backbone, columns: list) -> Iterator[Tensor | None]:
    """Score ``columns`` inside the block; yields their class features, encoded once (no grad)."""
    trained, was_training = method.classes["pairs"], method.training
    method.eval()
    method.set_classes(backbone, [list(p) for p in columns])
    try:
        with torch.no_grad():
            text = method.class_features(backbone)
        yield text
    finally:
        method.set_classes(backbone, trained)
        method.train(was_training)


def pair_scores(
    method: PromptMethod, backbone: Backbone, features: Tensor, text: Tensor | None, chunk: int = 1024
) -> Iterator[Tensor]:
    """Scores of every image over the columns being scored (see :func:`scoring`), chunk by chunk."""
    for start in range(0, len(features), chunk):
        with torch.no_grad():
            scores = method(backbone, features[start : start + chunk], text).float().cpu()
        yield scores


def _open_labels(split: CZSLSplit, images: LabeledImages, closed: list) -> Tensor:
    open_index = split.pair_index(split.open_world_pairs())
    return torch.tensor([open_index[tuple(closed[s.label])] for s in images.samples])


def word_vectors(run: CZSLRun, split: CZSLSplit, backbone: Backbone) -> tuple[Tensor, Tensor]:
    """Attribute and object vectors for feasibility: the backbone's, or GloVe's from a file."""
    if run.word_vectors == "backbone":
        attrs = backbone.word_vectors([primitive_text(a) for a in split.attrs]).cpu()
        objs = backbone.word_vectors([primitive_text(o) for o in split.objs]).cpu()
        return attrs, objs
    attrs = load_glove(run.word_vectors, split.attrs, fallback=run.glove_fallback, aliases=REFERENCE_GLOVE_ALIASES)
    objs = load_glove(run.word_vectors, split.objs, fallback=run.glove_fallback, aliases=REFERENCE_GLOVE_ALIASES)
    return attrs.vectors, objs.vectors


def _val_auc(method: PromptMethod, backbone: Backbone, split: CZSLSplit, features: Tensor, labels: Tensor) -> float:
    with scoring(method, backbone, split.pairs) as text:
        return evaluate_split(
            pair_scores(method, backbone, features, text), split, "val", "closed", pair_labels=labels
        ).auc


def _row(result: CZSLResult, **keys: Any) -> dict[str, Any]:
    return {
        **keys,
        "S": result.best_seen,
        "U": result.best_unseen,
        "H": result.best_hm,
        "AUC": result.auc,
        "attr": result.attr_acc,
        "obj": result.obj_acc,
    }


def run_czsl(
    run: CZSLRun, backbone: Backbone | None = None, cache: FeatureCache | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    """Train and evaluate ``run.method`` for every seed; write prompts, results, tables and curves."""
    if not run.prompt:
        method_class(run.method).Config.from_dict(run.method_options, run.method)
    if run.world not in WORLDS:
        raise ValueError(f"world must be one of {WORLDS}, not {run.world!r}")
    out = prepare_out_dir(run.out, run.resume, run.overwrite, command="czsl")
    write_config(out, {"command": "czsl", **dataclasses.asdict(run)}, run.resume)
    backbone = backbone or run.backbone.load()
    cache = cache or FeatureCache()
    split = load_czsl(run.root, run.split)
    closed = split.pairs
    train_set = phase_images(split, "train", split.train_pairs, run.skip_bad_images)
    val_set = phase_images(split, "val", closed, run.skip_bad_images)
    test_set = phase_images(split, "test", closed, run.skip_bad_images)
    transform = backbone.image_transform()
    train_set, val_set, test_set = (d.with_transform(transform) for d in (train_set, val_set, test_set))
    val_feats = cache.features(backbone, val_set, progress=False)
    test_feats = cache.features(backbone, test_set, progress=False)
    val_labels, test_labels = torch.tensor(val_set.labels), torch.tensor(test_set.labels)
    worlds = ["closed", "open"] if run.world == "both" else [run.world]
    feasibility = None
    if "open" in worlds and run.calibrate:
        feasibility = feasibility_scores(split, *word_vectors(run, split, backbone))

    rows, curves = [], {}
    for seed in [None] if run.prompt else run.seeds:
        if run.prompt:
            method = load_prompt(run.prompt, backbone)
            method.set_classes(backbone, [list(p) for p in split.train_pairs])
            seed_dir, keys, fit_info = None, {"method": method.name, "prompt": run.prompt}, {}
        else:
            seed_dir = out / f"seed{seed}"
            seed_dir.mkdir(exist_ok=True)
            torch.manual_seed(seed)
            method = build_method(
                run.method, backbone, pair_space(split.attrs, split.objs, split.train_pairs), run.method_options
            )
            keys, fit_info = {"method": run.method, "seed": seed}, {}
            if any(p.requires_grad for p in method.parameters()):
                scorer = partial(_val_auc, split=split, features=val_feats, labels=val_labels)
                train_cfg = replace(run.train, seed=seed)
                result = fit(
                    method,
                    backbone,
                    train_set,
                    train_cfg,
                    scorer=scorer,
                    run_dir=seed_dir,
                    resume=run.resume,
                    cache=cache,
                    progress=progress,
                )
                fit_info = {
                    "selected_epoch": result.selected_epoch,
                    "val_auc": result.selected_score,
                    "train_seconds": round(result.seconds, 2),
                }
        seed_rows = []
        if "closed" in worlds:
            with scoring(method, backbone, closed) as text:
                res = evaluate_split(
                    pair_scores(method, backbone, test_feats, text),
                    split,
                    "test",
                    "closed",
                    pair_labels=test_labels,
                    topk=run.topk,
                )
            seed_rows.append(_row(res, world="closed", **keys, **fit_info))
            curves.setdefault(f"{keys['method']} closed", (res.unseen_acc, res.seen_acc))
        if "open" in worlds:
            open_cols = split.open_world_pairs()
            open_test = _open_labels(split, test_set, closed)
            with scoring(method, backbone, open_cols) as text:  # open-world pair features encoded once
                res = evaluate_split(
                    pair_scores(method, backbone, test_feats, text),
                    split,
                    "test",
                    "open",
                    pair_labels=open_test,
                    topk=run.topk,
                )
                seed_rows.append(_row(res, world="open", **keys, **fit_info))
                if feasibility is not None:
                    seen = split.seen_mask(open_cols)
                    calib = calibrate_feasibility(
                        pair_scores(method, backbone, val_feats, text),
                        _open_labels(split, val_set, closed),
                        seen,
                        feasibility,
                        topk=run.topk,
                    )
                    res = evaluate_split(
                        pair_scores(method, backbone, test_feats, text),
                        split,
                        "test",
                        "open",
                        pair_labels=open_test,
                        removed_mask=calib.removed_mask(feasibility, seen),
                        topk=run.topk,
                    )
                    seed_rows.append(_row(res, world="open+calibrated", threshold=calib.threshold, **keys, **fit_info))
        rows += seed_rows
        if dist.is_main() and seed_dir is not None:
            method.set_classes(backbone, [list(p) for p in closed])
            save_pretrained(method, backbone, seed_dir / "prompt", extra={"seed": seed, "dataset": str(run.root)})
            atomic_write_text(seed_dir / "results.json", json.dumps(seed_rows, indent=2))
    if dist.is_main():
        write_tables(out, rows, ["method", "world"])
        plot_seen_unseen_curve(curves, out / "seen_unseen_curve.png")
    return rows


#: CSP's UT-Zappos recipe sized for the demo's benchmark on a CPU: 150 steps instead of about 3,600, so a 10x
#: learning rate. CoOp and CSP share it, as in the CSP paper.
_DEMO_TRAIN = replace(preset("csp-ut-zappos"), epochs=10, lr=5e-3)
#: The CZSL part of ``vlprompt demo``.
CZSL_DEMO: tuple[DemoEntry, ...] = (
    DemoEntry("czsl-zeroshot", "czsl-zeroshot", {}, _DEMO_TRAIN),
    DemoEntry("czsl-coop", "czsl-coop", {}, _DEMO_TRAIN),
    DemoEntry("csp", "csp", {"vocab_dropout": 0.2}, _DEMO_TRAIN),
    DemoEntry("attr-obj-heads", "attr-obj-heads", {}, replace(_DEMO_TRAIN, lr=1e-2)),
    DemoEntry("pair-projection", "pair-projection", {}, replace(_DEMO_TRAIN, lr=1e-3)),
)


def run_czsl_demo(
    root: Path,
    backbone: Backbone,
    cache: FeatureCache,
    out: Path,
    seeds: list[int],
    labels: list[str],
    progress: bool = True,
) -> dict[str, Any]:
    """The demo's CZSL table: each chosen entry, closed and calibrated open world, over ``seeds``."""
    rows = []
    for entry in CZSL_DEMO:
        if entry.label not in labels:
            continue
        run = CZSLRun(
            root=str(root),
            method=entry.method,
            method_options=entry.options,
            train=entry.train,
            seeds=seeds,
            out=str(out / entry.label),
            overwrite=True,
        )
        rows += run_czsl(run, backbone, cache, progress)
    metrics = ["S", "U", "H", "AUC", "attr", "obj"]
    summary = summarize(rows, ["method", "world"], metrics)
    table = markdown_table(summary, ["method", "world"], metrics)
    text = f"## Compositional zero-shot (built-in benchmark, closed and open world)\n\n{table}"
    return {"results": {"per_seed": rows, "summary": summary}, "table": text}
