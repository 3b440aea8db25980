"""Typed label spaces: what a method scores, and how a prompt file records it.

- :class:`ClassNames`: one label per class name (classification).
- :class:`PairSpace`: a vocabulary of attributes and objects and the (attribute, object) pairs scored
  (compositional zero-shot); the pairs can change, the vocabulary cannot.
- :class:`TaskSpace`: several named tasks, each with its own class names (multi-task).

Each converts to and from plain JSON (``to_json`` / :func:`label_space_from_json`), tagged by ``kind``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import DataError
from .schema import check_unique, expect, field, list_of


class LabelSpaceError(DataError):
    """A label space is malformed or does not fit the method."""


@dataclass(frozen=True)
class ClassNames:
    """Class names in logit order."""

    names: tuple[str, ...]
    kind: ClassVar[str] = "classes"

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        if not self.names:
            raise LabelSpaceError("a label space needs at least one class name")
        check_unique(self.names, "the label space", LabelSpaceError, what="class names")

    def __len__(self) -> int:
        return len(self.names)

    def display_names(self) -> list[str]:
        return list(self.names)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "names": list(self.names)}

    @classmethod
    def coerce(cls, value: Any, current: LabelSpace | None = None) -> ClassNames:
        """A :class:`ClassNames` from itself or a list of names."""
        if isinstance(value, ClassNames):
            return value
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise LabelSpaceError(f"expected a list of class names, got {type(value).__name__}")
        return cls(tuple(value))


@dataclass(frozen=True)
class PairSpace:
    """Attribute and object vocabularies and the (attribute, object) pairs scored, in logit order."""

    attrs: tuple[str, ...]
    objs: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    kind: ClassVar[str] = "pairs"

    def __post_init__(self) -> None:
        object.__setattr__(self, "attrs", tuple(self.attrs))
        object.__setattr__(self, "objs", tuple(self.objs))
        object.__setattr__(self, "pairs", tuple((str(a), str(o)) for a, o in self.pairs))
        attrs, objs = set(self.attrs), set(self.objs)
        for a, o in self.pairs:
            if a not in attrs or o not in objs:
                missing = a if a not in attrs else o
                raise LabelSpaceError(f"pair ({a}, {o}) uses {missing!r}, which is not in the vocabulary")

    def __len__(self) -> int:
        return len(self.pairs)

    def display_names(self) -> list[str]:
        return [f"{a} {o}" for a, o in self.pairs]

    def with_pairs(self, pairs: Sequence[Sequence[str]]) -> PairSpace:
        """The same vocabulary scoring other pairs."""
        return PairSpace(self.attrs, self.objs, tuple(tuple(p) for p in pairs))  # type: ignore[misc]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "attrs": list(self.attrs),
            "objs": list(self.objs),
            "pairs": [list(p) for p in self.pairs],
        }

    @classmethod
    def coerce(cls, value: Any, current: LabelSpace | None = None) -> PairSpace:
        """A :class:`PairSpace` from itself, or a list of pairs over ``current``'s vocabulary."""
        if isinstance(value, PairSpace):
            if current is not None:
                assert isinstance(current, PairSpace)  # a compositional method's labels
                if (value.attrs, value.objs) != (current.attrs, current.objs):
                    raise LabelSpaceError("a compositional method keeps its vocabulary: only the pairs can change")
            return value
        if isinstance(current, PairSpace) and isinstance(value, Sequence) and not isinstance(value, str):
            bad = next((p for p in value if isinstance(p, str) or not isinstance(p, Sequence) or len(p) != 2), None)
            if bad is not None:
                raise LabelSpaceError(f"a compositional method scores (attribute, object) pairs, not {bad!r:.80}")
            return current.with_pairs(value)
        raise LabelSpaceError(f"expected a PairSpace or a list of (attribute, object) pairs, got {value!r:.80}")


def task_key(name: str) -> str:
    """A task name as ``--task`` selects it (``predict --task a, b`` strips spaces): surrounding and repeated
    whitespace do not count, so names equal under this key cannot both be selected."""
    return " ".join(str(name).split())


@dataclass(frozen=True)
class Task:
    """One task of a multi-task run: its name (as prompts read it) and its class names."""

    name: str
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        if not self.classes:
            raise LabelSpaceError(f"task {self.name!r} has no classes")
        check_unique(self.classes, f"task {self.name!r}", LabelSpaceError, what="class names")


