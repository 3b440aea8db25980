"""``vlprompt demo``: every method on the built-in benchmark with the bundled tiny CLIP, offline, on CPU."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .backbones import DEFAULT_BACKBONE, Backbone, load_backbone
from .data.synthetic import MULTITASK, VIEWS, build_benchmark
from .engine import FeatureCache, TrainConfig, preset
from .evaluation import markdown_table, summarize, wide_table
from .io import atomic_write_text
from .plots import plot_method_bars, plot_training_curves
from .runs import (
    ClassificationRun,
    CZSLRun,
    DataConfig,
    MultiTaskRun,
    prepare_out_dir,
    run_classification,
    run_czsl,
    run_multitask,
    train_overrides,
    write_config,
)


@dataclass(frozen=True)
class DemoEntry:
    """One row of the demo: a method, its options, a CPU-sized recipe, and whether the default demo runs it."""

    label: str
    method: str
    options: dict[str, Any]
    train: TrainConfig
    default: bool = True


_SGD = TrainConfig(epochs=20, batch_size=32, lr=0.002, schedule="coop", warmup_epochs=1)
#: Image-side prompts: per-step cosine with warmup (VP's lr is the paper's 40).
_VISUAL = TrainConfig(epochs=10, batch_size=32, momentum=0.9, schedule="cosine", warmup_epochs=1)
#: Backbone deltas (CLIP-LoRA, full fine-tuning): AdamW, per-step cosine, no warmup.
_ADAMW = TrainConfig(epochs=10, batch_size=32, optimizer="adamw", schedule="cosine", warmup_epochs=0)
#: Two-tower prompts: MaPLe's recipe (lr 0.0035 at batch 4) at batch 32, its lr scaled with the batch.
_TWO_TOWER = replace(_SGD, epochs=10, lr=0.02)

#: The demo's default few-shot classification view: the 10 colours, which the benchmark's warm illuminant
#: shifts. ``--view pairs`` (100 classes) works too, but CoCoOp encodes every class prompt for every image,
#: about 7 minutes a seed on 2 CPU cores; pair recognition is what the CZSL table measures.
VIEW = "colours"

#: Few-shot classification entries (16 shots).
CLASSIFICATION: tuple[DemoEntry, ...] = (
    DemoEntry("zeroshot", "zeroshot", {"templates": ["a photo of a {}."]}, _SGD),
    DemoEntry("zeroshot-ensemble", "zeroshot", {"templates": ["a photo of a {}."], "ensemble": "coop7"}, _SGD),
    DemoEntry("coop", "coop", {"n_ctx": 4}, replace(_SGD, lr=0.02)),
    DemoEntry("cocoop", "cocoop", {}, replace(_SGD, epochs=4, batch_size=16, lr=0.02)),
    DemoEntry(
        "linear-probe",
        "linear-probe",
        {},
        TrainConfig(
            epochs=60, batch_size=64, optimizer="adamw", lr=1e-2, weight_decay=1e-4, schedule="cosine", warmup_epochs=0
        ),
    ),
    # Prompts that change the image tower see pixels every step (no feature cache): 10 epochs each. The default
    # demo runs one row per family, VP (image side) and MaPLe (both towers); `--methods all` runs every row.
    DemoEntry("vp", "vp", {"prompt_size": 8}, replace(_VISUAL, lr=40.0, weight_decay=0.0, warmup_steps=10)),
    DemoEntry("vpt-deep", "vpt", {"n_tokens": 8, "deep": True}, replace(_VISUAL, lr=0.5), default=False),
    DemoEntry("ivlp", "ivlp", {"depth_text": 3, "depth_vision": 3}, _TWO_TOWER, default=False),
    DemoEntry("maple", "maple", {"depth": 3}, _TWO_TOWER),
    DemoEntry("upt", "upt", {}, _TWO_TOWER, default=False),
    # Issue 10's inductive methods (with --methods all): KgCoOp as CoOp; PromptSRC as MaPLe, its Gaussian over
    # epochs moved to the shorter run; the backbone deltas with AdamW and a per-step cosine.
    DemoEntry("kgcoop", "kgcoop", {}, replace(_SGD, lr=0.02), default=False),
    DemoEntry(
        "promptsrc",
        "promptsrc",
        {"depth_text": 3, "depth_vision": 3, "gpa_mean": 7.5},
        # Not the two-tower lr (0.02): with it one PromptSRC seed of three fell to 51% base accuracy on the shapes
        # view (base-to-new, 20 steps); at 0.005 the three seeds agree within 1 point (measured, bench base-to-new).
        replace(_TWO_TOWER, lr=0.005),
        default=False,
    ),
    DemoEntry("clip-lora", "clip-lora", {}, replace(_ADAMW, lr=2e-3, weight_decay=0.01), default=False),
    DemoEntry("full-finetune", "full-finetune", {}, replace(_ADAMW, lr=1e-4, weight_decay=0.1), default=False),
)


#: CSP's UT-Zappos recipe sized for the demo's benchmark on a CPU: 150 steps instead of about 3,600, so a 10x
#: learning rate. CoOp and CSP share it, as in the CSP paper.
_CZSL_TRAIN = replace(preset("csp-ut-zappos"), epochs=10, lr=5e-3)

#: Compositional zero-shot entries (closed and calibrated open world).
CZSL_DEMO: tuple[DemoEntry, ...] = (
    DemoEntry("czsl-zeroshot", "czsl-zeroshot", {}, _CZSL_TRAIN),
    DemoEntry("czsl-coop", "czsl-coop", {}, _CZSL_TRAIN),
    DemoEntry("csp", "csp", {"vocab_dropout": 0.2}, _CZSL_TRAIN),
    DemoEntry("attr-obj-heads", "attr-obj-heads", {}, replace(_CZSL_TRAIN, lr=1e-2)),
    DemoEntry("pair-projection", "pair-projection", {}, replace(_CZSL_TRAIN, lr=1e-3)),
)


#: The built-in multi-task collection's table (colour, shape, texture, coloured shape: 43 classes), at
#: :data:`MULTITASK_SHOTS` shots: single-task methods run once per task; SoftCPT learns all four together.
MULTITASK_SHOTS = 4
_MULTITASK_TRAIN = replace(_SGD, epochs=10, lr=0.02)
MULTITASK_DEMO: tuple[DemoEntry, ...] = (
    DemoEntry("mt-zeroshot", "zeroshot", {"templates": ["a photo of a {}."]}, _MULTITASK_TRAIN),
    DemoEntry("mt-coop", "coop", {"n_ctx": 4}, _MULTITASK_TRAIN),
    DemoEntry("softcpt-nata", "softcpt", {"n_ctx": 4}, _MULTITASK_TRAIN),
    DemoEntry("softcpt-cata", "softcpt", {"n_ctx": 4, "variant": "CATA"}, _MULTITASK_TRAIN),
)
#: The in-context visual prompting table (no training; the bundled tiny inpainter, a few seconds).
INCONTEXT = "incontext"


def demo_methods() -> list[str]:
    """Every row the demo can run."""
    return (
        [e.label for e in CLASSIFICATION] + list(czsl_demo_methods()) + [e.label for e in MULTITASK_DEMO] + [INCONTEXT]
    )


def default_demo_methods() -> list[str]:
    """The rows `vlprompt demo` runs unless ``--methods`` names others."""
    return [e.label for e in CLASSIFICATION + CZSL_DEMO + MULTITASK_DEMO if e.default] + [INCONTEXT]


def selected_demo_methods(methods: list[str] | None) -> list[str]:
    """The rows to run: the default ones (None), every row (``["all"]``), or those named."""
    return demo_methods() if methods == ["all"] else list(methods or default_demo_methods())


def czsl_demo_methods() -> tuple[str, ...]:
    return tuple(e.label for e in CZSL_DEMO)


def run_demo(
    out: str | Path = "runs/demo",
    seeds: list[int] | None = None,
    methods: list[str] | None = None,
    shots: int = 16,
    overwrite: bool = False,
    progress: bool = True,
    view: str | None = None,
) -> dict[str, Any]:
    """Generate (or reuse) the benchmark, load the bundled model and run the chosen methods.

    ``view`` is the benchmark's few-shot classification view (one of ``VIEWS``; default :data:`VIEW`).

    Returns the results (per seed and summarised) and writes the run directory: config.yaml,
    results.json, results.md, and plots of training curves, per-method accuracy and CZSL closed-world AUC.
    """
    seeds = seeds or [1, 2, 3]
    view = view or VIEW
    wanted = selected_demo_methods(methods)
    unknown = sorted(set(wanted) - set(demo_methods()))
    if unknown:
        raise ValueError(f"unknown demo method(s) {unknown}; choose from {demo_methods()}")
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose from {list(VIEWS)}")
    out = prepare_out_dir(out, resume=False, overwrite=overwrite, command="demo")
    config = {
        "command": "demo",
        "backbone": DEFAULT_BACKBONE,
        "seeds": seeds,
        "methods": wanted,
        "shots": shots,
        "view": view,
    }
    write_config(out, config, command="demo")
    start = time.time()
    paths = build_benchmark()
    backbone = load_backbone(DEFAULT_BACKBONE)
    cache = FeatureCache()
    report: dict[str, Any] = {"backbone": DEFAULT_BACKBONE, "benchmark": str(paths.root), "seeds": seeds}
    tables = []

    rows = []
    curves: dict[str, list[Path]] = {}
    for entry in CLASSIFICATION:
        if entry.label not in wanted:
            continue
        run = ClassificationRun(
            data=DataConfig(root=str(paths.image_root), split_file=str(paths.splits[view]), shots=shots),
            method=entry.method,
            method_options=entry.options,
            train=train_overrides(entry.train),
            seeds=seeds,
            out=str(out / "classification" / entry.label),
            overwrite=True,
        )
        for row in run_classification(run, backbone, cache, progress):
            rows.append({**row, "method": entry.label})
        curves[entry.label] = [out / "classification" / entry.label / f"seed{s}" / "metrics.jsonl" for s in seeds]
    if rows:
        summary = summarize(rows, ["method"], ["accuracy"])
        table = markdown_table(summary, ["method"], ["accuracy"])
        tables.append(f"## Few-shot classification ({shots} shots, view '{view}', benchmark domain)\n\n{table}")
        report["classification"] = {"per_seed": rows, "summary": summary}
        plot_method_bars(summary, "accuracy", out / "accuracy.png", title=f"{shots}-shot accuracy (mean ± std)")
        plot_training_curves(curves, out / "training_curves.png")

    czsl_wanted = [m for m in wanted if m in czsl_demo_methods()]
    if czsl_wanted:
        czsl = run_czsl_demo(paths.czsl_root, backbone, cache, out / "czsl", seeds, czsl_wanted, progress)
        report["czsl"] = czsl["results"]
        tables.append(czsl["table"])
        closed = [row for row in czsl["results"]["summary"] if row["world"] == "closed"]
        plot_method_bars(closed, "AUC", out / "czsl_auc.png", title="CZSL closed-world AUC (mean ± std)")

    multitask_wanted = [e for e in MULTITASK_DEMO if e.label in wanted]
    if multitask_wanted:
        multitask = run_multitask_demo(backbone, cache, out / "multitask", seeds, multitask_wanted, progress)
        report["multitask"] = multitask["results"]
        tables.append(multitask["table"])

    if INCONTEXT in wanted:
        from .incontext import run_incontext_demo

        incontext = run_incontext_demo(out / "incontext", seeds, progress, backbone=backbone)
        report["incontext"] = incontext["results"]
        tables.append(incontext["table"])

    report["seconds"] = round(time.time() - start, 1)
    text = "\n".join(tables) + f"\nTotal time: {report['seconds']} s\n"
    atomic_write_text(out / "results.json", json.dumps(report, indent=2))
    atomic_write_text(out / "results.md", text)
    report["table"] = text
    return report


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
            train=train_overrides(entry.train),
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


def run_multitask_demo(
    backbone: Backbone,
    cache: FeatureCache,
    out: Path,
    seeds: list[int],
    entries: list[DemoEntry],
    progress: bool = True,
) -> dict[str, Any]:
    """The demo's multi-task table: each entry on the built-in collection, per task and averaged, over ``seeds``."""
    rows = []
    for entry in entries:
        run = MultiTaskRun(
            method=entry.method,
            method_options=entry.options,
            collection="builtin",
            shots=MULTITASK_SHOTS,
            train=train_overrides(entry.train),
            seeds=seeds,
            out=str(out / entry.label),
            overwrite=True,
        )
        rows += [{**row, "method": entry.label} for row in run_multitask(run, backbone, cache, progress)]
    summary = summarize(rows, ["method", "task"], ["accuracy"])
    table = wide_table(summary, "method", "task", "accuracy")
    names = ", ".join(MULTITASK)
    text = f"## Multi-task ({MULTITASK_SHOTS} shots a class; tasks: {names})\n\n{table}"
    return {"results": {"per_seed": rows, "summary": summary}, "table": text}
