"""In-context visual prompting by inpainting (Bar et al., NeurIPS 2022): no parameters are learned.

An example input-output pair and a query are laid out on one 2×2 canvas (:mod:`.canvas`); an
inpainting model (:mod:`.models`) fills the masked fourth cell with the answer, which a task
(:mod:`.tasks`) reads back and scores (:mod:`.evaluate`). ``vlprompt/tiny-canvas`` is a bundled tiny
inpainter pretrained on the synthetic world (:mod:`.world`). See docs/incontext.md.
"""

from .canvas import CanvasError, CanvasLayout, answer_cell, build_canvases, normalize
from .evaluate import choose_examples, clip_image_features, evaluate_pairs, run_incontext
from .models import (
    BUNDLED_INPAINTER,
    MAEVQGAN,
    Inpainter,
    InpainterCheckpointError,
    MAEConfig,
    PixelMAE,
    load_inpainter,
    load_mae_vqgan,
    tiny_mae_vqgan,
    tiny_pixel_mae,
)
from .tasks import TASKS, Box, InContextTask, TaskInputError, get_task


def run_incontext_demo(*args, **kwargs):
    """See :func:`vlprompt.incontext.demo.run_incontext_demo` (imported lazily: it loads matplotlib)."""
    from .demo import run_incontext_demo as run

    return run(*args, **kwargs)


__all__ = [
    "BUNDLED_INPAINTER",
    "TASKS",
    "Box",
    "CanvasError",
    "CanvasLayout",
    "InContextTask",
    "Inpainter",
    "InpainterCheckpointError",
    "MAEConfig",
    "MAEVQGAN",
    "PixelMAE",
    "TaskInputError",
    "answer_cell",
    "build_canvases",
    "choose_examples",
    "clip_image_features",
    "evaluate_pairs",
    "get_task",
    "load_inpainter",
    "load_mae_vqgan",
    "normalize",
    "run_incontext",
    "run_incontext_demo",
    "tiny_mae_vqgan",
    "tiny_pixel_mae",
]
