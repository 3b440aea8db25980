"""A deterministic synthetic world of coloured shapes, and the built-in benchmark made from it.

Every image shows one shape (the *object*) in one colour (the *attribute*), with a texture (solid,
striped, dotted), a size, a position, a rotation, a background and pixel noise. Images come from two
domains that differ systematically, the way benchmark photographs differ from CLIP's web data:

- ``"web"``: the pretraining domain of the bundled tiny CLIP (:func:`web_dataset`, with captions);
  neutral light, plain or graded backgrounds, large shapes.
- ``"benchmark"``: the evaluation domain (:func:`build_benchmark`): cluttered backgrounds, smaller
  shapes, more sensor noise and one fixed warm camera illuminant (:data:`BENCHMARK_ILLUMINANT`) for
  the whole benchmark, so zero-shot transfer drops and prompts learned on a few labelled images pay.

Some colours are deliberately close (red/orange/brown/pink, cyan/blue/purple, gray), and the warm
cast moves them further towards each other. Everything is a pure function of the seed.

The benchmark is written to a cache directory as a compositional zero-shot split in the standard
on-disk format, and as few-shot classification views in CoOp's split-JSON format. Images are shared
by all views: each pair has :data:`IMAGES_PER_PAIR` images, indices ``[0, 32)`` for training,
``[32, 40)`` for validation and ``[40, 64)`` for testing.

The package is split by concern: :mod:`.render` (the world's vocabulary and the renderer),
:mod:`.captions`, the collections (:mod:`.web`, :mod:`.benchmark` and :mod:`.multitask`) and
:mod:`.writers` (the benchmark on disk). Every public name is importable from here.
"""

from __future__ import annotations

from .benchmark import IMAGES_PER_PAIR, VIEWS, benchmark_images, czsl_pair_split, pair_dirname
from .captions import Caption, caption
from .multitask import MULTITASK, TaskSplit, build_multitask_collection
from .render import (
    BENCHMARK_ILLUMINANT,
    COLOURS,
    DOMAINS,
    IMAGE_SIZE,
    SHAPES,
    TEXTURES,
    render_array,
    render_image,
    render_scene,
)
from .web import WebData, web_dataset
from .writers import VERSION, BenchmarkPaths, build_benchmark, default_cache_dir

__all__ = [
    "BENCHMARK_ILLUMINANT",
    "COLOURS",
    "DOMAINS",
    "IMAGE_SIZE",
    "IMAGES_PER_PAIR",
    "SHAPES",
    "TEXTURES",
    "VERSION",
    "MULTITASK",
    "VIEWS",
    "BenchmarkPaths",
    "TaskSplit",
    "Caption",
    "WebData",
    "benchmark_images",
    "build_benchmark",
    "build_multitask_collection",
    "caption",
    "czsl_pair_split",
    "default_cache_dir",
    "pair_dirname",
    "render_array",
    "render_image",
    "render_scene",
    "web_dataset",
]
