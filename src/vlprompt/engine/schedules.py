"""Learning-rate schedules as multiplicative factors of the base lr (for ``LambdaLR``)."""

from __future__ import annotations

import math
from collections.abc import Callable

from ..errors import OptionError

SCHEDULES = ("constant", "cosine", "dassl-cosine")
#: Old names still accepted, so that old ``config.yaml`` files replay: "coop" named "dassl-cosine"
#: after the first method to use it (CoCoOp, MaPLe, KgCoOp and PromptSRC use it too).
SCHEDULE_ALIASES = {"coop": "dassl-cosine"}
#: Schedules stepped once per epoch (the others step once per optimizer step).
PER_EPOCH_SCHEDULES = ("dassl-cosine",)


def canonical_schedule(schedule: str) -> str:
    """The schedule's name, old names (:data:`SCHEDULE_ALIASES`) resolved; any other string as given."""
    return SCHEDULE_ALIASES.get(schedule, schedule)


def lr_factor(
    schedule: str, total: int, warmup: int = 0, base_lr: float = 1.0, warmup_lr: float = 1e-5, min_lr: float = 0.0
) -> Callable[[int], float]:
    """The factor applied to the base lr at tick ``t`` (a step, or an epoch for "dassl-cosine").

    - "constant": 1 after an optional linear warmup over ``warmup`` ticks.
    - "cosine": linear warmup over ``warmup`` ticks, then cosine from 1 to 0 over the rest.
    - "dassl-cosine" (old name "coop"): Dassl's recipe (CoOp, CoCoOp, MaPLe, ...), stepped per epoch:
      ``warmup`` epochs at the constant ``warmup_lr``, then cosine annealing with period ``total``
      epochs starting from the base lr at epoch ``warmup`` (so the warmup epochs count inside the
      budget and lr never reaches 0).

    The cosines anneal to ``min_lr`` (PyTorch's ``CosineAnnealingLR`` ``eta_min``): factor
    ``m + (1 - m) · cosine`` with ``m = min_lr / base_lr``; ``min_lr`` 0 leaves them as above, bit for bit.
    """
    name = canonical_schedule(schedule)
    if name not in SCHEDULES:
        raise OptionError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")

    def linear_warmup(t: int) -> float:
        return (t + 1) / warmup

    if name == "constant":
        return lambda t: linear_warmup(t) if t < warmup else 1.0
    floor = min_lr / base_lr

    def annealed(cosine: float) -> float:
        return cosine if floor == 0 else floor + (1 - floor) * cosine

    if name == "cosine":
        span = max(1, total - warmup)
        return lambda t: (
            linear_warmup(t) if t < warmup else annealed(0.5 * (1 + math.cos(math.pi * min(t - warmup, span) / span)))
        )
    const = warmup_lr / base_lr
    return lambda t: const if t < warmup else annealed(0.5 * (1 + math.cos(math.pi * (t - warmup) / total)))
