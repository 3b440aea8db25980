"""The compositional zero-shot protocol: train on seen pairs, select by validation AUC, test closed / open world."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import Tensor

from ..backbones import Backbone
from ..data.czsl import CZSLSplit, load_czsl
from ..data.images import DataError, LabeledImages, Sample
from ..errors import OptionError
from ..evaluation.czsl import (
    REFERENCE_GLOVE_ALIASES,
    CZSLResult,
    calibrate_feasibility,
    evaluate_split,
    feasibility_scores,
    load_glove,
)
from ..features import FeatureCache
from ..feed import Feed
from ..io import atomic_write_text
from ..labels import PairSpace
from ..methods import PairMethod, PromptMethod, pair_space
from ..methods.compositional import primitive_text
from ..plots import plot_seen_unseen_curve
from .config import RunConfig
from .loop import Protocol, run_seeds

WORLDS = ("closed", "open", "both")
GLOVE_FALLBACKS = ("error", "zeros", "skip")


@dataclass
class CZSLData:
    """A compositional dataset on disk (``--data.*``, as every command takes its data).

    Attributes:
        root: dataset root (images/, <split>/{train,val,test}_pairs.txt, metadata_<split>.t7).
        split_name: the split folder's name (the reference's ``--splitname``; "split" on the command line
            always means train / val / test, which CZSL's data files call phases).
        skip_bad_images: leave out missing / unreadable images (counted and reported).
    """

    root: str = ""
    split_name: str = "compositional-split-natural"
    skip_bad_images: bool = False


@dataclass
class CZSLRun(RunConfig):
    """One compositional method on one CZSL dataset over several seeds.

    Attributes:
        data: the dataset.
        world: evaluate in the "closed" world, the "open" world, or "both".
        calibrate: in the open world, also remove infeasible pairs with the threshold chosen on
            validation (feasibility from ``word_vectors``).
        word_vectors: "backbone" (the backbone's word-averaged token embeddings, no download) or
            the path of a GloVe text file.
        glove_fallback: what to do with a word the GloVe file lacks: "error", "zeros" or "skip".
        topk: top-k accuracy.
        prompt: evaluate this saved prompt directory instead of training (seeds are ignored).
        feature_cache_dir: keep frozen image features here across runs (default: in memory), as train does.
    """

    method: str = "csp"
    out: str = "runs/czsl"
    data: CZSLData = field(default_factory=CZSLData)
    world: str = "both"
    calibrate: bool = True
    word_vectors: str = "backbone"
    glove_fallback: str = "error"
    topk: int = 1
    prompt: str | None = None
    feature_cache_dir: str | None = None


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
    images = LabeledImages(samples, names, skip_bad_images=skip_bad_images)
    if not len(images):
        why = f" ({len(images.skipped)} skipped as unreadable)" if images.skipped else ""
        raise DataError(
            f"{split.root}: the {phase} phase has no images{why}: metadata_{split.split}.t7 needs images of the "
            f"{phase} pairs with set {phase!r}"
        )
    return images


@contextlib.contextmanager
def scoring(method: PromptMethod, backbone: Backbone, columns: list) -> Iterator[Tensor | None]:
    """Score ``columns`` inside the block; yields their class features, encoded once (no grad)."""
    trained, was_training = method.labels, method.training
    method.eval()
    method.set_classes(backbone, columns)
    try:
        with torch.no_grad():
            text = method.reusable_text_features(backbone)
        yield text
    finally:
        method.set_classes(backbone, trained)
        method.train(was_training)


def pair_scores(
    method: PromptMethod,
    backbone: Backbone,
    images: LabeledImages,
    cache: FeatureCache,
    text: Tensor | None,
    chunk: int = 1024,
) -> Iterator[Tensor]:
    """Scores of every image over the columns being scored (see :func:`scoring`), chunk by chunk
    (batches from :class:`~vlprompt.feed.Feed`: cached frozen features, or pixels for a prompted image tower)."""
    for (batch,) in Feed(backbone, images, method, cache).in_order(chunk):
        with torch.no_grad():
            scores = method.score(backbone, batch, text).float().cpu()
        yield scores


def word_vectors(run: CZSLRun, split: CZSLSplit, backbone: Backbone) -> tuple[Tensor, Tensor]:
    """Attribute and object vectors for feasibility: the backbone's, or GloVe's from a file."""
    if run.word_vectors == "backbone":
        attrs = backbone.word_vectors([primitive_text(a) for a in split.attrs]).cpu()
        objs = backbone.word_vectors([primitive_text(o) for o in split.objs]).cpu()
        return attrs, objs
    fallback = cast(Literal["error", "zeros", "skip"], run.glove_fallback)  # checked against GLOVE_FALLBACKS
    glove_attrs = load_glove(run.word_vectors, split.attrs, fallback=fallback, aliases=REFERENCE_GLOVE_ALIASES)
    glove_objs = load_glove(run.word_vectors, split.objs, fallback=fallback, aliases=REFERENCE_GLOVE_ALIASES)
    return glove_attrs.vectors, glove_objs.vectors


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


class Compositional(Protocol):
    """Train on the seen pairs; report S / U / H / AUC / attribute / object accuracy per world."""

    command = "czsl"
    label_kind = PairSpace
    group = ("method", "world")
    val_key = "val_auc"
    run: CZSLRun

    def validate(self) -> None:
        run = self.run
        if run.world not in WORLDS:
            raise OptionError(f"--world must be one of {WORLDS}, not {run.world!r}")
        if run.glove_fallback not in GLOVE_FALLBACKS:
            raise OptionError(f"--glove_fallback must be one of {GLOVE_FALLBACKS}, not {run.glove_fallback!r}")
        if run.topk < 1:
            raise OptionError(f"--topk must be >= 1, not {run.topk}")
        if not run.data.root:
            raise DataError("--data.root is required: the CZSL dataset root")

    def prepare(self, backbone: Backbone, cache: FeatureCache) -> None:
        run = self.run
        data = run.data
        self.split = split = load_czsl(data.root, data.split_name)
        transform = backbone.image_transform()
        self.train_set = phase_images(split, "train", split.train_pairs, data.skip_bad_images).with_transform(transform)
        self.images = {
            phase: phase_images(split, phase, split.pairs, data.skip_bad_images).with_transform(transform)
            for phase in ("val", "test")
        }
        self.cache = cache
        self.worlds = ["closed", "open"] if run.world == "both" else [run.world]
        self.feasibility = None
        if "open" in self.worlds and run.calibrate:
            self.feasibility = feasibility_scores(split, *word_vectors(run, split, backbone))
        self.curves: dict[str, tuple] = {}

    def seed_data(self, seed: int, seed_dir: Path | None):
        split = self.split
        labels = pair_space(split.attrs, split.objs, split.train_pairs)
        return self.train_set, labels, partial(_val_auc, protocol=self)

    def _labels(self, phase: str, world: str) -> Tensor:
        """Column index of each image's pair among ``world``'s columns."""
        images = self.images[phase]
        if world == "closed":
            return torch.tensor(images.labels)
        open_index = self.split.pair_index(self.split.open_world_pairs())
        return torch.tensor([open_index[tuple(self.split.pairs[s.label])] for s in images.samples])  # type: ignore[index]

    def _evaluate(
        self,
        method,
        backbone,
        text,
        phase: Literal["val", "test"],
        world: Literal["closed", "open"],
        removed: Tensor | None = None,
    ) -> CZSLResult:
        scores = pair_scores(method, backbone, self.images[phase], self.cache, text)
        labels = self._labels(phase, world)
        return evaluate_split(
            scores, self.split, phase, world, pair_labels=labels, removed_mask=removed, topk=self.run.topk
        )

    def evaluate(self, method: PromptMethod, backbone: Backbone, keys: dict[str, Any]) -> list[dict[str, Any]]:
        rows = []
        if "closed" in self.worlds:
            with scoring(method, backbone, self.split.pairs) as text:
                res = self._evaluate(method, backbone, text, "test", "closed")
            rows.append(_row(res, world="closed", **keys))
            self.curves.setdefault(f"{keys['method']} closed", (res.unseen_acc, res.seen_acc))
        if "open" in self.worlds:
            columns = self.split.open_world_pairs()
            with scoring(method, backbone, columns) as text:  # open-world pair features encoded once
                res = self._evaluate(method, backbone, text, "test", "open")
                rows.append(_row(res, world="open", **keys))
                self.curves.setdefault(f"{keys['method']} open", (res.unseen_acc, res.seen_acc))
                if self.feasibility is not None:
                    seen = self.split.seen_mask(columns)
                    val_scores = pair_scores(method, backbone, self.images["val"], self.cache, text)
                    calib = calibrate_feasibility(
                        val_scores, self._labels("val", "open"), seen, self.feasibility, topk=self.run.topk
                    )
                    removed = calib.removed_mask(self.feasibility, seen)
                    res = self._evaluate(method, backbone, text, "test", "open", removed)
                    rows.append(_row(res, world="open+calibrated", threshold=calib.threshold, **keys))
                    self.curves.setdefault(f"{keys['method']} open+calibrated", (res.unseen_acc, res.seen_acc))
        return rows

    def saved_labels(self, method: PairMethod) -> PairSpace:  # type: ignore[override]
        return method.labels.with_pairs(self.split.pairs)

    def prompt_extra(self, seed: int) -> dict[str, Any]:
        return {"seed": seed, "dataset": str(self.run.data.root)}

    def finish(self, out: Path, rows: list[dict[str, Any]]) -> None:
        curves = {name: {"unseen": list(unseen), "seen": list(seen)} for name, (unseen, seen) in self.curves.items()}
        atomic_write_text(out / "seen_unseen_curve.json", json.dumps(curves))
        plot_seen_unseen_curve(self.curves, out / "seen_unseen_curve.png")


def _val_auc(method: PromptMethod, backbone: Backbone, protocol: Compositional) -> float:
    with scoring(method, backbone, protocol.split.pairs) as text:
        return protocol._evaluate(method, backbone, text, "val", "closed").auc


def run_czsl(
    run: CZSLRun, backbone: Backbone | None = None, cache: FeatureCache | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    """Train and evaluate ``run.method`` for every seed (or ``run.prompt`` once); write prompts, tables, curves."""
    cache = cache or FeatureCache(run.feature_cache_dir)
    return run_seeds(run, Compositional(run), backbone, cache, progress, prompt=run.prompt)
