"""Runs: the typed configs the CLI reads, and the few-shot / base-to-new protocol over seeds."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from .backbones import Backbone, load_backbone
from .data import LabeledImages, base_new_split, few_shot, image_folder, split_json
from .data.images import DataError
from .engine import FeatureCache, TrainConfig, fit, preset
from .engine import distributed as dist
from .evaluation import evaluate, harmonic_mean, markdown_table, summarize
from .evaluation.reports import csv_table
from .io import atomic_write_text
from .methods import build_method, method_class
from .prompts import save_pretrained
from .rundir import prepare_run_dir

log = logging.getLogger(__name__)


@dataclass
class BackboneConfig:
    """Which frozen model to use.

    Attributes:
        name: bundled name (vlprompt/tiny-shapes), open_clip architecture (ViT-B-32), hf-hub:/local-dir:
            name, or the path of a checkpoint in OpenAI's format.
        pretrained: pretrained tag (openai, laion2b_s34b_b79k), local open_clip checkpoint file, or "random"
            (random weights, only when asked for) for an open_clip architecture.
        device: "auto" (GPU when available), "cpu", "cuda", "cuda:1".
    """

    name: str = "vlprompt/tiny-shapes"
    pretrained: str | None = None
    device: str = "auto"

    def load(self) -> Backbone:
        device = dist.default_device() if self.device == "auto" else torch.device(self.device)
        return load_backbone(self.name, self.pretrained, device=device)


@dataclass
class DataConfig:
    """A classification dataset and the protocol's view of it.

    Attributes:
        format: "split-json" (CoOp split file + image root) or "imagefolder" (one folder per class).
        root: image root for split-json paths.
        split_file: the CoOp split JSON ({"train", "val", "test"} lists of [path, label, class name]).
        train_dir, val_dir, test_dir: class-folder trees for "imagefolder" (val optional).
        shots: K images per class for training (0 = all); validation uses min(K, 4).
        classes: "all", or "base-to-new" (train on the first half of the labels, test on both halves).
        skip_bad_images: drop missing or unreadable images (counted and reported) instead of failing.
    """

    format: str = "split-json"
    root: str = ""
    split_file: str = ""
    train_dir: str = ""
    val_dir: str = ""
    test_dir: str = ""
    shots: int = 16
    classes: str = "all"
    skip_bad_images: bool = False

    def load(self, transform=None) -> dict[str, LabeledImages]:
        """The train, val (may be absent) and test splits."""
        if self.format == "split-json":
            if not self.split_file:
                raise DataError("data.split_file is required for format split-json")
            return {
                s: split_json(self.split_file, self.root, s, transform, self.skip_bad_images)
                for s in ("train", "val", "test")
            }
        if self.format == "imagefolder":
            dirs = {"train": self.train_dir, "val": self.val_dir, "test": self.test_dir}
            for split in ("train", "test"):
                if not dirs[split]:
                    raise DataError(f"data.{split}_dir is required for format imagefolder")
            train = image_folder(dirs["train"], transform, self.skip_bad_images)
            splits = {"train": train}
            for split in ("val", "test"):
                if dirs[split]:
                    splits[split] = image_folder(dirs[split], transform, self.skip_bad_images, train.classnames)
            return splits
        raise DataError(f"data.format must be 'split-json' or 'imagefolder', not {self.format!r}")


def merged_train_config(preset_name: str | None, shots: int, overrides: Any = None) -> TrainConfig:
    """A preset recipe (or the defaults) with the fields the user set (non-None) replaced."""
    base = preset(preset_name, shots) if preset_name else TrainConfig()
    if overrides is None:
        return base
    values = overrides if isinstance(overrides, dict) else dataclasses.asdict(overrides)
    return dataclasses.replace(base, **{k: v for k, v in values.items() if v is not None})


@dataclass
class ClassificationRun:
    """One method on one dataset over several seeds (few-shot, optionally base-to-new)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: str = "coop"
    method_options: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    out: str = "runs/train"
    resume: bool = False
    overwrite: bool = False
    feature_cache_dir: str | None = None


@dataclass(frozen=True)
class DemoEntry:
    """One row of the demo: a method, its options and a CPU-sized recipe."""

    label: str
    method: str
    options: dict[str, Any]
    train: TrainConfig


def prepare_out_dir(out: str | Path, resume: bool, overwrite: bool, command: str | None = None) -> Path:
    """Create the run directory (see :func:`vlprompt.rundir.prepare_run_dir`: only marked runs are overwritten)."""
    return prepare_run_dir(out, resume, overwrite, command)


