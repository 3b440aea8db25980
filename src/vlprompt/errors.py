"""The library's errors: one base, :class:`VlpromptError`, with one subclass per kind of mistake.

A ``VlpromptError`` means the input was wrong (an option, a data file, a prompt directory, a backbone,
a run directory), never a bug: its message says what is wrong and what to do, and the CLI prints it as
one line with exit code 2. Any other exception is unexpected: the CLI prints its type and message with
exit code 1 and a hint to rerun with ``--debug`` for the traceback.

``VlpromptError`` is a ``ValueError``, so ``except ValueError`` written before it existed still works.
Modules raise the most specific class they have; the narrower ones (``BundledModelError``,
``LabelSpaceError``, ``CorruptFileError``, ...) live beside the code that raises them and subclass a
kind here. This module imports nothing from vlprompt, so any module can import it.
"""

from __future__ import annotations


class VlpromptError(ValueError):
    """Bad input to vlprompt (not a bug): the message says what is wrong and how to fix it."""


class OptionError(VlpromptError):
    """An option or config field of the wrong type, out of its range, unknown, or clashing with another."""


class DataError(VlpromptError):
    """Bad or missing input data; the message names the file, line or field."""


class PromptFileError(VlpromptError):
    """A prompt directory is missing, malformed, or does not fit the backbone."""


class BackboneError(VlpromptError):
    """A backbone could not be loaded or cannot do what was asked."""


class RunDirError(VlpromptError):
    """A run directory cannot be used as asked (not a vlprompt run, protected, or not resumable as asked)."""


__all__ = ["BackboneError", "DataError", "OptionError", "PromptFileError", "RunDirError", "VlpromptError"]
