"""The field's benchmark datasets: CoOp's 11 few-shot datasets and the four ImageNet variants.

Each :class:`BenchmarkDataset` knows its folder under a datasets root (CoOp's DATASETS.md layout,
so a ``$DATA`` folder prepared for CoOp, CoCoOp, MaPLe or PromptSRC works unchanged), the files it
needs and where to download them, CoOp's hand-written template for it, and how to read it into
train / val / test :class:`~vlprompt.data.images.LabeledImages`:

- ``split-json`` (Caltech101, OxfordPets, StanfordCars, Flowers102, Food101, SUN397, DTD, EuroSAT,
  UCF101): an image folder and CoOp's fixed split file ``split_zhou_<Name>.json``.
- ``imagenet``: ``classnames.txt`` (``<wnid> <class name>`` lines) and ``images/{train,val}/<wnid>/``;
  the val images are the test set (no validation split, as in CoOp).
- ``fgvc-aircraft``: the dataset's own ``variants.txt`` and ``images_variant_{train,val,test}.txt``.
- ``imagenet-v2``: folders ``0`` .. ``999`` (ImageNet labels) and a copy of ImageNet's ``classnames.txt``.
- ``imagenet-folders`` (ImageNet-Sketch, -A, -R): ``<wnid>/`` folders and ``classnames.txt``; -A and -R
  hold 200 ImageNet classes (:data:`IMAGENET_SUBSETS`) and a class outside them is an error.

Class names. A split file (or ``classnames.txt``) may hold a *subset* of a dataset's classes (a
test fixture, a smaller experiment): the label space is the classes present. Every name must be
one the registry knows where vlprompt ships the list (the ImageNet family, OxfordPets, DTD,
EuroSAT); for the other datasets the check is that there are at most as many classes as the
dataset has. ``vlprompt data check`` reports a subset as such (``4 of 37 classes``).

The registry itself is data: ``datasets.json`` beside this module (names, titles, folders, layouts,
templates, class counts, download sources, shipped class names), read and checked by
:func:`read_registry` when the module is imported. The readers of the layouts are in
:mod:`vlprompt.data.layouts`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .images import DataError, LabeledImages
from .layouts import IMAGENET_SUBSETS, READERS, imagenet_index, imagenet_subset, imagenet_wnids

__all__ = [
    "CLASSNAMES_SOURCE",
    "DATASETS",
    "DRIVE",
    "FEW_SHOT_DATASETS",
    "IMAGENET_SUBSETS",
    "IMAGENET_VARIANTS",
    "KNOWN_CLASSES",
    "REGISTRY_FILE",
    "SPLIT_SOURCE",
    "BenchmarkDataset",
    "CheckReport",
    "Registry",
    "Required",
    "check_dataset",
    "dataset_names",
    "get_dataset",
    "imagenet_index",
    "imagenet_subset",
    "imagenet_wnids",
    "read_registry",
]


@dataclass(frozen=True)
class Required:
    """A file or folder a dataset needs, relative to its folder, and where to get it."""

    path: str
    source: str
    is_dir: bool = True


@dataclass(frozen=True)
class BenchmarkDataset:
    """One benchmark dataset: its layout under the root, template, class count and sources.

    Attributes:
        name: registry name (lowercase), e.g. ``oxford_pets``.
        title: CoOp's dataset name (its template key), e.g. ``OxfordPets``.
        folder: its folder under the datasets root.
        layout: how it is read: ``split-json``, ``imagenet``, ``fgvc-aircraft``, ``imagenet-v2`` or
            ``imagenet-folders``.
        image_dir: the folder image paths are relative to (inside ``folder``).
        template: CoOp's hand-written prompt (``CUSTOM_TEMPLATES`` in CoOp's trainers/zsclip.py).
        num_classes: classes of the full dataset.
        required: the files and folders it needs, with their sources.
        split_file: the split file (``split-json``).
        subset: ``imagenet_a`` / ``imagenet_r``: its 200 ImageNet classes (:data:`IMAGENET_SUBSETS`).
        test_only: an evaluation-only dataset (the ImageNet variants).
    """

    name: str
    title: str
    folder: str
    layout: str
    image_dir: str
    template: str
    num_classes: int
    required: tuple[Required, ...]
    split_file: str = ""
    subset: str = ""
    test_only: bool = False

    def directory(self, root: str | Path) -> Path:
        return Path(root) / self.folder

    def missing(self, root: str | Path) -> list[str]:
        """What the layout lacks under ``root``: one line per file or folder, with where to get it."""
        folder = self.directory(root)
        if not Path(root).is_dir():
            return [f"the datasets root {root} does not exist (it holds one folder per dataset, e.g. {folder})"]
        lines = []
        for item in self.required:
            path = folder / item.path
            present = path.is_dir() if item.is_dir else path.is_file()
            if not present:
                kind = "folder" if item.is_dir else "file"
                lines.append(f"missing {kind} {path}: {item.source}")
        return lines

    def known_classes(self) -> tuple[str, ...] | None:
        """The class names the registry knows (None: not shipped; only the count is checked)."""
        return KNOWN_CLASSES.get(self.name)

    def load(
        self, root: str | Path, transform: Callable | None = None, skip_bad_images: bool = False
    ) -> dict[str, LabeledImages]:
        """The ``train``, ``val`` and ``test`` splits (only ``test`` for a test-only dataset; no ``val`` for ImageNet).

        Raises:
            DataError: a missing file or folder (named, with where to get it), or class names that
                disagree with the registry.
        """
        missing = self.missing(root)
        if missing:
            raise DataError(f"{self.name}: " + "; ".join(missing))
        folder = self.directory(root)
        reader = READERS[self.layout]
        splits = reader(self, folder, transform, skip_bad_images)
        if len(splits["test"].classnames) > self.num_classes:
            raise DataError(
                f"{folder}: {len(splits['test'].classnames)} classes, but {self.title} has {self.num_classes}"
            )
        return splits


#: The registry's data file (shipped as package data).
REGISTRY_FILE = Path(__file__).with_name("datasets.json")
#: The layouts whose reader needs ImageNet's ``classnames.txt`` in the dataset's folder.
_CLASSNAMES_LAYOUTS = ("imagenet", "imagenet-v2", "imagenet-folders")
#: Each field of a dataset entry in the data file: its type and whether it must be there.
_FIELDS: dict[str, tuple[type, bool]] = {
    "name": (str, True),
    "title": (str, True),
    "folder": (str, True),
    "layout": (str, True),
    "image_dir": (str, True),
    "template": (str, True),
    "num_classes": (int, True),
    "downloads": (list, True),
    "split_file": (str, False),
    "split_drive_id": (str, False),
    "subset": (str, False),
    "test_only": (bool, False),
    "classes": (list, False),
}


@dataclass(frozen=True)
class Registry:
    """The registry as read from its data file."""

    sources: dict[str, str]
    datasets: dict[str, BenchmarkDataset]
    known_classes: dict[str, tuple[str, ...]]


def read_registry(path: str | Path = REGISTRY_FILE) -> Registry:
    """Read and check the registry's data file (see ``datasets.json`` for its fields).

    Raises:
        DataError: a malformed file, naming the entry and the field.
    """
    path = Path(path)
    sources, entries = _read_file(path)
    datasets: dict[str, BenchmarkDataset] = {}
    known: dict[str, tuple[str, ...]] = {}
    for number, entry in enumerate(entries):
        where = f"{path}: datasets[{number}]"
        _check_fields(entry, where)
        ds = BenchmarkDataset(**_dataset_fields(entry, sources, where))
        _check_unique(ds, datasets, where)
        datasets[ds.name] = ds
        if "classes" in entry:
            known[ds.name] = _classes(entry["classes"], ds.num_classes, where)
    return Registry(sources, datasets, known)


def _read_file(path: Path) -> tuple[dict[str, str], list]:
    """The file's ``sources`` and its list of dataset entries."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or set(data) != {"about", "sources", "datasets"}:
        raise DataError(f"{path}: expected an object with keys 'about', 'sources' and 'datasets'")
    sources, entries = data["sources"], data["datasets"]
    names = {"drive", "split_file", "classnames_file"}
    if not isinstance(sources, dict) or set(sources) != names or not all(isinstance(s, str) for s in sources.values()):
        raise DataError(f"{path}: 'sources' must hold exactly the strings {sorted(names)}")
    if not isinstance(entries, list):
        raise DataError(f"{path}: 'datasets' must be a list of dataset entries")
    return sources, entries


