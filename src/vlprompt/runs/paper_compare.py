"""A bench's cells beside the papers' published numbers (``vlprompt/data/papers.json``).

:func:`paper_notes` finds, for each summary cell of a bench on registry datasets, the published entry of the
same method (or of the labelled baseline its preset names, e.g. ``dept-coop``), protocol and dataset (the
Average row: the paper's ``average``), and says whether the two are comparable: the same backbone (OpenAI's
released CLIP weights, :data:`OPENAI_CLIP`), the same shots, the paper's recipe as trained (its preset, no
``--train`` field or ``--method_options`` that changes it; a distilled method's teacher, by what it is, not its
path), and, for the Average, the paper's datasets. Then the
cell gets the difference (ours − paper, in points); otherwise the reasons it is not comparable.
:func:`paper_section` is the Markdown section that lists them under the bench's tables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, cast

from ..data.benchmarks import FEW_SHOT_DATASETS, IMAGENET_VARIANTS
from ..data.papers import METRICS, PaperResult, paper_result, paper_results
from ..engine.presets import preset_recipe, protocol_preset, recipe_config
from ..errors import VlpromptError
from ..evaluation.reports import AVERAGE
from ..methods import PromptMethod, method_class
from ..methods.promptkd import ZEROSHOT_TEACHER
from ..methods.recipes import Recipe
from ..prompts import read_prompt_config
from .bench_sources import SOURCE_DATASET
from .classification import TRANSDUCTIVE, ClassificationRun, learns_without_labels
from .config import RunConfig

#: open_clip's architecture names of OpenAI's released CLIP weights (``--backbone.pretrained openai``) and the
#: names the papers give them. No other weights are the papers' CLIP, whatever their architecture.
OPENAI_CLIP = {
    "RN50": "RN50",
    "RN101": "RN101",
    "RN50x4": "RN50x4",
    "RN50x16": "RN50x16",
    "RN50x64": "RN50x64",
    "ViT-B-32": "ViT-B/32",
    "ViT-B-16": "ViT-B/16",
    "ViT-L-14": "ViT-L/14",
    "ViT-L-14-336": "ViT-L/14@336px",
}
#: The datasets a paper's ``average`` is over, per protocol (CoOp's 11; the transfer protocols: their targets).
PAPER_AVERAGE = {
    "few-shot": FEW_SHOT_DATASETS,
    "base-to-new": FEW_SHOT_DATASETS,
    "cross-dataset": tuple(d for d in FEW_SHOT_DATASETS if d != SOURCE_DATASET),
    "domain-generalisation": IMAGENET_VARIANTS,
}
#: ``TrainConfig`` fields that never change what a run computes (bookkeeping, memory, speed).
NOT_RECIPE = frozenset(
    [
        "seed",
        "grad_accum",
        "checkpoint_every",
        "checkpoint_every_steps",
        "num_workers",
        "activation_checkpointing",
        "loggers",
    ]
)


def paper_backbone(model: str, pretrained: str | None) -> str | None:
    """The papers' name of an open_clip backbone (``ViT-B/16`` for ViT-B-16 with ``openai``), None for any other."""
    if pretrained != "openai":
        return None
    return OPENAI_CLIP.get(model.removesuffix("-quickgelu"))