def write_config(run_dir: Path, config: dict[str, Any], resume: bool = False) -> None:
    """Write the resolved ``config.yaml``; when resuming, the run's config must not have changed."""
    path = run_dir / "config.yaml"
    if resume and path.is_file():
        saved = yaml.safe_load(path.read_text())
        ignore = {"resume", "overwrite"}
        changed = sorted(k for k in set(saved) | set(config) if k not in ignore and saved.get(k) != config.get(k))
        if changed:
            raise ValueError(f"cannot resume {run_dir}: its config differs in {changed} (start a new --out instead)")
        return
    if dist.is_main():
        atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))


def run_classification(
    run: ClassificationRun,
    backbone: Backbone | None = None,
    cache: FeatureCache | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train and test ``run.method`` for every seed; write prompts, per-seed results and tables.

    Returns one row per seed: accuracy (and base / new / H for base-to-new).
    """
    method_class(run.method).Config.from_dict(run.method_options, run.method)  # fail before any work
    out = prepare_out_dir(run.out, run.resume, run.overwrite, command="train")
    write_config(out, {"command": "train", **dataclasses.asdict(run)}, run.resume)
    backbone = backbone or run.backbone.load()
    cache = cache or FeatureCache(run.feature_cache_dir)
    splits = run.data.load(backbone.image_transform())
    base_to_new = run.data.classes == "base-to-new"
    if run.data.classes not in ("all", "base-to-new"):
        raise DataError(f"data.classes must be 'all' or 'base-to-new', not {run.data.classes!r}")
    train_classes = "base" if base_to_new else "all"
    rows = []
    for seed in run.seeds:
        seed_dir = out / f"seed{seed}"
        seed_dir.mkdir(exist_ok=True)
        main_dir = seed_dir if dist.is_main() else None  # rank 0 writes the subset index files
        train_set = few_shot(
            base_new_split(splits["train"], train_classes),
            run.data.shots,
            seed,
            main_dir and main_dir / "train_subset.json",
        )
        val_set = None
        if "val" in splits and len(splits["val"]):
            val_shots = min(run.data.shots, 4) if run.data.shots else 0
            val_set = few_shot(
                base_new_split(splits["val"], train_classes),
                val_shots,
                seed,
                main_dir and main_dir / "val_subset.json",
                allow_fewer=True,
            )
        torch.manual_seed(seed)
        method = build_method(run.method, backbone, train_set.classnames, run.method_options)
        if base_to_new and not method.transfers_to_new_classes:
            raise ValueError(f"{run.method} with these options cannot score new classes: no base-to-new protocol")
        train_cfg = dataclasses.replace(run.train, seed=seed)
        if val_set is None and train_cfg.select == "best":
            raise DataError("train.select=best needs a validation split, and this dataset has none")
        result = None
        if any(p.requires_grad for p in method.parameters()):
            scorer = partial(_val_accuracy, dataset=val_set, cache=cache) if val_set else None
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
        row: dict[str, Any] = {"method": run.method, "seed": seed, "shots": run.data.shots}
        if base_to_new:
            row["base"] = evaluate(method, backbone, base_new_split(splits["test"], "base"), cache)["accuracy"]
            base_classes = method.classes
            new_test = base_new_split(splits["test"], "new")
            method.set_classes(backbone, new_test.classnames)
            row["new"] = evaluate(method, backbone, new_test, cache)["accuracy"]
            row["hm"] = harmonic_mean(row["base"], row["new"])
            method.set_classes(backbone, base_classes)
        else:
            row.update(evaluate(method, backbone, splits["test"], cache))
        if result is not None:
            row["train_seconds"] = round(result.seconds, 2)
            row["selected_epoch"] = result.selected_epoch
        if dist.is_main():
            save_pretrained(method, backbone, seed_dir / "prompt", extra={"seed": seed, "shots": run.data.shots})
            atomic_write_text(seed_dir / "results.json", json.dumps(row, indent=2))
        rows.append(row)
    if dist.is_main():
        write_tables(out, rows, ["method", "shots"])
    return rows


def _val_accuracy(method, backbone: Backbone, dataset: LabeledImages, cache: FeatureCache) -> float:
    return evaluate(method, backbone, dataset, cache)["accuracy"]


def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    known = ("accuracy", "mean_per_class_accuracy", "base", "new", "hm", "S", "U", "H", "AUC", "attr", "obj")
    return [m for m in known if any(m in r for r in rows)]


def write_tables(out: Path, rows: list[dict[str, Any]], group: list[str]) -> str:
    """results.json (per seed + summary), results.md and results.csv (mean ± std over seeds)."""
    metrics = metric_names(rows)
    summary = summarize(rows, group, metrics)
    table = markdown_table(summary, group, metrics)
    atomic_write_text(out / "results.json", json.dumps({"per_seed": rows, "summary": summary}, indent=2))
    atomic_write_text(out / "results.md", table)
    atomic_write_text(out / "results.csv", csv_table(summary))
    return table
