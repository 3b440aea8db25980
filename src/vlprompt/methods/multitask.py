"""Methods over several tasks (a :class:`~vlprompt.labels.TaskSpace`) and the per-task wrapper.

The logits of a multi-task method cover every task's classes, in task order; a sample competes only
with its own task's classes: the loss is the cross-entropy within each sample's task block, summed over
the batch and divided by its size (as SoftCPT's reference computes it), and predictions are the argmax
within that block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone
from ..labels import ClassNames, LabelSpaceError, TaskSpace
from .base import Batch, MethodConfig, MethodOptionError, PromptMethod


def task_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    task: Tensor,
    blocks: list[slice],
    label_smoothing: float = 0.0,
    kept: Tensor | None = None,
) -> Tensor:
    """Σ over samples of the cross-entropy within the sample's own task's columns, / batch size; with ``kept`` ([C]
    bool, every sample's target among them), within the kept columns of the task only."""
    total = logits.new_zeros((), dtype=torch.float32)
    for t, cols in enumerate(blocks):
        rows = (task == t).nonzero().flatten()
        if len(rows):
            block, target = logits[rows, cols].float(), targets[rows]
            if kept is not None:
                keep = kept[cols]
                block, target = block[:, keep], (keep.cumsum(0) - 1)[target]  # the target among the kept columns
            total = total + F.cross_entropy(block, target, reduction="sum", label_smoothing=label_smoothing)
    return total / len(targets)


def task_predictions(logits: Tensor, task: Tensor, blocks: list[slice]) -> Tensor:
    """[B] task-local argmax of each sample within its own task's columns."""
    pred = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    for t, cols in enumerate(blocks):
        rows = (task == t).nonzero().flatten()
        if len(rows):
            pred[rows] = logits[rows, cols].argmax(-1)
    return pred


class TaskMethod(PromptMethod):
    """Base of the methods that score a :class:`~vlprompt.labels.TaskSpace` (task-masked loss and predictions)."""

    label_kind = TaskSpace
    labels: TaskSpace

    def _tasks_of(self, batch: Batch) -> Tensor:
        if batch.task is None:
            raise ValueError(f"{self.name} scores several tasks: its batches need task ids (Batch.task)")
        return batch.task

    def loss(self, backbone: Backbone, batch: Batch, logits: Tensor, label_smoothing: float = 0.0) -> Tensor:
        assert batch.targets is not None  # a training batch
        tasks, blocks = self._tasks_of(batch), self.labels.blocks()
        return task_cross_entropy(logits, batch.targets, tasks, blocks, label_smoothing, self.loss_columns())

    def loss_columns(self) -> Tensor | None:
        """[C] bool: the columns the loss covers (the classes the last training forward scored), or None: all."""
        return None

    def predicted_labels(self, batch: Batch, logits: Tensor) -> Tensor:
        return task_predictions(logits, self._tasks_of(batch), self.labels.blocks())

    def task_method(self, task: str | int) -> PromptMethod:
        """One task scored on its own classes, as a single-task method (for evaluation and prediction)."""
        index = self.labels.index(task) if isinstance(task, str) else task
        return TaskView(self, index)


class TaskView(PromptMethod):
    """One task of a multi-task method, scored over that task's classes only (nothing of its own to train)."""

    learns = False
    transfers = False

    def __init__(self, method: TaskMethod, task: int):
        super().__init__(None, ClassNames(method.labels.tasks[task].classes), method.config)
        self.method, self.columns = method, method.labels.blocks()[task]
        self.name = method.name
        for flag in ("changes_image_tower", "conditions_on_image", "scores_with_text", "changes_backbone"):
            setattr(self, flag, getattr(method, flag))

    def reusable_text_features(self, backbone: Backbone) -> Tensor | None:
        return self.method.reusable_text_features(backbone)

    def logits(self, backbone: Backbone, batch: Batch, text: Tensor | None = None) -> Tensor:
        return self.method.logits(backbone, batch, text)[:, self.columns]

    def cache_key(self) -> str:
        return self.method.cache_key()


@dataclass
class PerTaskConfig(MethodConfig):
    """A single-task method trained per task.

    Attributes:
        method: the registered single-task method (e.g. "coop", "zeroshot").
        options: its options, the same for every task.
    """

    method: str = "coop"
    options: dict[str, Any] = field(default_factory=dict)


class PerTask(TaskMethod):
    """One independent single-task method per task (e.g. per-task CoOp), scored and trained side by side.

    Each task's member sees only its own classes; trained together with the task-masked loss, a member's
    tensors get gradients only from its task's samples (SoftCPT's "one prompt per task" baseline). A
    multi-task run saves the members as a prompt bank (:mod:`vlprompt.bank`), one ordinary prompt each.
    Capabilities are the member method's.
    """

    name = "per-task"
    Config = PerTaskConfig
    config: PerTaskConfig
    members: Sequence[PromptMethod]  # an nn.ModuleList of the task methods

    def __init__(self, backbone: Backbone, labels: Any, config: PerTaskConfig | None = None, members=None):
        super().__init__(backbone, labels, config)
        from . import build_method, method_class

        cls = method_class(self.config.method, ClassNames)
        if cls.changes_backbone:
            raise MethodOptionError(
                f"{cls.name} changes the backbone: per-task members cannot share one image tower; "
                "train each task on its own with `vlprompt train`"
            )
        for flag in ("changes_image_tower", "conditions_on_image", "scores_with_text", "learns", "transfers"):
            setattr(self, flag, getattr(cls, flag))
        self.changes_backbone, self.has_context = cls.changes_backbone, False
        if members is None:
            members = [build_method(cls.name, backbone, t.classes, self.config.options) for t in self.labels.tasks]
        self.members = nn.ModuleList(members)  # type: ignore[assignment]  # typed as the methods it holds

    @property
    def member_name(self) -> str:
        return self.config.method

    @property
    def transfers_to_new_classes(self) -> bool:
        return all(m.transfers_to_new_classes for m in self.members)

    def set_classes(self, backbone: Backbone, labels: Any) -> None:
        labels = self.label_kind.coerce(labels, self.labels)
        if labels.names != self.labels.names:
            raise LabelSpaceError(
                f"per-task {self.member_name} holds one prompt for each of the tasks {self.labels.names}; "
                f"it cannot score the tasks {labels.names}"
            )
        for member, task in zip(self.members, labels.tasks):
            member.set_classes(backbone, task.classes)
        self.labels = labels

    def image_features(self, backbone: Backbone, batch: Batch) -> Tensor:
        raise NotImplementedError("per-task members each read the batch through their own image tower")

    def task_method(self, task: str | int) -> PromptMethod:
        return self.members[self.labels.index(task) if isinstance(task, str) else task]

    def reusable_text_features(self, backbone: Backbone) -> Tensor | None:
        texts = [m.reusable_text_features(backbone) for m in self.members]
        return None if any(t is None for t in texts) else torch.cat(cast("list[Tensor]", texts))

    def logits(self, backbone: Backbone, batch: Batch, text: Tensor | None = None) -> Tensor:
        blocks = self.labels.blocks()
        return torch.cat(
            [
                m.logits(backbone, batch, text[cols] if text is not None else None)
                for m, cols in zip(self.members, blocks)
            ],
            dim=1,
        )

    def end_epoch(self, epoch: int, epochs: int) -> None:
        for member in self.members:
            member.end_epoch(epoch, epochs)

    def loss(self, backbone: Backbone, batch: Batch, logits: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """Each member's own loss on its task's samples, weighted by their share of the batch.

        For cross-entropy members this is exactly :func:`task_cross_entropy`; members' regularisers count too.
        """
        task, total = self._tasks_of(batch), logits.new_zeros((), dtype=torch.float32)
        for t, (member, cols) in enumerate(zip(self.members, self.labels.blocks())):
            rows = (task == t).nonzero().flatten()
            if len(rows):
                part = batch_rows(batch, rows)
                total = total + member.loss(backbone, part, logits[rows, cols], label_smoothing) * len(rows)
        return total / len(batch)


def batch_rows(batch: Batch, rows: Tensor) -> Batch:
    """The samples ``rows`` of a batch."""

    def pick(x: Tensor | None) -> Tensor | None:
        return x[rows] if x is not None else None

    return Batch(pick(batch.features), pick(batch.pixels), pick(batch.targets), pick(batch.index), pick(batch.task))
