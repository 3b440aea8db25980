"""Few-shot subsets and base/new class splits: pure functions of (dataset, K, seed)."""

from __future__ import annotations

import json
import logging
import math
import random
from collections import defaultdict
from pathlib import Path

from ..io import atomic_write_text
from ..schema import expect, field, list_of, read_json_file
from .images import DataError, LabeledImages

log = logging.getLogger(__name__)


#: the halves of a base-to-new split, or every class.
CLASS_SPLITS = ("all", "base", "new")


def few_shot_indices(dataset: LabeledImages, shots: int, seed: int, allow_fewer: bool = False) -> list[int]:
    """``shots`` images per class, drawn with ``random.Random(seed)``, in dataset order.

    A class with fewer images is an error, or with ``allow_fewer`` (CoOp's rule for validation)
    contributes all of them, which is logged.
    """
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(dataset.labels):
        by_class[label].append(i)
    rng = random.Random(seed)
    chosen: list[int] = []
    short: list[str] = []
    for label in range(len(dataset.classnames)):
        pool = by_class.get(label, [])
        if len(pool) < shots:
            message = (
                f"class {dataset.classnames[label]!r} has {len(pool)} image(s), fewer than the {shots} shots asked"
            )
            if not allow_fewer:
                raise DataError(message)
            short.append(dataset.classnames[label])
        chosen += rng.sample(pool, min(shots, len(pool)))
    if short:
        log.info(
            "%d class(es) have fewer than %d images and contribute all they have, e.g. %r", len(short), shots, short[0]
        )
    return sorted(chosen)


def _read_index_file(path: Path) -> dict:
    """A persisted few-shot subset ``{shots, seed, paths}``, checked field by field."""
    try:
        saved = read_json_file(path, "few-shot index file")
        where = f"{path}"
        expect(saved, dict, where)
        field(saved, "shots", int, where)
        field(saved, "seed", int, where)
        list_of(field(saved, "paths", list, where, default=[]), str, f"{where}: field 'paths'")
    except DataError as err:
        raise DataError(f"{err}; delete it to draw the subset again") from None
    return saved


def few_shot(
    dataset: LabeledImages, shots: int, seed: int, index_file: str | Path | None = None, allow_fewer: bool = False
) -> LabeledImages:
    """A K-shot subset; with ``index_file`` the chosen images are persisted (and reused) as JSON."""
    if shots <= 0:
        return dataset
    paths = [s.path for s in dataset.samples]
    if index_file is not None and Path(index_file).is_file():
        saved = _read_index_file(Path(index_file))
        if saved.get("shots") != shots or saved.get("seed") != seed:
            raise DataError(
                f"{index_file} holds a subset for shots={saved.get('shots')}, seed={saved.get('seed')}, "
                f"not shots={shots}, seed={seed}: use another run directory or delete the file"
            )
        if saved.get("paths"):
            where = {p: i for i, p in enumerate(paths)}
            missing = [p for p in saved["paths"] if p not in where]
            if missing:
                raise DataError(
                    f"{index_file}: {len(missing)} saved image(s) are not in the dataset, e.g. {missing[0]}"
                )
            return dataset.subset([where[p] for p in saved["paths"]])
    indices = few_shot_indices(dataset, shots, seed, allow_fewer)
    if index_file is not None:
        payload = {"shots": shots, "seed": seed, "paths": [paths[i] for i in indices]}
        atomic_write_text(index_file, json.dumps(payload, indent=1))
    return dataset.subset(indices)


def base_new_labels(num_classes: int) -> tuple[list[int], list[int]]:
    """Labels sorted; the first half (rounded up) is base, the rest new."""
    half = math.ceil(num_classes / 2)
    return list(range(half)), list(range(half, num_classes))


def base_new_split(dataset: LabeledImages, which: str) -> LabeledImages:
    """The ``"base"`` or ``"new"`` classes of a dataset (relabelled from 0), or ``"all"``."""
    if which == "all":
        return dataset
    base, new = base_new_labels(len(dataset.classnames))
    if which not in CLASS_SPLITS:
        raise DataError(f"class_split must be 'all', 'base' or 'new', not {which!r}")
    return dataset.relabel(base if which == "base" else new)
