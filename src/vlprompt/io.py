"""Atomic file writes: temp file in the same folder, fsync, rename."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
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


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


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
