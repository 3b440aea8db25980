"""The sources of a ``vlprompt bench`` sweep: what each named "dataset" runs for one (method, shots).

A source, given ``(bench, method, shots, class_split, out)``, returns the
:class:`~vlprompt.runs.RunConfig` and the :class:`~vlprompt.runs.Protocol` of that sub-run: the
registry datasets (:class:`DatasetSource`), the built-in benchmark's views (:class:`BuiltinSource`, with
the methods' CPU-sized rows), a multi-task collection (:class:`MultiTaskSource`) and the transfer
protocols (:class:`TransferSource`). :func:`make_sources` picks them for a protocol.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backbones import Backbone
from ..data.benchmarks import FEW_SHOT_DATASETS, IMAGENET_VARIANTS, dataset_names, get_dataset
from ..data.images import DataError
from ..engine.presets import NO_PRESET, preset_name, presets, protocol_preset, protocol_presets
from ..errors import OptionError
from ..evaluation import evaluate
from ..evaluation.reports import AVERAGE
from ..features import FeatureCache
from ..labels import ClassNames
from ..methods import PromptMethod, method_class
from .classification import TRANSDUCTIVE, Classification, ClassificationRun, DataConfig, learns_without_labels
from .config import RunConfig, train_overrides
from .czsl import Compositional, CZSLData, CZSLRun
from .loop import (
    Protocol,
)
from .multitask import MultiTask, MultiTaskData, MultiTaskRun
from .recipes import DemoEntry, builtin_entry

if TYPE_CHECKING:
    from .bench import BenchRun

#: Compositional zero-shot: train on the seen pairs, test in the closed and open worlds (``vlprompt czsl``'s runs).
COMPOSITIONAL = "czsl"
CZSL_METRICS = ("S", "U", "H", "AUC", "attr", "obj")
PROTOCOLS = ("few-shot", "base-to-new", "cross-dataset", "domain-generalisation", COMPOSITIONAL)
#: ``--datasets builtin``: the built-in benchmark's two 10-class views; ``builtin-<view>`` names one view.
#: The 100-class ``pairs`` view is left out of ``builtin``: CoOp, CoCoOp and MaPLe on 50 base classes and
#: 800 training images take tens of minutes a seed on a CPU (``builtin-pairs`` runs it).
BUILTIN = "builtin"
BUILTIN_DEFAULT = ("colours", "shapes")
#: The source every cross-dataset and domain-generalisation prompt is trained on.
SOURCE_DATASET = "imagenet"


class BenchSource:
    """A named "dataset" of a sweep: it makes the run config and protocol of each (method, shots) sub-run."""

    name: str

    def sub_run(
        self, bench: BenchRun, method: str, shots: int, class_split: str, out: Path
    ) -> tuple[RunConfig, Protocol]:
        raise NotImplementedError

    def takes(self, method: str) -> bool:
        """Whether ``--methods``' ``method`` runs on this source (every method, but where a protocol splits them)."""
        return True

    def run_shots(self, shots: int) -> int:
        """The shots a sub-run of the sweep's ``shots`` trains on here."""
        return shots

    @property
    def stage_source(self) -> str:
        """Where an option ``bench:<name>`` finds ``<name>``'s prompts: this source's folder of the sweep."""
        return self.name


def _user_overrides(bench: BenchRun) -> dict[str, Any]:
    train: dict[str, Any] = bench.train if isinstance(bench.train, dict) else dataclasses.asdict(bench.train)
    return {k: v for k, v in train.items() if v is not None}


def _run_fields(bench: BenchRun, out: Path) -> dict[str, Any]:
    """What every sub-run of the sweep takes from the bench: backbone, seeds, its folder, resume, feature cache."""
    return {
        "backbone": bench.backbone,
        "seeds": list(bench.seeds),
        "out": str(out),
        "resume": bench.resume,
        "feature_cache_dir": bench.feature_cache_dir,
    }


def entry_options(entry: DemoEntry | None, bench: BenchRun, name: str) -> dict[str, Any]:
    """The options of the ``--methods`` entry ``name``: its built-in row's (if any), ``--method_options`` on top."""
    return {**(entry.options if entry else {}), **bench.method_options.get(name, {})}


def _entry_recipe(entry: DemoEntry | None, bench: BenchRun, name: str) -> tuple[dict[str, Any], str | None, Any]:
    """(options, preset, train overrides) of a built-in row (the user's ``--method_options`` and ``--train`` on
    top), or of ``--preset`` where given or where there is no row.

    A row is its whole recipe: it runs with :data:`~vlprompt.engine.presets.NO_PRESET`, so that no option of the
    method's paper preset (e.g. VPT's 12 prompted layers) reaches the tiny bundled model."""
    options = entry_options(entry, bench, name)
    if entry is None or bench.preset:
        return options, bench.preset, bench.train
    return options, NO_PRESET, train_overrides(entry.train, **_user_overrides(bench))


