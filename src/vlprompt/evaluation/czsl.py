"""Compositional zero-shot evaluation: the field's bias sweep, AUC and harmonic mean, streamed.

What is computed is the protocol of the field's reference evaluator (ExplainableML/czsl, also used
by BatsResearch/csp); see ``shared/specs/CZSL.md``. A bias ``b`` is added to every non-seen column
(in float32), columns outside the closed-world mask score ``-1e10`` and an image counts as correct
when its pair is among the top-k. The bias list comes from the unseen images that are correct at
``b = +1000``; the seen/unseen accuracy curve over it gives AUC (trapezoid), best seen, best unseen
and best harmonic mean.

How it is computed differs: the reference copies the whole ``N x P`` score matrix several times and
once per bias. Here scores are read once, in row chunks, and each image keeps a summary of
``O(k)`` numbers from which its correctness at any bias follows exactly:

- its true-pair score;
- the ``k`` largest scores among the seen columns left of its pair's column, and among those
  right of it; the same for the non-seen columns;
- how many masked (``-1e10``) columns lie left and right of its pair's column.

Whether a column outranks the true pair at bias ``b`` (a higher score, or an equal one at a lower
column) is monotone in the column's score within each of those groups, because float32 rounding of
``s + b`` is monotone; so the ``k`` largest of each group decide whether fewer than ``k`` columns
outrank the true pair. Memory is ``O(N k)`` plus one chunk, independent of the number of biases.
For speed each row block is gathered once into the groups, cut into blocks of
:data:`SPLIT_BLOCK` columns, and only the block a row's split falls into is looked at element-wise.

Ties: the reference calls ``torch.topk``, whose choice among equal scores is unspecified. Here a
tie is resolved in favour of the lower column index (a stable sort), which is what ``torch.topk``
does on CPU for ``k = 1`` over 64 or more columns. With continuous scores ties only come from
float32 rounding of ``s + b``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..data.czsl import CZSLSplit, Pair
from ..data.images import DataError

log = logging.getLogger(__name__)

#: The bias that stands for "+infinity" in the reference protocol.
LARGE_BIAS = 1000.0
#: Score given to columns outside the closed-world mask, as the reference does.
MASKED_SCORE = -1e10
#: The bias list keeps every ``n // BIAS_STEPS``-th sorted score gap.
BIAS_STEPS = 20
#: Subtracted from each score gap so that the unseen pair just wins at that bias.
GAP_EPSILON = 1e-4
#: Elements of one internal row block (scores are processed in blocks of about this many numbers).
BLOCK_ELEMENTS = 1 << 26
#: Column block width of the split top-k (see ``_group_split_topk``).
SPLIT_BLOCK = 256

Scores = torch.Tensor | Iterable[torch.Tensor]

#: numpy's trapezoid rule (``trapz`` before numpy 2.0), as the reference's ``np.trapz``.
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CZSLResult:
    """CZSL metrics as fractions in [0, 1], plus the seen/unseen curve they come from.

    Attributes:
        best_seen: highest seen accuracy over the curve (S).
        best_unseen: highest unseen accuracy over the curve (U).
        best_hm: highest harmonic mean of seen and unseen accuracy over the curve (H).
        auc: area under the curve, seen accuracy (y) against unseen accuracy (x).
        attr_acc: attribute accuracy at bias 0 (the attribute of one of the top-k pairs matches).
        obj_acc: object accuracy at bias 0.
        biases: the curve's biases (ascending), ending with :data:`LARGE_BIAS`.
        seen_acc: seen accuracy at each bias.
        unseen_acc: unseen accuracy at each bias.
        n_seen: number of images of seen pairs.
        n_unseen: number of images of unseen pairs.
        topk: the k of top-k accuracy.
    """

    best_seen: float
    best_unseen: float
    best_hm: float
    auc: float
    attr_acc: float
    obj_acc: float
    biases: tuple[float, ...]
    seen_acc: tuple[float, ...]
    unseen_acc: tuple[float, ...]
    n_seen: int
    n_unseen: int
    topk: int = 1

    @property
    def harmonic_means(self) -> tuple[float, ...]:
        """Harmonic mean of seen and unseen accuracy at each point of the curve."""
        return tuple(float(h) for h in _harmonic(np.array(self.seen_acc), np.array(self.unseen_acc)))

    @property
    def best_hm_bias(self) -> float:
        """The bias of the first point with the best harmonic mean."""
        return self.biases[int(np.argmax(self.harmonic_means))]

    def as_percent(self) -> dict[str, float]:
        """The headline numbers x 100: S, U, H, AUC, attribute and object accuracy."""
        keys = ("best_seen", "best_unseen", "best_hm", "auc", "attr_acc", "obj_acc")
        return {k: 100.0 * getattr(self, k) for k in keys}

    def to_dict(self) -> dict[str, object]:
        """Everything as plain JSON-ready values (fractions, the curve as lists)."""
        out = asdict(self)
        for key in ("biases", "seen_acc", "unseen_acc"):
            out[key] = list(out[key])
        return out


@dataclass(frozen=True)
class CalibrationResult:
    """The feasibility threshold chosen on validation.

    Attributes:
        threshold: the chosen threshold; non-seen pairs with feasibility below it are removed.
        index: its position in ``thresholds``.
        thresholds: the candidates (float32 values), ascending.
        val_auc: validation AUC at each candidate.
    """

    threshold: float
    index: int
    thresholds: tuple[float, ...]
    val_auc: tuple[float, ...]

    def removed_mask(self, feasibility: torch.Tensor, seen_mask: torch.Tensor) -> torch.Tensor:
        """Columns to remove at the chosen threshold: non-seen pairs with feasibility below it.

        Pass it as ``removed_mask`` to :func:`evaluate_czsl` or :func:`evaluate_split`.
        """
        return removed_below(feasibility, seen_mask, self.threshold)


def removed_below(feasibility: torch.Tensor, seen_mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Bool mask of non-seen columns whose feasibility is below ``threshold`` (compared in float32)."""
    feasibility = torch.as_tensor(feasibility, dtype=torch.float32)
    seen_mask = torch.as_tensor(seen_mask, dtype=torch.bool)
    return ~seen_mask & (feasibility < torch.tensor(threshold, dtype=torch.float32))


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------


