"""Compositional zero-shot (CZSL) splits in the standard format of MIT-States, UT-Zappos and C-GQA.

(One concern, one file of about 460 lines: reading, checking and writing that one format.)

Layout of a dataset root::

    <root>/images/<relative path>
    <root>/<split>/{train,val,test}_pairs.txt      one "attr obj" per line
    <root>/metadata_<split>.t7                     torch-saved list of {image, attr, obj, set} dicts

``<split>`` is ``compositional-split-natural`` for the published benchmarks. :func:`load_czsl` reads
and checks a split, :class:`CZSLDataset` serves the images of one phase and :func:`write_czsl`
writes the same format (atomically) for synthetic or converted data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import OptionError
from ..io import atomic_write_bytes, atomic_write_text, torch_bytes, torch_load_failure
from ..schema import inside_folder
from .images import DataError, load_rgb

log = logging.getLogger(__name__)

DEFAULT_SPLIT = "compositional-split-natural"
PHASES = ("train", "val", "test")
#: Values the ``set`` field of a metadata entry may take.
SET_VALUES = ("train", "val", "test", "NA")
#: Reasons a metadata entry is left out, in the order they are checked.
SKIP_REASONS = ("attr_NA", "set_NA", "pair_not_in_split")

Pair = tuple[str, str]


@dataclass(frozen=True)
class CZSLSample:
    """One labelled image: ``image`` is relative to ``<root>/images``."""

    image: str
    attr: str
    obj: str


def read_pairs(path: str | Path) -> list[Pair]:
    """Read a pair file: one ``attr obj`` per line (whitespace separated), in file order.

    Blank lines at the start or end are ignored (as the reference loader does); any other line that
    is not exactly two names is an error naming the file and line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"pair file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    pairs: list[Pair] = []
    for i in range(first, last + 1):
        names = lines[i].split()
        if len(names) != 2:
            raise DataError(f"{path}:{i + 1}: expected two names 'attr obj' separated by whitespace, got {lines[i]!r}")
        pairs.append((names[0], names[1]))
    if not pairs:
        raise DataError(f"{path}: no pairs (expected one 'attr obj' per line)")
    return pairs