@dataclass
class DatasetSource(BenchSource):
    """A classification dataset: a registry dataset, or any :class:`DataConfig`."""

    name: str
    data: DataConfig
    protocol: str = "few-shot"

    def recipe(self, bench: BenchRun, method: str) -> tuple[str, dict[str, Any], str | None, Any]:
        """(method, its options, preset, train overrides) of the ``--methods`` entry ``method`` here.

        The preset is ``--preset``, else its authors' recipe for this protocol and dataset
        (:func:`~vlprompt.engine.presets.protocol_preset`, e.g. ``coop-base-to-new``, or ``coop-cross-dataset`` on
        ImageNet), else, for a method whose recipes name no protocol, its own. A method whose authors released
        recipes for other protocols only is refused, naming them (``--preset`` runs it anyway).
        """
        cls = method_class(method, ClassNames)  # a method that scores classes
        preset = bench.preset or protocol_preset(cls.name, self.protocol, self.name)
        released = protocol_presets(cls.name)
        if preset is None and released:
            covered = "; ".join(f"{p}: {', '.join(names)}" for p, names in released.items())
            raise OptionError(
                f"{cls.name}'s authors released no recipe for {self.protocol} on {self.name} (theirs: {covered}); "
                "pass --preset to run it with one of them"
            )
        return cls.name, dict(bench.method_options.get(method, {})), preset, bench.train

    def run_config(self, bench: BenchRun, name: str, shots: int, class_split: str, out: Path) -> ClassificationRun:
        method, options, preset, train = self.recipe(bench, name)
        run = ClassificationRun(
            **_run_fields(bench, out),
            method=method,
            method_options=options,
            preset=preset,
            train=train,
            data=dataclasses.replace(self.data, shots=shots, class_split=class_split),
        )
        if class_split == "base-to-new" and bench.transductive and learns_without_labels(run):
            run.data.class_split = TRANSDUCTIVE  # as its release trains (PromptKD: every class's images, unlabeled)
        return run

    def sub_run(self, bench, method, shots, class_split, out):
        run = self.run_config(bench, method, shots, class_split, out)
        return run, Classification(run)


def registry_source(name: str, root: str, protocol: str = "few-shot") -> DatasetSource:
    ds = get_dataset(name)
    return DatasetSource(ds.name, DataConfig(format="benchmark", dataset=ds.name, root=root), protocol)


class BuiltinSource(DatasetSource):
    """A view of the built-in benchmark: each method's CPU-sized row (with ``--train`` overrides); ``--methods``
    may name a row by its label (``zeroshot-ensemble``, ``vpt-deep``: :func:`~vlprompt.runs.recipes.builtin_entry`).

    A method without a row, or a bench with ``--preset``, uses the preset as on any dataset.
    """

    def recipe(self, bench, method):
        entry = builtin_entry("few-shot", method)
        if entry is None or bench.preset:
            return super().recipe(bench, entry.method if entry else method)
        return entry.method, *_entry_recipe(entry, bench, method)


def is_builtin(name: str) -> bool:
    return name == BUILTIN or name.startswith(f"{BUILTIN}-")


def builtin_views(names: list[str]) -> list[str]:
    """The built-in benchmark's views named by ``builtin`` (colours, shapes) and ``builtin-<view>``."""
    from ..data.synthetic import VIEWS

    views: list[str] = []
    for name in names:
        view = name.removeprefix(f"{BUILTIN}-")
        if name != BUILTIN and view not in VIEWS:
            raise OptionError(f"unknown built-in view {name!r}; choose builtin or {[f'{BUILTIN}-{v}' for v in VIEWS]}")
        views += list(BUILTIN_DEFAULT) if name == BUILTIN else [view]
    return list(dict.fromkeys(views))


def builtin_sources(names: list[str]) -> list[DatasetSource]:
    from ..data.synthetic import build_benchmark

    views = builtin_views(names)
    paths = build_benchmark()
    return [
        BuiltinSource(view, DataConfig(root=str(paths.image_root), split_file=str(paths.splits[view])))
        for view in views
    ]


class BenchMultiTask(MultiTask):
    """The multi-task protocol in a sweep: a row per task, named as the bench's "dataset" (the bench averages them)."""

    def evaluate(self, method, backbone, keys):
        rows = super().evaluate(method, backbone, keys)
        return [{**r, "dataset": r["task"]} for r in rows if r["task"] != AVERAGE]


