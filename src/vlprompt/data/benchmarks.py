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
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

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

DRIVE = "https://drive.google.com/file/d/{}/view"
SPLIT_SOURCE = "CoOp's fixed split (DATASETS.md of KaiyangZhou/CoOp): " + DRIVE
CLASSNAMES_SOURCE = "ImageNet's classnames.txt (CoOp: " + DRIVE.format("1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF") + ")"


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
        reader = _READERS[self.layout]
        splits = reader(self, folder, transform, skip_bad_images)
        if len(splits["test"].classnames) > self.num_classes:
            raise DataError(
                f"{folder}: {len(splits['test'].classnames)} classes, but {self.title} has {self.num_classes}"
            )
        return splits


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


_READERS = {
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

_PETS = [
    "abyssinian",
    "american_bulldog",
    "american_pit_bull_terrier",
    "basset_hound",
    "beagle",
    "bengal",
    "birman",
    "bombay",
    "boxer",
    "british_shorthair",
    "chihuahua",
    "egyptian_mau",
    "english_cocker_spaniel",
    "english_setter",
    "german_shorthaired",
    "great_pyrenees",
    "havanese",
    "japanese_chin",
    "keeshond",
    "leonberger",
    "maine_coon",
    "miniature_pinscher",
    "newfoundland",
    "persian",
    "pomeranian",
    "pug",
    "ragdoll",
    "russian_blue",
    "saint_bernard",
    "samoyed",
    "scottish_terrier",
    "shiba_inu",
    "siamese",
    "sphynx",
    "staffordshire_bull_terrier",
    "wheaten_terrier",
    "yorkshire_terrier",
]
_DTD = [
    "banded",
    "blotchy",
    "braided",
    "bubbly",
    "bumpy",
    "chequered",
    "cobwebbed",
    "cracked",
    "crosshatched",
    "crystalline",
    "dotted",
    "fibrous",
    "flecked",
    "freckled",
    "frilly",
    "gauzy",
    "grid",
    "grooved",
    "honeycombed",
    "interlaced",
    "knitted",
    "lacelike",
    "lined",
    "marbled",
    "matted",
    "meshed",
    "paisley",
    "perforated",
    "pitted",
    "pleated",
    "polka-dotted",
    "porous",
    "potholed",
    "scaly",
    "smeared",
    "spiralled",
    "sprinkled",
    "stained",
    "stratified",
    "striped",
    "studded",
    "swirly",
    "veined",
    "waffled",
    "woven",
    "wrinkled",
    "zigzagged",
]
#: EuroSAT's class names as CoOp renames its folders.
_EUROSAT = (
    "Annual Crop Land",
    "Forest",
    "Herbaceous Vegetation Land",
    "Highway or Road",
    "Industrial Buildings",
    "Pasture Land",
    "Permanent Crop Land",
    "Residential Buildings",
    "River",
    "Sea or Lake",
)
#: The class names the registry ships, by dataset (CoOp's spelling).
KNOWN_CLASSES: dict[str, tuple[str, ...]] = {
    "oxford_pets": tuple(_PETS),
    "dtd": tuple(_DTD),
    "eurosat": _EUROSAT,
}


def _split_dataset(name, title, folder, image_dir, template, num_classes, downloads, split_id) -> BenchmarkDataset:
    split_file = f"split_zhou_{title}.json"
    required = tuple(Required(path, source) for path, source in downloads)
    required += (Required(split_file, SPLIT_SOURCE.format(split_id), is_dir=False),)
    return BenchmarkDataset(name, title, folder, "split-json", image_dir, template, num_classes, required, split_file)


def _variant(name, title, folder, layout, image_dir, classes, source, subset="") -> BenchmarkDataset:
    required = (Required(image_dir, source), Required("classnames.txt", CLASSNAMES_SOURCE, is_dir=False))
    template = "a photo of a {}."
    return BenchmarkDataset(
        name, title, folder, layout, image_dir, template, classes, required, subset=subset, test_only=True
    )


_VGG = "https://www.robots.ox.ac.uk/~vgg/data"
_CARS = "http://ai.stanford.edu/~jkrause/car196"
#: Every dataset, by registry name.
DATASETS: dict[str, BenchmarkDataset] = {
    d.name: d
    for d in (
        BenchmarkDataset(
            "imagenet",
            "ImageNet",
            "imagenet",
            "imagenet",
            "images",
            "a photo of a {}.",
            1000,
            (
                Required("images/train", "ILSVRC2012 train images, one folder per wnid (https://image-net.org)"),
                Required("images/val", "ILSVRC2012 val images sorted into wnid folders (https://image-net.org)"),
                Required("classnames.txt", CLASSNAMES_SOURCE, is_dir=False),
            ),
        ),
        _split_dataset(
            "caltech101",
            "Caltech101",
            "caltech-101",
            "101_ObjectCategories",
            "a photo of a {}.",
            100,
            [("101_ObjectCategories", "101_ObjectCategories.tar.gz from https://data.caltech.edu/records/mzrjq-6wc02")],
            "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN",
        ),
        _split_dataset(
            "oxford_pets",
            "OxfordPets",
            "oxford_pets",
            "images",
            "a photo of a {}, a type of pet.",
            37,
            [("images", f"{_VGG}/pets/data/images.tar.gz")],
            "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs",
        ),
        _split_dataset(
            "stanford_cars",
            "StanfordCars",
            "stanford_cars",
            "",
            "a photo of a {}.",
            196,
            [("cars_train", f"{_CARS}/cars_train.tgz"), ("cars_test", f"{_CARS}/cars_test.tgz")],
            "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT",
        ),
        _split_dataset(
            "oxford_flowers",
            "OxfordFlowers",
            "oxford_flowers",
            "jpg",
            "a photo of a {}, a type of flower.",
            102,
            [("jpg", f"{_VGG}/flowers/102/102flowers.tgz")],
            "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT",
        ),
        _split_dataset(
            "food101",
            "Food101",
            "food-101",
            "images",
            "a photo of {}, a type of food.",
            101,
            [("images", "food-101.tar.gz from https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/")],
            "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl",
        ),
        BenchmarkDataset(
            "fgvc_aircraft",
            "FGVCAircraft",
            "fgvc_aircraft",
            "fgvc-aircraft",
            "images",
            "a photo of a {}, a type of aircraft.",
            100,
            tuple(
                Required(
                    path,
                    f"the data/ folder of {_VGG}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                    is_dir=path == "images",
                )
                for path in ("images", "variants.txt", *(f"images_variant_{s}.txt" for s in SPLITS))
            ),
        ),
        _split_dataset(
            "sun397",
            "SUN397",
            "sun397",
            "SUN397",
            "a photo of a {}.",
            397,
            [("SUN397", "http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz")],
            "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq",
        ),
        _split_dataset(
            "dtd",
            "DescribableTextures",
            "dtd",
            "images",
            "{} texture.",
            47,
            [("images", f"{_VGG}/dtd/download/dtd-r1.0.1.tar.gz")],
            "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x",
        ),
        _split_dataset(
            "eurosat",
            "EuroSAT",
            "eurosat",
            "2750",
            "a centered satellite photo of {}.",
            10,
            [
                (
                    "2750",
                    "EuroSAT.zip (RGB) from https://github.com/phelber/EuroSAT (was http://madm.dfki.de/files/sentinel/EuroSAT.zip)",
                )
            ],
            "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o",
        ),
        _split_dataset(
            "ucf101",
            "UCF101",
            "ucf101",
            "UCF-101-midframes",
            "a photo of a person doing {}.",
            101,
            [
                (
                    "UCF-101-midframes",
                    "UCF-101-midframes.zip (CoOp: " + DRIVE.format("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O") + ")",
                )
            ],
            "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y",
        ),
        _variant(
            "imagenetv2",
            "ImageNetV2",
            "imagenetv2",
            "imagenet-v2",
            "imagenetv2-matched-frequency-format-val",
            1000,
            "https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-matched-frequency.tar.gz",
        ),
        _variant(
            "imagenet_sketch",
            "ImageNetSketch",
            "imagenet-sketch",
            "imagenet-folders",
            "images",
            1000,
            "https://github.com/HaohanWang/ImageNet-Sketch",
        ),
        _variant(
            "imagenet_a",
            "ImageNetA",
            "imagenet-adversarial",
            "imagenet-folders",
            "imagenet-a",
            200,
            "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",
            subset="imagenet_a",
        ),
        _variant(
            "imagenet_r",
            "ImageNetR",
            "imagenet-rendition",
            "imagenet-folders",
            "imagenet-r",
            200,
            "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",
            subset="imagenet_r",
        ),
    )
}

#: CoOp's 11 few-shot datasets, in the papers' column order.
FEW_SHOT_DATASETS: tuple[str, ...] = tuple(d for d in DATASETS if not DATASETS[d].test_only)
#: The domain-generalisation targets.
IMAGENET_VARIANTS: tuple[str, ...] = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")


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