def evaluate_czsl(
    scores: Scores,
    pair_labels: torch.Tensor | Sequence[int],
    seen_mask: torch.Tensor,
    attr_of_pair: torch.Tensor,
    obj_of_pair: torch.Tensor,
    *,
    keep_mask: torch.Tensor | None = None,
    removed_mask: torch.Tensor | None = None,
    topk: int = 1,
) -> CZSLResult:
    """Evaluate compositional zero-shot predictions with the standard bias sweep, in one pass.

    Args:
        scores: ``[N, P]`` scores (image x pair column), as one tensor or an iterable of row chunks
            ``[n_i, P]`` in image order (e.g. a generator, so the full matrix never exists).
            Converted to float32; NaN is an error.
        pair_labels: ``[N]`` column index of each image's pair.
        seen_mask: ``[P]`` bool, True for seen (train) pairs; an image is seen if its pair is.
        attr_of_pair: ``[P]`` attribute index of each column.
        obj_of_pair: ``[P]`` object index of each column.
        keep_mask: ``[P]`` bool closed-world mask (``None``: open world, keep all); other columns
            score ``-1e10``. It must keep every seen pair and every labelled pair.
        removed_mask: ``[P]`` bool, non-seen columns removed as infeasible (score ``-inf``), e.g.
            :meth:`CalibrationResult.removed_mask`.
        topk: an image is correct if its pair is among the ``topk`` best.

    Returns:
        The metrics and the curve.
    """
    setup = _Setup.build(pair_labels, seen_mask, attr_of_pair, obj_of_pair, keep_mask, removed_mask, None, topk)
    summary = _summarize(scores, setup, with_predictions=True)
    curve = _curve(summary.at_level(setup.eval_level, setup), setup.topk)
    assert summary.attr_hit is not None and summary.obj_hit is not None
    return _result(curve, summary.attr_hit, summary.obj_hit, setup)


def evaluate_split(
    scores: Scores,
    split: CZSLSplit,
    phase: Literal["val", "test"],
    world: Literal["closed", "open"] = "closed",
    *,
    pair_labels: torch.Tensor | Sequence[int] | None = None,
    removed_mask: torch.Tensor | None = None,
    topk: int = 1,
) -> CZSLResult:
    """:func:`evaluate_czsl` with columns, masks and labels taken from a split.

    Args:
        scores: scores over ``split.columns(world)``, rows in the order of ``split.samples[phase]``
            (or of ``pair_labels`` when given, e.g. ``CZSLDataset.pair_labels``).
        split: the loaded split.
        phase: ``"val"`` or ``"test"``.
        world: ``"closed"`` (mask to train + phase pairs) or ``"open"`` (all pairs).
        pair_labels: column index of each image's pair (default: all samples of the phase).
        removed_mask: non-seen columns removed as infeasible (open world calibration).
        topk: top-k accuracy.
    """
    if phase not in ("val", "test"):
        raise ValueError(f"phase must be 'val' or 'test', not {phase!r}")
    columns = split.columns(world)
    labels = split.labels(phase, columns) if pair_labels is None else pair_labels
    attrs, objs = split.pair_parts(columns)
    keep = split.closed_mask(phase, columns) if world == "closed" else None
    return evaluate_czsl(
        scores,
        labels,
        split.seen_mask(columns),
        attrs,
        objs,
        keep_mask=keep,
        removed_mask=removed_mask,
        topk=topk,
    )


def calibrate_feasibility(
    val_scores: Scores,
    pair_labels: torch.Tensor | Sequence[int],
    seen_mask: torch.Tensor,
    feasibility: torch.Tensor,
    *,
    keep_mask: torch.Tensor | None = None,
    topk: int = 1,
    n_thresholds: int = 50,
) -> CalibrationResult:
    """Choose the feasibility threshold with the best validation AUC, in one pass over the scores.

    Candidates are ``n_thresholds`` values evenly spaced (float64 ``numpy.linspace``, then float32,
    as the reference's comparison does) between the smallest and largest feasibility of non-seen
    columns. At each, non-seen columns with lower feasibility are removed and the validation AUC
    computed; the first candidate with the strictly largest AUC is chosen (the first one, which
    removes nothing, when every AUC is 0).

    Difference from the reference (BatsResearch/csp): it removes pairs by multiplying their scores
    by 0, which only removes them when scores are positive, and, since seen pairs have feasibility 0,
    doubles the seen scores at thresholds <= 0. Here removed pairs score ``-inf`` and seen pairs are
    never touched, so results differ where scores can be negative or a threshold is <= 0.

    The non-seen columns are grouped by the last candidate that keeps them; each image keeps the
    top-k of every group (left and right of its pair), and suffix maxima give the top-k of the
    kept columns at every threshold, so every candidate's AUC is exactly what
    :func:`evaluate_czsl` with the matching ``removed_mask`` returns.

    Args:
        val_scores: validation scores ``[N, P]``, one tensor or row chunks.
        pair_labels: ``[N]`` column index of each image's pair.
        seen_mask: ``[P]`` bool, seen (train) pairs.
        feasibility: ``[P]`` feasibility of each column (see :func:`feasibility_scores`).
        keep_mask: closed-world mask (``None`` for the open world, the usual case).
        topk: top-k accuracy.
        n_thresholds: number of candidates.
    """
    seen = _bool_vector(seen_mask, "seen_mask")
    feas = torch.as_tensor(feasibility).detach().to(torch.float32)
    if feas.shape != seen.shape:
        raise ValueError(f"feasibility must have shape {tuple(seen.shape)}, got {tuple(feas.shape)}")
    if n_thresholds < 1:
        raise ValueError(f"n_thresholds must be >= 1, got {n_thresholds}")
    keep = torch.ones_like(seen) if keep_mask is None else _bool_vector(keep_mask, "keep_mask")
    candidates = ~seen & keep
    if not candidates.any():
        raise ValueError("there are no non-seen columns to calibrate")
    cand_feas = feas[candidates]
    if torch.isnan(cand_feas).any():
        raise ValueError("feasibility contains NaN")
    lo, hi = float(cand_feas.min()), float(cand_feas.max())
    thresholds = torch.from_numpy(np.linspace(lo, hi, n_thresholds)).to(torch.float32)
    # Level of a column: the last candidate index that keeps it (feasibility >= threshold).
    levels = torch.searchsorted(thresholds, feas, right=True) - 1
    setup = _Setup.build(pair_labels, seen, None, None, keep_mask, None, (levels, n_thresholds), topk)
    summary = _summarize(val_scores, setup, with_predictions=False)
    aucs = [_curve(view, setup.topk).auc for view in summary.levels_descending(setup)][::-1]
    best_index, best_auc = 0, 0.0
    for i, auc in enumerate(aucs):
        if auc > best_auc:
            best_index, best_auc = i, auc
    chosen = float(thresholds[best_index])
    log.info(
        "feasibility threshold %.6g (candidate %d/%d), validation AUC %.4f", chosen, best_index, len(aucs), best_auc
    )
    return CalibrationResult(
        threshold=chosen,
        index=best_index,
        thresholds=tuple(float(t) for t in thresholds),
        val_auc=tuple(aucs),
    )


