"""How each layout of the benchmark datasets is read into train / val / test images, and ImageNet's class lists.

One reader per :attr:`~vlprompt.data.benchmarks.BenchmarkDataset.layout` (see :mod:`vlprompt.data.benchmarks`
for the layouts); each takes the registry entry, its folder, a transform and whether to skip bad images.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from ..errors import OptionError
from .images import (
    SPLITS,
    DataError,
    LabeledImages,
    Sample,
    _read_split_file,
    _split_classnames,
    image_folder,
    split_json,
)

if TYPE_CHECKING:
    from .benchmarks import BenchmarkDataset


def _split_json(ds: BenchmarkDataset, folder: Path, transform, skip: bool) -> dict[str, LabeledImages]:
    split_path, image_dir = folder / ds.split_file, folder / ds.image_dir
    data = _read_split_file(split_path)
    classnames = _split_classnames(split_path, data)
    _check_known(ds, classnames, split_path)
    if not skip:
        _check_class_folders(data, classnames, split_path, image_dir)
    return {s: split_json(split_path, image_dir, s, transform, skip) for s in SPLITS}


def _check_known(ds: BenchmarkDataset, classnames: Sequence[str], where: Path) -> None:
    known = ds.known_classes()
    if known is None:
        return
    unknown = [n for n in classnames if n not in known]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (close: {close})" if close else ""
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise DataError(
            f"{where}: class name {name!r}{hint}{more} is not a {ds.title} class name; the registry's names are "
            f"CoOp's (e.g. {list(known[:3])}). Use CoOp's split file, or rename the classes"
        )


def _check_class_folders(data: dict, classnames: Sequence[str], split_path: Path, image_dir: Path) -> None:
    """Every folder the split file's images sit in exists (a missing class folder is named with its class)."""
    folders: dict[Path, str] = {}
    for key in SPLITS:
        for entry in data[key]:
            folders.setdefault((image_dir / entry[0]).parent, classnames[entry[1]])
    for path, classname in sorted(folders.items()):
        if not path.is_dir():
            raise DataError(
                f"class folder {path} (class {classname!r}, listed in {split_path.name}) is missing under {image_dir}"
            )


def _read_classnames(path: Path) -> dict[str, str]:
    """``classnames.txt``: ``<wnid> <class name>`` per line, checked against ImageNet's known names."""
    names: dict[str, str] = {}
    index = imagenet_index()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, name = line.strip().partition(" ")
        if wnid not in index or not name:
            raise DataError(f"{path}:{number}: expected '<ImageNet wnid> <class name>', got {line!r}")
        expected = IMAGENET_CLASSNAMES[index[wnid]]
        if name != expected:
            raise DataError(f"{path}:{number}: names {wnid} {name!r}; the registry (CLIP's names) has {expected!r}")
        names[wnid] = name
    return names


def _named(dataset: LabeledImages, names: dict[str, str], classnames_file: Path) -> LabeledImages:
    """``dataset`` with its wnid labels renamed to class names."""
    absent = [w for w in dataset.classnames if w not in names]
    if absent:
        raise DataError(f"{classnames_file} has no line for class folder {absent[0]} (the wnid of each folder)")
    dataset.classnames = [names[w] for w in dataset.classnames]
    return dataset


def _check_wnid_folders(ds: BenchmarkDataset, folder: Path) -> None:
    """Every class folder is an ImageNet wnid, and one of the dataset's 200 classes where it has a subset."""
    allowed = set(imagenet_subset(ds.subset)) if ds.subset else set(imagenet_index())
    for path in sorted(p for p in folder.iterdir() if p.is_dir()):
        if path.name in allowed:
            continue
        if ds.subset and path.name in imagenet_index():
            name = IMAGENET_CLASSNAMES[imagenet_index()[path.name]]
            raise DataError(
                f"{path}: class {path.name} ({name!r}) is not one of {ds.title}'s 200 classes "
                f"(see vlprompt.data.benchmarks.imagenet_subset({ds.subset!r}))"
            )
        raise DataError(f"{path}: {path.name!r} is not an ImageNet class folder (a wnid such as n01440764)")


