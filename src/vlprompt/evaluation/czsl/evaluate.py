"""The public evaluation entry points: the bias sweep on raw masks, or on a loaded split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ...data.czsl import CZSLSplit
from ...errors import OptionError
from .curve import _curve, _result
from .inputs import _Setup
from .results import CZSLResult
from .sweep import Scores, _summarize


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
        raise OptionError(f"phase must be 'val' or 'test', not {phase!r}")
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