# ----------------------------------------------------------------------------------------------
# Feasibility from word vectors
# ----------------------------------------------------------------------------------------------


def feasibility_scores(
    split: CZSLSplit,
    attr_vectors: torch.Tensor,
    obj_vectors: torch.Tensor,
    columns: Sequence[Pair] | None = None,
) -> torch.Tensor:
    """Feasibility of every column from word vectors of the attributes and objects.

    For a non-seen pair (a, o): ``s_obj`` is the largest cosine similarity between o and another
    object that some train pair gives attribute a, ``s_attr`` the largest between a and another
    attribute that some train pair gives object o (each -1 if there is none, and never below -1);
    feasibility is ``(s_obj + s_attr) / 2``. Seen pairs get 0.

    Args:
        split: the split (its train pairs define what occurs together).
        attr_vectors: ``[len(split.attrs), D]`` one vector per attribute (e.g. :func:`load_glove`).
        obj_vectors: ``[len(split.objs), D']`` one vector per object.
        columns: the pair columns (default: the open-world pairs, attribute-major).

    Returns:
        ``[len(columns)]`` float32 feasibility.
    """
    n_attr, n_obj = len(split.attrs), len(split.objs)
    attr_vectors = torch.as_tensor(attr_vectors, dtype=torch.float32)
    obj_vectors = torch.as_tensor(obj_vectors, dtype=torch.float32)
    if attr_vectors.ndim != 2 or attr_vectors.shape[0] != n_attr:
        raise ValueError(f"attr_vectors must be [{n_attr}, D], got {tuple(attr_vectors.shape)}")
    if obj_vectors.ndim != 2 or obj_vectors.shape[0] != n_obj:
        raise ValueError(f"obj_vectors must be [{n_obj}, D], got {tuple(obj_vectors.shape)}")
    attr_sim = _cosine(attr_vectors)
    obj_sim = _cosine(obj_vectors)
    together = torch.zeros(n_attr, n_obj, dtype=torch.bool)  # together[a, o]: (a, o) is a train pair
    for a, o in split.train_pairs:
        together[split.attr2idx[a], split.obj2idx[o]] = True
    # s_obj[a, o] = max over o' with together[a, o'] of obj_sim[o, o'].
    s_obj = _masked_rowmax(together, obj_sim)
    # s_attr[a, o] = max over a' with together[a', o] of attr_sim[a, a'].
    s_attr = _masked_rowmax(together.T.contiguous(), attr_sim).T
    feas = ((s_obj.double() + s_attr.double()) / 2).float()
    feas[together] = 0.0
    cols = split.open_world_pairs() if columns is None else columns
    attrs, objs = split.pair_parts(cols)
    return feas[attrs, objs].contiguous()


def _cosine(vectors: torch.Tensor) -> torch.Tensor:
    unit = torch.nn.functional.normalize(vectors, dim=1)
    return unit @ unit.T