@dataclass
class CZSLSplit:
    """A compositional split: names, pair lists and the filtered samples of each phase.

    Attributes:
        root: the dataset root (images live under ``root / "images"``).
        split: the split folder name.
        attrs: sorted attribute names over all three pair files.
        objs: sorted object names over all three pair files.
        train_pairs: seen pairs, as in ``train_pairs.txt``.
        val_pairs: validation pairs (seen and unseen), as in ``val_pairs.txt``.
        test_pairs: test pairs (seen and unseen), as in ``test_pairs.txt``.
        pairs: the closed-world columns, ``sorted(set(train + val + test))``.
        samples: the kept metadata entries of each phase, in metadata order.
        skipped: number of metadata entries left out, by reason (see :data:`SKIP_REASONS`).
        attr2idx: attribute name -> index into ``attrs``.
        obj2idx: object name -> index into ``objs``.
    """

    root: Path
    split: str
    attrs: list[str]
    objs: list[str]
    train_pairs: list[Pair]
    val_pairs: list[Pair]
    test_pairs: list[Pair]
    pairs: list[Pair]
    samples: dict[str, list[CZSLSample]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    attr2idx: dict[str, int] = field(init=False, repr=False)
    obj2idx: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.attr2idx = {a: i for i, a in enumerate(self.attrs)}
        self.obj2idx = {o: i for i, o in enumerate(self.objs)}

    @property
    def image_dir(self) -> Path:
        return self.root / "images"

    def open_world_pairs(self) -> list[Pair]:
        """Every attribute x object pair, attribute-major (the open-world columns)."""
        return [(a, o) for a in self.attrs for o in self.objs]

    def columns(self, world: str = "closed") -> list[Pair]:
        """The score columns of ``world``: ``"closed"`` (:attr:`pairs`) or ``"open"``."""
        if world == "closed":
            return list(self.pairs)
        if world == "open":
            return self.open_world_pairs()
        raise OptionError(f"world must be 'closed' or 'open', not {world!r}")

    def phase_pairs(self, phase: str) -> list[Pair]:
        """The pair list of ``phase`` as in its file."""
        _check_phase(phase)
        return {"train": self.train_pairs, "val": self.val_pairs, "test": self.test_pairs}[phase]

    @staticmethod
    def pair_index(columns: Sequence[Pair]) -> dict[Pair, int]:
        """Map each pair of ``columns`` to its position; duplicate columns are an error."""
        index: dict[Pair, int] = {}
        for i, (a, o) in enumerate(columns):
            if index.setdefault((a, o), i) != i:
                raise DataError(f"the column list holds ({a}, {o}) twice")
        return index

    def seen_mask(self, columns: Sequence[Pair] | None = None) -> torch.Tensor:
        """Bool mask over ``columns`` (default :attr:`pairs`): True for train (seen) pairs."""
        seen = set(self.train_pairs)
        return torch.tensor([tuple(p) in seen for p in self._cols(columns)], dtype=torch.bool)

    def closed_mask(self, phase: str, columns: Sequence[Pair] | None = None) -> torch.Tensor:
        """Bool mask over ``columns``: the pairs a closed-world model may predict in ``phase``.

        ``"val"`` keeps train and val pairs, ``"test"`` keeps train and test pairs, ``"train"`` only
        train pairs.
        """
        keep = set(self.train_pairs) | set(self.phase_pairs(phase))
        return torch.tensor([tuple(p) in keep for p in self._cols(columns)], dtype=torch.bool)

    def pair_parts(self, columns: Sequence[Pair] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Attribute and object index of every column (two long tensors)."""
        cols = self._cols(columns)
        try:
            attrs = [self.attr2idx[a] for a, _ in cols]
            objs = [self.obj2idx[o] for _, o in cols]
        except KeyError as err:
            raise DataError(f"column name {err.args[0]!r} is not an attribute/object of this split") from None
        return torch.tensor(attrs, dtype=torch.long), torch.tensor(objs, dtype=torch.long)

    def labels(self, phase: str, columns: Sequence[Pair] | None = None) -> torch.Tensor:
        """Column index of the pair of every sample of ``phase`` (a long tensor)."""
        index = self.pair_index(self._cols(columns))
        out = []
        for s in self.samples[phase]:
            if (s.attr, s.obj) not in index:
                raise DataError(f"{phase} image {s.image}: pair ({s.attr}, {s.obj}) is not among the columns")
            out.append(index[(s.attr, s.obj)])
        return torch.tensor(out, dtype=torch.long)

    def _cols(self, columns: Sequence[Pair] | None) -> Sequence[Pair]:
        return self.pairs if columns is None else columns


def _check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise OptionError(f"phase must be one of {PHASES}, not {phase!r}")


def load_czsl(root: str | Path, split: str = DEFAULT_SPLIT, *, allow_novel_primitives: bool = False) -> CZSLSplit:
    """Read and check a CZSL split.

    Attributes and objects are the sorted (plain, case-sensitive) name sets over all three pair
    files. A metadata entry is kept for its phase unless its ``attr`` or ``set`` is ``"NA"`` or its
    pair is not one of the split's pairs (train, val or test); left-out entries are counted by
    reason in ``CZSLSplit.skipped`` and logged, never dropped silently.

    Checks (each a :class:`DataError` naming the file): every pair-file line holds exactly two
    names; val and test each hold at least one unseen pair (one not in train); every attribute and
    object of a val/test pair also occurs in some train pair, unless ``allow_novel_primitives`` is
    set (then such pairs are only counted and logged); every metadata entry is a dict with string
    ``image``, ``attr``, ``obj`` and ``set`` in ``train|val|test|NA``.

    The same samples serve the closed and the open world. (The reference loaders test an entry's
    pair against their column list, which in the open world is every attribute x object pair, so
    there they also keep entries whose pair is in no pair file; this loader never does.)

    Args:
        root: dataset root.
        split: split folder name; the metadata file is ``metadata_<split>.t7``.
        allow_novel_primitives: accept val/test pairs whose attribute or object no train pair has.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"CZSL root {root} does not exist or is not a folder")
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"split folder {split_dir} does not exist")
    files = {phase: split_dir / f"{phase}_pairs.txt" for phase in PHASES}
    lists = {phase: read_pairs(path) for phase, path in files.items()}
    train = lists["train"]
    train_set = set(train)
    train_attrs = {a for a, _ in train}
    train_objs = {o for _, o in train}
    for phase in ("val", "test"):
        if not set(lists[phase]) - train_set:
            raise DataError(f"{files[phase]}: no unseen pairs (every {phase} pair is also a train pair)")
        novel = [(i + 1, a, o) for i, (a, o) in enumerate(lists[phase]) if a not in train_attrs or o not in train_objs]
        if novel:
            line, a, o = novel[0]
            name = a if a not in train_attrs else o
            what = f"{len(novel)} {phase} pair(s) use an attribute or object that no train pair has"
            if not allow_novel_primitives:
                raise DataError(
                    f"{files[phase]}:{line}: pair ({a}, {o}) uses {name!r}, which occurs in no train pair "
                    f"({what}); pass allow_novel_primitives=True to accept this"
                )
            log.warning("%s: %s, e.g. line %d (%s, %s)", files[phase], what, line, a, o)

    all_pairs = train + lists["val"] + lists["test"]
    pair_set = set(all_pairs)
    samples, skipped = _read_metadata(root / f"metadata_{split}.t7", pair_set)
    out = CZSLSplit(
        root=root,
        split=split,
        attrs=sorted({a for a, _ in all_pairs}),
        objs=sorted({o for _, o in all_pairs}),
        train_pairs=train,
        val_pairs=lists["val"],
        test_pairs=lists["test"],
        pairs=sorted(pair_set),
        samples=samples,
        skipped=skipped,
    )
    log.info(
        "CZSL %s (%s): %d attrs, %d objs, %d/%d/%d train/val/test pairs, %d/%d/%d images; skipped %s",
        root,
        split,
        len(out.attrs),
        len(out.objs),
        len(train),
        len(lists["val"]),
        len(lists["test"]),
        *(len(samples[p]) for p in PHASES),
        ", ".join(f"{k}={v}" for k, v in skipped.items()),
    )
    return out


