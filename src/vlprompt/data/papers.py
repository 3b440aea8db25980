"""The papers' published numbers as data (``papers.json``), each with the source it was read from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from ..errors import DataError

#: The protocols a published number can belong to (the bench's).
PROTOCOLS = ("few-shot", "base-to-new", "cross-dataset", "domain-generalisation")
#: The metrics each protocol reports.
METRICS = {"base-to-new": ("base", "new", "hm")} | dict.fromkeys(
    ("few-shot", "cross-dataset", "domain-generalisation"), ("accuracy",)
)
_FIELDS = {"method", "preset", "backbone", "protocol", "dataset", "shots", "seeds", "epochs", "source"}
#: Fields an entry may have: the teacher a distilled method learnt from, as "method on backbone".
_OPTIONAL = {"teacher"}


@dataclass(frozen=True)
class PaperResult:
    """One published number (accuracies in %) and where it was read."""

    method: str
    preset: str | None
    backbone: str
    protocol: str
    dataset: str
    shots: int
    seeds: int | None
    epochs: int | None
    metrics: dict[str, float]
    source: str
    teacher: str | None = None  # a distilled method's teacher, "method on backbone"


def harmonic_mean(base: float, new: float) -> float:
    return 2 * base * new / (base + new)


def parse_entry(entry: dict[str, Any]) -> PaperResult:
    """One entry of papers.json, checked (a :class:`DataError` naming the entry otherwise)."""
    where = f"papers.json entry {entry.get('method')!r} ({entry.get('protocol')}, {entry.get('dataset')})"
    protocol = entry.get("protocol")
    if protocol not in METRICS:
        raise DataError(f"{where}: protocol must be one of {PROTOCOLS}")
    metrics = METRICS[protocol]
    if not _FIELDS | set(metrics) <= set(entry) <= _FIELDS | _OPTIONAL | set(metrics):
        expected = f"{sorted(_FIELDS | set(metrics))} (and optionally {sorted(_OPTIONAL)})"
        raise DataError(f"{where}: fields must be {expected}, not {sorted(entry)}")
    if not isinstance(entry.get("teacher", ""), str):
        raise DataError(f"{where}: teacher must be a string such as 'promptsrc on ViT-L/14'")
    values = {m: entry[m] for m in metrics}
    if not all(isinstance(v, (int, float)) and 0 <= v <= 100 for v in values.values()):
        raise DataError(f"{where}: accuracies must be numbers in [0, 100], not {values}")
    if "@" not in entry["source"] and "Table" not in entry["source"]:
        raise DataError(f"{where}: source must be repo@commit:path or a paper's table, not {entry['source']!r}")
    if protocol == "base-to-new" and abs(harmonic_mean(values["base"], values["new"]) - values["hm"]) > 0.011:
        raise DataError(f"{where}: hm {values['hm']} is not 2bn/(b+n) of base and new")
    fields = {k: entry[k] for k in _FIELDS | _OPTIONAL if k in entry}
    return PaperResult(metrics=values, **fields)


@cache
def paper_results() -> tuple[PaperResult, ...]:
    """Every published number shipped with vlprompt (``vlprompt/data/papers.json``), checked."""
    text = resources.files("vlprompt.data").joinpath("papers.json").read_text()
    return tuple(parse_entry(e) for e in json.loads(text)["entries"])


def paper_result(
    method: str, protocol: str, dataset: str, backbone: str = "ViT-B/16", shots: int | None = None
) -> PaperResult | None:
    """The published number of ``method`` for ``protocol`` on ``dataset`` (None when none is shipped); with
    ``shots``, only a number read at that many shots per class (0: every training image)."""
    found = [
        r
        for r in paper_results()
        if (r.method, r.protocol, r.dataset, r.backbone) == (method, protocol, dataset, backbone)
        and (shots is None or r.shots == shots)
    ]
    return found[0] if found else None