def _imagenet(ds: BenchmarkDataset, folder: Path, transform, skip: bool) -> dict[str, LabeledImages]:
    classnames_file = folder / "classnames.txt"
    names = _read_classnames(classnames_file)
    images = folder / ds.image_dir
    _check_wnid_folders(ds, images / "train")
    train = image_folder(images / "train", transform, skip)
    test = image_folder(images / "val", transform, skip, train.classnames)
    return {"train": _named(train, names, classnames_file), "test": _named(test, names, classnames_file)}


def _imagenet_folders(ds: BenchmarkDataset, folder: Path, transform, skip: bool) -> dict[str, LabeledImages]:
    classnames_file = folder / "classnames.txt"
    names = _read_classnames(classnames_file)
    _check_wnid_folders(ds, folder / ds.image_dir)
    return {"test": _named(image_folder(folder / ds.image_dir, transform, skip), names, classnames_file)}


def _imagenet_v2(ds: BenchmarkDataset, folder: Path, transform, skip: bool) -> dict[str, LabeledImages]:
    classnames_file = folder / "classnames.txt"
    names = _read_classnames(classnames_file)
    images = folder / ds.image_dir
    labels = sorted(p.name for p in images.iterdir() if p.is_dir())
    bad = [n for n in labels if not (n.isdigit() and int(n) < 1000)]
    if bad:
        raise DataError(f"{images / bad[0]}: ImageNetV2's class folders are ImageNet labels 0..999, not {bad[0]!r}")
    order = sorted(labels, key=int)
    test = image_folder(images, transform, skip, order)
    wnids = imagenet_wnids()
    test.classnames = [wnids[int(n)] for n in test.classnames]
    return {"test": _named(test, names, classnames_file)}


def _fgvc_aircraft(ds: BenchmarkDataset, folder: Path, transform, skip: bool) -> dict[str, LabeledImages]:
    variants = [line.strip() for line in (folder / "variants.txt").read_text().splitlines() if line.strip()]
    label = {name: i for i, name in enumerate(variants)}
    splits = {}
    for split in SPLITS:
        path = folder / f"images_variant_{split}.txt"
        samples = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in label:
                raise DataError(f"{path}:{number}: variant {variant!r} is not in {folder / 'variants.txt'}")
            samples.append(Sample(str(folder / ds.image_dir / f"{image_id}.jpg"), label[variant]))
        splits[split] = LabeledImages(samples, variants, transform, skip)
    return splits


#: The reader of each layout.
READERS = {
    "split-json": _split_json,
    "imagenet": _imagenet,
    "imagenet-folders": _imagenet_folders,
    "imagenet-v2": _imagenet_v2,
    "fgvc-aircraft": _fgvc_aircraft,
}


@cache
def _imagenet_data() -> dict:
    return json.loads((Path(__file__).parent / "imagenet_classes.json").read_text())


def imagenet_wnids() -> list[str]:
    """ImageNet-1k's WordNet ids in label order."""
    return list(_imagenet_data()["wnids"])


@cache
def imagenet_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(_imagenet_data()["wnids"])}


def imagenet_subset(name: str) -> list[str]:
    """The wnids of the 200 ImageNet classes of ``imagenet_a`` or ``imagenet_r`` (Hendrycks et al.'s lists)."""
    if name not in IMAGENET_SUBSETS:
        raise OptionError(f"unknown ImageNet subset {name!r}; known: {list(IMAGENET_SUBSETS)}")
    wnids = _imagenet_data()["wnids"]
    return [wnids[i] for i in _imagenet_data()[name]]


#: the ImageNet variants that hold 200 of its classes.
IMAGENET_SUBSETS = ("imagenet_a", "imagenet_r")
