"""The multi-task protocol: several few-shot tasks, each with its own classes, trained and tested together.

A multi-task method (SoftCPT) trains once on batches that mix the tasks; a single-task method (CoOp,
zero-shot, ...) runs once per task side by side (:class:`~vlprompt.methods.PerTask`), and its trained
prompts are saved as a prompt bank (:mod:`vlprompt.bank`). Every seed reports each task's test accuracy
and their mean (the "Average" row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..backbones import Backbone
from ..bank import save_bank
from ..data.images import DataError, LabeledImages
from ..data.tasks import TaskImages, few_shot_per_task
from ..evaluation import evaluate
from ..evaluation.reports import AVERAGE
from ..features import FeatureCache
from ..labels import ClassNames, LabelSpace, TaskSpace, task_key
from ..methods import PerTask, PerTaskConfig, PromptMethod, TaskMethod, build_method, method_class
from .classification import ImageSource
from .config import RunConfig, options_for_seed
from .loop import Protocol, run_seeds

COLLECTIONS = ("", "builtin")


@dataclass
class TaskData(ImageSource):
    """One task of a multi-task run: its name, as prompts read it, and where its images are.

    Attributes:
        name: the task name (e.g. "colour", "plant disease"); unique within the run.
    """

    name: str = ""


@dataclass
class MultiTaskData:
    """The tasks of a multi-task run (``--data.*``, as every command takes its data).

    Attributes:
        tasks: the tasks (a list of {name, format, root, split_file | train_dir, val_dir, test_dir}).
        collection: "builtin": instead of ``tasks``, the built-in collection (colour, shape, texture and
            coloured-shape recognition on the synthetic benchmark; generated on first use).
        shots: K images per class of every task for training (0 = all); validation uses min(K, 4).
    """

    tasks: list[TaskData] = field(default_factory=list)
    collection: str = ""
    shots: int = 16


@dataclass
class MultiTaskRun(RunConfig):
    """Several few-shot tasks learned together (SoftCPT), or a single-task method once per task.

    Attributes:
        data: the tasks.
        feature_cache_dir: keep frozen image features here across runs (default: in memory).
    """

    method: str = "softcpt"
    out: str = "runs/multitask"
    data: MultiTaskData = field(default_factory=MultiTaskData)
    feature_cache_dir: str | None = None


class MultiTask(Protocol):
    """Per task test accuracy and the mean over tasks, for a multi-task or a per-task single-task method."""

    command = "multitask"
    label_kind = TaskSpace
    group = ("method", "shots", "task")
    run: MultiTaskRun

    def shots(self) -> int:
        return self.run.data.shots

    def method_cls(self) -> type[PromptMethod]:
        """The run's method: a multi-task one, or a single-task one (run once per task)."""
        cls = method_class(self.run.method)
        if cls.label_kind is not ClassNames:
            method_class(self.run.method, TaskSpace)  # a clear error for other label spaces
        return cls

    def check_options(self) -> None:
        cls = self.method_cls()
        cls.Config.from_dict(self.run.resolved_options(), cls.name)

    def build_method(self, backbone: Backbone, labels: LabelSpace, seed: int | None = None) -> PromptMethod:
        cls, options = self.method_cls(), options_for_seed(self.run.resolved_options(), seed)
        if cls.label_kind is ClassNames:
            return PerTask(backbone, labels, PerTaskConfig(method=cls.name, options=options))
        return build_method(cls.name, backbone, labels, options)

    def tasks(self) -> list[TaskData]:
        """The run's tasks (the built-in collection's, when asked for)."""
        if self.run.data.collection:
            return builtin_tasks()
        return list(self.run.data.tasks)

    def validate(self) -> None:
        if self.run.data.collection not in COLLECTIONS:
            raise DataError(
                f"--data.collection must be one of {COLLECTIONS} ('': the tasks of --data.tasks), "
                f"not {self.run.data.collection!r}"
            )
        if self.run.data.collection and self.run.data.tasks:
            raise DataError("give either --data.tasks or --data.collection, not both")
        if not self.run.data.tasks and not self.run.data.collection:
            raise DataError("--data.tasks is empty: give at least one task ({name, format, root, split_file, ...})")
        seen: dict[str, int] = {}
        for i, task in enumerate(self.run.data.tasks):
            where = f"--data.tasks[{i}]"
            if not task.name.strip():
                raise DataError(f"{where}.name is empty: every task needs a name (its prompts read it)")
            if task_key(task.name) in seen:
                raise DataError(
                    f"{where}.name {task.name!r} is also the name of --data.tasks[{seen[task_key(task.name)]}]: "
                    "task names must be unique (spaces aside)"
                )
            seen[task_key(task.name)] = i
            task.validate(where)
        if self.run.data.shots < 0:
            raise DataError(f"--data.shots must be >= 0 (0: all images), not {self.run.data.shots}")

    def prepare(self, backbone: Backbone, cache: FeatureCache) -> None:
        transform = backbone.image_transform()
        self.cache = cache
        self.splits: dict[str, dict[str, LabeledImages]] = {}
        for i, task in enumerate(self.tasks()):
            splits = task.load(transform)
            for split in ("train", "test"):
                if split not in splits or not len(splits[split]):
                    raise DataError(f"--data.tasks[{i}] ({task.name!r}): the {split} split has no images")
            _check_task_classes(f"--data.tasks[{i}] ({task.name!r})", splits)
            self.splits[task.name] = splits

    def seed_data(self, seed: int, seed_dir: Path | None):
        shots = self.run.data.shots
        train = TaskImages(few_shot_per_task({n: s["train"] for n, s in self.splits.items()}, shots, seed, seed_dir))
        scorer = None
        if all("val" in s and len(s["val"]) for s in self.splits.values()):
            val = {n: s["val"] for n, s in self.splits.items()}
            val_shots = min(shots, 4) if shots else 0
            parts = few_shot_per_task(val, val_shots, seed, seed_dir, "val", allow_fewer=True)
            scorer = partial(_mean_val_accuracy, parts=parts, cache=self.cache)
        elif self.run.train_config(shots).select == "best":
            raise DataError("--train.select best needs a validation split in every task")
        return train, train.task_space, scorer

    def evaluate(self, method: TaskMethod, backbone: Backbone, keys: dict[str, Any]) -> list[dict[str, Any]]:  # type: ignore[override]
        row = {**keys, "shots": self.run.data.shots}
        rows = [
            {**row, "task": name, **evaluate(method.task_method(name), backbone, self.splits[name]["test"], self.cache)}
            for name in method.labels.names
        ]
        mean = {m: sum(r[m] for r in rows) / len(rows) for m in ("accuracy", "mean_per_class_accuracy")}
        return rows + [{**row, "task": AVERAGE, **mean}]

    def prompt_extra(self, seed: int) -> dict[str, Any]:
        return {"seed": seed, "shots": self.run.data.shots}

    def save(self, method: PromptMethod, backbone: Backbone, directory: Path, extra: dict[str, Any]) -> None:
        if isinstance(method, PerTask):  # one prompt a task: a bank
            save_bank({t.name: m for t, m in zip(method.labels.tasks, method.members)}, backbone, directory, extra)
        else:
            super().save(method, backbone, directory, extra)


