"""Prompt banks: several named prompts trained on one backbone, in one directory (like peft's named adapters).

A bank is a directory with ``bank.json`` (format, the backbone identity, the prompts' names and
sub-directories) and one ordinary prompt directory per name. Loading checks once that every prompt was
trained on the bank's backbone and that the backbone given matches it.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .backbones import Backbone
from .errors import OptionError
from .hub import local_prompt_dir
from .io import atomic_write_text
from .labels import LabelSpaceError, task_key
from .methods import PromptMethod
from .methods.multitask import TaskMethod
from .prompts import BackboneMismatchWarning, PromptFileError, load_prompt, read_prompt_config, save_pretrained
from .schema import check_unique, expect, field, inside_folder, list_of, read_json_file

BANK_FILE = "bank.json"
FORMAT = "vlprompt-prompt-bank"
FORMAT_VERSION = 1


def is_bank(directory: str | Path) -> bool:
    """Whether ``directory`` (or Hub name ``hf-hub:org/name``) holds a prompt bank (else it may be a single prompt)."""
    return (local_prompt_dir(directory) / BANK_FILE).is_file()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "task"


def save_bank(prompts: Mapping[str, PromptMethod], backbone: Backbone, directory: str | Path, extra=None) -> Path:
    """Write every prompt under its name into the bank ``directory`` (each prompt file atomically, bank.json last)."""
    directory = Path(directory)
    if not prompts:
        raise OptionError("a prompt bank needs at least one prompt")
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
    directory = local_prompt_dir(directory)
    path = directory / BANK_FILE
    config = read_json_file(
        path, BANK_FILE, PromptFileError, missing=f"{path} not found: {directory} is not a prompt bank"
    )
    expect(config, dict, str(path), PromptFileError)
    if config.get("format") != FORMAT:
        raise PromptFileError(f"{path}: field 'format' is {config.get('format')!r}, expected {FORMAT!r}")
    field(config, "backbone", dict, str(path), PromptFileError)
    field(config, "extra", dict, str(path), PromptFileError, default=None)
    entries = list_of(field(config, "prompts", list, str(path), PromptFileError), dict, f"{path}: field 'prompts'",
                      PromptFileError, non_empty=True)  # fmt: skip
    for i, entry in enumerate(entries):
        where = f"{path}: prompts[{i}]"
        field(entry, "name", str, where, PromptFileError)
        inside_folder(directory, field(entry, "path", str, where, PromptFileError), f"{where}.path", PromptFileError)
    check_unique([e["name"] for e in entries], str(path), PromptFileError, key=task_key, what="prompt names")
    check_unique([e["path"] for e in entries], str(path), PromptFileError, key=os.path.normpath, what="prompt paths")
    identities = {"the bank": config["backbone"]}
    for entry in entries:
        member = read_prompt_config(Path(directory) / entry["path"])
        identities[f"prompt {entry['name']!r} ({entry['path']})"] = member["backbone"]
        _refuse_task_space(member, f"{path}: prompt {entry['name']!r} ({entry['path']})")
    check_one_backbone(identities, f"{directory}: ")
    return config


def _refuse_task_space(config: dict[str, Any], what: str) -> None:
    """A bank member scores one task: a multi-task prompt in a bank would mix its tasks in one softmax."""
    labels = config.get("labels")
    if isinstance(labels, dict) and labels.get("kind") == "tasks":
        raise PromptFileError(
            f"{what} is a multi-task {config.get('method')} prompt; a bank member scores one task (use the "
            "multi-task prompt itself with --task, or bank one single-task prompt per task)"
        )


def check_one_backbone(identities: Mapping[str, dict[str, Any]], where: str = "") -> None:
    """Every backbone identity (keyed by what records it) equals the first: a bank holds prompts of one backbone."""
    (first_name, first), *rest = identities.items()
    for name, identity in rest:
        if identity != first:
            raise PromptFileError(
                f"{where}{name} was trained on {identity.get('model')} ({identity.get('pretrained')}), {first_name} "
                f"on {first.get('model')} ({first.get('pretrained')}): a bank holds prompts of one backbone"
            )


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
        directory = local_prompt_dir(directory)
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
            raise OptionError("a prompt bank needs at least one prompt")
        check_unique(list(prompts), "--prompts", PromptFileError, key=task_key, what="task names")
        configs = {f"prompt {n!r} ({p})": read_prompt_config(p) for n, p in prompts.items()}
        for what, config in configs.items():
            _refuse_task_space(config, what)
        check_one_backbone({what: config["backbone"] for what, config in configs.items()})
        return cls({name: load_prompt(path, backbone) for name, path in prompts.items()})

    def save(self, backbone: Backbone, directory: str | Path, extra=None) -> Path:
        return save_bank(self.prompts, backbone, directory, extra)

    def save_pretrained(self, directory: str | Path, backbone: Backbone, extra=None) -> Path:
        """Write the bank (bank.json and one prompt directory per task), as ``save``."""
        return self.save(backbone, directory, extra)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, backbone: Backbone | None = None, strict_backbone: bool = False
    ) -> PromptBank:
        """Load a bank onto ``backbone`` (default: the backbone its prompts record), as ``load``."""
        if backbone is None:
            from .predict import backbone_for_prompt

            backbone = backbone_for_prompt(directory, None, None)
        return cls.load(directory, backbone, strict_backbone)


def load_task_methods(
    directory: str | Path, backbone: Backbone, tasks: Sequence[str], strict_backbone: bool = False
) -> list[PromptMethod]:
    """The methods scoring ``tasks``: a bank's prompts of those names, or tasks of a multi-task prompt (read once)."""
    directory = local_prompt_dir(directory)
    if is_bank(directory):
        bank = PromptBank.load(directory, backbone, strict_backbone)
        return [bank[task] for task in tasks]
    method = load_prompt(directory, backbone, strict_backbone)
    if not isinstance(method, TaskMethod):
        raise PromptFileError(
            f"{directory} holds a single-task {method.name} prompt: --task needs a prompt bank or a multi-task prompt"
        )
    unknown = [t for t in tasks if t not in method.labels.names]
    if unknown:
        raise LabelSpaceError(f"{directory} holds no task {unknown[0]!r}; it holds {method.labels.names}")
    return [method.task_method(task) for task in tasks]


def load_task_method(directory: str | Path, backbone: Backbone, task: str, strict_backbone: bool = False):
    """The method scoring ``task`` (see :func:`load_task_methods`)."""
    return load_task_methods(directory, backbone, [task], strict_backbone)[0]
