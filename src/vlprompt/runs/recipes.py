"""The built-in benchmark's rows (the demo's, and the bench's on ``builtin``), read from the method registry.

Each method declares its rows with their CPU-sized recipes (``PromptMethod.builtin_rows``); this module
only gathers them per table, in registry order, as :class:`DemoEntry` (a row with its resolved recipe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..engine import TrainConfig, recipe_config
from ..errors import OptionError
from ..labels import ClassNames, PairSpace, TaskSpace
from ..methods import METHODS, PromptMethod

#: The demo's default few-shot classification view: the 10 colours, which the benchmark's warm illuminant
#: shifts. ``--data.view pairs`` (100 classes) works too, but CoCoOp encodes every class prompt for every image,
#: about 7 minutes a seed on 2 CPU cores; pair recognition is what the CZSL table measures.
VIEW = "colours"
#: Shots a class of the built-in multi-task collection's table.
MULTITASK_SHOTS = 4
#: The built-in benchmark's tables.
TABLES = ("few-shot", "czsl", "multitask")


@dataclass(frozen=True)
class DemoEntry:
    """One row of the demo: a method, its options, a CPU-sized recipe, and whether the default demo runs it."""

    label: str
    method: str
    options: dict[str, Any]
    train: TrainConfig
    default: bool = True


def table_of(cls: type[PromptMethod], per_task: bool) -> str:
    """The built-in table a method's row belongs to (by its label space)."""
    if cls.label_kind is PairSpace:
        return "czsl"
    if cls.label_kind is TaskSpace or (cls.label_kind is ClassNames and per_task):
        return "multitask"
    return "few-shot"


def builtin_entries(table: str) -> tuple[DemoEntry, ...]:
    """Every registered method's rows of ``table`` (one of :data:`TABLES`), in registry order."""
    if table not in TABLES:
        raise OptionError(f"unknown built-in table {table!r}; choose from {TABLES}")
    return tuple(
        DemoEntry(row.label, name, dict(row.recipe.options), recipe_config(row.recipe), row.default)
        for name, cls in METHODS.items()
        for row in cls.builtin_rows
        if table_of(cls, row.per_task) == table
    )


def builtin_entry(table: str, name: str) -> DemoEntry | None:
    """The row labelled ``name`` in ``table``, else the first row of the method ``name`` (None: neither)."""
    entries = builtin_entries(table)
    return next((e for e in entries if e.label == name), None) or next((e for e in entries if e.method == name), None)
