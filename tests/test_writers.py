"""The shared writers: io.file_sha256, io.atomic_write's permissions, io.atomic_directory,
data.images.write_split_json and write_czsl's deterministic metadata."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from vlprompt.data.czsl import load_czsl, write_czsl
from vlprompt.data.images import DataError, split_json, write_split_json
from vlprompt.io import atomic_directory, atomic_write_text, file_sha256


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = os.urandom(3 << 20)
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_atomic_write_gives_the_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "x" and _mode(tmp_path / "a.txt") == 0o640
    assert _leftovers(tmp_path) == []


def test_atomic_directory_renames_into_place(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out"
    with atomic_directory(target) as tmp:
        assert tmp.parent == target.parent and not target.exists()
        (tmp / "f").write_text("1")
    assert (target / "f").read_text() == "1" and _mode(target) == 0o755
    assert _leftovers(target.parent) == []
    (tmp_path / "empty").mkdir()  # an empty directory is replaced
    with atomic_directory(tmp_path / "empty") as tmp:
        (tmp / "f").write_text("2")
    assert (tmp_path / "empty" / "f").read_text() == "2"


def test_atomic_directory_failure_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), atomic_directory(tmp_path / "out") as tmp:
        (tmp / "f").write_text("1")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_refuses_a_non_empty_target(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty directory"), atomic_directory(tmp_path / "out"):
        pytest.fail("the block must not run")
    assert (tmp_path / "out" / "keep").read_text() == "mine" and _leftovers(tmp_path) == []


def test_atomic_directory_concurrent_builder(tmp_path: Path) -> None:
    def done(path: Path) -> bool:
        return (path / "DONE").is_file()

    target = tmp_path / "out"
    with atomic_directory(target, complete=done) as tmp:
        (tmp / "DONE").write_text("ours")
        target.mkdir()  # another builder finishes first
        (target / "DONE").write_text("theirs")
    assert (target / "DONE").read_text() == "theirs" and _leftovers(tmp_path) == []
    other = tmp_path / "other"
    with pytest.raises(OSError), atomic_directory(other, complete=done) as tmp:
        other.mkdir()  # something unfinished got there
        (other / "partial").write_text("")
    assert sorted(p.name for p in other.iterdir()) == ["partial"] and _leftovers(tmp_path) == []


def test_atomic_directory_replace(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("old")
    with atomic_directory(target, replace=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new"] and _leftovers(tmp_path) == []


def test_write_split_json_round_trip(tmp_path: Path) -> None:
    splits = {
        "train": [["a/1.png", 0, "cat"], ("b/1.png", 1, "dog")],
        "val": [["a/2.png", 0, "cat"]],
        "test": [["b/2.png", 1, "dog"]],
    }
    path = write_split_json(tmp_path / "split.json", splits)
    assert json.loads(path.read_text()) == {k: [list(e) for e in v] for k, v in splits.items()}
    assert list(json.loads(path.read_text())) == ["train", "val", "test"]
    for rel in ("a/1.png", "b/1.png"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"")  # split_json checks that the files exist
    images = split_json(path, tmp_path, "train")
    assert images.classnames == ["cat", "dog"] and images.labels == [0, 1]
    assert images.samples[1].path == str(tmp_path / "b/1.png")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"val": None}, "exactly the keys"),
        ({"extra": []}, "exactly the keys"),
        ({"val": [["a/2.png", 0]]}, r"val\[0\] must be \[relative path, int label, class name\]"),
        ({"val": [["a/2.png", "0", "cat"]]}, r"val\[0\] must be"),
        ({"val": [["a/2.png", 0, "dog"]]}, r"val\[0\] names label 0 'dog', elsewhere 'cat'"),
        ({"test": [["b/2.png", 3, "bird"]]}, "label 3 is out of range"),
    ],
)
def test_write_split_json_checks_like_the_reader(tmp_path: Path, change: dict, match: str) -> None:
    splits: dict = {"train": [["a/1.png", 0, "cat"], ["b/1.png", 1, "dog"]], "val": [], "test": []}
    for key, value in change.items():
        if value is None:
            del splits[key]
        else:
            splits[key] = value
    with pytest.raises(DataError, match=match):
        write_split_json(tmp_path / "split.json", splits)
    assert not (tmp_path / "split.json").exists()


def test_write_czsl_metadata_bytes_are_deterministic(tmp_path: Path) -> None:
    samples = [{"image": "x.png", "attr": "red", "obj": "cat", "set": "train"}]
    train = [("red", "cat"), ("blue", "dog")]
    other = [("red", "cat"), ("blue", "cat")]
    for name in ("a", "b"):
        write_czsl(tmp_path / name, train, other, other, samples)
    meta = "metadata_compositional-split-natural.t7"
    assert (tmp_path / "a" / meta).read_bytes() == (tmp_path / "b" / meta).read_bytes()
    assert load_czsl(tmp_path / "a").samples["train"][0].image == "x.png"