def _check_task_classes(where: str, splits: dict[str, LabeledImages]) -> None:
    """A task has two classes or more, and its test split holds every class (else its accuracy means little)."""
    names = splits["train"].classnames
    if len(names) < 2:
        raise DataError(f"{where}: the task has {len(names)} class ({names}); a task needs two classes or more")
    for split in ("train", "test"):
        absent = [names[c] for c in sorted(set(range(len(names))) - set(splits[split].labels))]
        if absent:
            raise DataError(f"{where}: the {split} split has no images of class(es) {absent[:5]}")


def builtin_tasks() -> list[TaskData]:
    """The built-in multi-task collection (:func:`vlprompt.data.synthetic.build_multitask_collection`) as tasks."""
    from ..data.synthetic import build_multitask_collection

    return [TaskData(name=t.name, root=str(t.root), split_file=str(t.split_file)) for t in build_multitask_collection()]


def _mean_val_accuracy(method, backbone: Backbone, parts: dict[str, LabeledImages], cache: FeatureCache) -> float:
    return sum(evaluate(method.task_method(n), backbone, d, cache)["accuracy"] for n, d in parts.items()) / len(parts)


def run_multitask(
    run: MultiTaskRun,
    backbone: Backbone | None = None,
    cache: FeatureCache | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train and test ``run.method`` on every task for every seed; write prompts (or banks) and tables.

    Returns per seed one row per task and an "Average" row.
    """
    cache = cache or FeatureCache(run.feature_cache_dir)
    return run_seeds(run, MultiTask(run), backbone, cache, progress)