@dataclass
class MultiTaskSource(BenchSource):
    """A multi-task collection in the few-shot sweep: one multi-task run per (method, shots), a row per task.

    A single-task method runs once per task (per-task CoOp), SoftCPT on all the tasks together. The built-in
    collection's runs take the demo's recipe for the method (its first row of the built-in multi-task table,
    :func:`vlprompt.runs.recipes.builtin_entry`) unless ``--preset`` is given; ``--method_options`` and ``--train``
    apply on top.
    """

    name: str
    collection: str = "builtin"

    def sub_run(self, bench, method, shots, class_split, out):
        if class_split != "all":
            raise OptionError(f"--datasets {self.name} runs the few-shot protocol only")
        entry = builtin_entry("multitask", method)
        options, preset, train = _entry_recipe(entry, bench, method)
        run = MultiTaskRun(
            **_run_fields(bench, out),
            method=entry.method if entry else method,
            method_options=options,
            preset=preset,
            train=train,
            data=MultiTaskData(collection=self.collection, shots=shots),
        )
        return run, BenchMultiTask(run)


@dataclass
class CZSLSource(BenchSource):
    """A compositional dataset: ``builtin`` (the built-in benchmark's attribute-object pairs, with each method's
    CPU-sized row, by label or method: :func:`~vlprompt.runs.recipes.builtin_entry`) or a dataset folder under
    ``--data.root`` in the CZSL layout (``mit-states``, ``ut-zappos``, ``cgqa``: the preset ``<method>-<name>``
    where its authors released one, e.g. ``csp-ut-zappos``)."""

    name: str
    root: str

    def sub_run(self, bench, method, shots, class_split, out):
        entry = builtin_entry("czsl", method) if self.name == BUILTIN else None
        options, preset, train = _entry_recipe(entry, bench, method)
        method = entry.method if entry else method
        if preset is None and entry is None and preset_name(method, self.name) in presets():
            preset = preset_name(method, self.name)
        run = CZSLRun(
            **_run_fields(bench, out),
            method=method,
            method_options=options,
            preset=preset,
            train=train,
            data=CZSLData(root=self.root),
        )
        return run, Compositional(run)


def czsl_sources(bench: BenchRun) -> list[CZSLSource]:
    """The CZSL sweep's datasets (``builtin`` builds the built-in benchmark on first use)."""
    sources = []
    for name in bench.datasets:
        if name == BUILTIN:
            from ..data.synthetic import build_benchmark

            sources.append(CZSLSource(BUILTIN, str(build_benchmark().czsl_root)))
        else:
            sources.append(CZSLSource(name, str(Path(_root(bench)) / name)))
    return sources


#: Other sources by the name given to ``--datasets``: a function of the bench returning its sources.
EXTRA_SOURCES: dict[str, Callable[[BenchRun], list[BenchSource]]] = {
    "multitask-builtin": lambda bench: [MultiTaskSource("multitask-builtin", "builtin")],
}


class Transfer(Classification):
    """Train on the source dataset; test on it and, with the same prompt, on every target's classes."""

    group = ("dataset", "method", "shots")

    def __init__(self, run: ClassificationRun, source: str, targets: list[DatasetSource]):
        super().__init__(run)
        self.source, self.targets = source, targets

    def validate(self) -> None:
        super().validate()
        for target in self.targets:
            target.data.validate()

    def prepare(self, backbone: Backbone, cache: FeatureCache) -> None:
        super().prepare(backbone, cache)
        self.target_tests = {t.name: t.data.load(backbone.image_transform())["test"] for t in self.targets}

    def check(self, method: PromptMethod) -> None:
        if not method.transfers_to_new_classes:
            raise OptionError(f"{method.name} with these options cannot score other classes: no transfer protocol")

    def evaluate(self, method, backbone, keys):
        rows = [{**row, "dataset": self.source} for row in super().evaluate(method, backbone, keys)]
        trained = method.labels
        for name, test in self.target_tests.items():
            method.set_classes(backbone, test.classnames)
            rows += [
                {**keys, "dataset": name, "shots": self.run.data.shots, **evaluate(method, backbone, test, self.cache)}
            ]
        method.set_classes(backbone, trained)
        return rows

    def seed_record(self, rows):
        return rows


@dataclass
class TransferSource(BenchSource):
    """Cross-dataset / domain generalisation: one sub-run per method trained on ``source``, tested on ``targets``
    (but the ``distilled`` methods: :class:`DistilledTarget`)."""

    source: DatasetSource
    targets: list[DatasetSource]
    distilled: tuple[str, ...] = ()

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.source.name

    def takes(self, method: str) -> bool:
        return method not in self.distilled

    def sub_run(self, bench, method, shots, class_split, out):
        run = self.source.run_config(bench, method, shots, class_split, out)
        return run, Transfer(run, self.source.name, self.targets)


