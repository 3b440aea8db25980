"""Prompt banks: several named prompts trained on one backbone, in one directory (like peft's named adapters).

A bank is a directory with ``bank.json`` (format, the backbone identity, the prompts' names and
sub-directories) and one ordinary prompt directory per name. Loading checks once that every prompt was
trained on the bank's backbone and that the backbone given matches it.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .backbones import Backbone
from .io import atomic_write_text
from .labels import LabelSpaceError
from .methods import PromptMethod
from .methods.multitask import PerTask, PerTaskConfig, TaskMethod
from .prompts import BackboneMismatchWarning, PromptFileError, load_prompt, read_prompt_config, save_pretrained

BANK_FILE = "bank.json"
FORMAT = "vlprompt-prompt-bank"
FORMAT_VERSION = 1


def is_bank(directory: str | Path) -> bool:
    """Whether ``directory`` holds a prompt bank (else it may be a single prompt)."""
    return (Path(directory) / BANK_FILE).is_file()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "task"


def save_bank(prompts: Mapping[str, PromptMethod], backbone: Backbone, directory: str | Path, extra=None) -> Path:
    """Write every prompt under its name into the bank ``directory`` (each prompt file atomically, bank.json last)."""
    directory = Path(directory)
    if not prompts:
        raise ValueError("a prompt bank needs at least one prompt")
    entries = []
    for i, (name, method) in enumerate(prompts.items()):
        sub = f"{i:02d}-{_slug(name)}"
        save_pretrained(method, backbone, directory / sub, extra={**(extra or {}), "task": name})
        entries.append({"name": name, "path": sub})
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": backbone.identity.to_dict(),
        "prompts": entries,
        "extra": extra or {},
    }
    atomic_write_text(directory / BANK_FILE, json.dumps(config, indent=2))
    return directory


def read_bank(directory: str | Path) -> dict[str, Any]:
    """``bank.json``, validated: each entry names a prompt directory trained on the bank's backbone."""
    path = Path(directory) / BANK_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise PromptFileError(f"{path} not found: {directory} is not a prompt bank") from None
    except json.JSONDecodeError as err:
        raise PromptFileError(f"{path}: not valid JSON ({err})") from None
    if config.get("format") != FORMAT:
        raise PromptFileError(f"{path}: field 'format' is {config.get('format')!r}, expected {FORMAT!r}")
    entries = config.get("prompts")
    if not isinstance(entries, list) or not entries:
        raise PromptFileError(f"{path}: field 'prompts' must be a non-empty list of {{name, path}}")
    names = [e.get("name") for e in entries]
    if len(set(names)) != len(names):
        raise PromptFileError(f"{path}: prompt names must be unique, got {names}")
    for entry in entries:
        member = read_prompt_config(Path(directory) / entry["path"])
        if member["backbone"] != config["backbone"]:
            ours, theirs = config["backbone"], member["backbone"]
            raise PromptFileError(
                f"{directory}: prompt {entry['name']!r} ({entry['path']}) was trained on {theirs.get('model')} "
                f"({theirs.get('pretrained')}), the bank on {ours.get('model')} ({ours.get('pretrained')}): "
                "a bank holds prompts of one backbone"
            )
    return config


class PromptBank:
    """Named prompts on one backbone; ``bank[name]`` is the method for that task.

    Args:
        prompts: the methods by name (all scoring on ``backbone``).
    """

    def __init__(self, prompts: Mapping[str, PromptMethod]):
        self.prompts = dict(prompts)

    @property
    def names(self) -> list[str]:
        return list(self.prompts)

    def __getitem__(self, name: str) -> PromptMethod:
        if name not in self.prompts:
            raise LabelSpaceError(f"the prompt bank holds no task {name!r}; it holds {self.names}")
        return self.prompts[name]

    @classmethod
    def load(cls, directory: str | Path, backbone: Backbone, strict_backbone: bool = False) -> PromptBank:
        """Load every prompt of a bank, checking the backbone once (see :func:`vlprompt.prompts.load_prompt`)."""
        config = read_bank(directory)
        prompts = {}
        for i, entry in enumerate(config["prompts"]):
            with warnings.catch_warnings():
                if i:  # the prompts share one backbone identity (read_bank checked): warn about it once
                    warnings.simplefilter("ignore", BackboneMismatchWarning)
                prompts[entry["name"]] = load_prompt(Path(directory) / entry["path"], backbone, strict_backbone)
        return cls(prompts)

    @classmethod
    def from_prompts(cls, prompts: Mapping[str, str | Path], backbone: Backbone) -> PromptBank:
        """Gather separately trained prompt directories under task names; all must record one backbone."""
        if not prompts:
            raise ValueError("a prompt bank needs at least one prompt")
        identities = {name: read_prompt_config(path)["backbone"] for name, path in prompts.items()}
        first_name, first = next(iter(identities.items()))
        for name, identity in identities.items():
            if identity != first:
                raise PromptFileError(
                    f"prompt {name!r} ({prompts[name]}) was trained on {identity.get('model')} "
                    f"({identity.get('pretrained')}), prompt {first_name!r} on {first.get('model')} "
                    f"({first.get('pretrained')}): a bank holds prompts of one backbone"
                )
        return cls({name: load_prompt(path, backbone) for name, path in prompts.items()})

    def save(self, backbone: Backbone, directory: str | Path, extra=None) -> Path:
        return save_bank(self.prompts, backbone, directory, extra)

    def as_method(self, backbone: Backbone) -> PerTask:
        """The bank as one multi-task method (every prompt must be of the same method and options)."""
        kinds = {(m.name, json.dumps(m.config.to_dict(), sort_keys=True)) for m in self.prompts.values()}
        if len(kinds) > 1:
            raise PromptFileError(f"the bank's prompts are of different methods or options: {sorted(kinds)}")
        first = next(iter(self.prompts.values()))
        from .labels import Task, TaskSpace

        labels = TaskSpace(tuple(Task(n, tuple(m.labels.names)) for n, m in self.prompts.items()))
        config = PerTaskConfig(method=first.name, options=first.config.to_dict())
        return PerTask(backbone, labels, config, members=list(self.prompts.values()))


def load_task_method(directory: str | Path, backbone: Backbone, task: str, strict_backbone: bool = False):
    """The method scoring ``task``: a bank's prompt of that name, or one task of a multi-task prompt."""
    if is_bank(directory):
        return PromptBank.load(directory, backbone, strict_backbone)[task]
    method = load_prompt(directory, backbone, strict_backbone)
    if not isinstance(method, TaskMethod):
        raise PromptFileError(
            f"{directory} holds a single-task {method.name} prompt: --task needs a prompt bank or a multi-task prompt"
        )
    try:
        return method.task_method(task)
    except LabelSpaceError:
        raise LabelSpaceError(f"{directory} holds no task {task!r}; it holds {method.labels.names}") from None
