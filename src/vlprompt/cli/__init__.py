"""The ``vlprompt`` command line, generated from the typed run and command configs (jsonargparse).

Every subcommand's options are the fields of one dataclass (``ClassificationRun`` for ``train``,
``CZSLRun`` for ``czsl``, the small command configs below for the rest), so the CLI, YAML files and
the Python API take the same options; boolean options also work as bare flags (``--json``).

The package: ``options`` (the small commands' configs and the command table), ``parser`` (the generated
parser and per-method help), ``commands`` (what each command does) and ``errors`` (one-line failures).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

import yaml
from jsonargparse import ArgumentError

from .. import distributed as dist
from ..errors import OptionError
from ..runs.config import MOVED_TO_DATA, moved_to_data
from ..schema import MAX_YAML_BYTES, read_yaml_file
from .commands import COMMANDS
from .errors import describe_error, parse_error_message, quiet_third_party_logs
from .options import COMMAND_CONFIGS
from .parser import DEBUG_FLAG, build_parser, expand_bare_flags, expand_list_values, method_help


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vlprompt`` console script.

    A bad option or input (a :class:`~vlprompt.errors.VlpromptError`, an option jsonargparse rejects, or
    a file-system error) is one line on stderr and exit code 2; any other exception is unexpected: one
    line naming its type, a hint to rerun with ``--debug``, and exit code 1. ``--debug`` (anywhere on
    the command line) shows the traceback instead. Ctrl-C is exit code 130.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    argv = [a for a in argv if a != DEBUG_FLAG]
    command = next((a for a in argv if a in COMMAND_CONFIGS), None)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_third_party_logs(debug)
    prog = f"vlprompt {command}" if command else "vlprompt"
    try:
        help_text = method_help(argv)
        if help_text is not None:
            print(help_text, end="")
            return 0
        _check_config_sizes(argv)
        _refuse_moved_flags(command, argv)
        parser = build_parser()
        try:
            namespace = parser.parse_args(expand_list_values(expand_bare_flags(_moved_in_configs(command, argv))))
        except ArgumentError as err:
            if debug:
                raise
            print(f"{prog}: error: {_config_file_named(argv, parse_error_message(str(err)))}", file=sys.stderr)
            print(f"(`{prog} --help` lists the options)", file=sys.stderr)
            return 2
        dist.init_from_env()
        assert command is not None  # the parser requires one
        sub = namespace[command]
        config = _config(COMMAND_CONFIGS[command][0], parser.instantiate(namespace)[command])
        return COMMANDS[command](config, sub)
    except BrokenPipeError:  # the reader stopped early (`vlprompt methods | head`): not an error worth a line
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's documented way to exit quietly
        return 1
    except Exception as err:  # noqa: BLE001 - every failure is one message; --debug shows the traceback
        if debug:
            raise
        code, message = describe_error(err)
        print(f"{prog}: error: {message}", file=sys.stderr)
        if code != 2:
            print(f"(an unexpected error: rerun with {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted (a run continues where it stopped with --resume true)", file=sys.stderr)
        return 130


def _config_files(argv: list[str]) -> list[str]:
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    return files + [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]


def _check_config_sizes(argv: list[str]) -> None:
    """A ``--config`` file larger than a config can be is refused before it is read."""
    for name in _config_files(argv):
        if os.path.isfile(name) and os.path.getsize(name) > MAX_YAML_BYTES:
            raise OptionError(
                f"--config {name}: {os.path.getsize(name)} bytes, more than the {MAX_YAML_BYTES} a YAML config may have"
            )


def _refuse_moved_flags(command: str | None, argv: list[str]) -> None:
    """An option that moved under ``--data.`` names its new place (before jsonargparse's generic refusal)."""
    for name in MOVED_TO_DATA.get(command or "", ()):
        if any(a == f"--{name}" or a.startswith(f"--{name}=") for a in argv):
            raise OptionError(
                f"--{name} is now --data.{name}: every command takes its data options as --data.* (as train does)"
            )


def _moved_in_configs(command: str | None, argv: list[str]) -> list[str]:
    """``argv`` with each ``--config`` file written before options moved under ``data`` given as its migrated
    content (so an older run's config.yaml still replays); other files are left to jsonargparse."""
    if command not in MOVED_TO_DATA:
        return argv
    out = list(argv)
    for i, arg in enumerate(argv):
        name = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None
        if not name or not os.path.isfile(name):
            continue
        record = read_yaml_file(name, OptionError)
        if isinstance(record, dict) and moved_to_data(command, record) is not record:
            out[i + 1] = yaml.safe_dump(moved_to_data(command, record), sort_keys=False)
    return out


def _config_file_named(argv: list[str], message: str) -> str:
    """A failure to read a ``--config`` file, with the file named."""
    if not message.startswith("Problems parsing config"):
        return message
    files = _config_files(argv)
    detail = message.split(":", 1)[1].strip() if ":" in message else message
    return f"--config {', '.join(files)}: {detail}" if files else message


def _config(cls: type, namespace) -> object:
    values = {k: v for k, v in vars(namespace).items() if k in {f.name for f in dataclasses.fields(cls)}}
    return cls(**values)


__all__ = ["build_parser", "describe_error", "expand_bare_flags", "main", "quiet_third_party_logs"]
