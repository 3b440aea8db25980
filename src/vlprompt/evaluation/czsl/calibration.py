"""Open-world feasibility calibration: the threshold with the best validation AUC, in one pass."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from ...errors import DataError, OptionError
from .curve import _curve
from .inputs import _bool_vector, _Setup
from .results import CalibrationResult
from .sweep import Scores, _summarize

log = logging.getLogger(__name__)


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
        raise OptionError(f"n_thresholds must be >= 1, got {n_thresholds}")
    keep = torch.ones_like(seen) if keep_mask is None else _bool_vector(keep_mask, "keep_mask")
    candidates = ~seen & keep
    if not candidates.any():
        raise DataError("there are no non-seen columns to calibrate")
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
