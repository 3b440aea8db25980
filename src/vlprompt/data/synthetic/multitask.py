"""The built-in multi-task collection: colour, shape, texture and coloured-shape recognition."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ...io import atomic_directory
from ..images import write_split_json
from .benchmark import _SLICES
from .render import COLOURS, SHAPES, TEXTURES, render_array
from .writers import _COMPLETE_MARKER, VERSION, build_benchmark

#: The built-in multi-task collection's tasks (names as prompts read them).
MULTITASK: tuple[str, ...] = ("colour", "shape", "texture", "coloured shape")
_TEXTURE_IMAGES = 64  # per texture, sliced like a pair's images (32 train, 8 val, 24 test)
_MULTITASK_PAIRS = 20  # pairs of the coloured-shape task


@dataclass(frozen=True)
class TaskSplit:
    """Where one task of the built-in collection is: an image root and a CoOp split file."""

    name: str
    root: Path
    split_file: Path


def build_multitask_collection(root: str | Path | None = None, seed: int = 0) -> list[TaskSplit]:
    """The built-in multi-task collection: colour, shape, texture and coloured-shape recognition.

    Colour and shape label the benchmark's images (:func:`build_benchmark`) by their colour (10 classes) or
    shape (10); coloured shape labels the images of 20 of its pairs (drawn with the seed) by pair; texture
    has its own 192 benchmark-domain images of random colours and shapes, labelled solid, striped or dotted.
    Each task is a split file in CoOp's format; the extra files sit beside the benchmark, built once.
    """
    paths = build_benchmark(root, seed)
    extra = paths.root.parent / f"{paths.root.name}-multitask"
    if not (extra / _COMPLETE_MARKER).is_file():
        with atomic_directory(extra, complete=lambda built: (built / _COMPLETE_MARKER).is_file()) as tmp:
            _write_texture_task(tmp, seed)
            _write_pair_task(tmp / "split_coloured_shapes.json", paths.splits["pairs"], seed)
            (tmp / _COMPLETE_MARKER).write_text(f"{VERSION} seed={seed}\n")
    return [
        TaskSplit("colour", paths.image_root, paths.splits["colours"]),
        TaskSplit("shape", paths.image_root, paths.splits["shapes"]),
        TaskSplit("texture", extra / "images", extra / "split_textures.json"),
        TaskSplit("coloured shape", paths.image_root, extra / "split_coloured_shapes.json"),
    ]


def _write_texture_task(root: Path, seed: int) -> None:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 9002]))
    split: dict[str, list[list[object]]] = {s: [] for s in _SLICES}
    for label, texture in enumerate(TEXTURES):
        (root / "images" / texture).mkdir(parents=True)
        for index in range(_TEXTURE_IMAGES):
            colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            name = f"{texture}/{index:03d}.png"
            image = render_array(colour, shape, "benchmark", rng, texture)
            Image.fromarray(image).save(root / "images" / name, compress_level=1)
            subset = next(s for s, r in _SLICES.items() if index in r)
            split[subset].append([name, label, texture])
    write_split_json(root / "split_textures.json", split)


def _write_pair_task(path: Path, pairs_split: Path, seed: int) -> None:
    """The pairs view restricted to :data:`_MULTITASK_PAIRS` pairs drawn with the seed, relabelled in order."""
    full = json.loads(pairs_split.read_text())
    names = sorted({row[2] for row in full["train"]})
    rng = np.random.default_rng(np.random.SeedSequence([seed, 9003]))
    kept = sorted(names[i] for i in rng.choice(len(names), _MULTITASK_PAIRS, replace=False))
    label = {n: i for i, n in enumerate(kept)}
    write_split_json(path, {s: [[p, label[n], n] for p, _, n in rows if n in label] for s, rows in full.items()})