@dataclass(frozen=True)
class TaskSpace:
    """Several tasks, each with its own classes; labels are task-local."""

    tasks: tuple[Task, ...]
    kind: ClassVar[str] = "tasks"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        names = [t.name for t in self.tasks]
        if not names:
            raise LabelSpaceError("a task space needs at least one task")
        check_unique(names, "the task space", LabelSpaceError, key=task_key, what="task names")

    def __len__(self) -> int:
        return sum(len(t.classes) for t in self.tasks)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> Task:
        return self.tasks[self.index(name)]

    def index(self, name: str) -> int:
        """Position of the task called ``name``."""
        for i, t in enumerate(self.tasks):
            if t.name == name:
                return i
        raise LabelSpaceError(f"unknown task {name!r}; tasks: {self.names}")

    def blocks(self) -> list[slice]:
        """Each task's columns in the logits (the tasks' classes, in task order)."""
        out, start = [], 0
        for t in self.tasks:
            out.append(slice(start, start + len(t.classes)))
            start += len(t.classes)
        return out

    def class_tasks(self) -> list[int]:
        """The task of every class, in logit order."""
        return [i for i, t in enumerate(self.tasks) for _ in t.classes]

    def all_classes(self) -> list[str]:
        """Every task's class names, in logit order."""
        return [c for t in self.tasks for c in t.classes]

    def display_names(self) -> list[str]:
        return [f"{t.name}: {c}" for t in self.tasks for c in t.classes]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "tasks": [{"name": t.name, "classes": list(t.classes)} for t in self.tasks]}

    @classmethod
    def coerce(cls, value: Any, current: LabelSpace | None = None) -> TaskSpace:
        if isinstance(value, TaskSpace):
            return value
        raise LabelSpaceError(f"expected a TaskSpace, got {type(value).__name__}")


LabelSpace = ClassNames | PairSpace | TaskSpace
KINDS: dict[str, type[LabelSpace]] = {c.kind: c for c in (ClassNames, PairSpace, TaskSpace)}


def label_space_from_json(value: Any) -> LabelSpace:
    """Inverse of ``to_json``; also reads format-1 prompt files (a list of names, or a pair dict).

    Every field is checked (types, non-empty lists, unique names): a malformed one is a
    :class:`LabelSpaceError` naming it.
    """
    if isinstance(value, list):
        return ClassNames(tuple(list_of(value, str, "class names", LabelSpaceError)))
    expect(value, dict, "a label space", LabelSpaceError)
    kind = value.get("kind", "pairs" if "pairs" in value else None)
    if kind not in KINDS:
        raise LabelSpaceError(f"unknown label space kind {kind!r:.60}; expected one of {sorted(KINDS)}")
    try:
        return _from_json(kind, value)
    except LabelSpaceError as err:
        if "must be unique" in str(err):
            raise
        raise LabelSpaceError(f"label space of kind {kind!r} is missing or has a malformed field: {err}") from None


def _from_json(kind: str, value: dict) -> LabelSpace:
    if kind == "classes":
        return ClassNames(_strings(value, "names", "labels"))
    if kind == "pairs":
        pairs = list_of(field(value, "pairs", list, "labels", LabelSpaceError), list, "pairs", LabelSpaceError)
        for i, pair in enumerate(pairs):
            if len(pair) != 2 or not all(isinstance(p, str) for p in pair):
                raise LabelSpaceError(f"pairs[{i}] must be [attribute, object], not {pair!r:.80}")
        return PairSpace(
            _strings(value, "attrs", "labels"), _strings(value, "objs", "labels"), tuple(map(tuple, pairs))
        )
    tasks = list_of(field(value, "tasks", list, "labels", LabelSpaceError), dict, "tasks", LabelSpaceError)
    parts = [Task(field(t, "name", str, f"tasks[{i}]", LabelSpaceError), _strings(t, "classes", f"tasks[{i}]"))
             for i, t in enumerate(tasks)]  # fmt: skip
    return TaskSpace(tuple(parts))


def _strings(obj: dict, key: str, where: str) -> tuple[str, ...]:
    """``obj[key]``, checked to be a list of strings."""
    return tuple(list_of(field(obj, key, list, where, LabelSpaceError), str, f"{where}.{key}", LabelSpaceError))
