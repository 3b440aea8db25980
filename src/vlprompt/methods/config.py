"""A method's typed options: a dataclass checked on construction, whatever builds it (CLI, YAML, Python)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import OptionError


class MethodOptionError(OptionError):
    """A method option of the wrong type, out of its range, unknown, or one the backbone cannot carry."""


def option(default: Any = dataclasses.MISSING, *, low=None, high=None, choices=None, **kwargs) -> Any:
    """A method config field with its valid range (``low <= value <= high``) or ``choices``, checked on load."""
    metadata = {"low": low, "high": high, "choices": tuple(choices) if choices is not None else None}
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


@dataclass
class MethodConfig:
    """Base of every method's hyperparameters (defaults are the paper's).

    Every field is checked on construction, whatever builds the config (the command line, a YAML file, a
    prompt file or Python): its type, and for fields made with :func:`option` its range or choices. An int
    is accepted where a float is asked (and stored as a float); anything else wrong is a
    :class:`MethodOptionError` naming the method and the option.
    """

    #: The registered method these options belong to, for messages (set by :func:`vlprompt.methods.register`).
    method_name: ClassVar[str] = ""
    #: Options that name what the method reads (a file, another model), not recipe values: a comparison with a
    #: paper's recipe does not compare them (e.g. PromptKD's teacher, compared by what it is instead).
    inputs: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        method = self.method_name or type(self).__name__
        for f in dataclasses.fields(self):
            value = _check_option(f, hints[f.name], getattr(self, f.name), f"{method} option {f.name}")
            object.__setattr__(self, f.name, value)

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None, method: str = "", source: str = "--method_options") -> Any:
        """Build from a plain dict, rejecting unknown keys (then every field is checked on construction).

        ``source`` names where the options came from in the unknown-key message (a CLI flag or a file).
        """
        options = dict(options or {})
        method = method or cls.method_name or cls.__name__
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise MethodOptionError(
                f"{source}: unknown option(s) {unknown} for method {method}; valid: {sorted(names)}"
            )
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _check_option(f: dataclasses.Field, hint: Any, value: Any, where: str) -> Any:
    """``value`` converted to the field's type (an int where a float is asked), or a MethodOptionError."""
    value = _check_type(hint, value, where)
    low, high, choices = (f.metadata.get(k) for k in ("low", "high", "choices"))
    if choices is not None and value not in choices:
        raise MethodOptionError(f"{where} must be one of {list(choices)}, not {value!r}")
    if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
        bounds = f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]"
        raise MethodOptionError(f"{where} must be {bounds}, not {value!r}")
    return value


def _check_type(hint: Any, value: Any, where: str) -> Any:
    """``value`` checked against the type hint (converted where the hint allows), or a MethodOptionError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        if value not in args:
            raise MethodOptionError(f"{where} must be one of {list(args)}, not {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):
        return _check_union(args, value, where)
    if origin in (dict, list, tuple) or hint is dict:
        return _check_container(origin or hint, args, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in _TYPE_WORDS and (type(value) is not hint):
        raise MethodOptionError(f"{where} must be {_TYPE_WORDS[hint]}, not {value!r}")
    return value


def _check_union(args: tuple, value: Any, where: str) -> Any:
    for arg in args:
        try:
            return _check_type(arg, value, where)
        except MethodOptionError:
            continue
    expected = " or ".join(_TYPE_WORDS.get(a, str(a)) for a in args)
    raise MethodOptionError(f"{where} must be {expected}, not {value!r}")


def _check_container(kind: type, args: tuple, value: Any, where: str) -> Any:
    if kind is dict:
        if not isinstance(value, dict):
            raise MethodOptionError(f"{where} must be a mapping, not {value!r}")
        return dict(value)
    if not isinstance(value, list | tuple):
        raise MethodOptionError(f"{where} must be a list, not {value!r}")
    return [_check_type(args[0], v, where) for v in value] if args else list(value)
