"""``vlprompt demo``: every method on the built-in benchmark with the bundled tiny CLIP, offline, on CPU."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backbones import DEFAULT_BACKBONE, load_backbone
from .data.synthetic import MULTITASK, VIEWS, build_benchmark
from .engine import FeatureCache
from .errors import OptionError
from .evaluation import markdown_table, wide_table
from .evaluation.reports import AVERAGE, write_results
from .plots import plot_method_bars, plot_training_curves
from .runs import prepare_out_dir, write_config
from .runs.bench import BUILTIN, COMPOSITIONAL, CZSL_METRICS, BenchData, BenchRun, run_bench
from .runs.recipes import MULTITASK_SHOTS, TABLES, VIEW, builtin_entries

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


def run_demo(
    out: str | Path = "runs/demo",
    seeds: list[int] | None = None,
    methods: list[str] | None = None,
    shots: int = 16,
    overwrite: bool = False,
    progress: bool = True,
    view: str | None = None,
) -> dict[str, Any]:
    """Generate (or reuse) the benchmark, load the bundled model and run the chosen rows: a thin preset over
    ``vlprompt bench`` on the built-in benchmark (few-shot on one view, CZSL, the multi-task collection), plus
    the in-context table.

    ``view`` is the benchmark's few-shot classification view (one of ``VIEWS``; default :data:`VIEW`).

    Returns the results (per seed and summarised) and writes the run directory: config.yaml, one bench
    directory per table (``classification/``, ``czsl/``, ``multitask/``: each ``vlprompt bench``'s own files),
    results.{json,md,csv}, and plots of training curves, per-method accuracy and CZSL closed-world AUC.
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
    write_config(out, {"seeds": seeds, "methods": wanted, "data": {"shots": shots, "view": view}}, command="demo")
    start = time.time()
    paths = build_benchmark()
    backbone = load_backbone(DEFAULT_BACKBONE)
    cache = FeatureCache()
    report: dict[str, Any] = {"backbone": DEFAULT_BACKBONE, "benchmark": str(paths.root), "seeds": seeds}
    tables = []
    for sweep in demo_sweeps(view, shots):
        labels = [e.label for e in builtin_entries(sweep.table) if e.label in wanted]
        if not labels:
            continue
        bench = BenchRun(
            datasets=[sweep.dataset],
            methods=labels,
            seeds=seeds,
            data=BenchData(shots=sweep.shots),
            out=str(out / sweep.key),
        )
        result = run_bench(sweep.protocol, bench, backbone, cache, progress)
        report[sweep.key] = {"per_seed": result["per_seed"], "summary": result["summary"]}
        tables.append(f"{sweep.title}\n\n{sweep.table_of(result['summary'])}")
    if "classification" in report:
        summary = report["classification"]["summary"]
        plot_method_bars(summary, "accuracy", out / "accuracy.png", title=f"{shots}-shot accuracy (mean ± std)")
        runs = out / "classification" / view  # bench names a built-in view's runs by the view
        curves = {m: [runs / m / f"shots{shots}" / f"seed{s}" / "metrics.jsonl" for s in seeds] for m in wanted}
        trained = {m: c for m, c in curves.items() if (runs / m).is_dir()}
        report["training_curves"] = plot_training_curves(trained, out / "training_curves.png")
    if "czsl" in report:
        closed = [row for row in report["czsl"]["summary"] if row["world"] == "closed"]
        plot_method_bars(closed, "AUC", out / "czsl_auc.png", title="CZSL closed-world AUC (mean ± std)")
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


@dataclass(frozen=True)
class DemoSweep:
    """One table of the demo: a ``vlprompt bench`` sweep of the built-in benchmark, and how the demo shows it."""

    key: str
    table: str
    protocol: str
    dataset: str
    shots: list[int] | None
    title: str
    group: tuple[str, ...]
    metrics: tuple[str, ...]

    def table_of(self, summary: list[dict[str, Any]]) -> str:
        """The demo's table of the sweep's cells (its one dataset; the multi-task one: a column per task)."""
        if self.table == "multitask":
            return wide_table(summary, "method", "dataset", "accuracy")
        cells = [c for c in summary if c["dataset"] != AVERAGE]  # one dataset: its rows (bench names a view by itself)
        if not cells:
            raise RuntimeError(f"the demo's {self.key} sweep returned no rows for {self.dataset}")
        return markdown_table(cells, list(self.group), list(self.metrics))


def demo_sweeps(view: str, shots: int) -> tuple[DemoSweep, ...]:
    """The demo's three sweeps: few-shot on ``view``, CZSL, and the multi-task collection."""
    names = ", ".join(MULTITASK)
    return (
        DemoSweep(
            "classification", "few-shot", "few-shot", f"{BUILTIN}-{view}", [shots],
            f"## Few-shot classification ({shots} shots, view '{view}', benchmark domain)", ("method",), ("accuracy",),
        ),
        DemoSweep(
            "czsl", "czsl", COMPOSITIONAL, BUILTIN, None,
            "## Compositional zero-shot (built-in benchmark, closed and open world)", ("method", "world"), CZSL_METRICS,
        ),
        DemoSweep(
            "multitask", "multitask", "few-shot", "multitask-builtin", [MULTITASK_SHOTS],
            f"## Multi-task ({MULTITASK_SHOTS} shots a class; tasks: {names})", ("method",), ("accuracy",),
        ),
    )  # fmt: skip