def _check_fields(entry: Any, where: str) -> None:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise DataError(f"{where}: unknown field {unknown[0]!r}; the fields are {list(_FIELDS)}")
    for key, (kind, needed) in _FIELDS.items():
        if key not in entry:
            if needed:
                raise DataError(f"{where}: field {key!r} is missing")
        elif not isinstance(entry[key], kind) or (kind is int and isinstance(entry[key], bool)):
            raise DataError(f"{where}: field {key!r} must be of type {kind.__name__}, not {entry[key]!r}")


def _dataset_fields(entry: dict, sources: dict[str, str], where: str) -> dict[str, Any]:
    """``entry``'s :class:`BenchmarkDataset` fields, its required files derived from its downloads and layout."""
    fields = {k: v for k, v in entry.items() if k not in ("downloads", "split_drive_id", "classes")}
    layout = entry["layout"]
    if layout not in READERS:
        raise DataError(f"{where}: unknown layout {layout!r}; known: {list(READERS)}")
    if entry["num_classes"] < 1 or entry["template"].count("{}") != 1:
        raise DataError(f"{where}: needs num_classes >= 1 and a template with one '{{}}'")
    if entry.get("subset", "") not in ("", *IMAGENET_SUBSETS):
        raise DataError(f"{where}: subset must be one of {list(IMAGENET_SUBSETS)}, not {entry['subset']!r}")
    required = _downloads(entry["downloads"], where)
    has_split = {"split_file", "split_drive_id"} & set(entry)
    if has_split != ({"split_file", "split_drive_id"} if layout == "split-json" else set()):
        raise DataError(f"{where}: 'split_file' and 'split_drive_id' go together, for layout split-json only")
    if layout == "split-json":
        split_source = sources["split_file"].format(entry["split_drive_id"])
        required.append(Required(entry["split_file"], split_source, is_dir=False))
    if layout in _CLASSNAMES_LAYOUTS:
        required.append(Required("classnames.txt", sources["classnames_file"], is_dir=False))
    return {**fields, "required": tuple(required)}