def paper_notes(
    protocol: str,
    summary: Sequence[Mapping[str, Any]],
    runs: Mapping[tuple[str, str, int], RunConfig],
    backbone: tuple[str, str | None],
) -> list[dict[str, Any] | None]:
    """For each cell of ``summary``: ``{"paper": entry, "vs_paper": comparison}``, or None where no number is
    published for it.

    Args:
        protocol: the bench's protocol (CZSL has no published numbers here).
        summary: the bench's cells (``dataset``, ``method`` as ``--methods`` names it, ``shots``, the metrics as
            fractions).
        runs: what each registry-dataset sub-run ran, by (dataset, method, shots); cross-dataset and domain
            generalisation: the ImageNet sub-run, whose prompt every target scores (or each target's own, for a
            student distilled per target). Cells of other sources (the built-in benchmark, a multi-task
            collection) get nothing.
        backbone: (open_clip name, pretrained tag) of the bench's backbone, as its identity records them.

    ``vs_paper`` is ``{"matches": True, "delta": {metric: ours − paper, in points}}`` when backbone, shots and
    recipe match (and an Average covers the paper's datasets), else ``{"matches": False, "reason": ...}``.
    """
    if protocol not in PAPER_AVERAGE or not runs:
        return [None] * len(summary)
    transfer = protocol in ("cross-dataset", "domain-generalisation")
    averaged = [d for d in dict.fromkeys(c["dataset"] for c in summary) if d != AVERAGE]
    averaged = [d for d in averaged if not (transfer and d == SOURCE_DATASET)]
    notes: list[dict[str, Any] | None] = []
    for cell in summary:
        method, shots = cell["method"], cell["shots"]
        datasets = averaged if cell["dataset"] == AVERAGE else [cell["dataset"]]
        trained_on = [SOURCE_DATASET] if transfer else datasets
        ran = {d: runs.get((d, method, shots)) for d in trained_on}
        if transfer and ran[SOURCE_DATASET] is None:  # a student per target (PromptKD's cross-dataset): their runs
            ran = {d: runs.get((d, method, shots)) for d in datasets}
        if any(run is None for run in ran.values()):
            notes.append(None)  # not a registry dataset's cell
            continue
        paper_dataset = "average" if cell["dataset"] == AVERAGE else cell["dataset"]
        found = cast("dict[str, RunConfig]", ran)  # none is None (above)
        entry = _entry(protocol, paper_dataset, list(found.values()), shots, paper_backbone(*backbone))
        if entry is None:
            notes.append(None)
            continue
        reasons = _reasons(protocol, entry, cell, found, datasets, backbone)
        ours = {m: 100 * float(cell[m]) for m in METRICS[protocol] if cell.get(m) is not None}
        vs: dict[str, Any] = (
            {"matches": False, "reason": "; ".join(reasons)}
            if reasons
            else {"matches": True, "delta": {m: v - entry.metrics[m] for m, v in ours.items()}}
        )
        notes.append({"paper": dataclasses.asdict(entry), "vs_paper": vs})
    return notes


def _ran_preset(run: RunConfig) -> str | None:
    return run.preset or run.default_preset()


def _entry(protocol: str, dataset: str, runs: list[RunConfig], shots: int, backbone: str | None) -> PaperResult | None:
    """The published entry for these runs: by their method or by the preset they trained with (a labelled
    baseline, e.g. ``dept-coop``), preferring the preset's label, then our backbone, then the nearest shots."""
    presets = [p for p in dict.fromkeys(map(_ran_preset, runs)) if p]
    names = presets + [r.method for r in runs if r.method not in presets]
    for name in dict.fromkeys(names):
        if backbone and (exact := paper_result(name, protocol, dataset, backbone, shots)):
            return exact
    found = [r for r in paper_results() if (r.protocol, r.dataset) == (protocol, dataset) and r.method in names]
    if not found:
        return None
    return max(found, key=lambda r: (r.method in presets, r.backbone == backbone, -abs(r.shots - shots), r.shots))


def _uses_training_images(method: str) -> bool:
    """Whether a method's numbers depend on its training images (zero-shot CLIP's do not: any shots compare)."""
    cls = method_class(method)
    return cls.learns or cls.setup is not PromptMethod.setup