def _read_metadata(path: Path, pair_set: set[Pair]) -> tuple[dict[str, list[CZSLSample]], dict[str, int]]:
    if not path.is_file():
        raise DataError(f"metadata file not found: {path}")
    try:
        entries = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for bad or unsafe pickles
        raise DataError(f"cannot load CZSL metadata {path}: {torch_load_failure(path, err)}") from None
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a list of dicts, got {type(entries).__name__}")
    samples: dict[str, list[CZSLSample]] = {p: [] for p in PHASES}
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    for i, entry in enumerate(entries):
        image, attr, obj, phase = _metadata_entry(path, i, entry)
        reason = _skip_reason(attr, obj, phase, pair_set)
        if reason is None:
            samples[phase].append(CZSLSample(image, attr, obj))
        else:
            skipped[reason] += 1
    return samples, skipped


def _metadata_entry(path: Path, i: int, entry: object) -> tuple[str, str, str, str]:
    """``(image, attr, obj, set)`` of metadata entry ``i``, checked."""
    if not isinstance(entry, dict):
        raise DataError(f"{path}: entry {i} is a {type(entry).__name__}, expected a dict")
    for key in ("image", "attr", "obj", "set"):
        if not isinstance(entry.get(key), str):
            raise DataError(f"{path}: entry {i} needs a string {key!r}, got {entry.get(key)!r}")
    image, attr, obj, phase = entry["image"], entry["attr"], entry["obj"], entry["set"]
    inside_folder("<root>/images", image, f"{path}: entry {i} field 'image'", follow_links=False)
    if phase not in SET_VALUES:
        raise DataError(f"{path}: entry {i} ({image}) has set {phase!r}, expected one of {SET_VALUES}")
    return image, attr, obj, phase


def _skip_reason(attr: str, obj: str, phase: str, pair_set: set[Pair]) -> str | None:
    """Why an entry is left out (one of :data:`SKIP_REASONS`), or ``None`` to keep it."""
    if attr == "NA":
        return "attr_NA"
    if phase == "NA":
        return "set_NA"
    if (attr, obj) not in pair_set:
        return "pair_not_in_split"
    return None


