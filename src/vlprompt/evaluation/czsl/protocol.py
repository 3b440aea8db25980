"""The reference protocol's numbers: the "+infinity" bias, the masked score, the bias list, AUC, H."""

from __future__ import annotations

import numpy as np

#: The bias that stands for "+infinity" in the reference protocol.
LARGE_BIAS = 1000.0


#: Score given to columns outside the closed-world mask, as the reference does.
MASKED_SCORE = -1e10


#: The bias list keeps every ``n // BIAS_STEPS``-th sorted score gap.
BIAS_STEPS = 20


#: Subtracted from each score gap so that the unseen pair just wins at that bias.
GAP_EPSILON = 1e-4


#: numpy's trapezoid rule (``trapz`` before numpy 2.0), as the reference's ``np.trapz``.
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # type: ignore[attr-defined, unused-ignore]


def _harmonic(seen: np.ndarray, unseen: np.ndarray) -> np.ndarray:
    """Harmonic mean per point, 0 where either is 0 (computed as 1 / mean(1/s, 1/u), like scipy)."""
    out = np.zeros(np.broadcast(seen, unseen).shape)
    ok = (seen > 0) & (unseen > 0)
    out[ok] = 1.0 / ((1.0 / seen[ok] + 1.0 / unseen[ok]) / 2.0)
    return out
