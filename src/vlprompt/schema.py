"""Checks every file reader shares: read a JSON or YAML file within a size limit, field types, paths that
must stay inside their folder, and names that must stay distinct after the library's normalisation.

Each check raises the error class its caller passes (a :class:`~vlprompt.errors.VlpromptError`
subclass) with a one-line message naming the file and the field, so a reader validates its schema in a
few lines and every reader fails the same way. YAML is parsed with :func:`safe_yaml_load`: safe tags
only, a size cap, and a cap on what aliases expand to (a "billion laughs" file fails at once).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from .errors import DataError, OptionError, VlpromptError

#: Largest JSON file a reader accepts (CoOp's largest split files are a few MB).
MAX_JSON_BYTES = 256 << 20
#: Largest YAML config accepted.
MAX_YAML_BYTES = 4 << 20
#: Most YAML nodes a document may expand to through its aliases.
MAX_YAML_NODES = 100_000

ErrorClass = type[VlpromptError]


def read_json_file(
    path: str | Path, what: str, error: ErrorClass = DataError, max_bytes: int = MAX_JSON_BYTES, missing: str = ""
) -> Any:
    """The parsed JSON of ``path`` (a ``what``: "split file", "prompt file", ...), or ``error`` naming it.

    Missing, a folder, larger than ``max_bytes``, not UTF-8, not JSON or nested too deeply: one line each.
    ``missing`` replaces the "not found" message.
    """
    path = Path(path)
    if not path.exists():
        raise error(missing or f"{what} not found: {path}")
    if not path.is_file():
        raise error(f"{what} {path} is not a file")
    size = path.stat().st_size
    if size > max_bytes:
        raise error(f"{path}: {size} bytes, more than the {max_bytes} bytes a {what} may have")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text ({err})") from None
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err})") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply to be a {what}") from None


_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number", bool: "a bool"}


def type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)


def is_a(value: Any, kind: type | tuple[type, ...]) -> bool:
    """``isinstance`` where a bool is not an int or a float (JSON's true is not 1)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, kinds)


def expect(value: Any, kind: type | tuple[type, ...], where: str, error: ErrorClass = DataError) -> Any:
    """``value`` if it is of ``kind``, else ``error`` saying what ``where`` must be."""
    if not is_a(value, kind):
        raise error(f"{where} must be {type_name(kind)}, not {_short(value)}")
    return value


def field(
    obj: Any, key: str, kind: type | tuple[type, ...], where: str, error: ErrorClass = DataError, **default: Any
) -> Any:
    """``obj[key]`` checked to be of ``kind``; missing is an error unless a ``default=`` is given."""
    expect(obj, dict, where, error)
    if key not in obj:
        if "default" in default:
            return default["default"]
        raise error(f"{where}: missing field {key!r} ({type_name(kind)})")
    return expect(obj[key], kind, f"{where}: field {key!r}", error)


def list_of(
    value: Any, kind: type | tuple[type, ...], where: str, error: ErrorClass = DataError, non_empty: bool = False
) -> list:
    """``value`` checked to be a list whose items are all of ``kind`` (and not empty, if asked)."""
    expect(value, list, where, error)
    for i, item in enumerate(value):
        expect(item, kind, f"{where}[{i}]", error)
    if non_empty and not value:
        raise error(f"{where} is empty: it needs at least one item")
    return value


def inside_folder(
    folder: str | Path, relative: Any, where: str, error: ErrorClass = DataError, follow_links: bool = True
) -> Path:
    """``folder / relative``, refused unless ``relative`` is a non-empty relative path that stays inside ``folder``:
    no absolute path, no ``..`` that climbs out, and (with ``follow_links``) no symbolic link that leads out.
    Dataset entries are checked without ``follow_links`` (image folders are often links to other disks)."""
    expect(relative, str, where, error)
    if not relative.strip() or "\0" in relative:
        raise error(f"{where} must be a non-empty relative path, not {relative!r}")
    if os.path.isabs(relative) or Path(relative).anchor:
        raise error(f"{where} must be a path relative to {folder}, not the absolute path {relative!r}")
    folder = Path(folder)
    if os.path.normpath(relative).split(os.sep)[0] == os.pardir:
        raise error(f"{where} {relative!r} leaves its folder {folder}")
    target = folder / relative
    if follow_links and not target.resolve().is_relative_to(folder.resolve()):
        raise error(f"{where} {relative!r} leads outside its folder {folder} (through a symbolic link)")
    return target


def name_key(name: str) -> str:
    """A name as a prompt reads it: underscores as spaces, whitespace collapsed, lower case (CLIP's tokenizer
    lower-cases), so two names with one key are one name to the model."""
    return " ".join(str(name).replace("_", " ").split()).lower()


def check_unique(
    names: Iterable[Any],
    where: str,
    error: ErrorClass = DataError,
    key: Callable[[Any], Any] = name_key,
    what: str = "names",
) -> None:
    """Refuse two ``names`` that are equal after ``key`` (by default :func:`name_key`), naming both."""
    seen: dict[Any, tuple[int, Any]] = {}
    for i, name in enumerate(names):
        k = key(name)
        if k in seen:
            j, first = seen[k]
            same = "" if first == name else f" after normalisation (as {k!r})"
            raise error(f"{where}: {what} must be unique, but {name!r} (#{i + 1}) equals {first!r} (#{j + 1}){same}")
        seen[k] = (i, name)


def _short(value: Any) -> str:
    text = repr(value)
    kind = type(value).__name__ if value is not None else "null"
    return f"{kind} {text[:60] + '...' if len(text) > 60 else text}"


# ---------------------------------------------------------------------------------------------- YAML


class LimitedSafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only) that refuses a document whose aliases expand past
    :data:`MAX_YAML_NODES` nodes, before anything is built from it (each shared node is counted once per
    use, with memoisation, so the check is linear in the file)."""

    max_nodes = MAX_YAML_NODES

    def compose_document(self):  # noqa: ANN201 - PyYAML's signature
        node = super().compose_document()
        _check_expansion(node, self.max_nodes)
        return node


def _check_expansion(root: yaml.Node, limit: int) -> None:
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node) -> int:
        ident = id(node)
        if ident in sizes:
            return sizes[ident]
        if ident in on_path:  # a recursive alias: it expands forever
            raise yaml.YAMLError("a YAML alias refers to a node that contains it (recursive alias)")
        on_path.add(ident)
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in node.value)
        else:
            total = 1
        on_path.discard(ident)
        if total > limit:
            raise yaml.YAMLError(f"the YAML expands to more than {limit} values through its aliases (&anchor / *alias)")
        sizes[ident] = total
        return total

    size(root)


def safe_yaml_load(
    text: str, where: str = "YAML", error: ErrorClass = OptionError, max_bytes: int = MAX_YAML_BYTES
) -> Any:
    """Parse YAML text with :class:`LimitedSafeLoader` within ``max_bytes``; a failure is ``error`` naming ``where``."""
    if len(text) > max_bytes:
        raise error(f"{where}: {len(text)} characters, more than the {max_bytes} a YAML config may have")
    try:
        return yaml.load(text, Loader=LimitedSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise error(f"{where}: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise error(f"{where}: YAML nested too deeply") from None


def read_yaml_file(path: str | Path, error: ErrorClass = OptionError, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """:func:`safe_yaml_load` of a file, its size checked before it is read."""
    path = Path(path)
    if not path.is_file():
        raise error(f"YAML file not found: {path}")
    if path.stat().st_size > max_bytes:
        raise error(f"{path}: {path.stat().st_size} bytes, more than the {max_bytes} a YAML config may have")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text ({err})") from None
    return safe_yaml_load(text, str(path), error, max_bytes)


def dataclass_from_dict(cls: type, values: Any, where: str, error: ErrorClass = DataError) -> Any:
    """``cls(**values)`` for a config dataclass read from a file: an object with known keys only, each of its
    default's type (an int where the default is an int or float, a list of ints where it is a tuple of ints,
    counts not negative)."""
    import dataclasses

    expect(values, dict, where, error)
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise error(f"{where}: unknown key(s) {unknown}; known: {sorted(defaults)}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        default, at = defaults[key], f"{where}: field {key!r}"
        if isinstance(default, tuple):
            out[key] = tuple(list_of(value, int, at, error))
        elif isinstance(default, float):
            out[key] = float(expect(value, (int, float), at, error))
        else:
            out[key] = expect(value, type(default), at, error)
        if any(is_a(v, (int, float)) and v < 0 for v in (out[key] if isinstance(out[key], tuple) else (out[key],))):
            raise error(f"{at} must not be negative, not {value!r}")
    return cls(**out)


def check_template(template: Any, where: str, error: ErrorClass = OptionError) -> str:
    """A prompt template: a string with exactly one ``{}`` (where the class name goes) and no other braces."""
    expect(template, str, where, error)
    if template.count("{}") != 1 or template.replace("{}", "").count("{") or template.replace("{}", "").count("}"):
        raise error(f"{where} {template!r} must hold exactly one '{{}}' (the class name) and no other braces")
    return template


def check_template_fits(
    template: str, names: Iterable[str], backbone: Any, where: str, error: ErrorClass = OptionError
) -> None:
    """The prompt of the longest class name fits the text encoder's context (start and end tokens included);
    otherwise the class name would be cut off and every class would score alike."""
    filled = [(template.format(" ".join(str(n).replace("_", " ").split())), n) for n in names]
    if not filled:
        return
    tokens, text, name = max((backbone.bpe_length(t) + 2, t, n) for t, n in filled)
    if tokens > backbone.context_length:
        raise error(
            f"{where} {template!r} with the longest class name {name!r} is {tokens} tokens, more than the "
            f"{backbone.context_length}-token context of the text encoder: shorten the template or the class name"
        )
