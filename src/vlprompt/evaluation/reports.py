"""Results over seeds as mean ± std tables (Markdown, CSV, JSON)."""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_write_text

#: The name of the mean row or column over datasets or tasks, in every table.
AVERAGE = "Average"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(rows: Sequence[Mapping[str, Any]], group: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """Group per-seed result rows by ``group`` keys; mean and std of each metric, with the seed count."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[g] for g in group), []).append(row)
    out = []
    for key, members in groups.items():
        entry: dict[str, object] = dict(zip(group, key))
        entry["seeds"] = len(members)
        for m in metrics:
            values = [float(r[m]) for r in members if r.get(m) is not None]
            if values:
                entry[m], entry[f"{m}_std"] = mean_std(values)
        out.append(entry)
    return out


def markdown_table(
    summary: Sequence[Mapping[str, Any]],
    group: Sequence[str],
    metrics: Sequence[str],
    scale: float = 100.0,
    digits: int = 1,
) -> str:
    """A Markdown table with ``mean ± std`` cells (metrics multiplied by ``scale``)."""
    header = list(group) + list(metrics)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary:
        cells = [str(row[g]) for g in group]
        for m in metrics:
            if m in row:
                cells.append(f"{scale * float(row[m]):.{digits}f} ± {scale * float(row[f'{m}_std']):.{digits}f}")
            else:
                cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_cell(cell: Mapping[str, Any] | None, metric: str, scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std`` of a summary cell's metric (just the mean where it has no std; "–" where it has none)."""
    if cell is None or metric not in cell:
        return "–"
    mean = f"{scale * float(cell[metric]):.{digits}f}"
    return mean if f"{metric}_std" not in cell else f"{mean} ± {scale * float(cell[f'{metric}_std']):.{digits}f}"


def wide_table(
    summary: Sequence[Mapping[str, object]],
    row_key: str,
    column_key: str,
    metric: str,
    scale: float = 100.0,
    digits: int = 1,
) -> str:
    """A Markdown table of one metric with a row per ``row_key`` value and a column per ``column_key`` value."""
    rows = list(dict.fromkeys(str(r[row_key]) for r in summary))
    columns = list(dict.fromkeys(str(r[column_key]) for r in summary))
    cells = {(str(r[row_key]), str(r[column_key])): r for r in summary}
    lines = ["| " + " | ".join([row_key, *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for name in rows:
        out = [name] + [format_cell(cells.get((name, column)), metric, scale, digits) for column in columns]
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def csv_table(summary: Sequence[Mapping[str, object]]) -> str:
    keys: list[str] = []
    for row in summary:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(summary)
    return buf.getvalue()


def write_results(
    out: Path,
    table: str,
    summary: Sequence[Mapping[str, object]],
    csv_rows: Sequence[Mapping[str, object]] | None = None,
    **record: Any,
) -> None:
    """Every command's results files: results.json (``record``: its per-seed rows and what else it reports, with
    ``summary``), results.md (``table``) and results.csv (``csv_rows``, default ``summary``: one row per cell,
    mean ± std over seeds)."""
    atomic_write_text(out / "results.json", json.dumps({**record, "summary": list(summary)}, indent=2))
    atomic_write_text(out / "results.md", table)
    atomic_write_text(out / "results.csv", csv_table(summary if csv_rows is None else csv_rows))
