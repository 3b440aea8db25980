"""From the per-image summaries to the seen/unseen curve over the bias list, and the metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .inputs import _Setup
from .protocol import BIAS_STEPS, GAP_EPSILON, LARGE_BIAS, MASKED_SCORE, _harmonic, _trapezoid
from .results import CZSLResult
from .sweep import _View


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
