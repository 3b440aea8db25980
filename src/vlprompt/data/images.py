"""Labelled image datasets: ImageFolder trees and CoOp split-JSON files."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import DataError
from ..io import atomic_write_text
from ..schema import check_unique, expect, inside_folder, is_a, read_json_file

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
#: Version of :func:`to_rgb`'s rules; part of the feature-cache key, so a change re-encodes cached images.
IMAGE_DECODING = 2
#: How to leave bad images out, in every place the option exists.
SKIP_HINT = (
    "to leave such files out (counted and reported), pass --data.skip_bad_images true (vlprompt train, eval, "
    "czsl) or skip_bad_images=True (Python)"
)


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as 8-bit RGB; a missing, corrupt or unconvertible file is a :class:`DataError` naming it.

    Modes PIL converts wrongly are scaled here by their bit depth (see :func:`to_rgb`).
    """
    try:
        with Image.open(path) as img:
            return to_rgb(img, path)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except Image.DecompressionBombError as err:
        raise DataError(
            f"cannot read image {path}: {err} Raise PIL.Image.MAX_IMAGE_PIXELS in Python if the image is genuine"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read image {path}: {err}") from None


def to_rgb(img: Image.Image, path: str | Path = "image") -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, keeping the image's brightness.

    - ``I;16``, ``I;16B``, ``I;16L``, ``I;16N`` (16-bit grey): value * 255 / 65535, rounded.
    - ``I`` (32-bit signed grey, e.g. 16-bit PNGs in some Pillow versions, int32 TIFFs): read as 16-bit
      (value * 255 / 65535) when every value is in 0..65535, else as 32-bit (value * 255 / (2**31 - 1)).
      Negative values are a :class:`DataError`.
    - ``F`` (32-bit float grey): values must lie in [0, 1] and become value * 255, rounded; NaN,
      infinity or values outside [0, 1] are a :class:`DataError` (no range is guessed).
    - Every other mode (1, L, P, LA, PA, RGBA, CMYK, YCbCr, ...) goes through PIL's ``convert("RGB")``:
      alpha is dropped, not composited (as in torchvision's and open_clip's loaders).
    """
    mode = img.mode
    if mode.startswith("I;16") or mode == "I" or mode.startswith("I;32") or mode == "F":
        grey = np.asarray(img)
        if mode == "F":
            grey = grey.astype(np.float64)
            if not np.isfinite(grey).all() or grey.min() < 0 or grey.max() > 1:
                raise DataError(
                    f"{path}: float image (mode F) with values in [{np.nanmin(grey):g}, {np.nanmax(grey):g}]; "
                    "vlprompt reads float images only in [0, 1] (scale it, or save it as 8- or 16-bit integers)"
                )
            scaled = grey * 255.0
        else:
            grey = grey.astype(np.int64)
            if grey.size and grey.min() < 0:
                raise DataError(f"{path}: integer image (mode {mode}) with negative values; expected unsigned data")
            top = 65535 if mode.startswith("I;16") or not grey.size or grey.max() <= 65535 else 2**31 - 1
            scaled = grey * (255.0 / top)
        grey8 = np.rint(scaled).clip(0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey8[..., None], 3, axis=-1))
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise DataError(f"{path}: cannot convert image mode {mode} to RGB ({err})") from None


class SeededViews:
    """Augmented views as a pure function of (seed, epoch, image): ``transform`` runs under a torch RNG seeded
    from the three, so every run, process and DataLoader worker that draws a view draws the same one (and its
    features can be cached). A :class:`LabeledImages` calls it with each image's path. ``view`` > 0 draws
    another, independent view of each image (a second view of the same epoch, as CoPrompt's K_TRANSFORMS 2).
    """

    per_image = True

    def __init__(self, transform: Callable, seed: int, epoch: int, view: int = 0):
        self.transform, self.seed, self.epoch, self.view = transform, seed, epoch, view

    def __call__(self, image: Image.Image, key: str):
        other = f"|view {self.view}" if self.view else ""  # view 0 keeps the draws it always had
        digest = hashlib.sha256(f"{self.seed}|{self.epoch}|{key}{other}".encode()).digest()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(digest[:8], "little"))
            return self.transform(image)

    def __repr__(self) -> str:
        view = f", view={self.view}" if self.view else ""
        return f"SeededViews(seed={self.seed}, epoch={self.epoch}{view}, {self.transform!r})"


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


class LabeledImages(Dataset):
    """A list of (image path, label) with class names; items are ``(transform(image), label)``.

    Args:
        samples: the images and their labels (0..C-1).
        classnames: one name per label.
        transform: PIL image -> tensor (e.g. ``backbone.image_transform()``).
        skip_bad_images: check every image up front and drop missing or unreadable ones,
            counting and reporting them (``self.skipped``); otherwise such a file is an error.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        classnames: Sequence[str],
        transform: Callable | None = None,
        skip_bad_images: bool = False,
    ):
        self.classnames = list(classnames)
        self.transform = transform
        self.skipped: list[str] = []
        samples = list(samples)
        for s in samples:
            if not 0 <= s.label < len(self.classnames):
                raise DataError(f"label {s.label} of {s.path} is out of range 0..{len(self.classnames) - 1}")
        if skip_bad_images:
            good = []
            for s in samples:
                try:
                    load_rgb(s.path)
                    good.append(s)
                except DataError as err:
                    self.skipped.append(str(err))
            if self.skipped:
                log.warning("skipped %d unreadable image(s), e.g. %s", len(self.skipped), self.skipped[0])
            samples = good
        else:
            missing = [s.path for s in samples if not os.path.isfile(s.path)]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise DataError(f"image file not found: {missing[0]}{more}; {SKIP_HINT}")
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image = load_rgb(sample.path)
        if getattr(self.transform, "per_image", False):  # a transform that depends on the image's identity
            assert self.transform is not None  # it has per_image
            return self.transform(image, sample.path), sample.label
        return (self.transform(image) if self.transform else image), sample.label

    @property
    def tasks(self) -> list[int] | None:
        """Each image's task id in a multi-task dataset (:class:`~vlprompt.data.tasks.TaskImages`), else None."""
        return None

    def subset(self, indices: Sequence[int]) -> Self:
        """The same dataset restricted to ``indices`` (no re-checking of files)."""
        out = copy.copy(self)
        out.skipped = list(self.skipped)
        out.samples = [self.samples[i] for i in indices]
        return out

    def with_transform(self, transform: Callable | None) -> Self:
        out = self.subset(range(len(self)))
        out.transform = transform
        return out

    def relabel(self, keep: Sequence[int]) -> LabeledImages:
        """Keep only the images of labels ``keep``, renumbered 0..len(keep)-1 in that order."""
        mapping = {old: new for new, old in enumerate(keep)}
        out = self.subset([i for i, s in enumerate(self.samples) if s.label in mapping])
        out.samples = [Sample(s.path, mapping[s.label]) for s in out.samples]
        out.classnames = [self.classnames[k] for k in keep]
        return out


def image_folder(
    root: str | Path,
    transform: Callable | None = None,
    skip_bad_images: bool = False,
    classnames: Sequence[str] | None = None,
) -> LabeledImages:
    """One sub-folder per class (sorted names are labels 0..C-1), images inside.

    Args:
        classnames: the label space to use (e.g. the training split's); the folders must match it
            exactly, so that a label means the same class in every split.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root} has no class sub-folders")
    if classnames is not None and classes != sorted(classnames):
        missing = sorted(set(classnames) - set(classes))
        extra = sorted(set(classes) - set(classnames))
        raise DataError(f"{root}: class folders differ from the training classes (missing {missing}, extra {extra})")
    classes = list(classnames) if classnames is not None else classes
    samples = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {root / name} has no images ({', '.join(IMAGE_SUFFIXES)})")
        samples += [Sample(str(f), label) for f in files]
    return LabeledImages(samples, classes, transform, skip_bad_images)


def split_json(
    split_file: str | Path,
    image_root: str | Path,
    split: str,
    transform: Callable | None = None,
    skip_bad_images: bool = False,
) -> LabeledImages:
    """One split of a CoOp split file: ``{"train"|"val"|"test": [[relpath, label, classname], ...]}``.

    Class names come from all three splits, so every split shares one label space.
    """
    split_file = Path(split_file)
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, not {split!r}")
    data = _read_split_file(split_file)
    classnames = _split_classnames(split_file, data)
    image_root = Path(image_root)
    samples = [Sample(str(image_root / e[0]), e[1]) for e in data[split]]
    return LabeledImages(samples, classnames, transform, skip_bad_images)


def _read_split_file(split_file: Path) -> dict:
    """The parsed split file, checked to be an object with the keys :data:`SPLITS`, each a list."""
    data = read_json_file(split_file, "split file")
    expect(data, dict, f"{split_file}: the split file", DataError)
    for key in SPLITS:
        if key not in data:
            raise DataError(f"{split_file}: missing key {key!r} (expected {list(SPLITS)})")
        expect(data[key], list, f"{split_file}: {key!r}")
    return data


def _split_classnames(split_file: Path, data: dict) -> list[str]:
    """Class name of each label 0..C-1, from the entries of all splits (checked to agree and to be distinct)."""
    names: dict[int, str] = {}
    for key in SPLITS:
        for i, entry in enumerate(data[key]):
            ok = isinstance(entry, (list, tuple)) and len(entry) == 3 and is_a(entry[1], int)
            if not (ok and isinstance(entry[0], str) and isinstance(entry[2], (str, int))):
                raise DataError(
                    f"{split_file}: {key}[{i}] must be [relative path, label, class name], got {entry!r:.120}"
                )
            inside_folder("the image root", entry[0], f"{split_file}: {key}[{i}] image path", follow_links=False)
            label, name = entry[1], str(entry[2])
            if label < 0:
                raise DataError(f"{split_file}: {key}[{i}] has negative label {label}")
            if names.setdefault(label, name) != name:
                raise DataError(f"{split_file}: {key}[{i}] names label {label} {name!r}, elsewhere {names[label]!r}")
    n = len(names)
    if sorted(names) != list(range(n)):
        bad = next(label for label in sorted(names) if label >= n)
        raise DataError(f"{split_file}: label {bad} is out of range: labels must be 0..{n - 1}")
    check_unique([names[i] for i in range(n)], f"{split_file}", what="the class names of its labels")
    return [names[i] for i in range(n)]


def write_split_json(path: str | Path, splits: Mapping[str, Sequence[Sequence[object]]]) -> Path:
    """Write a CoOp split file ``{"train"|"val"|"test": [[relpath, label, classname], ...]}`` atomically.

    The entries are checked as :func:`split_json` reads them (every label names one class, labels
    are 0..C-1 over the three splits), so the file reads back with the same label space. The JSON
    is compact, with the keys in the order ``train``, ``val``, ``test``.

    Args:
        path: the file to write (its folder is created if needed).
        splits: exactly the keys ``"train"``, ``"val"`` and ``"test"``, each a list of
            ``(relative path, int label, class name)`` entries (lists or tuples).

    Returns:
        The path written.

    Raises:
        DataError: a key is missing or unknown, or an entry is malformed or disagrees with another.
    """
    path = Path(path)
    if sorted(splits) != sorted(SPLITS):
        raise DataError(f"{path}: splits must have exactly the keys {list(SPLITS)}, got {sorted(splits)}")
    data = {key: [_split_entry(path, key, i, e) for i, e in enumerate(splits[key])] for key in SPLITS}
    _split_classnames(path, data)
    atomic_write_text(path, json.dumps(data))
    return path


def _split_entry(path: Path, key: str, i: int, entry: Sequence[object]) -> list[object]:
    """One entry to write, as the list ``[relative path, label, class name]``."""
    ok = isinstance(entry, (list, tuple)) and len(entry) == 3
    if ok:
        relpath, label, name = entry
        ok = isinstance(relpath, str) and isinstance(label, int) and not isinstance(label, bool)
        ok = ok and isinstance(name, str)
    if not ok:
        raise DataError(f"{path}: {key}[{i}] must be [relative path, int label, class name], got {entry!r}")
    return list(entry)
