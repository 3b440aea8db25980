"""The built-in benchmark on disk: a compositional split in the standard CZSL format and classification views
in CoOp's split-JSON format, written once into a cache directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ...io import atomic_directory
from ..czsl import write_czsl
from ..images import write_split_json
from .benchmark import _SLICES, VIEWS, _render_pair, czsl_pair_split, pair_dirname
from .render import COLOURS, SHAPES

VERSION = "v2"
"""Changes whenever the images or splits change; part of the cache directory name."""

_SPLIT_DIR = "compositional-split-natural"
_COMPLETE_MARKER = "COMPLETE"


@dataclass(frozen=True)
class BenchmarkPaths:
    """Where the built-in benchmark lives.

    Attributes:
        root: the benchmark directory.
        czsl_root: root of the compositional split (``images/``, ``compositional-split-natural/``,
            ``metadata_compositional-split-natural.t7``).
        image_root: the folder the classification views' paths are relative to.
        splits: split-JSON file of each classification view (``pairs``, ``colours``, ``shapes``).
    """

    root: Path
    czsl_root: Path
    image_root: Path
    splits: dict[str, Path] = field(default_factory=dict)


def default_cache_dir(seed: int = 0) -> Path:
    """``$VLPROMPT_CACHE`` or ``~/.cache/vlprompt``, then ``synthetic/<version>-seed<seed>``."""
    base = Path(os.environ.get("VLPROMPT_CACHE", Path.home() / ".cache" / "vlprompt"))
    return base / "synthetic" / f"{VERSION}-seed{seed}"


def _paths(root: Path) -> BenchmarkPaths:
    return BenchmarkPaths(
        root=root,
        czsl_root=root,
        image_root=root / "images",
        splits={view: root / f"split_{view}.json" for view in VIEWS},
    )


def build_benchmark(root: str | Path | None = None, seed: int = 0) -> BenchmarkPaths:
    """Write the benchmark (or reuse a complete copy already there) and return its paths.

    The directory is built in a temporary sibling and renamed into place (:func:`vlprompt.io.atomic_directory`),
    so a crash never leaves a half-written benchmark behind. It holds 6,400 images of 48 px (64 per
    pair), shared by the views:

    - the compositional split in the standard CZSL format: ``images/<colour>_<shape>/<i>.png``,
      ``compositional-split-natural/{train,val,test}_pairs.txt`` and
      ``metadata_compositional-split-natural.t7`` (a list of ``{image, attr, obj, set}`` dicts);
      train holds images 0-31 of the seen pairs, val and test hold images 32-39 and 40-63 of the seen
      pairs and images 32-63 of their unseen pairs;
    - classification views in CoOp's split-JSON format (``split_pairs.json``, ``split_colours.json``,
      ``split_shapes.json``): ``{"train"|"val"|"test": [[relpath, label, classname], ...]}`` with
      images 0-31 / 32-39 / 40-63 of every pair, labels in sorted class-name order.

    Args:
        root: target directory (default: :func:`default_cache_dir`).
        seed: seed of the images and of the compositional split.
    """
    root = Path(root) if root is not None else default_cache_dir(seed)
    if (root / _COMPLETE_MARKER).is_file():
        return _paths(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists but holds no complete benchmark; remove it and build again")
    with atomic_directory(root, complete=lambda built: (built / _COMPLETE_MARKER).is_file()) as tmp:
        _write_benchmark(tmp, seed)
        (tmp / _COMPLETE_MARKER).write_text(f"{VERSION} seed={seed}\n")
    return _paths(root)


def _write_benchmark(root: Path, seed: int) -> None:
    paths = _paths(root)
    relpaths: dict[tuple[str, str], list[str]] = {}
    for colour in COLOURS:
        for shape in SHAPES:
            folder = paths.image_root / pair_dirname(colour, shape)
            folder.mkdir(parents=True)
            names = []
            for index, image in enumerate(_render_pair(seed, colour, shape)):
                name = f"{pair_dirname(colour, shape)}/{index:03d}.png"
                Image.fromarray(image).save(paths.image_root / name, compress_level=1)
                names.append(name)
            relpaths[(colour, shape)] = names
    _write_czsl_views(root, czsl_pair_split(seed), relpaths)
    for view in VIEWS:
        _write_split_json(paths.splits[view], view, relpaths)


def _write_czsl_views(
    root: Path, split: dict[str, list[tuple[str, str]]], relpaths: dict[tuple[str, str], list[str]]
) -> None:
    samples: list[dict[str, str]] = []
    for colour, shape in split["train"]:
        names = relpaths[(colour, shape)]
        for subset in ("train", "val", "test"):
            samples += [{"image": names[i], "attr": colour, "obj": shape, "set": subset} for i in _SLICES[subset]]
    for subset in ("val", "test"):
        for colour, shape in split[subset]:
            names = relpaths[(colour, shape)][_SLICES["val"].start :]
            samples += [{"image": name, "attr": colour, "obj": shape, "set": subset} for name in names]
    seen = split["train"]
    pairs = {subset: sorted(seen if subset == "train" else seen + split[subset]) for subset in ("train", "val", "test")}
    write_czsl(root, pairs["train"], pairs["val"], pairs["test"], samples, split=_SPLIT_DIR)


def _write_split_json(path: Path, view: str, relpaths: dict[tuple[str, str], list[str]]) -> None:
    def classname(colour: str, shape: str) -> str:
        return {"pairs": f"{colour} {shape}", "colours": colour, "shapes": shape}[view]

    classnames = sorted({classname(c, s) for c, s in relpaths})
    labels = {name: i for i, name in enumerate(classnames)}
    split: dict[str, list[list[object]]] = {}
    for subset, indices in _SLICES.items():
        split[subset] = [
            [names[i], labels[classname(c, s)], classname(c, s)] for (c, s), names in relpaths.items() for i in indices
        ]
    write_split_json(path, split)
