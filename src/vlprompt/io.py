"""Atomic file writes (temp file in the same folder, fsync, rename) and tensor checksums."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor

from .errors import DataError


class CorruptFileError(DataError):
    """A file's content does not match the checksum recorded with it, or cannot be read."""


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` then move the finished file onto ``path`` atomically.

    The temp file gets the permissions a plain ``open(path, "w")`` would give (``0o666`` less the
    umask), not the private ``0o600`` of ``tempfile.mkstemp``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:  # e.g. a full disk: name the file meant, not the temp file; the old one is intact
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    except SafetensorError as err:  # its I/O errors are text: "... (os error 28)"
        code = re.search(r"os error (\d+)", str(err))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _new_temp_file(path: Path) -> str:
    """Create an empty ``.<name>.<random>.tmp`` next to ``path``; the umask applies to its mode."""
    while True:
        tmp = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the ``.<name>.<random>.tmp`` files an interrupted :func:`atomic_write` left in ``directory``.

    Only for a directory no other process is writing to (a run being resumed). Returns what was removed.
    """
    stale = [p for p in Path(directory).glob(".*.tmp") if _TEMP_NAME.fullmatch(p.name) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def torch_bytes(obj: Any) -> bytes:
    """``torch.save(obj)`` into memory: written with :func:`atomic_write_bytes`, a full disk is a plain
    ``OSError`` (torch's own writer reports it as an obscure RuntimeError), and the archive's record
    names do not carry a temp file's random name, so equal contents give equal bytes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def tensors_sha256(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of every tensor, in sorted name order.

    Independent of device, strides and dict order; any changed value, dtype, shape or name changes it.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        digest.update(json.dumps([name, str(t.dtype), list(tensors[name].shape), len(data)]).encode())
        digest.update(data)
    return digest.hexdigest()


def non_finite(tensors: Mapping[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [
        name
        for name in sorted(tensors)
        if (tensors[name].is_floating_point() or tensors[name].is_complex()) and not tensors[name].isfinite().all()
    ]


def torch_load_failure(path: Path, err: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in a few words."""
    if path.is_file() and path.stat().st_size == 0:
        return "the file is empty (0 bytes)"
    text = str(err)
    if "Weights only load failed" in text or isinstance(err, pickle.UnpicklingError):
        found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL [\w.]+|Unsupported operand \d+", text)
        detail = f" ({found.group(0).strip()})" if found else ""
        return (
            f"it holds Python objects other than tensors{detail}, and vlprompt loads torch files only with "
            "torch.load(weights_only=True), which refuses to unpickle them"
        )
    return f"it is truncated or not a torch file ({text.splitlines()[0] if text else type(err).__name__})"


def load_checkpoint(path: str | Path, map_location: Any = None) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` a training checkpoint and verify its tensor checksums.

    A checkpoint written with ``<key>_sha256`` entries (``method``, ``best_state``) is checked against
    them; an unreadable or altered file is a :class:`CorruptFileError` naming it.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        reason = torch_load_failure(path, err)
        raise CorruptFileError(f"checkpoint {path} is corrupted or unreadable: {reason}; {_RESTART}") from None
    if not isinstance(state, dict):
        raise CorruptFileError(f"checkpoint {path} is corrupted: expected a dict, found {type(state).__name__}")
    for key in ("method", "best_state"):
        expected, tensors = state.get(f"{key}_sha256"), state.get(key)
        if expected is not None and tensors is not None and tensors_sha256(tensors) != expected:
            raise CorruptFileError(
                f"checkpoint {path} is corrupted: its {key!r} tensors differ from their checksum; {_RESTART}"
            )
    return state


_RESTART = "delete it to restart that run from scratch (or pass --overwrite instead of --resume)."


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_directory(
    path: str | Path, *, replace: bool = False, complete: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Build a directory in a temporary sibling and rename it onto ``path`` when the block succeeds.

    Yields the temporary directory (``.<name>.tmp-XXXXXXXX`` next to ``path``, so the rename is
    atomic). If the block raises, it is removed and ``path`` is left as it was. Otherwise it gets
    mode ``0o755`` (``mkdtemp`` makes it private) and takes the place of ``path``:

    - by default ``path`` must be missing or an empty directory. If the rename fails because
      another process put a directory there in the meantime (a concurrent builder won the race)
      and ``complete(path)`` says that one is finished, ours is discarded; otherwise the error
      is raised.
    - with ``replace=True`` an existing ``path`` is moved aside to ``.<name>.old``, then removed
      once the new directory is in place (or put back if the rename fails).

    Args:
        path: the directory to create.
        replace: replace an existing ``path``.
        complete: whether a directory another process put at ``path`` is a finished build.

    Raises:
        FileExistsError: without ``replace``, ``path`` exists and is not an empty directory
            (checked before the block runs).
    """
    path = Path(path)
    if not replace and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not an empty directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp made it private
        if replace:
            _swap_directory(tmp, path)
        else:
            _move_directory(tmp, path, complete)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_directory(tmp: Path, path: Path, complete: Callable[[Path], bool] | None) -> None:
    """Rename ``tmp`` onto a missing or empty ``path``, or drop it if a finished one got there first."""
    try:
        if path.exists():
            path.rmdir()  # an empty directory: make room
        tmp.rename(path)
    except OSError:
        if complete is None or not complete(path):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent builder won the race


def _swap_directory(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` onto ``path``, moving an existing ``path`` aside first."""
    backup = path.with_name(f".{path.name}.old")
    shutil.rmtree(backup, ignore_errors=True)
    if path.exists():
        path.rename(backup)
    try:
        tmp.rename(path)
    except BaseException:
        if backup.exists() and not path.exists():
            backup.rename(path)
        raise
    shutil.rmtree(backup, ignore_errors=True)
