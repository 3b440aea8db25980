"""``vlprompt demo``: every method on the built-in benchmark with the bundled tiny CLIP, offline, on CPU."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .backbones import DEFAULT_BACKBONE, Backbone, load_backbone
from .data.synthetic import MULTITASK, VIEWS, build_benchmark
from .engine import FeatureCache
from .errors import OptionError
from .evaluation import markdown_table, summarize, wide_table
from .evaluation.reports import write_results
from .plots import plot_method_bars, plot_training_curves
from .runs import (
    ClassificationRun,
    CZSLData,
    CZSLRun,
    DataConfig,
    MultiTaskData,
    MultiTaskRun,
    prepare_out_dir,
    run_classification,
    run_czsl,
    run_multitask,
    train_overrides,
    write_config,
)
from .runs.recipes import MULTITASK_SHOTS, TABLES, VIEW, DemoEntry, builtin_entries

#: The in-context visual prompting table (no training; the bundled tiny inpainter, a few seconds).
INCONTEXT = "incontext"
#: The demo's tables, as results.json names them (each ``{"per_seed", "summary"}``; results.csv: every summary).
TABLE_KEYS = ("classification", "czsl", "multitask", INCONTEXT)


def demo_methods() -> list[str]:
    """Every row the demo can run."""
    return [e.label for table in TABLES for e in builtin_entries(table)] + [INCONTEXT]


def default_demo_methods() -> list[str]:
    """The rows `vlprompt demo` runs unless ``--methods`` names others."""
    return [e.label for table in TABLES for e in builtin_entries(table) if e.default] + [INCONTEXT]


def selected_demo_methods(methods: list[str] | None) -> list[str]:
    """The rows to run: the default ones (None), every row (``["all"]``), or those named."""
    return demo_methods() if methods == ["all"] else list(methods or default_demo_methods())


def czsl_demo_methods() -> tuple[str, ...]:
    return tuple(e.label for e in builtin_entries("czsl"))


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
        raise OptionError(f"unknown demo method(s) {unknown}; choose from {demo_methods()}")
    if view not in VIEWS:
        raise OptionError(f"unknown view {view!r}; choose from {list(VIEWS)}")
    out = prepare_out_dir(out, resume=False, overwrite=overwrite, command="demo")
    config = {"seeds": seeds, "methods": wanted, "data": {"shots": shots, "view": view}}  # replays with --config
    write_config(out, config, command="demo")
    start = time.time()
    paths = build_benchmark()
    backbone = load_backbone(DEFAULT_BACKBONE)
    cache = FeatureCache()
    report: dict[str, Any] = {"backbone": DEFAULT_BACKBONE, "benchmark": str(paths.root), "seeds": seeds}
    tables = []

    rows = []
    curves: dict[str, list[Path]] = {}
    for entry in builtin_entries("few-shot"):
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

    multitask_wanted = [e for e in builtin_entries("multitask") if e.label in wanted]
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
    summary = [{"table": name, **cell} for name in TABLE_KEYS if name in report for cell in report[name]["summary"]]
    write_results(out, text, summary, **report)
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
    for entry in builtin_entries("czsl"):
        if entry.label not in labels:
            continue
        run = CZSLRun(
            data=CZSLData(root=str(root)),
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
            data=MultiTaskData(collection="builtin", shots=MULTITASK_SHOTS),
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
