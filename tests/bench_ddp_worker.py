"""Worker for tests/test_bench_ddp.py: runs ``vlprompt`` commands in one process, noting what it changes on disk.

Usage: ``torchrun --nproc_per_node 2 tests/bench_ddp_worker.py WATCH LOG COMMANDS`` (or plain ``python`` for one
process), where COMMANDS is a JSON list of argument lists, each run as ``vlprompt ARGS`` (one process start for
all of them: importing the library takes most of a small run's time). Every file or folder this rank creates,
writes, renames or deletes under WATCH is recorded, through Python's audit hooks, in ``LOG.rank<r>.json``.
The library writes every file through ``vlprompt.io.atomic_write`` (a temp file made with ``os.open``, then
``os.replace``), so even a safetensors file, written by native code, is seen.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Audit events that change the file system (their first argument is the path).
CHANGES = {
    "os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate", "os.symlink", "os.link", "os.chmod",
    "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move",
}  # fmt: skip
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def watch(folder: str) -> list[tuple[str, str]]:
    """Record (event, path) of every change under ``folder`` from now on; returns the live list."""
    folder = os.path.abspath(folder)
    changes: list[tuple[str, str]] = []

    def changed(event: str, path) -> None:
        if isinstance(path, (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(path))
            if path == folder or path.startswith(folder + os.sep):
                changes.append((event, path))

    def hook(event: str, args: tuple) -> None:
        if event == "open" and len(args) == 3:
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
            if writes:
                changed(event, path)
        elif event in CHANGES and args:
            changed(event, args[0])
            if event in ("os.rename", "shutil.move", "shutil.copyfile") and len(args) > 1:
                changed(event, args[1])

    sys.addaudithook(hook)
    return changes


def run(commands: list[list[str]]) -> None:
    """``vlprompt ARGS`` for each command in this process; fails on the first non-zero exit."""
    from vlprompt.cli import main

    for argv in commands:
        code = main(["--debug", *argv])
        if code != 0:
            raise SystemExit(f"vlprompt {' '.join(argv)} exited {code}")


if __name__ == "__main__":
    watched, log, commands = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    changes = watch(watched)
    run(commands)
    rank = int(os.environ.get("RANK", "0"))
    with open(f"{log}.rank{rank}.json", "w") as f:
        json.dump(changes, f, indent=1)
    import torch.distributed

    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