class CZSLDataset(Dataset):
    """The images of one phase; items are ``(image, attr_index, obj_index, pair_index)``.

    ``attr_index``/``obj_index`` index ``split.attrs``/``split.objs``; ``pair_index`` indexes
    ``columns`` (default: the closed-world ``split.pairs``; pass ``split.open_world_pairs()`` for the
    open world or ``split.train_pairs`` for training over seen pairs only).

    Args:
        split: a loaded split.
        phase: ``"train"``, ``"val"`` or ``"test"``.
        transform: PIL image -> tensor; ``None`` returns the RGB PIL image.
        columns: the pair list ``pair_index`` refers to.
        skip_missing: leave out missing image files (and, with ``verify_images``, unreadable ones),
            counting them in ``self.skipped`` and listing them in ``self.skipped_files``; otherwise
            such a file is a :class:`DataError` naming it.
        verify_images: decode every image once up front to find corrupt files early.
    """

    def __init__(
        self,
        split: CZSLSplit,
        phase: str,
        transform: Callable[[Any], Any] | None = None,
        columns: Sequence[Pair] | None = None,
        skip_missing: bool = False,
        verify_images: bool = False,
    ):
        _check_phase(phase)
        self.split, self.phase, self.transform = split, phase, transform
        self.columns = list(split.pairs if columns is None else columns)
        index = split.pair_index(self.columns)
        samples = split.samples[phase]
        outside = [s for s in samples if (s.attr, s.obj) not in index]
        if outside:
            s = outside[0]
            raise DataError(
                f"{len(outside)} {phase} image(s) have a pair outside the given columns, "
                f"e.g. {s.image} with ({s.attr}, {s.obj})"
            )
        self.skipped = {"missing": 0, "corrupt": 0}
        self.skipped_files: list[str] = []
        kept: list[CZSLSample] = []
        for s in samples:
            path = split.image_dir / s.image
            problem = None
            if not path.is_file():
                problem = "missing"
            elif verify_images:
                try:
                    load_rgb(path)
                except DataError:
                    problem = "corrupt"
            if problem is None:
                kept.append(s)
                continue
            if not skip_missing:
                if problem == "missing":
                    raise DataError(f"image file not found: {path}; pass skip_missing=True to skip such files")
                load_rgb(path)  # raises the DataError naming the file and the decoder's complaint
            self.skipped[problem] += 1
            self.skipped_files.append(str(path))
        if self.skipped_files:
            log.warning(
                "%s: skipped %d missing and %d unreadable %s image(s), e.g. %s",
                split.root,
                self.skipped["missing"],
                self.skipped["corrupt"],
                phase,
                self.skipped_files[0],
            )
        self.samples = kept
        self.attr_labels = torch.tensor([split.attr2idx[s.attr] for s in kept], dtype=torch.long)
        self.obj_labels = torch.tensor([split.obj2idx[s.obj] for s in kept], dtype=torch.long)
        self.pair_labels = torch.tensor([index[(s.attr, s.obj)] for s in kept], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int, int, int]:
        image = load_rgb(self.split.image_dir / self.samples[i].image)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.attr_labels[i]), int(self.obj_labels[i]), int(self.pair_labels[i])


def write_czsl(
    root: str | Path,
    train_pairs: Iterable[Pair],
    val_pairs: Iterable[Pair],
    test_pairs: Iterable[Pair],
    samples: Iterable[Mapping[str, Any]],
    *,
    split: str = DEFAULT_SPLIT,
) -> Path:
    """Write pair files and metadata in the standard CZSL format (images are the caller's job).

    Every file is written atomically (temp file in the same folder, fsync, rename). The metadata is
    ``torch.save`` of a plain list of dicts, so :func:`load_czsl` reads it with ``weights_only=True``.

    Args:
        root: dataset root (created if needed).
        train_pairs: seen pairs.
        val_pairs: validation pairs (seen and unseen).
        test_pairs: test pairs (seen and unseen).
        samples: dicts with string ``image`` (relative to ``root/images``), ``attr``, ``obj`` and
            ``set`` (``train``, ``val``, ``test`` or ``NA``); other keys with plain values are kept.
        split: split folder name.

    Returns:
        The root folder.
    """
    root = Path(root)
    lists = {"train": list(train_pairs), "val": list(val_pairs), "test": list(test_pairs)}
    for phase, pairs in lists.items():
        for i, pair in enumerate(pairs):
            if len(pair) != 2 or not all(isinstance(n, str) and n and n.split() == [n] for n in pair):
                raise DataError(f"{phase} pair {i} {pair!r}: names must be non-empty strings without spaces")
    entries = [_sample_entry(i, sample) for i, sample in enumerate(samples)]
    split_dir = root / split
    split_dir.mkdir(parents=True, exist_ok=True)
    for phase, pairs in lists.items():
        atomic_write_text(split_dir / f"{phase}_pairs.txt", "".join(f"{a} {o}\n" for a, o in pairs))
    atomic_write_bytes(root / f"metadata_{split}.t7", torch_bytes(entries))
    return root


def _sample_entry(i: int, sample: Mapping[str, Any]) -> dict[str, Any]:
    """Sample ``i`` of :func:`write_czsl` as a plain dict, checked as :func:`load_czsl` will read it."""
    entry = dict(sample)
    for key in ("image", "attr", "obj", "set"):
        if not isinstance(entry.get(key), str):
            raise DataError(f"sample {i} needs a string {key!r}, got {entry.get(key)!r}")
    if entry["set"] not in SET_VALUES:
        raise DataError(f"sample {i} has set {entry['set']!r}, expected one of {SET_VALUES}")
    for key, value in entry.items():
        if not isinstance(value, (str, int, float, bool, type(None))):
            raise DataError(f"sample {i} key {key!r}: only plain values can be saved, got {type(value)}")
    return entry


__all__ = [
    "DEFAULT_SPLIT",
    "PHASES",
    "SKIP_REASONS",
    "CZSLDataset",
    "CZSLSample",
    "CZSLSplit",
    "Pair",
    "load_czsl",
    "read_pairs",
    "write_czsl",
]
