"""``vlprompt bench``: the field's protocols as one command each, with the papers' tables and a plot.

Protocols (:data:`PROTOCOLS`):

- ``few-shot``: every dataset, method and K (default 1, 2, 4, 8, 16), test accuracy.
- ``base-to-new``: train on the base half of the classes, test on base and on new; the table has
  base, new and their harmonic mean per dataset, and the Average row's HM is the HM of the averaged
  base and new accuracies (as the papers report it).
- ``cross-dataset``: train on ImageNet once per seed; test that prompt on ImageNet and the other 10.
- ``domain-generalisation``: the same ImageNet prompt on ImageNet-V2, -Sketch, -A and -R (on -A and
  -R it scores only their 200 classes).
- ``czsl``: compositional zero-shot (``vlprompt czsl``'s runs): train on the seen attribute-object pairs,
  report S, U, H, AUC, attribute and object accuracy in the closed, open and calibrated open worlds, per
  dataset (``builtin``, or CZSL folders under ``--data.root``).

Every (dataset, method, shots) is one run directory ``OUT/<dataset>/<method>/shots<K>`` driven by the
shared per-seed loop (:func:`~vlprompt.runs.loop.run_seeds`), so each holds its own config, prompts,
metrics and tables. With ``--resume`` a finished sub-run is read back from its ``results.json`` and
a finished seed of an unfinished one is not retrained.

Extension point: a sweep runs over *sources* (:class:`BenchSource`, in :mod:`vlprompt.runs.bench_sources`).
A source is a named "dataset" that, given ``(bench, method, shots, class_split, out)``, returns the
:class:`~vlprompt.runs.RunConfig` and the :class:`~vlprompt.runs.Protocol` of that sub-run; the sweep
runs them with ``run_seeds`` and tabulates the rows (each row needs ``method``, ``seed`` and the
protocol's metrics, e.g. ``accuracy``). The registry datasets (:class:`DatasetSource`) and the built-in
benchmark's views (:class:`BuiltinSource`) are sources; a multi-task collection joins the few-shot
sweep by registering a function that makes its sources in :data:`EXTRA_SOURCES` under the name given
to ``--datasets``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeGuard

from tqdm.auto import tqdm

from .. import distributed as dist
from ..backbones import Backbone
from ..data.benchmarks import get_dataset
from ..data.images import DataError
from ..errors import OptionError, RunDirError
from ..evaluation import harmonic_mean, markdown_table, summarize
from ..evaluation.reports import AVERAGE, format_cell, mean_std, wide_table, write_results
from ..features import FeatureCache
from ..labels import ClassNames
from ..methods import method_class
from ..schema import check_unique
from .bench_sources import (  # noqa: F401 - the sources are part of this module's API
    BUILTIN,
    BUILTIN_DEFAULT,
    COMPOSITIONAL,
    CZSL_METRICS,
    EXTRA_SOURCES,
    PROTOCOLS,
    SOURCE_DATASET,
    BenchMultiTask,
    BenchSource,
    BuiltinSource,
    CZSLSource,
    DatasetSource,
    MultiTaskSource,
    Transfer,
    TransferSource,
    builtin_entry,
    builtin_sources,
    builtin_views,
    entry_options,
    is_builtin,
    make_sources,
    registry_source,
)
from .classification import ClassificationRun, learns_without_labels
from .config import SEED_FIELD, BackboneConfig, RunConfig, TrainOverrides, check_seeds
from .loop import (
    CONFIG_FILE,
    Protocol,
    check_config_unchanged,
    prepare_out_dir,
    run_record,
    run_seeds,
    validate_run,
    write_config,
)
from .paper_compare import add_paper_notes, flat_cells


@dataclass
class BenchData:
    """Where a sweep's datasets are and how many shots it takes (``--data.*``, as every command takes its data).

    Attributes:
        root: the datasets root (CoOp's $DATA layout, see docs/datasets.md).
        shots: K images per class, one sub-run each (default: 1 2 4 8 16 for few-shot, 16 otherwise).
    """

    root: str = ""
    shots: list[int] | None = None


#: A method option ``bench:<name>`` is the prompt that ``--methods``' ``<name>`` trained earlier in the same sweep
#: (same dataset, shots and seed): a two-stage bench, e.g. PromptKD's student distilling a PromptSRC teacher.
STAGE_PREFIX = "bench:"


@dataclass
class BenchRun:
    """A protocol over datasets, methods, shots and seeds.

    Attributes:
        datasets: registry names (``vlprompt data check all`` lists them), ``all`` (the protocol's
            datasets), or ``builtin`` (the built-in benchmark's colours and shapes views; ``builtin-pairs``
            its 100-class view; few-shot and base-to-new only), or ``multitask-builtin`` (the built-in
            multi-task collection, few-shot: a column per task; SoftCPT or any single-task method, run
            once per task). Cross-dataset: the targets (ImageNet is the source); domain generalisation:
            the variants.
        methods: registered method names (one sub-run each).
        seeds: one run per seed; tables show mean ± std over them.
        data: the datasets root and the shots.
        backbone: the frozen model.
        preset: training recipe for every method (default: each method's own preset).
        train: overrides of the recipe's fields, for every method.
        method_options: options per method name, e.g. ``{coop: {n_ctx: 4}}``. An option ``bench:<name>`` is the
            prompt that ``<name>``, earlier in ``methods``, trains on the same dataset, shots and seed (two stages:
            ``{promptkd: {teacher: "bench:promptsrc"}}``).
        out: the bench directory.
        resume: continue an interrupted bench (finished sub-runs and seeds are not rerun).
        overwrite: replace an existing bench in ``out``.
        feature_cache_dir: keep frozen image features here across runs (default: in memory).
        transductive: base-to-new: a method that learns without labels (PromptKD) trains on every class's
            training images over every class name, labels unused, as its release does (``class_split``
            "base-to-new-transductive"); false: on the base classes' images, as every other method.
            Cross-dataset: such a method trains once per target, on all of the target's training images,
            unlabeled (shots 0), its ``bench:<name>`` teacher the prompt trained on ImageNet, as its release does;
            false: once on ImageNet, transferred as every other method.
    """

    datasets: list[str] = field(default_factory=lambda: ["all"])
    methods: list[str] = field(default_factory=lambda: ["coop"])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    data: BenchData = field(default_factory=BenchData)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    preset: str | None = None
    train: TrainOverrides = field(default_factory=TrainOverrides)  # type: ignore[valid-type]
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    out: str = "runs/bench"
    resume: bool = False
    overwrite: bool = False
    feature_cache_dir: str | None = None
    transductive: bool = True

    def shots_for(self, protocol: str) -> list[int]:
        shots = self.data.shots
        if protocol == COMPOSITIONAL:
            return [0]  # every image of the seen pairs
        return list(shots) if shots else ([1, 2, 4, 8, 16] if protocol == "few-shot" else [16])


def check_methods(protocol: str, bench: BenchRun) -> None:
    """Refuse, before any work, a method that cannot run ``protocol`` (class-specific outputs)."""
    if not bench.methods:
        raise OptionError("--methods is empty: give at least one method, e.g. --methods [coop]")
    check_unique(bench.methods, "--methods", OptionError, key=lambda m: m.strip().lower(), what="methods")
    unknown = sorted(set(bench.method_options) - set(bench.methods))
    if unknown:
        raise OptionError(f"--method_options names {unknown}, which are not in --methods {bench.methods}")
    if protocol == COMPOSITIONAL or all(name in EXTRA_SOURCES for name in bench.datasets):
        return  # CZSL and multi-task sources: each sub-run's protocol checks its method before any work
    builtin = any(map(is_builtin, bench.datasets))
    for method in bench.methods:
        entry = builtin_entry("few-shot", method) if builtin else None  # a built-in row, by label or method
        cls = method_class(entry.method if entry else method, ClassNames)
        config = cls.Config.from_dict(entry_options(entry, bench, method), cls.name)
        if protocol != "few-shot" and not cls.transfers_with(config):
            raise OptionError(
                f"{method} with these options learns one output per training class and cannot score new classes: "
                f"it cannot run {protocol} (run it with few-shot, or choose a method that transfers)"
            )


@dataclass
class SubRun:
    """One (dataset, method, shots) of the sweep; ``method`` as ``--methods`` names it (its rows' method)."""

    dataset: str
    method: str
    run: RunConfig
    protocol: Protocol


def plan(protocol: str, bench: BenchRun, out: Path) -> list[SubRun]:
    """Every sub-run of the sweep, each validated (options, recipe, data names) before any work."""
    check_methods(protocol, bench)
    check_seeds(bench.seeds)
    if not bench.datasets:
        raise OptionError("--datasets is empty: give at least one dataset, e.g. --datasets [all]")
    check_unique(bench.datasets, "--datasets", OptionError, key=str.strip, what="datasets")
    if protocol == COMPOSITIONAL and bench.data.shots:
        raise OptionError("--data.shots: czsl trains on every image of the seen pairs (leave --data.shots out)")
    shots = bench.shots_for(protocol)
    if any(k < 0 for k in shots):
        raise OptionError(f"--data.shots must all be >= 0 (0: all images), not {shots}")
    check_unique(shots, "--data.shots", OptionError, key=lambda k: k, what="shots")
    class_split = "base-to-new" if protocol == "base-to-new" else "all"
    subs = []

    def shots_dir(k: int) -> str:
        return "" if protocol == COMPOSITIONAL else f"shots{k}"

    for source in make_sources(protocol, bench):
        for method in filter(source.takes, bench.methods):
            if len({source.run_shots(k) for k in shots}) < len(shots):
                raise OptionError(
                    f"{method} trains on every image of {source.name} whatever --data.shots {shots} (a student per "
                    f"target, from its teacher trained on {source.stage_source}): give one shots value, its teacher's"
                )
            for k in shots:
                trains_on = source.run_shots(k)  # a per-target student: every image; its teacher: k shots
                where = _sub_run_dir(out / source.name, shots_dir(trains_on), method)
                run, proto = source.sub_run(bench, method, trains_on, class_split, where)
                _resolve_stages(bench, method, run, partial(_sub_run_dir, out / source.stage_source, shots_dir(k)))
                validate_run(run, proto)
                subs.append(SubRun(source.name, method, run, proto))
    return subs


def _sub_run_dir(dataset_dir: Path, shots_dir: str, method: str) -> Path:
    return dataset_dir / method / shots_dir


def _resolve_stages(bench: BenchRun, method: str, run: RunConfig, where: Any) -> None:
    """Point each option ``bench:<name>`` of ``method`` at the prompts that ``--methods``' ``<name>`` trains earlier
    in the sweep on the same dataset and shots (cross-dataset: on ImageNet), seed by seed (``where(name)``: that
    sub-run's folder)."""
    for key, value in run.resolved_options().items():
        if not (isinstance(value, str) and value.startswith(STAGE_PREFIX)):
            continue
        name = value.removeprefix(STAGE_PREFIX).strip()
        if name not in bench.methods[: bench.methods.index(method)]:
            raise OptionError(
                f"{method} option {key}: {value!r} needs {name!r} before {method} in --methods (it is trained "
                f"first, into {where(name)}, with the same seed); --methods is {bench.methods}"
            )
        run.method_options = {**run.method_options, key: str(where(name) / f"seed{SEED_FIELD}" / "prompt")}


def _check_sub_run(sub: SubRun) -> None:
    """A resumed sub-run's options must be those it was written with (its preset's recipe may have changed since:
    the message says how to train it again)."""
    record = run_record(sub.run, sub.run.train_config(sub.protocol.shots()))
    try:
        check_config_unchanged(Path(sub.run.out), record, sub.run.resume, sub.protocol.command)
    except RunDirError as err:
        raise RunDirError(
            f"{err} (a sub-run of this bench: {sub.method} on {sub.dataset}; where its preset's recipe changed since, "
            f"move {sub.run.out} away to train it again)"
        ) from err


def _finished_rows(sub: SubRun) -> list[dict[str, Any]] | None:
    """The rows of a finished sub-run being resumed (its results.json covers every seed), else None."""
    out = Path(sub.run.out)
    if not (sub.run.resume and (out / "results.json").is_file() and (out / CONFIG_FILE).is_file()):
        return None
    rows = json.loads((out / "results.json").read_text())["per_seed"]
    return rows if {r.get("seed") for r in rows} == set(sub.run.seeds) else None


def run_bench(
    protocol: str,
    bench: BenchRun,
    backbone: Backbone | None = None,
    cache: FeatureCache | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``protocol``'s sweep; write ``results.{json,md,csv}`` and ``results.png`` in ``bench.out``.

    Returns ``{"per_seed": rows, "summary": cells, "table": markdown}``.
    """
    subs = plan(protocol, bench, Path(bench.out))
    record = {"protocol": protocol, **dataclasses.asdict(bench)}
    classifying = [s.run for s in subs if isinstance(s.run, ClassificationRun)]
    if not (protocol in ("base-to-new", "cross-dataset") and any(learns_without_labels(run) for run in classifying)):
        record.pop("transductive")  # it changes no sub-run: not part of this bench's record
    # before any work; a bench written before --transductive existed trained every method on the base images
    added = {"transductive": False}
    check_config_unchanged(Path(bench.out), record, bench.resume, "bench", added=added)
    for sub in subs:  # every resumed sub-run unchanged and every dataset there before any training starts
        _check_sub_run(sub)
        if _on_registry(sub.run):
            missing = get_dataset(sub.run.data.dataset).missing(sub.run.data.root)
            if missing:
                raise DataError(f"{sub.run.data.dataset}: " + "; ".join(missing))
    out = prepare_out_dir(bench.out, bench.resume, bench.overwrite, "bench")
    write_config(out, record, bench.resume, f"bench {protocol}", added=added)
    backbone = backbone or bench.backbone.load()
    cache = cache or FeatureCache(bench.feature_cache_dir)
    rows: list[dict[str, Any]] = []
    runs = sum(len(sub.run.seeds) for sub in subs)  # (dataset, method, shots, seed) runs, with the time left
    with tqdm(total=runs, desc=f"bench {protocol}", unit="run", disable=not (progress and dist.is_main())) as overall:
        for sub in subs:
            sub_rows = _finished_rows(sub)
            if sub_rows is None:
                sub_rows = run_seeds(sub.run, sub.protocol, backbone, cache, progress, seed_done=overall.update)
            else:
                overall.update(len(sub.run.seeds))
            rows += [{"dataset": sub.dataset, **row, "method": sub.method} for row in sub_rows]
    report = bench_report(protocol, rows)
    registry = {(s.dataset, s.method, s.run.data.shots): s.run for s in subs if _on_registry(s.run)}
    add_paper_notes(report, registry, (backbone.identity.model, backbone.identity.pretrained))
    if dist.is_main():
        from ..plots import plot_bench

        write_bench_tables(out, report)
        closed = [c for c in report["summary"] if c.get("world", "closed") == "closed"]
        plot_bench(closed, protocol, out / "results.png")
    return report


def _on_registry(run: RunConfig) -> TypeGuard[ClassificationRun]:
    """Whether a sub-run trains on a registry dataset (the papers' numbers are for those only)."""
    return isinstance(run, ClassificationRun) and run.data.format == "benchmark"


# ---------------------------------------------------------------------------------------------- tables
def _metrics(protocol: str) -> list[str]:
    return {"base-to-new": ["base", "new"], COMPOSITIONAL: list(CZSL_METRICS)}.get(protocol, ["accuracy"])


def bench_summary(protocol: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds per (dataset, method, shots), then the Average over datasets.

    The Average of a metric is the mean over seeds of each seed's mean over the datasets (its std is
    over those per-seed means). Cross-dataset and DG average the targets only (not the source). For
    base-to-new every cell's ``hm`` is the harmonic mean of its mean base and mean new accuracies. CZSL: per
    (dataset, method, world), no Average (its datasets' label spaces have nothing in common).
    """
    metrics = _metrics(protocol)
    if protocol == COMPOSITIONAL:
        return summarize(rows, ["dataset", "method", "world"], metrics)
    summary = summarize(rows, ["dataset", "method", "shots"], metrics)
    transfer = protocol in ("cross-dataset", "domain-generalisation")
    averaged = [r for r in rows if not (transfer and r["dataset"] == SOURCE_DATASET)]
    datasets = list(dict.fromkeys(r["dataset"] for r in averaged))
    by_key: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for r in averaged:
        by_key.setdefault((r["method"], r["shots"], r["seed"]), {}).setdefault(r["dataset"], []).append(r)
    groups: dict[tuple, dict[str, list[float]]] = {}
    for (method, shots, _seed), per_dataset in by_key.items():
        if set(per_dataset) != set(datasets):
            continue  # a seed missing some dataset has no average
        entry = groups.setdefault((method, shots), {m: [] for m in metrics})
        for m in metrics:
            entry[m].append(sum(float(per_dataset[d][0][m]) for d in datasets) / len(datasets))
    for (method, shots), values in groups.items():
        cell: dict[str, Any] = {"dataset": AVERAGE, "method": method, "shots": shots, "seeds": len(values[metrics[0]])}
        for m in metrics:
            cell[m], cell[f"{m}_std"] = mean_std(values[m])
        summary.append(cell)
    if protocol == "base-to-new":
        for cell in summary:
            cell["hm"] = harmonic_mean(cell["base"], cell["new"])
    return summary


def _base_to_new_tables(summary: list[dict[str, Any]]) -> str:
    """One table per dataset (then Average): base, new (mean ± std) and HM, a row per method."""
    parts = []
    for dataset in dict.fromkeys(c["dataset"] for c in summary):
        lines = [f"### {dataset}\n", "| method | shots | base | new | HM |", "|---|---|---|---|---|"]
        for c in (c for c in summary if c["dataset"] == dataset):
            hm = f"{100 * c['hm']:.1f}"
            lines.append(
                f"| {c['method']} | {c['shots']} | {format_cell(c, 'base')} | {format_cell(c, 'new')} | {hm} |"
            )
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def bench_tables(protocol: str, summary: list[dict[str, Any]]) -> str:
    """The paper-style Markdown tables of ``protocol`` (accuracy in %, mean ± std over seeds)."""
    if protocol == "base-to-new":
        body = _base_to_new_tables(summary)
    elif protocol == COMPOSITIONAL:
        datasets = dict.fromkeys(c["dataset"] for c in summary)
        cells = {d: [c for c in summary if c["dataset"] == d] for d in datasets}
        body = "\n".join(f"### {d}\n\n" + markdown_table(cells[d], ["method", "world"], CZSL_METRICS) for d in datasets)
    else:
        body = "\n".join(
            f"### {shots_title(k)}\n\n"
            + wide_table([c for c in summary if c["shots"] == k], "method", "dataset", "accuracy")
            for k in dict.fromkeys(c["shots"] for c in summary)
        )
    note = {
        "few-shot": "Average: over the datasets.",
        "base-to-new": "HM: harmonic mean of the mean base and new accuracies; Average: over the datasets (its HM "
        "is the HM of the averaged base and new).",
        "cross-dataset": f"Trained on {SOURCE_DATASET}; Average: over the targets. A method that learns without "
        f"labels (PromptKD) distils one student per target from its teacher trained on {SOURCE_DATASET}, on all of "
        "the target's training images, unlabeled (its release's protocol): the 'all images' table.",
        "domain-generalisation": f"Trained on {SOURCE_DATASET}; Average: over the ImageNet variants.",
        COMPOSITIONAL: "S, U: best seen and unseen accuracy; H: their best harmonic mean; AUC: area under the "
        "seen-unseen curve; attr, obj: attribute and object accuracy; open+calibrated: infeasible pairs removed at "
        "the threshold chosen on validation.",
    }[protocol]
    return f"## {protocol} (mean ± std over seeds, %)\n\n{note}\n\n{body}"


def shots_title(shots: int) -> str:
    """A table's title for ``shots`` images per class (0: all of them)."""
    return "all images" if shots == 0 else f"{shots} shot{'s' * (shots != 1)}"


def bench_report(protocol: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"protocol", "per_seed": rows, "summary": cells, "table": markdown}``."""
    summary = bench_summary(protocol, rows)
    return {"protocol": protocol, "per_seed": rows, "summary": summary, "table": bench_tables(protocol, summary)}


def write_bench_tables(out: Path, report: dict[str, Any]) -> None:
    """results.json (per seed and summary), results.md (the tables) and results.csv (the summary; the papers'
    numbers as flat columns where cells have them)."""
    summary = report["summary"]
    write_results(
        out, report["table"], summary, flat_cells(summary), protocol=report["protocol"], per_seed=report["per_seed"]
    )


__all__ = [
    "AVERAGE",
    "EXTRA_SOURCES",
    "PROTOCOLS",
    "BenchRun",
    "BenchSource",
    "BuiltinSource",
    "DatasetSource",
    "Transfer",
    "TransferSource",
    "bench_report",
    "bench_summary",
    "bench_tables",
    "make_sources",
    "run_bench",
    "write_bench_tables",
]