def _downloads(downloads: list, where: str) -> list[Required]:
    """The folders, then the files, of each download, each with the download's source."""
    required = []
    for download in downloads:
        if not _is_download(download):
            raise DataError(f"{where}: each download is {{'source': str, 'folders': [str], 'files': [str]}}")
        required += [Required(path, download["source"]) for path in download.get("folders", [])]
        required += [Required(path, download["source"], is_dir=False) for path in download.get("files", [])]
    return required


def _is_download(download: Any) -> bool:
    if not isinstance(download, dict) or not set(download) <= {"source", "folders", "files"}:
        return False
    paths = [download.get("folders", []), download.get("files", [])]
    return (
        isinstance(download.get("source"), str)
        and any(paths)
        and all(isinstance(p, list) and all(isinstance(s, str) for s in p) for p in paths)
    )


def _check_unique(ds: BenchmarkDataset, datasets: dict[str, BenchmarkDataset], where: str) -> None:
    if ds.name != ds.name.lower():
        raise DataError(f"{where}: the name {ds.name!r} must be lowercase")
    for other in datasets.values():
        if ds.name in (other.name, other.title.lower()) or ds.title.lower() in (other.name, other.title.lower()):
            raise DataError(f"{where}: {ds.name!r} ({ds.title}) clashes with {other.name!r} ({other.title})")


def _classes(classes: list, num_classes: int, where: str) -> tuple[str, ...]:
    if not all(isinstance(c, str) for c in classes) or len(set(classes)) != num_classes or len(classes) != num_classes:
        raise DataError(f"{where}: 'classes' must be {num_classes} distinct class names")
    return tuple(classes)


_REGISTRY = read_registry()
DRIVE = _REGISTRY.sources["drive"]
SPLIT_SOURCE = _REGISTRY.sources["split_file"]
CLASSNAMES_SOURCE = _REGISTRY.sources["classnames_file"]
#: Every dataset, by registry name.
DATASETS: dict[str, BenchmarkDataset] = _REGISTRY.datasets
#: The class names the registry ships, by dataset (CoOp's spelling).
KNOWN_CLASSES: dict[str, tuple[str, ...]] = _REGISTRY.known_classes
#: CoOp's 11 few-shot datasets, in the papers' column order.
FEW_SHOT_DATASETS: tuple[str, ...] = tuple(d for d in DATASETS if not DATASETS[d].test_only)
#: The domain-generalisation targets.
IMAGENET_VARIANTS: tuple[str, ...] = tuple(d for d in DATASETS if DATASETS[d].test_only)


def get_dataset(name: str) -> BenchmarkDataset:
    """The registry entry of ``name`` (its registry name or CoOp's, any case)."""
    key = name.lower()
    for ds in DATASETS.values():
        if key in (ds.name, ds.title.lower()):
            return ds
    raise DataError(f"unknown dataset {name!r}; the registry has: {', '.join(DATASETS)}")


def dataset_names(names: Sequence[str], all_means: Sequence[str] = FEW_SHOT_DATASETS) -> list[str]:
    """Registry names of ``names``; ``all`` expands to ``all_means``."""
    out: list[str] = []
    for name in names:
        out += list(all_means) if name == "all" else [get_dataset(name).name]
    return list(dict.fromkeys(out))


@dataclass
class CheckReport:
    """What ``vlprompt data check`` found for one dataset."""

    name: str
    folder: Path
    problems: list[str]
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        if self.ok:
            return f"{self.name}: OK ({self.summary}) in {self.folder}"
        return f"{self.name}: NOT READY in {self.folder}\n" + "\n".join(f"  - {p}" for p in self.problems)


def check_dataset(name: str, root: str | Path) -> CheckReport:
    """Check one dataset's layout and files under ``root`` (nothing is downloaded)."""
    ds = get_dataset(name)
    report = CheckReport(ds.name, ds.directory(root), ds.missing(root))
    if not report.ok:
        return report
    try:
        splits = ds.load(root)
    except DataError as err:
        report.problems.append(str(err))
        return report
    classes = len(splits["test"].classnames)
    subset = "" if classes == ds.num_classes else f" of {ds.num_classes}: a subset"
    sizes = ", ".join(f"{s} {len(d)}" for s, d in splits.items())
    report.summary = f"{classes} classes{subset}; images: {sizes}"
    return report
