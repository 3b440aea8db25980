"""The few-shot (and base-to-new) classification protocol."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from ..backbones import Backbone
from ..data import LabeledImages, base_new_split, few_shot, image_folder, split_json
from ..data.benchmarks import get_dataset
from ..data.images import DataError
from ..errors import OptionError
from ..evaluation import evaluate, harmonic_mean
from ..features import FeatureCache
from ..labels import ClassNames
from ..methods import PromptMethod, method_class
from .config import RunConfig
from .loop import Protocol, run_seeds

FORMATS = ("split-json", "imagefolder", "benchmark")
#: Base-to-new where the method learns from every class's training images, labels unused, over every class name
#: (PromptKD's release: zhengli97/PromptKD@ec244f7:datasets/*.py, TRAINER.MODAL base2novel); only for a method that
#: ``learns_without_labels``.
TRANSDUCTIVE = "base-to-new-transductive"
#: The protocol's views of the classes (``--data.class_split``); the halves themselves are
#: :data:`vlprompt.data.sampling.CLASS_SPLITS`.
CLASS_SPLIT_PROTOCOLS = ("all", "base-to-new", TRANSDUCTIVE)


@dataclass
class ImageSource:
    """Where a dataset's images and labels are: a CoOp split file, or class-folder trees.

    Attributes:
        format: "split-json" (CoOp split file + image root), "imagefolder" (one folder per class) or
            "benchmark" (a registry dataset, ``vlprompt data check`` lists them, under ``root``).
        root: image root for split-json paths; the datasets root (CoOp's $DATA) for "benchmark".
        dataset: the registry dataset ("benchmark"), e.g. oxford_pets.
        split_file: the CoOp split JSON ({"train", "val", "test"} lists of [path, label, class name]).
        train_dir: class-folder tree of the training images ("imagefolder").
        val_dir: class-folder tree of the validation images ("imagefolder", optional).
        test_dir: class-folder tree of the test images ("imagefolder").
        skip_bad_images: drop missing or unreadable images (counted and reported) instead of failing.
    """

    format: str = "split-json"
    root: str = ""
    split_file: str = ""
    dataset: str = ""
    train_dir: str = ""
    val_dir: str = ""
    test_dir: str = ""
    skip_bad_images: bool = False

    def validate(self, where: str = "--data") -> None:
        """Check the options; messages name the flags under ``where`` (e.g. ``--data``)."""
        if self.format not in FORMATS:
            raise DataError(f"{where}.format must be one of {FORMATS}, not {self.format!r}")
        if self.format == "benchmark":
            get_dataset(self.dataset)
            if not self.root:
                raise DataError(f"{where}.root is required for {where}.format benchmark: the datasets root")
        if self.format == "split-json" and not self.split_file:
            raise DataError(f"{where}.split_file is required for {where}.format split-json")
        for split in ("train", "test"):
            if self.format == "imagefolder" and not getattr(self, f"{split}_dir"):
                raise DataError(f"{where}.{split}_dir is required for {where}.format imagefolder")

    def load(self, transform=None) -> dict[str, LabeledImages]:
        """The train, val (may be absent) and test splits."""
        self.validate()
        if self.format == "benchmark":
            return get_dataset(self.dataset).load(self.root, transform, self.skip_bad_images)
        if self.format == "split-json":
            return {
                s: split_json(self.split_file, self.root, s, transform, self.skip_bad_images)
                for s in ("train", "val", "test")
            }
        train = image_folder(self.train_dir, transform, self.skip_bad_images)
        splits = {"train": train}
        for split in ("val", "test"):
            folder = getattr(self, f"{split}_dir")
            if folder:
                splits[split] = image_folder(folder, transform, self.skip_bad_images, train.classnames)
        return splits


@dataclass
class DataConfig(ImageSource):
    """A classification dataset and the protocol's view of it.

    Attributes:
        shots: K images per class for training (0 = all); validation uses min(K, 4).
        class_split: "all", "base-to-new" (train on the first half of the labels, test on both halves) or
            "base-to-new-transductive" (train on every class's images, labels unused, over every class name;
            test on both halves: PromptKD's release, for a method that learns without labels; the release
            trains on every image, ``shots`` 0: a subset of K images per class is drawn by their labels).
    """

    shots: int = 16
    class_split: str = "all"

    def validate(self, where: str = "--data") -> None:
        super().validate(where)
        if self.class_split not in CLASS_SPLIT_PROTOCOLS:
            raise DataError(f"{where}.class_split must be one of {CLASS_SPLIT_PROTOCOLS}, not {self.class_split!r}")
        if self.shots < 0:
            raise DataError(f"{where}.shots must be >= 0 (0: all images), not {self.shots}")


@dataclass
class ClassificationRun(RunConfig):
    """One method on one dataset over several seeds (few-shot, optionally base-to-new).

    Attributes:
        data: the dataset and the protocol's view of it.
        feature_cache_dir: keep frozen image features here across runs (default: in memory).
    """

    data: DataConfig = field(default_factory=DataConfig)
    feature_cache_dir: str | None = None


class Classification(Protocol):
    """Few-shot training on K images per class; test accuracy, or base / new / H for base-to-new."""

    command = "train"
    label_kind = ClassNames
    group: ClassVar[tuple[str, ...]] = ("method", "shots")
    run: ClassificationRun

    def __init__(self, run: ClassificationRun):
        super().__init__(run)
        self.base_to_new = run.data.class_split in ("base-to-new", TRANSDUCTIVE)
        self.transductive = run.data.class_split == TRANSDUCTIVE
        self._val_set: LabeledImages | None = None

    def shots(self) -> int:
        return self.run.data.shots

    def method_options(self) -> dict[str, Any]:
        """A registry dataset's hand template reaches every method that scores with one (unless the user set it)."""
        options, data = super().method_options(), self.run.data
        if data.format != "benchmark" or not data.dataset:
            return options
        cls = method_class(self.run.method, ClassNames)
        return cls.with_dataset_template(options, data.dataset, get_dataset(data.dataset).template)

    def validate(self) -> None:
        data = self.run.data
        data.validate()
        if self.transductive and not learns_without_labels(self.run):
            why = "learns from labels" if method_class(self.run.method).learns else "learns nothing"
            raise OptionError(
                f"--data.class_split {TRANSDUCTIVE} hands the method the new classes' training images: only for a "
                f"method that learns without labels (promptkd), and {self.run.method} {why}; use base-to-new"
            )
        if data.format == "benchmark" and get_dataset(data.dataset).test_only:
            raise DataError(f"--data.dataset {data.dataset} is an evaluation-only dataset: it has no training split")

    def prepare(self, backbone: Backbone, cache: FeatureCache) -> None:
        self.splits = self.run.data.load(backbone.image_transform())
        self.cache = cache
        if not len(self.splits["test"]):
            raise DataError("the test split is empty: nothing to evaluate on")

    def seed_data(self, seed: int, seed_dir: Path | None):
        shots, which = self.run.data.shots, "base" if self.base_to_new else "all"
        train_set = few_shot(  # transductive: every class's images (the method never reads their labels)
            base_new_split(self.splits["train"], "all" if self.transductive else which),
            shots,
            seed,
            seed_dir and seed_dir / "train_subset.json",
        )
        scorer, self._val_set = None, None
        if "val" in self.splits and len(self.splits["val"]):
            val_set = few_shot(
                base_new_split(self.splits["val"], which),
                min(shots, 4) if shots else 0,
                seed,
                seed_dir and seed_dir / "val_subset.json",
                allow_fewer=True,
            )
            scorer, self._val_set = partial(_val_accuracy, dataset=val_set, cache=self.cache), val_set
        elif self.run.train_config(shots).select == "best":
            raise DataError("--train.select best needs a validation split, and this dataset has none")
        return train_set, ClassNames(tuple(train_set.classnames)), scorer

    def validation_set(self) -> LabeledImages | None:
        return self._val_set

    def check(self, method: PromptMethod) -> None:
        if self.base_to_new and not method.transfers_to_new_classes:
            raise OptionError(f"{method.name} with these options cannot score new classes: no base-to-new protocol")

    def evaluate(self, method: PromptMethod, backbone: Backbone, keys: dict[str, Any]) -> list[dict[str, Any]]:
        row: dict[str, Any] = {**keys, "shots": self.run.data.shots}
        test = self.splits["test"]
        if not self.base_to_new:
            return [{**row, **evaluate(method, backbone, test, self.cache)}]
        for half in ("base", "new"):  # each half scored over its own classes (transductive: trained on both)
            half_test = base_new_split(test, half)
            with scoring_classes(method, backbone, half_test.classnames):
                row[half] = evaluate(method, backbone, half_test, self.cache)["accuracy"]
        row["hm"] = harmonic_mean(row["base"], row["new"])
        return [row]

    def prompt_extra(self, seed: int) -> dict[str, Any]:
        return {"seed": seed, "shots": self.run.data.shots}

    def seed_record(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return rows[0]  # one row a seed


def learns_without_labels(run: RunConfig) -> bool:
    """Whether the run's method, with the run's options, never reads labels (a transductive base-to-new may hand it
    every class's training images)."""
    cls = method_class(run.method, ClassNames)
    return cls.capabilities(cls.Config.from_dict(run.resolved_options(), cls.name))["learns_without_labels"]


@contextlib.contextmanager
def scoring_classes(method: PromptMethod, backbone: Backbone, names: Sequence[str]) -> Iterator[None]:
    """``method`` scores ``names`` inside the block (if it learned others), and its own label space again after."""
    learned = method.labels
    if learned == ClassNames(tuple(names)):
        yield
        return
    method.set_classes(backbone, names)
    try:
        yield
    finally:
        method.set_classes(backbone, learned)


def _val_accuracy(method, backbone: Backbone, dataset: LabeledImages, cache: FeatureCache) -> float:
    """Validation accuracy over the validation set's own classes (transductive: the base ones, as the release
    selects on base accuracy over the base classes)."""
    with scoring_classes(method, backbone, dataset.classnames):
        return evaluate(method, backbone, dataset, cache)["accuracy"]


def run_classification(
    run: ClassificationRun,
    backbone: Backbone | None = None,
    cache: FeatureCache | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train and test ``run.method`` for every seed; write prompts, per-seed results and tables.

    Returns one row per seed: accuracy (and base / new / H for base-to-new).
    """
    cache = cache or FeatureCache(run.feature_cache_dir)
    return run_seeds(run, Classification(run), backbone, cache, progress)
