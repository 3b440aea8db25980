"""Learning-rate schedules as multiplicative factors of the base lr (for ``LambdaLR``)."""

from __future__ import annotations

import math
from collections.abc import Callable

from ..errors import OptionError

SCHEDULES = ("constant", "cosine", "coop")


def lr_factor(
    schedule: str, total: int, warmup: int = 0, base_lr: float = 1.0, warmup_lr: float = 1e-5
) -> Callable[[int], float]:
    """The factor applied to the base lr at tick ``t`` (a step, or an epoch for "coop").

    - "constant": 1 after an optional linear warmup over ``warmup`` ticks.
    - "cosine": linear warmup over ``warmup`` ticks, then cosine from 1 to 0 over the rest.
    - "coop": CoOp / Dassl's recipe, stepped per epoch: ``warmup`` epochs at the constant
      ``warmup_lr``, then cosine annealing with period ``total`` epochs starting from the base lr at
      epoch ``warmup`` (so the warmup epochs count inside the budget and lr never reaches 0).
    """
    if schedule not in SCHEDULES:
        raise OptionError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")

    def linear_warmup(t: int) -> float:
        return (t + 1) / warmup

    if schedule == "constant":
        return lambda t: linear_warmup(t) if t < warmup else 1.0
    if schedule == "cosine":
        span = max(1, total - warmup)
        return lambda t: (
            linear_warmup(t) if t < warmup else 0.5 * (1 + math.cos(math.pi * min(t - warmup, span) / span))
        )
    const = warmup_lr / base_lr
    return lambda t: const if t < warmup else 0.5 * (1 + math.cos(math.pi * (t - warmup) / total))
