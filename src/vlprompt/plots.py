"""Plots with matplotlib (Agg backend: no display needed)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_write  # noqa: E402


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120))
    plt.close(fig)


def plot_training_curves(runs: Mapping[str, Sequence[Path]], path: str | Path) -> list[str]:
    """Training loss per epoch, one line per method (mean over its seeds' metrics.jsonl files); returns the
    methods drawn."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, files in runs.items():
        histories = [
            [json.loads(line) for line in Path(f).read_text().splitlines()] for f in files if Path(f).is_file()
        ]
        histories = [h for h in histories if h]
        if not histories:
            continue
        epochs = min(len(h) for h in histories)
        loss = [sum(h[e]["loss"] for h in histories) / len(histories) for e in range(epochs)]
        ax.plot(range(1, epochs + 1), loss, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    seeds = max((len(files) for files in runs.values()), default=0)
    ax.set_title(f"Training loss per epoch (mean over {seeds} seed{'s' * (seeds != 1)})")
    if ax.lines:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no trained method", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    drawn = [str(line.get_label()) for line in ax.lines]
    _save(fig, Path(path))
    return drawn


def plot_method_bars(summary: Sequence[Mapping], metric: str, path: str | Path, title: str = "") -> None:
    """A bar per method: mean × 100 with the std over seeds as error bars."""
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [str(r["method"]) for r in summary]
    means = [100 * float(r[metric]) for r in summary]
    stds = [100 * float(r.get(f"{metric}_std", 0.0)) for r in summary]
    ax.bar(labels, means, yerr=stds, capsize=4, color="tab:blue")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    _save(fig, Path(path))


def plot_seen_unseen_curve(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path) -> None:
    """CZSL: seen accuracy against unseen accuracy over the bias sweep, one line per method and world."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.set_title("Seen vs unseen accuracy over the bias sweep (first seed)")
    for label, (unseen, seen) in curves.items():
        ax.plot([100 * u for u in unseen], [100 * s for s in seen], marker=".", label=label)
    ax.set_xlabel("unseen accuracy (%)")
    ax.set_ylabel("seen accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, Path(path))


def plot_bench(summary: Sequence[Mapping], protocol: str, path: str | Path) -> None:
    """A bench's combined plot: one panel per dataset (then the Average).

    Few-shot: accuracy against shots, a line per method. Otherwise bars per method (base, new and HM for
    base-to-new; H and AUC for CZSL, of the cells given; accuracy for the transfer protocols), with the std over
    seeds as error bars.
    """
    datasets = list(dict.fromkeys(str(c["dataset"]) for c in summary))
    methods = list(dict.fromkeys(str(c["method"]) for c in summary))
    cols = min(4, len(datasets)) or 1
    rows = math.ceil(len(datasets) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    metrics = {"base-to-new": ["base", "new", "hm"], "czsl": ["H", "AUC"]}.get(protocol, ["accuracy"])
    for ax, dataset in zip(axes.flat, datasets):
        cells = [c for c in summary if str(c["dataset"]) == dataset]
        if protocol == "few-shot":
            for method in methods:
                mine = sorted((c for c in cells if str(c["method"]) == method), key=lambda c: c["shots"])
                shots = [c["shots"] for c in mine]
                ax.errorbar(
                    shots,
                    [100 * c["accuracy"] for c in mine],
                    yerr=[100 * c["accuracy_std"] for c in mine],
                    marker="o",
                    capsize=3,
                    label=method,
                )
            ticks = sorted({c["shots"] for c in cells})
            if ticks[0] > 0:  # shots 0 (every image) has no place on a log axis
                ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [str(k) if k else "all" for k in ticks])
            ax.set_xlabel("shots per class")
        else:
            width = 0.8 / len(metrics)
            for i, metric in enumerate(metrics):
                means = [100 * next((c[metric] for c in cells if str(c["method"]) == m), 0.0) for m in methods]
                stds = [
                    100 * next((c.get(f"{metric}_std", 0.0) for c in cells if str(c["method"]) == m), 0.0)
                    for m in methods
                ]
                label = "HM" if metric == "hm" else metric
                ax.bar([j + i * width for j in range(len(methods))], means, width, yerr=stds, capsize=2, label=label)
            ax.set_xticks([j + width * (len(metrics) - 1) / 2 for j in range(len(methods))], methods, rotation=30)
        ax.set_title(dataset)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(datasets) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="small")
    fig.suptitle(f"{protocol} (mean ± std over seeds)")
    fig.tight_layout()
    _save(fig, Path(path))
