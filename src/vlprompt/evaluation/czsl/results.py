"""What the evaluation returns: CZSL metrics with their curve, and the chosen feasibility threshold."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .protocol import _harmonic


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