def _reasons(
    protocol: str,
    entry: PaperResult,
    cell: Mapping[str, Any],
    ran: dict[str, RunConfig],
    datasets: list[str],
    backbone: tuple[str, str | None],
) -> list[str]:
    """Why ``cell`` is not comparable with ``entry`` (empty: it is)."""
    reasons = []
    model, pretrained = backbone
    if paper_backbone(model, pretrained) != entry.backbone:
        ours = f"{model} ({pretrained})" if pretrained else model
        hint = {v: k for k, v in OPENAI_CLIP.items()}.get(entry.backbone)
        how = f" (--backbone.name {hint} --backbone.pretrained openai)" if hint else ""
        reasons.append(f"backbone {ours} is not the paper's {entry.backbone}{how}")
    trains = any(_uses_training_images(r.method) for r in ran.values())
    if trains and cell["shots"] != entry.shots:
        reasons.append(f"shots {_shots(cell['shots'])}, the paper's {_shots(entry.shots)}")
    if entry.dataset == "average" and set(datasets) != set(PAPER_AVERAGE[protocol]):
        reasons.append(f"the paper averages {len(PAPER_AVERAGE[protocol])} datasets, this bench {len(datasets)}")
    differences: dict[str, dict[str, str | None]] = {}  # what ran -> the paper's value, by dataset
    for dataset, run in ran.items():
        for text, paper in _recipe_differences(protocol, entry, dataset, run, cell["shots"], trains, backbone).items():
            differences.setdefault(text, {})[dataset] = paper
    texts = []
    for text, by_dataset in differences.items():
        papers = [p for p in dict.fromkeys(by_dataset.values()) if p is not None]
        if papers:
            text += f" (the paper's {', '.join(papers)}{' by dataset' * (len(papers) > 1)})"
        texts.append(text if len(by_dataset) == len(ran) else f"{text} on {', '.join(by_dataset)}")
    if texts:
        reasons.append("recipe differs: " + ", ".join(texts))
    return reasons


def _recipe_differences(
    protocol: str,
    entry: PaperResult,
    dataset: str,
    run: RunConfig,
    shots: int,
    trains: bool,
    backbone: tuple[str, str | None],
) -> dict[str, str | None]:
    """How ``run`` differs from the paper's recipe, as {what it ran: the paper's}: its preset (the entry's, or
    the authors' preset for this protocol and dataset where the entry is the method's own: an Average over
    per-dataset recipes, e.g. coprompt-dtd), then the ``--train`` fields and ``--method_options`` that change it."""
    ran = _ran_preset(run)
    authors = protocol_preset(run.method, protocol, dataset) if entry.method == run.method else None
    if ran not in [entry.preset] + ([authors] if authors else []):
        return {f"preset {ran or 'none'}": authors or entry.preset or "none"}
    if entry.preset is None and trains:
        return {"no vlprompt preset reproduces the paper's recipe": None}
    recipe = preset_recipe(ran) if ran else Recipe()
    out: dict[str, str | None] = {}
    if trains:
        ours, theirs = (dataclasses.asdict(c) for c in (run.train_config(shots), recipe_config(recipe, shots)))
        for key in ours:
            if key not in NOT_RECIPE and ours[key] != theirs[key]:
                out[f"--train.{key} {_value(ours[key])}"] = _value(theirs[key])
    inductive = isinstance(run, ClassificationRun) and run.data.class_split != TRANSDUCTIVE
    if protocol == "base-to-new" and inductive and learns_without_labels(run):  # its release: every class's images
        out["--transductive false: the base classes' images only"] = "every class's images, labels unused"
    config = method_class(run.method).Config
    defaults = config().to_dict()
    for key, value in run.method_options.items():
        paper = recipe.options.get(key, defaults.get(key))
        if key not in config.inputs and value != paper:
            out[f"--method_options {key} {_value(value)}"] = _value(paper)
    if entry.teacher and (teacher := _teacher(run, backbone)).lower() != entry.teacher.lower():
        out[f"teacher {teacher}"] = entry.teacher
    return out


