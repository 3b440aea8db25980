"""The parser generated from the command configs (jsonargparse), argv conveniences, and per-method help."""

from __future__ import annotations

import dataclasses
import textwrap
import typing

import docstring_parser
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, get_loader, set_loader

from .. import __version__
from ..engine.presets import preset_name
from ..methods import COMMAND_OF_LABELS, PromptMethod, method_class
from ..runs.bench import PROTOCOLS
from ..schema import MAX_YAML_BYTES, LimitedSafeLoader
from .options import COMMAND_CONFIGS, METHOD_HELP

BOOL_WORDS = {"true", "false", "yes", "no", "1", "0", "null"}
DEBUG_FLAG = "--debug"


_JSONARGPARSE_YAML = get_loader("yaml")


def limited_yaml_load(text: str):
    """jsonargparse's YAML loader for every value and ``--config`` file, after a size cap and a check that its
    aliases do not expand past :data:`vlprompt.schema.MAX_YAML_NODES` (a "billion laughs" file fails at once)."""
    if len(text) > MAX_YAML_BYTES:
        raise yaml.YAMLError(f"{len(text)} characters, more than the {MAX_YAML_BYTES} a YAML config may have")
    if "*" in text:  # only aliases can expand; anything else is parsed once
        yaml.compose(text, Loader=LimitedSafeLoader)
    return _JSONARGPARSE_YAML(text)


def build_parser() -> ArgumentParser:
    set_loader("yaml", limited_yaml_load, (yaml.YAMLError,))
    parser = ArgumentParser(
        prog="vlprompt",
        description="Prompt learning for CLIP-style models.",
        version=__version__,
        allow_abbrev=False,
        exit_on_error=False,
    )
    commands = parser.add_subcommands(dest="command")
    for name, (config, help_text) in COMMAND_CONFIGS.items():
        sub = ArgumentParser(description=(config.__doc__ or "").split("\n")[0], allow_abbrev=False, exit_on_error=False)
        sub.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of these options")
        sub.add_argument(DEBUG_FLAG, action="store_true", help="show the full traceback of an error")
        if name == "predict":
            sub.add_argument("images", nargs="+", help="image files")
        if name == "push":
            sub.add_argument("prompt", help="the prompt directory (e.g. RUN/seed1/prompt) or prompt bank")
            sub.add_argument("repo", help="the Hub repository, org/name")
        if name == "bench":
            sub.add_argument("protocol", choices=PROTOCOLS, help="the protocol: " + " | ".join(PROTOCOLS))
        if name == "data":
            sub.add_argument("action", choices=["check"], help="check: report what is missing")
            sub.add_argument("names", nargs="+", help="registry dataset names, or all")
        sub.add_class_arguments(config, None, as_group=False)
        if name in METHOD_HELP:  # list only the methods of this command's protocol
            sub._option_string_actions["--method"].help = METHOD_HELP[name]
        commands.add_subcommand(name, sub, help=help_text)
    return parser


#: Commands that train a registered method (``--method NAME``): ``--help`` with a method shows its options.
METHOD_COMMANDS = ("train", "czsl", "multitask")


def method_help(argv: list[str]) -> str | None:
    """``vlprompt train --method kgcoop --help``: the command's help, then the method's options, capabilities and
    recipes (None when ``argv`` asks for no help about a method)."""
    command = next((a for a in argv if a in COMMAND_CONFIGS), None)
    if command not in METHOD_COMMANDS or not {"--help", "-h"} & set(argv) or "--method" not in argv[:-1]:
        return None
    cls = method_class(argv[argv.index("--method") + 1])
    subcommands = build_parser()._subcommands_action
    assert subcommands is not None  # build_parser adds the commands
    sub = subcommands._name_parser_map[command]
    return sub.format_help() + "\n" + describe_method(cls)