@dataclass
class DistilledTarget(BenchSource):
    """Cross-dataset for a method that learns without labels (PromptKD's ``MODAL cross``): a student per target,
    trained on every one of the target's training images, unlabeled, over its classes, its teacher (``bench:<name>``)
    the prompt trained on the source; tested on the target."""

    target: DatasetSource
    methods: tuple[str, ...]

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.target.name

    def takes(self, method: str) -> bool:
        return method in self.methods

    def run_shots(self, shots: int) -> int:
        return 0  # every training image (the release's SHOTS 0); the teacher's shots name its folder

    @property
    def stage_source(self) -> str:
        return SOURCE_DATASET

    def sub_run(self, bench, method, shots, class_split, out):
        run = self.target.run_config(bench, method, shots, "all", out)
        return run, Classification(run)


def make_sources(protocol: str, bench: BenchRun) -> list[BenchSource]:
    """The sweep's sources for ``protocol`` and ``bench.datasets``."""
    if protocol not in PROTOCOLS:
        raise OptionError(f"unknown protocol {protocol!r}; choose from {list(PROTOCOLS)}")
    if protocol == COMPOSITIONAL:
        return list(czsl_sources(bench))
    transfer = protocol in ("cross-dataset", "domain-generalisation")
    if any(map(is_builtin, bench.datasets)):
        if transfer or not all(map(is_builtin, bench.datasets)):
            raise OptionError(
                "--datasets builtin runs without registry datasets, and only few-shot and base-to-new (the built-in "
                "benchmark has no ImageNet to transfer from)"
            )
        builtin_views(bench.datasets)  # names checked before the benchmark is built
        return list(builtin_sources(bench.datasets))
    return _transfer_sources(protocol, bench) if transfer else _dataset_sources(protocol, bench)


def _dataset_sources(protocol: str, bench: BenchRun) -> list[BenchSource]:
    """Few-shot and base-to-new: each registry dataset (and each extra source) of ``--datasets``."""
    sources: list[BenchSource] = []
    registry = [n for n in bench.datasets if n not in EXTRA_SOURCES]
    for name in dataset_names(registry):
        if get_dataset(name).test_only:
            raise OptionError(f"--datasets {name} is evaluation-only: it belongs to domain-generalisation")
        sources.append(registry_source(name, _root(bench), protocol))
    for name in bench.datasets:
        sources += EXTRA_SOURCES[name](bench) if name in EXTRA_SOURCES else []
    return sources


def _transfer_sources(protocol: str, bench: BenchRun) -> list[BenchSource]:
    """Cross-dataset and domain generalisation: ImageNet, then every target of ``--datasets``."""
    default = (
        [d for d in FEW_SHOT_DATASETS if d != SOURCE_DATASET] if protocol == "cross-dataset" else IMAGENET_VARIANTS
    )
    names = [n for n in dataset_names(bench.datasets, default) if n != SOURCE_DATASET]
    if protocol == "domain-generalisation" and set(names) - set(IMAGENET_VARIANTS):
        raise OptionError(f"domain generalisation targets are the ImageNet variants {list(IMAGENET_VARIANTS)}")
    if protocol == "cross-dataset" and set(names) & set(IMAGENET_VARIANTS):
        raise OptionError("cross-dataset targets are the 10 few-shot datasets besides ImageNet (variants: DG)")
    root = _root(bench)
    source = registry_source(SOURCE_DATASET, root, protocol)
    targets = [registry_source(n, root, protocol) for n in names]
    distilled = tuple(m for m in bench.methods if distils_per_target(protocol, bench, source, m))
    return [TransferSource(source, targets, distilled)] + [DistilledTarget(t, distilled) for t in targets if distilled]


def distils_per_target(protocol: str, bench: BenchRun, source: DatasetSource, method: str) -> bool:
    """Whether cross-dataset trains ``method`` once per target on the target's unlabeled images: a method that
    learns without labels (PromptKD), with ``--transductive`` (the default), as its release does."""
    if protocol != "cross-dataset" or not bench.transductive:
        return False
    return learns_without_labels(source.run_config(bench, method, 0, "all", Path(bench.out)))


def _root(bench: BenchRun) -> str:
    if not bench.data.root:
        raise DataError("--data.root is required: the datasets root (see docs/datasets.md; `vlprompt data check all`)")
    return bench.data.root
