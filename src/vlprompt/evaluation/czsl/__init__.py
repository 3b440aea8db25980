"""Compositional zero-shot evaluation: the field's bias sweep, AUC and harmonic mean, streamed.

What is computed is the protocol of the field's reference evaluator (ExplainableML/czsl, also used
by BatsResearch/csp); see ``shared/specs/CZSL.md``. A bias ``b`` is added to every non-seen column
(in float32), columns outside the closed-world mask score ``-1e10`` and an image counts as correct
when its pair is among the top-k. The bias list comes from the unseen images that are correct at
``b = +1000``; the seen/unseen accuracy curve over it gives AUC (trapezoid), best seen, best unseen
and best harmonic mean.

How it is computed differs: scores are streamed in row chunks and each image keeps a summary of
``O(k)`` numbers (see :mod:`.sweep`). The package:

- :mod:`.evaluate`: :func:`evaluate_czsl`, :func:`evaluate_split`;
- :mod:`.calibration`: :func:`calibrate_feasibility`;
- :mod:`.feasibility`: :func:`feasibility_scores`, :func:`load_glove`, :class:`WordVectors`;
- :mod:`.results`: :class:`CZSLResult`, :class:`CalibrationResult`, :func:`removed_below`;
- internals: :mod:`.protocol` (the reference's constants, AUC, H), :mod:`.inputs` (validation,
  column groups), :mod:`.sweep` (the streamed summaries), :mod:`.curve` (curve and metrics).
"""

from __future__ import annotations

from .calibration import calibrate_feasibility
from .evaluate import evaluate_czsl, evaluate_split
from .feasibility import REFERENCE_GLOVE_ALIASES, WordVectors, feasibility_scores, load_glove
from .protocol import BIAS_STEPS as BIAS_STEPS
from .protocol import GAP_EPSILON as GAP_EPSILON
from .protocol import LARGE_BIAS, MASKED_SCORE
from .protocol import _trapezoid as _trapezoid  # the tests compare AUCs against it
from .results import CalibrationResult, CZSLResult, removed_below
from .sweep import Scores as Scores

# Tuning knobs of the streaming engine, read from here at call time (so setting them here works).
#: Elements of one internal row block (scores are processed in blocks of about this many numbers).
BLOCK_ELEMENTS = 1 << 26
#: Column block width of the split top-k (see ``sweep._group_split_topk``).
SPLIT_BLOCK = 256

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
