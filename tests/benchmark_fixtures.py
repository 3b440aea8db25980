"""Tiny copies of the benchmark datasets in their real layouts (a few classes, a few images per class)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import write_square_image
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from vlprompt.data.benchmarks import DATASETS, imagenet_index, imagenet_subset

#: Images per class in train, val and test.
PER_SPLIT = {"train": 4, "val": 2, "test": 3}
#: Four ImageNet classes in both the ImageNet-A and the ImageNet-R subsets, so every variant has them.
WNIDS = [w for w in imagenet_subset("imagenet_a") if w in set(imagenet_subset("imagenet_r"))][:4]
_COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 40), (200, 60, 200), (40, 200, 200)]


def fixture_classes(name: str, n: int = 4) -> list[str]:
    """Class names of a fixture: the first ``n`` the registry knows, else made-up ones."""
    known = DATASETS[name].known_classes()
    return list(known[:n]) if known else [f"{name} class {i}" for i in range(n)]


def _image(path: Path, label: int, index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_square_image(path, _COLOURS[label % len(_COLOURS)], seed=1000 * label + index)


def _classnames_txt(folder: Path, wnids: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{w} {IMAGENET_CLASSNAMES[imagenet_index()[w]]}" for w in wnids]
    (folder / "classnames.txt").write_text("\n".join(lines) + "\n")


def write_fixture(name: str, root: Path, n_classes: int = 4, wnids: list[str] | None = None) -> Path:
    """Write dataset ``name`` under ``root`` in its registry layout; returns its folder."""
    ds = DATASETS[name]
    folder = ds.directory(root)
    folder.mkdir(parents=True, exist_ok=True)
    for item in ds.required:
        if item.is_dir:
            (folder / item.path).mkdir(parents=True, exist_ok=True)
    wnids = wnids or WNIDS[:n_classes]
    if ds.layout == "split-json":
        classes = fixture_classes(name, n_classes)
        split: dict[str, list] = {s: [] for s in PER_SPLIT}
        counter = 0
        for label, cls in enumerate(classes):
            for s, count in PER_SPLIT.items():
                for _ in range(count):
                    sub = "cars_train/" if name == "stanford_cars" else f"{cls.replace(' ', '_')}/"
                    rel = f"{sub}{counter:05d}.png"
                    _image(folder / ds.image_dir / rel, label, counter)
                    split[s].append([rel, label, cls])
                    counter += 1
        (folder / ds.split_file).write_text(json.dumps(split))
    elif ds.layout == "fgvc-aircraft":
        classes = fixture_classes(name, n_classes)
        (folder / "variants.txt").write_text("\n".join(classes) + "\n")
        counter = 0
        for s, count in PER_SPLIT.items():
            lines = []
            for label, cls in enumerate(classes):
                for _ in range(count):
                    image_id = f"{1000000 + counter}"
                    _image(folder / "images" / f"{image_id}.jpg", label, counter)
                    lines.append(f"{image_id} {cls}")
                    counter += 1
            (folder / f"images_variant_{s}.txt").write_text("\n".join(lines) + "\n")
    elif ds.layout == "imagenet":
        _classnames_txt(folder, wnids)
        for label, wnid in enumerate(wnids):
            for s, sub in (("train", "train"), ("test", "val")):
                for i in range(PER_SPLIT[s]):
                    _image(folder / "images" / sub / wnid / f"{wnid}_{i}.JPEG", label, i + 10 * (s == "test"))
    else:  # the variants: wnid (or label) folders of test images
        _classnames_txt(folder, wnids)
        for label, wnid in enumerate(wnids):
            sub = str(imagenet_index()[wnid]) if ds.layout == "imagenet-v2" else wnid
            for i in range(PER_SPLIT["test"]):
                _image(folder / ds.image_dir / sub / f"{i}.jpg", label, 100 + i)
    return folder