def describe_method(cls: type[PromptMethod]) -> str:
    """A method's options (type, default, range, docstring), capabilities, presets and template use, as text."""
    config = cls.Config
    docs: dict[str, str] = {}
    for klass in reversed(config.__mro__):
        docs |= {p.arg_name: p.description or "" for p in docstring_parser.parse(klass.__doc__ or "").params}
    hints = typing.get_type_hints(config)
    command = COMMAND_OF_LABELS.get(cls.label_kind, "train")
    lines = [f"{cls.name} options (`vlprompt {command} --method {cls.name} --method_options '{{name: value, ...}}'`, "
             "or method_options: in a --config YAML):"]  # fmt: skip
    for f in dataclasses.fields(config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        low, high, choices = (f.metadata.get(k) for k in ("low", "high", "choices"))
        limits = [f">= {low}"] if low is not None else []
        limits += [f"<= {high}"] if high is not None else []
        limits += [f"one of {list(choices)}"] if choices is not None else []
        kind = getattr(hints[f.name], "__name__", None) or str(hints[f.name])
        lines.append(f"  {f.name}: {kind} = {default!r}" + (f" ({', '.join(limits)})" if limits else ""))
        lines += textwrap.wrap(docs.get(f.name, ""), 100, initial_indent="      ", subsequent_indent="      ")
    flags = [k for k, v in cls.capabilities().items() if v]
    lines += ["", f"capabilities: {', '.join(flags) or 'none'}"]
    template = f"the dataset's hand template in option {cls.template_option!r}" if cls.template_option else "none"
    if cls.template_option and cls.authors_template:
        template = f"its authors' one template, {cls.authors_template!r}, in option {cls.template_option!r}"
    elif cls.template_option and cls.templates_by_dataset:
        template += f" (its authors' own on {', '.join(sorted(cls.templates_by_dataset))})"
    lines.append(f"template: {template}")
    lines.append("presets (--preset):" if cls.recipes else "presets: none (TrainConfig's defaults)")
    for key, recipe in cls.recipes.items():
        lines.append(f"  {preset_name(cls.name, key)}: {dict(recipe.train)}" + (
            f" epochs by shots {list(recipe.epochs_by_shots)}" if recipe.epochs_by_shots else ""))  # fmt: skip
        lines.append(f"      source: {recipe.source}")
    return "\n".join(lines) + "\n"


def _bool_flags(cls: type, prefix: str = "--") -> set[str]:
    """The option strings of every boolean field of a config dataclass (nested ones included)."""
    flags = set()
    for name, hint in typing.get_type_hints(cls).items():
        if name not in {f.name for f in dataclasses.fields(cls)}:
            continue
        if dataclasses.is_dataclass(hint):
            flags |= _bool_flags(hint, f"{prefix}{name}.")  # type: ignore[arg-type]
        elif hint is bool or set(typing.get_args(hint)) == {bool, type(None)}:
            flags.add(prefix + name)
    return flags


def expand_bare_flags(argv: list[str]) -> list[str]:
    """``--flag`` with no value after it means ``--flag true`` for boolean options."""
    command = next((a for a in argv if a in COMMAND_CONFIGS), None)
    if command is None:
        return argv
    flags = _bool_flags(COMMAND_CONFIGS[command][0])
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        following = argv[i + 1] if i + 1 < len(argv) else None
        if arg in flags and (following is None or following.lower() not in BOOL_WORDS):
            out.append("true")
    return out


def _list_flags(cls: type, prefix: str = "--") -> set[str]:
    """The option strings of every list field of a config dataclass (nested ones included)."""
    hints = typing.get_type_hints(cls)
    lists = set()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            lists |= _list_flags(hints[f.name], f"{prefix}{f.name}.")
            continue
        args = {typing.get_origin(a) or a for a in (typing.get_args(hints[f.name]) or (hints[f.name],))}
        if typing.get_origin(hints[f.name]) is list or list in args:
            lists.add(prefix + f.name)
    return lists


#: Commands whose list options take plain values, and the positional words those values stop at.
_PLAIN_LISTS: dict[str, set[str]] = {"bench": set(PROTOCOLS), "demo": set()}


def expand_list_values(argv: list[str]) -> list[str]:
    """``vlprompt bench --methods coop cocoop`` or ``vlprompt demo --methods all`` (plain values after a list
    option): ``--methods [coop, cocoop]``, ``--methods [all]``."""
    command = next((a for a in argv if a in COMMAND_CONFIGS), None)
    if command not in _PLAIN_LISTS:
        return argv
    flags, stop = _list_flags(COMMAND_CONFIGS[command][0]), _PLAIN_LISTS[command]
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] in flags:
            values = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("--") and argv[i + 1] not in stop:
                values.append(argv[i + 1])
                i += 1
            if len(values) == 1 and (values[0].startswith("[") or values[0].lower() == "null"):
                out += values
            elif values:
                out.append("[" + ", ".join(values) + "]")
        i += 1
    return out
