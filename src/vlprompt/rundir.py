"""Run directories: a marker file says "vlprompt made this", so ``--overwrite`` only ever deletes runs.

Every run directory gets a ``.vlprompt-run`` file (JSON: format, version, command, library version)
when it is created. ``--overwrite`` deletes a directory only when it holds that marker, and never the
working directory, one of its parents, the home directory or the filesystem root, even with a marker.
``--resume`` continues only in an empty folder or a marked run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from . import __version__
from . import distributed as dist
from .errors import RunDirError
from .io import atomic_write_text, remove_stale_temp_files

MARKER = ".vlprompt-run"
FORMAT = "vlprompt-run"
VERSION = 1


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a vlprompt run marker."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def mark_run_dir(path: str | Path, command: str | None = None) -> Path:
    """Create ``path`` if needed and write its run marker (e.g. to adopt a run made by an older vlprompt)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    marker = {"format": FORMAT, "version": VERSION, "command": command, "library_version": __version__}
    atomic_write_text(path / MARKER, json.dumps(marker, indent=2))
    return path


def _check_writable(out: Path) -> None:
    """``out`` (or the folder it would be created in) can be written to."""
    existing = out if out.exists() else next((p for p in out.absolute().parents if p.exists()), None)
    if existing is not None and existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == out else f" (it would be created in {existing})"
        raise RunDirError(f"cannot write to --out {out}{where}: permission denied or a read-only file system")


def protected_reason(path: str | Path) -> str | None:
    """Why ``path`` must never be deleted (the cwd, a parent of it, the home directory, the root), or None."""
    target = Path(path).resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if target == Path(target.anchor):
        return "it is the filesystem root"
    if target == cwd:
        return "it is the current working directory"
    if cwd.is_relative_to(target):
        return "it contains the current working directory"
    if target == home or home.is_relative_to(target):
        return "it is (or contains) the home directory"
    return None


def prepare_run_dir(out: str | Path, resume: bool, overwrite: bool, command: str | None = None) -> Path:
    """Create (or reuse, or safely replace) a run directory and mark it.

    Args:
        out: the run directory.
        resume: continue the run in ``out``: it must be empty, missing, or a vlprompt run.
        overwrite: replace ``out`` if it is a non-empty vlprompt run (never anything else).
        command: the command that makes the run, recorded in the marker.

    Raises:
        FileExistsError: ``out`` is a non-empty run and neither ``resume`` nor ``overwrite`` is set.
        RunDirError: ``out`` is not a vlprompt run, is protected, or is not a directory.
    """
    out = Path(out)
    delete = check_run_dir(out, resume, overwrite)
    dist.barrier()  # every rank has checked before rank 0 changes anything
    if dist.is_main():
        if delete:
            shutil.rmtree(out)
        elif resume and out.is_dir():
            remove_stale_temp_files(out)  # left by a write that a crash interrupted
        if not is_run_dir(out):
            mark_run_dir(out, command)
    dist.barrier()
    return out


def check_run_dir(out: str | Path, resume: bool, overwrite: bool) -> bool:
    """Raise if ``out`` cannot be used as asked (changes nothing); return whether it must be deleted first."""
    out = Path(out)
    _check_writable(out)
    if out.is_symlink():
        raise RunDirError(f"{out} is a symbolic link: pass the real directory as --out (vlprompt does not follow it)")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out} exists and is not a directory: choose another --out")
    if not out.exists() or not any(out.iterdir()):
        return False
    hint = (
        f"if it is a run made by a vlprompt older than this marker, mark it with "
        f"`python -c \"from vlprompt.rundir import mark_run_dir; mark_run_dir('{out}')\"`"
    )
    if resume:
        if not is_run_dir(out):
            raise RunDirError(
                f"cannot resume in {out}: it is not empty and is not a vlprompt run directory (no {MARKER} "
                f"marker). Pass the --out of an earlier run or a new folder; {hint}"
            )
        return False
    if not overwrite:
        raise FileExistsError(f"{out} is not empty: pass --overwrite to replace it or --resume to continue")
    reason = protected_reason(out)
    if reason:
        raise RunDirError(f"refusing to delete {out} for --overwrite: {reason}. Choose a sub-folder as --out")
    if not is_run_dir(out):
        raise RunDirError(
            f"refusing to delete {out} for --overwrite: it is not a vlprompt run directory (no {MARKER} marker) "
            f"and may hold other files. Choose a new --out, or delete it yourself; {hint}"
        )
    return True