def _masked_rowmax(member: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    """``out[r, i] = max(-1, max_{j: member[r, j]} sim[i, j])`` for a ``[R, M]`` member matrix."""
    rows, m = member.shape
    out = torch.empty(rows, m, dtype=torch.float32)
    block = max(1, (1 << 22) // max(1, m * m))
    neg = torch.tensor(float("-inf"))
    for start in range(0, rows, block):
        mem = member[start : start + block]  # [b, M] over j
        vals = torch.where(mem[:, None, :], sim[None, :, :], neg)  # [b, M(i), M(j)]
        out[start : start + block] = vals.amax(dim=2).clamp_min(-1.0)
    return out


@dataclass(frozen=True)
class WordVectors:
    """Vectors read from a word-vector file.

    Attributes:
        names: the requested names, in order.
        vectors: ``[len(names), D]`` float32.
        missing: words (after lower-casing, aliases and splitting at ``_``) the file lacks.
    """

    names: tuple[str, ...]
    vectors: torch.Tensor
    missing: tuple[str, ...]


#: Substitutions BatsResearch/csp's feasibility script applies before a GloVe lookup (lower-case
#: names of UT-Zappos and a few C-GQA objects). Pass ``aliases=REFERENCE_GLOVE_ALIASES`` to
#: :func:`load_glove` to reproduce its feasibility scores.
REFERENCE_GLOVE_ALIASES: Mapping[str, str] = {
    "faux.fur": "fake_fur",
    "faux.leather": "fake_leather",
    "full.grain.leather": "thick_leather",
    "hair.calf": "hair_leather",
    "patent.leather": "shiny_leather",
    "nubuck": "grainy_leather",
    "boots.ankle": "ankle_boots",
    "boots.knee.high": "knee_high_boots",
    "boots.mid-calf": "midcalf_boots",
    "shoes.boat.shoes": "boat_shoes",
    "shoes.clogs.and.mules": "clogs_shoes",
    "shoes.flats": "flats_shoes",
    "shoes.heels": "heels",
    "shoes.loafers": "loafers",
    "shoes.oxfords": "oxford_shoes",
    "shoes.sneakers.and.athletic.shoes": "sneakers",
    "trash_can": "trashcan",
    "dry-erase_board": "dry_erase_board",
    "black_and_white": "black_white",
    "eiffel_tower": "tower",
}


def load_glove(
    path: str | Path,
    names: Sequence[str],
    *,
    fallback: Literal["error", "zeros", "skip"] = "error",
    aliases: Mapping[str, str] | None = None,
) -> WordVectors:
    """Vectors for ``names`` from a GloVe-style text file (``word v1 v2 ...`` per line).

    A name is lower-cased, replaced through ``aliases`` (keys lower-case) and, if it contains
    ``_``, split into parts whose vectors are averaged. Only the needed lines are parsed; when a
    word occurs twice the later line wins.

    Args:
        path: the text file.
        names: attribute or object names.
        fallback: what a missing word does: ``"error"`` raises a :class:`DataError` naming it;
            ``"zeros"`` uses a zero vector for it in the average; ``"skip"`` leaves it out of the
            average (a name with no word found gets zeros). Missing words are counted, logged and
            listed in ``WordVectors.missing``.
        aliases: name substitutions applied after lower-casing.
    """
    if fallback not in ("error", "zeros", "skip"):
        raise ValueError(f"fallback must be 'error', 'zeros' or 'skip', not {fallback!r}")
    path = Path(path)
    aliases = {k.lower(): v for k, v in (aliases or {}).items()}
    parts_of = []
    for name in names:
        key = name.lower()
        key = aliases.get(key, key)
        parts_of.append(key.split("_") if "_" in key else [key])
    wanted = {p for parts in parts_of for p in parts}
    found: dict[str, torch.Tensor] = {}
    dim: int | None = None
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                fields = line.rstrip("\n").rstrip(" ").split(" ")
                if dim is None:
                    dim = len(fields) - 1
                    if dim < 1:
                        raise DataError(f"{path}:{lineno}: expected a word followed by numbers")
                if fields[0] not in wanted:
                    continue
                if len(fields) - 1 != dim:
                    raise DataError(f"{path}:{lineno}: {len(fields) - 1} numbers for {fields[0]!r}, expected {dim}")
                try:
                    found[fields[0]] = torch.tensor([float(v) for v in fields[1:]], dtype=torch.float32)
                except ValueError:
                    raise DataError(f"{path}:{lineno}: cannot parse the vector of {fields[0]!r}") from None
    except FileNotFoundError:
        raise DataError(f"word-vector file not found: {path}") from None
    if dim is None:
        raise DataError(f"{path}: the file is empty")
    missing = sorted(wanted - set(found))
    if missing:
        example = ", ".join(repr(w) for w in missing[:5])
        if fallback == "error":
            raise DataError(
                f"{path}: {len(missing)} word(s) not found: {example}; pass fallback='zeros' or 'skip' "
                "or aliases to proceed"
            )
        log.warning("%s: %d word(s) not found (%s), using fallback=%r", path, len(missing), example, fallback)
    zero = torch.zeros(dim)
    rows = []
    for parts in parts_of:
        vecs = [found.get(p, zero) for p in parts if p in found or fallback != "skip"]
        rows.append(torch.stack(vecs).mean(0) if vecs else zero)
    return WordVectors(names=tuple(names), vectors=torch.stack(rows), missing=tuple(missing))


# ----------------------------------------------------------------------------------------------
# The streaming engine
# ----------------------------------------------------------------------------------------------


@dataclass
class _Setup:
    """Validated inputs and the column grouping the summaries are taken over."""

    labels: torch.Tensor  # [N] long
    image_seen: torch.Tensor  # [N] bool
    n_cols: int
    topk: int
    seen_cols: torch.Tensor  # ascending
    masked_cols: torch.Tensor  # ascending
    bins: list[torch.Tensor]  # non-seen kept columns by level, each ascending
    first_bin: int  # bins below it are removed in every evaluated view (no summary needed)
    eval_level: int  # the level evaluate_czsl reports
    col_level: torch.Tensor  # [P] level of each non-seen kept column (-1 elsewhere)
    attr_of_pair: torch.Tensor | None
    obj_of_pair: torch.Tensor | None

    @classmethod
    def build(
        cls,
        pair_labels: torch.Tensor | Sequence[int],
        seen_mask: torch.Tensor,
        attr_of_pair: torch.Tensor | None,
        obj_of_pair: torch.Tensor | None,
        keep_mask: torch.Tensor | None,
        removed_mask: torch.Tensor | None,
        levels: tuple[torch.Tensor, int] | None,
        topk: int,
    ) -> _Setup:
        seen = _bool_vector(seen_mask, "seen_mask")
        n_cols = seen.numel()
        keep = torch.ones_like(seen) if keep_mask is None else _bool_vector(keep_mask, "keep_mask", n_cols)
        labels = torch.as_tensor(pair_labels).detach().to(torch.long).reshape(-1)
        if labels.numel() == 0:
            raise ValueError("pair_labels is empty")
        if labels.min() < 0 or labels.max() >= n_cols:
            raise ValueError(f"pair_labels must be column indices in [0, {n_cols}), got {labels.min()}..{labels.max()}")
        if not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk must be a positive int, got {topk!r}")
        if int(seen.sum()) < topk:
            raise ValueError(f"need at least topk={topk} seen columns, got {int(seen.sum())}")
        if (seen & ~keep).any():
            raise ValueError("keep_mask must keep every seen column")
        if not keep[labels].all():
            bad = int(labels[~keep[labels]][0])
            raise ValueError(f"keep_mask drops column {bad}, which is the pair of some image")
        image_seen = seen[labels]
        if image_seen.all() or not image_seen.any():
            kind = "unseen" if image_seen.all() else "seen"
            raise ValueError(f"no images of {kind} pairs: both seen and unseen images are needed")
        if attr_of_pair is not None and obj_of_pair is not None:
            attr_of_pair = _long_vector(attr_of_pair, "attr_of_pair", n_cols)
            obj_of_pair = _long_vector(obj_of_pair, "obj_of_pair", n_cols)
            code = attr_of_pair * (int(obj_of_pair.max()) + 1) + obj_of_pair
            if torch.unique(code).numel() != n_cols:
                raise ValueError("two columns have the same (attribute, object) pair")
        cols = torch.arange(n_cols)
        unseen_kept = ~seen & keep
        col_level = torch.full((n_cols,), -1, dtype=torch.long)
        if levels is not None:
            level_of, n_levels = levels
            col_level[unseen_kept] = level_of[unseen_kept]
            first_bin, eval_level = 0, 0
        elif removed_mask is not None:
            removed = _bool_vector(removed_mask, "removed_mask", n_cols)
            if (removed & seen).any():
                raise ValueError("removed_mask must not remove seen columns")
            col_level[unseen_kept] = (~removed[unseen_kept]).long()
            n_levels, first_bin, eval_level = 2, 1, 1
        else:
            col_level[unseen_kept] = 0
            n_levels, first_bin, eval_level = 1, 0, 0
        members = cols[unseen_kept]
        member_level = col_level[members]
        by_level = members[torch.argsort(member_level, stable=True)]  # ascending columns within a level
        bins = list(torch.split(by_level, torch.bincount(member_level, minlength=n_levels).tolist()))
        return cls(
            labels=labels,
            image_seen=image_seen,
            n_cols=n_cols,
            topk=topk,
            seen_cols=cols[seen],
            masked_cols=cols[~keep],
            bins=bins,
            first_bin=first_bin,
            eval_level=eval_level,
            col_level=col_level,
            attr_of_pair=attr_of_pair,
            obj_of_pair=obj_of_pair,
        )


def _bool_vector(x: torch.Tensor, name: str, size: int | None = None) -> torch.Tensor:
    x = torch.as_tensor(x).detach().cpu()
    if x.dtype != torch.bool or x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D bool tensor, got {x.dtype} of shape {tuple(x.shape)}")
    if size is not None and x.numel() != size:
        raise ValueError(f"{name} must have {size} entries, got {x.numel()}")
    return x


def _long_vector(x: torch.Tensor, name: str, size: int) -> torch.Tensor:
    x = torch.as_tensor(x).detach().cpu()
    if x.ndim != 1 or x.numel() != size or x.is_floating_point():
        raise ValueError(f"{name} must be a 1-D integer tensor with {size} entries, got {tuple(x.shape)}")
    return x.to(torch.long)


@dataclass
class _View:
    """Per-image summary for one set of kept columns."""

    true: torch.Tensor  # [N] true-pair score (-inf when removed)
    image_seen: torch.Tensor  # [N] bool
    seen_side: torch.Tensor  # [N, 2, k] largest seen scores left/right of the true column, NaN padded
    unseen_side: torch.Tensor  # [N, 2, k] same for non-seen columns (-inf for removed ones)
    masked_count: torch.Tensor  # [N, 2] masked columns left/right (capped at k)


@dataclass
class _Summary:
    true: torch.Tensor  # [N]
    seen_side: torch.Tensor  # [N, 2, k]
    bin_side: torch.Tensor  # [N, L - first_bin, 2, k], -inf padded
    unseen_count: torch.Tensor  # [N, 2] non-seen kept columns left/right, all levels
    masked_count: torch.Tensor  # [N, 2]
    attr_hit: torch.Tensor | None  # [N] bool, at bias 0
    obj_hit: torch.Tensor | None

    def _view(self, level: int, unseen_top: torch.Tensor, setup: _Setup) -> _View:
        labels = setup.labels
        lvl = setup.col_level[labels]
        true = torch.where((lvl >= 0) & (lvl < level), torch.tensor(float("-inf")), self.true)
        k = setup.topk
        slot = torch.arange(k)
        unseen = unseen_top.masked_fill(slot[None, None, :] >= self.unseen_count[:, :, None], float("nan"))
        return _View(true, setup.image_seen, self.seen_side, unseen, self.masked_count)

    def at_level(self, level: int, setup: _Setup) -> _View:
        """The summary with non-seen columns below ``level`` removed."""
        parts = self.bin_side[:, level - setup.first_bin :]
        n, _, _, k = parts.shape
        top = parts.permute(0, 2, 1, 3).reshape(n, 2, -1).topk(k, dim=2).values
        return self._view(level, top, setup)

    def levels_descending(self, setup: _Setup) -> Iterator[_View]:
        """Views at the highest level first, down to level ``first_bin`` (suffix maxima)."""
        k = setup.topk
        top = self.bin_side[:, -1]
        n_levels = self.bin_side.shape[1]
        for i in range(n_levels - 1, -1, -1):
            if i < n_levels - 1:
                top = torch.cat([top, self.bin_side[:, i]], dim=2).topk(k, dim=2).values
            yield self._view(i + setup.first_bin, top, setup)


def _iter_chunks(scores: Scores, n_cols: int) -> Iterator[torch.Tensor]:
    """Check and convert the chunks, holding no reference while the producer makes the next one."""
    source = iter([scores] if isinstance(scores, torch.Tensor) else scores)
    i = 0
    while True:
        try:
            chunk = next(source)
        except StopIteration:
            return
        if not isinstance(chunk, torch.Tensor):
            raise TypeError(f"score chunk {i} is a {type(chunk).__name__}, expected a tensor")
        if chunk.ndim != 2 or chunk.shape[1] != n_cols:
            raise ValueError(f"score chunk {i} must have shape [n, {n_cols}], got {tuple(chunk.shape)}")
        out = chunk.detach().to(device="cpu", dtype=torch.float32)
        del chunk
        yield out
        del out
        i += 1


@dataclass
class _Layout:
    """Column groups gathered side by side, each padded to whole blocks of ``width`` columns."""

    order: torch.Tensor  # [n_blocks * width] source column of each gathered position
    pads: torch.Tensor  # gathered positions that are padding (set to -inf)
    width: int
    block_group: torch.Tensor  # [n_blocks] group of each block
    block_local: torch.Tensor  # [n_blocks] index of the block within its group
    group_first: torch.Tensor  # [n_groups] first block of each group
    group_blocks: torch.Tensor  # [n_groups] number of blocks of each group
    group_size: torch.Tensor  # [n_groups] number of columns of each group

    source: torch.Tensor  # like ``order``, with padding mapped to the largest long

    def column_of(self, position: torch.Tensor) -> torch.Tensor:
        """Source column of gathered positions; padding maps to the largest long."""
        return self.source[position]

    @classmethod
    def build(cls, groups: Sequence[torch.Tensor], width: int) -> _Layout:
        sizes = torch.tensor([g.numel() for g in groups], dtype=torch.long)
        blocks = torch.div(sizes + width - 1, width, rounding_mode="floor")
        order, pads, block_group, block_local = [], [], [], []
        offset = 0
        for i, cols in enumerate(groups):
            nb = int(blocks[i])
            padded = torch.zeros(nb * width, dtype=torch.long)
            padded[: cols.numel()] = cols
            order.append(padded)
            pads.append(torch.arange(offset + cols.numel(), offset + nb * width))
            block_group.append(torch.full((nb,), i, dtype=torch.long))
            block_local.append(torch.arange(nb))
            offset += nb * width
        order_all, pads_all = torch.cat(order), torch.cat(pads)
        source = order_all.clone()
        source[pads_all] = torch.iinfo(torch.long).max
        return cls(
            order=order_all,
            pads=pads_all,
            source=source,
            width=width,
            block_group=torch.cat(block_group),
            block_local=torch.cat(block_local),
            group_first=torch.cumsum(blocks, 0) - blocks,
            group_blocks=blocks,
            group_size=sizes,
        )


def _summarize(scores: Scores, setup: _Setup, with_predictions: bool) -> _Summary:
    """One pass over the score chunks, keeping the per-image summaries.

    Each block of rows is gathered once into the column groups (seen columns, then the non-seen
    columns of each summarised level), and the top-k left and right of every row's true column is
    taken in every group at once. With ``with_predictions`` the top-k at bias 0 is found as well.
    """
    n, k, n_cols = setup.labels.numel(), setup.topk, setup.n_cols
    bins = setup.bins[setup.first_bin :]
    groups = [setup.seen_cols, *bins]
    width = max(1, min(SPLIT_BLOCK, math.isqrt(n_cols)))
    layout = _Layout.build(groups, width)
    counts = torch.stack([_side_counts(cols, setup.labels) for cols in groups], dim=1)  # [N, G, 2]
    left_all = counts[:, :, 0]
    right_all = layout.group_size[None, :] - counts[:, :, 1]
    true = torch.empty(n)
    sides = torch.empty(n, len(groups), 2, k)
    attr_hit = torch.empty(n, dtype=torch.bool) if with_predictions else None
    obj_hit = torch.empty(n, dtype=torch.bool) if with_predictions else None
    removed = torch.cat([*setup.bins[: setup.first_bin], torch.empty(0, dtype=torch.long)])
    fill = with_predictions and k > 1 and (setup.masked_cols.numel() > 0 or removed.numel() > 0)
    # Columns outside the gathered groups that can still be the top-1 at bias 0: (score, first column).
    extra = []
    if setup.masked_cols.numel():
        extra.append((MASKED_SCORE, int(setup.masked_cols[0])))
    if removed.numel():
        extra.append((float("-inf"), int(removed.min())))
    rows = max(1, BLOCK_ELEMENTS // n_cols)
    gathered_buf = torch.empty(min(rows, n), layout.order.numel())
    unbiased_buf = torch.empty(min(rows, n), n_cols) if fill else None

    def summarize_block(x: torch.Tensor, sl: slice) -> None:
        m, t = x.shape[0], setup.labels[sl]
        true[sl] = x.gather(1, t[:, None]).squeeze(1)
        if torch.isnan(true[sl]).any():
            raise ValueError("scores contain NaN")
        gathered = torch.index_select(x, 1, layout.order, out=gathered_buf[:m])
        gathered.index_fill_(1, layout.pads, float("-inf"))
        sides[sl], block_top = _group_split_topk(gathered, layout, left_all[sl], right_all[sl], k)
        if attr_hit is not None and obj_hit is not None:
            assert setup.attr_of_pair is not None and setup.obj_of_pair is not None
            if k == 1:
                pred = _first_best(gathered, block_top[:, :, 0], layout, extra)[:, None]
            else:
                unbiased = x
                if unbiased_buf is not None:
                    unbiased = unbiased_buf[:m].copy_(x)
                    unbiased.index_fill_(1, setup.masked_cols, MASKED_SCORE)
                    unbiased.index_fill_(1, removed, float("-inf"))
                pred = _top_unbiased(unbiased, k)
            attr_hit[sl] = (setup.attr_of_pair[pred] == setup.attr_of_pair[t][:, None]).any(1)
            obj_hit[sl] = (setup.obj_of_pair[pred] == setup.obj_of_pair[t][:, None]).any(1)

    row = 0
    for chunk in _iter_chunks(scores, n_cols):
        size = chunk.shape[0]
        if row + size > n:
            raise ValueError(f"the score chunks hold more rows than the {n} labels")
        step = -(-size // -(-size // rows))  # equal blocks of at most `rows`
        for start in range(0, size, step):
            stop = min(start + step, size)
            summarize_block(chunk[start:stop], slice(row + start, row + stop))
        row += size
        del chunk  # let the producer free it before making the next one
    if row != n:
        raise ValueError(f"the score chunks hold {row} rows, but there are {n} labels")
    seen_side = sides[:, 0].masked_fill(torch.arange(k)[None, None, :] >= counts[:, 0, :, None], float("nan"))
    unseen_count = torch.zeros(n, 2, dtype=torch.long)
    for cols in setup.bins:
        unseen_count += _side_counts(cols, setup.labels)
    masked_count = _side_counts(setup.masked_cols, setup.labels).clamp_max(k)
    return _Summary(true, seen_side, sides[:, 1:], unseen_count, masked_count, attr_hit, obj_hit)


def _side_counts(cols: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N, 2] number of ``cols`` (ascending) left and right of each label column, the label excluded."""
    g = cols.numel()
    if g == 0:
        return torch.zeros(labels.numel(), 2, dtype=torch.long)
    left = torch.searchsorted(cols, labels)
    inside = (cols[left.clamp_max(g - 1)] == labels).long()
    return torch.stack([left, g - left - inside], dim=1)


def _group_split_topk(
    gathered: torch.Tensor, layout: _Layout, left: torch.Tensor, right: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest scores of every group left of ``left`` and from ``right`` on (group positions).

    Args:
        gathered: ``[n, n_blocks * width]`` scores in layout order, padding at -inf.
        layout: the groups.
        left: ``[n, G]`` per row and group, the positions ``< left`` form the left side.
        right: ``[n, G]`` the positions ``>= right`` form the right side.
        k: how many to keep.

    Returns:
        ``[n, G, 2, k]`` values, largest first, -inf where a side has fewer than k; and the
        ``[n, n_blocks, min(k, width)]`` top values of every block.
    """
    n = gathered.shape[0]
    width, n_groups = layout.width, layout.group_size.numel()
    neg = float("-inf")
    blocks = gathered.view(n, -1, width)
    kb = min(k, width)
    top = blocks.amax(2, keepdim=True) if kb == 1 else blocks.topk(kb, dim=2).values  # [n, NB, kb]
    local, group = layout.block_local, layout.block_group
    segment = group.repeat_interleave(kb)
    offsets = torch.arange(width)
    first, count = layout.group_first[None, :], layout.group_blocks[None, :]
    out = torch.empty(n, n_groups, 2, k)
    for side, limit in enumerate((left, right)):
        edge = limit.index_select(1, group)  # [n, NB]
        partly_out = (local + 1) * width > edge if side == 0 else local * width < edge  # block not wholly on the side
        from_blocks = _segment_topk(top.masked_fill(partly_out[:, :, None], neg).flatten(1), segment, n_groups, k)
        # The one block per row and group that the split cuts: the block holding position `left`
        # (left side) or `right - 1` (right side), if it exists.
        j = torch.div(limit if side == 0 else limit - 1, width, rounding_mode="floor")
        missing = (j < 0) | (j >= count)
        block = first + j.clamp(min=0).minimum((count - 1).clamp(min=0))
        cut = gathered.gather(1, (block[:, :, None] * width + offsets).flatten(1)).view(n, n_groups, width)
        local_pos = j[:, :, None] * width + offsets
        outside = local_pos >= limit[:, :, None] if side == 0 else local_pos < limit[:, :, None]
        cut = cut.masked_fill_(outside | missing[:, :, None], neg)
        cut_top = cut.amax(2, keepdim=True) if kb == 1 else cut.topk(kb, dim=2).values
        both = torch.cat([from_blocks, cut_top], dim=2)
        out[:, :, side] = both.amax(2, keepdim=True) if k == 1 else both.topk(k, dim=2).values
    # Every score but the true one lies on one side of its group; amax, topk and scatter_reduce
    # all carry a NaN through, so checking the result finds any NaN in the scores.
    if torch.isnan(out[:, :, :, 0]).any():
        raise ValueError("scores contain NaN")
    return out, top


def _first_best(
    gathered: torch.Tensor, block_max: torch.Tensor, layout: _Layout, extra: Sequence[tuple[float, int]]
) -> torch.Tensor:
    """[n] the top-1 column at bias 0, ties to the lower column index.

    The gathered groups hold every column that keeps its score; ``extra`` adds, per kind of
    column outside them (masked at -1e10, removed at -inf), its score and its first column.
    """
    n = gathered.shape[0]
    width, n_groups, n_blocks = layout.width, layout.group_size.numel(), block_max.shape[1]
    best = block_max.amax(1)
    overall = best
    for value, _ in extra:
        overall = torch.clamp_min(overall, value)
    # First block of every group that holds the best score, then the first position in it.
    block_id = torch.arange(n_blocks).expand(n, -1)
    hit_block = torch.where(block_max == best[:, None], block_id, n_blocks)
    first_hit = torch.full((n, n_groups), n_blocks).scatter_reduce(
        1, layout.block_group.expand(n, -1), hit_block, "amin", include_self=True
    )
    block = first_hit.clamp_max(n_blocks - 1)
    pos = block[:, :, None] * width + torch.arange(width)
    in_block = (gathered.gather(1, pos.flatten(1)).view(n, n_groups, width) == best[:, None, None]).to(torch.uint8)
    column = layout.column_of(block * width + in_block.argmax(2))
    no_column = torch.iinfo(torch.long).max
    column = torch.where((first_hit < n_blocks) & (best == overall)[:, None], column, no_column)
    winner = column.amin(1)
    for value, col in extra:
        winner = torch.where(overall == value, winner.clamp_max(col), winner)
    return winner


def _segment_topk(values: torch.Tensor, segment: torch.Tensor, n_segments: int, k: int) -> torch.Tensor:
    """Per row, the k largest values of each segment (a multiset: repeats count); ``[n, S, k]``.

    Found in k rounds: each takes the largest remaining value per segment and how often it occurs.
    """
    n = values.shape[0]
    neg = float("-inf")
    index = segment.expand(n, -1)
    out = torch.full((n, n_segments, k), neg)
    filled = torch.zeros(n, n_segments, dtype=torch.long)
    slot = torch.arange(k)
    for r in range(k):
        best = torch.full((n, n_segments), neg).scatter_reduce(1, index, values, "amax", include_self=True)
        if k == 1:
            out[:, :, 0] = best
            break
        hit = (values == best.gather(1, index)) & (values > neg)
        times = torch.zeros(n, n_segments, dtype=torch.long).scatter_add_(1, index, hit.long())
        place = (slot >= filled[:, :, None]) & (slot < (filled + times)[:, :, None])
        out = torch.where(place, best[:, :, None], out)
        filled += times
        if r + 1 < k:
            values = values.masked_fill(hit, neg)
    return out


def _top_unbiased(v: torch.Tensor, k: int) -> torch.Tensor:
    """[n, k] column indices of the k best scores per row, ties to the lower index."""
    kk = min(k + 1, v.shape[1])
    values, index = v.topk(kk, dim=1)
    if torch.isnan(values).any():
        raise ValueError("scores contain NaN")
    pred = index[:, :k].clone()
    if kk > k:
        tied = (values[:, k] == values[:, k - 1]).nonzero().squeeze(1)
        if tied.numel():
            pred[tied] = torch.sort(v[tied], dim=1, descending=True, stable=True).indices[:, :k]
    return pred


# ----------------------------------------------------------------------------------------------
# Curve and metrics from the summaries
# ----------------------------------------------------------------------------------------------


@dataclass
class _Curve:
    biases: list[float]
    seen: list[float]
    unseen: list[float]
    auc: float


def _correct_at(view: _View, bias: torch.Tensor, k: int) -> torch.Tensor:
    """[N] bool: the image's pair is in the top-k after adding ``bias`` to non-seen columns."""
    target = torch.where(view.image_seen, view.true, view.true + bias)
    tgt = target[:, None]
    # A column outranks the true one if its score is higher, or equal with a lower index (left side).
    ahead = (view.seen_side[:, 0] >= tgt).sum(1) + (view.seen_side[:, 1] > tgt).sum(1)
    shifted = view.unseen_side + bias
    ahead += (shifted[:, 0] >= tgt).sum(1) + (shifted[:, 1] > tgt).sum(1)
    masked = torch.tensor(MASKED_SCORE, dtype=torch.float32)
    ahead += torch.where(masked >= target, view.masked_count[:, 0], 0)
    ahead += torch.where(masked > target, view.masked_count[:, 1], 0)
    return ahead < k


def _curve(view: _View, k: int) -> _Curve:
    seen_img = view.image_seen
    large = torch.tensor(LARGE_BIAS, dtype=torch.float32)
    correct_large = _correct_at(view, large, k)
    # k-th largest seen score of every unseen image (all seen columns lie left or right of it).
    both = view.seen_side.reshape(view.seen_side.shape[0], -1)
    kth_seen = torch.nan_to_num(both, nan=float("-inf")).topk(k, dim=1).values[:, k - 1]
    unseen = ~seen_img
    gaps = kth_seen[unseen] - view.true[unseen]
    gaps = gaps[correct_large[unseen]] - GAP_EPSILON
    gaps = torch.sort(gaps).values
    step = max(gaps.numel() // BIAS_STEPS, 1)
    bias_list = gaps[::step]
    seen_acc, unseen_acc = [], []
    for bias in bias_list:
        correct = _correct_at(view, bias, k)
        seen_acc.append(float(correct[seen_img].float().mean()))
        unseen_acc.append(float(correct[unseen].float().mean()))
    seen_acc.append(float(correct_large[seen_img].float().mean()))
    unseen_acc.append(float(correct_large[unseen].float().mean()))
    auc = float(_trapezoid(np.array(seen_acc), np.array(unseen_acc)))
    biases = [float(b) for b in bias_list] + [LARGE_BIAS]
    return _Curve(biases, seen_acc, unseen_acc, auc)


def _harmonic(seen: np.ndarray, unseen: np.ndarray) -> np.ndarray:
    """Harmonic mean per point, 0 where either is 0 (computed as 1 / mean(1/s, 1/u), like scipy)."""
    out = np.zeros(np.broadcast(seen, unseen).shape)
    ok = (seen > 0) & (unseen > 0)
    out[ok] = 1.0 / ((1.0 / seen[ok] + 1.0 / unseen[ok]) / 2.0)
    return out


def _result(curve: _Curve, attr_hit: torch.Tensor, obj_hit: torch.Tensor, setup: _Setup) -> CZSLResult:
    seen, unseen = np.array(curve.seen), np.array(curve.unseen)
    hm = _harmonic(seen, unseen)
    n_seen = int(setup.image_seen.sum())
    return CZSLResult(
        best_seen=float(seen.max()),
        best_unseen=float(unseen.max()),
        best_hm=float(hm.max()),
        auc=curve.auc,
        attr_acc=float(attr_hit.float().mean()),
        obj_acc=float(obj_hit.float().mean()),
        biases=tuple(curve.biases),
        seen_acc=tuple(curve.seen),
        unseen_acc=tuple(curve.unseen),
        n_seen=n_seen,
        n_unseen=setup.labels.numel() - n_seen,
        topk=setup.topk,
    )


__all__ = [
    "LARGE_BIAS",
    "MASKED_SCORE",
    "REFERENCE_GLOVE_ALIASES",
    "CZSLResult",
    "CalibrationResult",
    "WordVectors",
    "calibrate_feasibility",
    "evaluate_czsl",
    "evaluate_split",
    "feasibility_scores",
    "load_glove",
    "removed_below",
]