def _teacher(run: RunConfig, backbone: tuple[str, str | None]) -> str:
    """What a distilled run's teacher is, as "method on backbone" (the papers' backbone names where they apply);
    ``backbone``: the student's (model, pretrained)."""
    options = run.method_options
    teacher, name = str(options.get("teacher", "")), options.get("teacher_backbone") or None
    pretrained = options.get("teacher_pretrained") or None
    if teacher == ZEROSHOT_TEACHER:  # the student's own backbone, whatever teacher_backbone says (load_teacher)
        method, (name, pretrained) = "zeroshot", backbone
    elif not teacher:
        return "none"
    else:
        try:
            record = read_prompt_config(teacher.replace("{seed}", str(run.seeds[0])))
        except VlpromptError as err:
            return f"{teacher} (unreadable: {err})"
        method = record["method"]
        if name is None:
            name, pretrained = record["backbone"]["model"], record["backbone"].get("pretrained")
    return f"{method} on {paper_backbone(name, pretrained) or (f'{name} ({pretrained})' if pretrained else name)}"


def _shots(k: int) -> str:
    return "0 (every training image)" if k == 0 else str(k)


def _value(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


# ---------------------------------------------------------------------------------------------- outputs
def add_paper_notes(
    report: dict[str, Any], runs: Mapping[tuple[str, str, int], RunConfig], backbone: tuple[str, str | None]
) -> None:
    """Put :func:`paper_notes` into a bench report: its cells gain ``paper`` and ``vs_paper``, its Markdown
    :func:`paper_section` after the tables (which stay as they are)."""
    notes = paper_notes(report["protocol"], report["summary"], runs, backbone)
    for cell, note in zip(report["summary"], notes, strict=True):
        cell.update(note or {})
    section = paper_section(report["protocol"], report["summary"])
    if section:
        report["table"] += "\n" + section


def paper_section(protocol: str, summary: Sequence[Mapping[str, Any]]) -> str:
    """The Markdown section listing every cell with a published number ("" where none has one)."""
    cells = [c for c in summary if "paper" in c]
    if not cells:
        return ""
    metrics = METRICS[protocol]
    sources = list(dict.fromkeys(c["paper"]["source"] for c in cells))
    lines = [
        "## The papers' numbers (%, papers.json)",
        "",
        "Δ = ours − paper, in points, where backbone, protocol, shots and recipe match the published entry; "
        "otherwise why not." + (" Values: base / new / HM." if len(metrics) > 1 else ""),
        "",
        "| dataset | method | shots | ours | paper | Δ | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        paper, vs = c["paper"], c["vs_paper"]
        ours = " / ".join(f"{100 * float(c[m]):.2f}" if c.get(m) is not None else "–" for m in metrics)
        theirs = " / ".join(f"{paper['metrics'][m]:.2f}" for m in metrics)
        if vs["matches"]:
            delta = " / ".join(f"{vs['delta'][m]:+.2f}" if m in vs["delta"] else "–" for m in metrics)
        else:
            delta = f"not comparable: {vs['reason']}"
        setting = f"{paper['method']}, {paper['backbone']}, shots {paper['shots']}"
        row = [c["dataset"], c["method"], c["shots"], ours, f"{theirs} ({setting})", delta]
        row.append(f"[{sources.index(paper['source']) + 1}]")
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    lines += [""] + [f"[{i}] {s}  " for i, s in enumerate(sources, 1)]
    return "\n".join(lines).rstrip() + "\n"


def flat_cells(summary: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``summary`` for a CSV: ``paper_<metric>``, ``paper_source``, ``vs_paper`` ("matches" or why not) and
    ``vs_paper_<metric>`` (the difference) in place of the nested fields."""
    out = []
    for cell in summary:
        row = {k: v for k, v in cell.items() if k not in ("paper", "vs_paper")}
        if "paper" in cell:
            paper, vs = cell["paper"], cell["vs_paper"]
            row |= {f"paper_{m}": v for m, v in paper["metrics"].items()} | {"paper_source": paper["source"]}
            row["vs_paper"] = "matches" if vs["matches"] else vs["reason"]
            row |= {f"vs_paper_{m}": d for m, d in vs.get("delta", {}).items()}
        out.append(row)
    return out
