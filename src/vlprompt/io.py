"""Atomic file writes (temp file in the same folder, fsync, rename) and tensor checksums."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class CorruptFileError(ValueError):
    """A file's content does not match the checksum recorded with it, or cannot be read."""


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then move the finished file onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


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


def load_checkpoint(path: str | Path, map_location: Any = None) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` a training checkpoint and verify its tensor checksums.

    A checkpoint written with ``<key>_sha256`` entries (``method``, ``best_state``) is checked against
    them; an unreadable or altered file is a :class:`CorruptFileError` naming it.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise CorruptFileError(f"checkpoint {path} is corrupted or unreadable ({err}); {_RESTART}") from None
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
