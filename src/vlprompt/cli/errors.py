"""Failures as one line: bad input (a VlpromptError, a file-system error) exits 2, anything else 1."""

from __future__ import annotations

import errno
import logging
import os
import re

from ..errors import VlpromptError


def describe_error(err: Exception) -> tuple[int, str]:
    """(exit code, one-line message): 2 for bad options or inputs, 1 for anything unexpected.

    Bad input is a :class:`~vlprompt.errors.VlpromptError` (or a file-system error: a missing file, a
    full disk, no permission); any other exception, a plain ``ValueError`` from torch included, is a bug
    or a failure we did not foresee, so its type is named and ``--debug`` shows where it came from.
    """
    if isinstance(err, VlpromptError):
        return 2, str(err)
    if isinstance(err, OSError):
        return 2, os_error_message(err)
    lines = str(err).strip().splitlines()
    if not lines:
        return 1, type(err).__name__
    more = " ..." if len(lines) > 1 else ""  # the rest is in the --debug traceback
    return 1, f"{type(err).__name__}: {lines[0]}{more}"


def os_error_message(err: OSError) -> str:
    """A file-system error as one line: what failed, on which file, and what to do."""
    what = err.strerror or str(err)
    where = f" ({err.filename})" if err.filename else ""
    hints: dict[int | None, str] = {
        errno.ENOSPC: "free some space or choose another --out; files written before are unchanged",
        errno.EDQUOT: "free some space or choose another --out; files written before are unchanged",
        errno.EACCES: "choose a folder you can write to (--out) or fix its permissions",
        errno.EPERM: "choose a folder you can write to (--out) or fix its permissions",
        errno.EROFS: "the file system is read-only: choose another --out",
    }
    hint = hints.get(err.errno)
    return f"{what}{where}" + (f": {hint}" if hint else "")


def parse_error_message(message: str) -> str:
    """jsonargparse's message for a bad value, shortened to the flag, the expected types and the value."""
    key = re.match(r'Parser key "([^"]+)":', message)
    if not key:
        return " ".join(message.split())  # one line (PyYAML's messages span several)
    expected = re.findall(r"Expected a <class '(\w+)'>", message)
    given = re.search(r"Given value: (.*)$|Got value: (.*)$", message, re.MULTILINE)
    names = [
        {"NoneType": "null", "int": "an integer", "float": "a number", "str": "a string"}.get(t, t) for t in expected
    ]
    value = next((g for g in given.groups() if g is not None), "") if given else ""
    names = [n for n in names if n != "null"] or names  # every override may be null: not worth saying
    if not names:
        return f"--{key.group(1)}: " + " ".join(message[key.end() :].split())
    return f"--{key.group(1)}: expected {' or '.join(dict.fromkeys(names))}, got {value!r}"


class _HideOpenClipInfo(logging.Filter):
    """Drops open_clip's INFO lines (it logs every model it builds on the root logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}open_clip{os.sep}" not in record.pathname


def quiet_third_party_logs(debug: bool) -> None:
    """Hide open_clip's INFO lines unless ``--debug`` asks for everything."""
    for handler in logging.getLogger().handlers:
        for f in [f for f in handler.filters if isinstance(f, _HideOpenClipInfo)]:
            handler.removeFilter(f)
        if not debug:
            handler.addFilter(_HideOpenClipInfo())
