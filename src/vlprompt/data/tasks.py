"""Multi-task datasets: several tasks' images in one training set, with task-local labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from ..labels import Task, TaskSpace
from .images import DataError, LabeledImages
from .sampling import few_shot


class TaskImages(LabeledImages):
    """The images of several tasks: ``labels`` are task-local, ``tasks[i]`` is image ``i``'s task id.

    Args:
        parts: each task's images, by task name, in task order (labels index that task's classes).
    """

    def __init__(self, parts: Mapping[str, LabeledImages]):
        if not parts:
            raise DataError("a multi-task dataset needs at least one task")
        self.task_space = TaskSpace(tuple(Task(name, tuple(d.classnames)) for name, d in parts.items()))
        self.classnames = self.task_space.display_names()
        self.transform = next(iter(parts.values())).transform
        self.skipped = [s for d in parts.values() for s in d.skipped]
        self.samples = [s for d in parts.values() for s in d.samples]
        self.task_ids = [t for t, d in enumerate(parts.values()) for _ in d.samples]

    @property
    def tasks(self) -> list[int]:
        return self.task_ids

    def subset(self, indices: Sequence[int]) -> Self:
        out = super().subset(indices)
        out.task_ids = [self.task_ids[i] for i in indices]
        return out

    def relabel(self, keep: Sequence[int]) -> LabeledImages:
        raise DataError("relabel a multi-task dataset per task (TaskImages.part), not across tasks")

    def part(self, task: int | str) -> LabeledImages:
        """One task's images as a plain dataset over its own classes."""
        t = self.task_space.index(task) if isinstance(task, str) else task
        plain = object.__new__(LabeledImages)
        plain.classnames, plain.transform, plain.skipped = list(self.task_space.tasks[t].classes), self.transform, []
        plain.samples = [s for s, k in zip(self.samples, self.task_ids) if k == t]
        return plain


def few_shot_per_task(
    parts: Mapping[str, LabeledImages],
    shots: int,
    seed: int,
    index_dir: str | Path | None = None,
    split: str = "train",
    allow_fewer: bool = False,
) -> dict[str, LabeledImages]:
    """K images per class of every task, drawn per task with the seed; persisted as ``{split}_subset_task<i>.json``."""
    chosen = {}
    for t, (name, data) in enumerate(parts.items()):
        if not len(data):
            raise DataError(f"task {name!r} has no {split} images")
        index_file = Path(index_dir) / f"{split}_subset_task{t}.json" if index_dir else None
        chosen[name] = few_shot(data, shots, seed, index_file, allow_fewer)
    return chosen
