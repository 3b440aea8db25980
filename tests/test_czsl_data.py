"""CZSL data: the standard on-disk format (pair files, torch-saved metadata, images), its checks,
the per-phase dataset and the atomic writer."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlprompt.data.czsl import (
    DEFAULT_SPLIT,
    CZSLDataset,
    CZSLSample,
    load_czsl,
    read_pairs,
    write_czsl,
)
from vlprompt.data.images import DataError

TRAIN = [("red", "ball"), ("red", "cube"), ("blue", "ball"), ("Green", "cone")]
VAL = [("red", "ball"), ("blue", "cube")]  # blue cube unseen
TEST = [("blue", "ball"), ("Green", "ball"), ("red", "cone")]  # Green ball, red cone unseen
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "Green": (30, 200, 30)}


def entry(image: str, attr: str, obj: str, phase: str) -> dict[str, str]:
    return {"image": image, "attr": attr, "obj": obj, "set": phase}


def metadata() -> list[dict[str, str]]:
    """Two images per pair and phase, plus entries the standard rule leaves out."""
    out = []
    for phase, pairs in (("train", TRAIN), ("val", VAL), ("test", TEST)):
        for a, o in pairs:
            out += [entry(f"{a}_{o}/{phase}{i}.png", a, o, phase) for i in range(2)]
    out.append(entry("red_ball/na_attr.png", "NA", "ball", "train"))  # unlabelled attribute
    out.append(entry("red_ball/na_set.png", "red", "ball", "NA"))  # in no set
    out.append(entry("blue_cone/x.png", "blue", "cone", "test"))  # pair in no pair file
    out.append(entry("red_hat/x.png", "red", "hat", "val"))  # object in no pair file
    return out


def write_images(root: Path, entries: list[dict[str, str]]) -> None:
    for e in entries:
        path = root / "images" / e["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), COLOURS.get(e["attr"], (128, 128, 128))).save(path)


@pytest.fixture()
def czsl_root(tmp_path) -> Path:
    entries = metadata()
    write_czsl(tmp_path, TRAIN, VAL, TEST, entries)
    write_images(tmp_path, entries)
    return tmp_path


def test_load_split(czsl_root, caplog):
    with caplog.at_level(logging.INFO, logger="vlprompt.data.czsl"):
        split = load_czsl(czsl_root)
    assert split.attrs == ["Green", "blue", "red"]  # plain case-sensitive sort
    assert split.objs == ["ball", "cone", "cube"]
    assert split.train_pairs == TRAIN and split.val_pairs == VAL and split.test_pairs == TEST
    assert split.pairs == sorted(set(TRAIN + VAL + TEST))
    assert [len(split.samples[p]) for p in ("train", "val", "test")] == [8, 4, 6]
    assert split.samples["val"][2] == CZSLSample("blue_cube/val0.png", "blue", "cube")
    assert split.skipped == {"attr_NA": 1, "set_NA": 1, "pair_not_in_split": 2}
    assert "attr_NA=1, set_NA=1, pair_not_in_split=2" in caplog.text
    assert split.split == DEFAULT_SPLIT and split.image_dir == czsl_root / "images"


def test_columns_masks_and_labels(czsl_root):
    split = load_czsl(czsl_root)
    open_cols = split.open_world_pairs()
    assert open_cols[:4] == [("Green", "ball"), ("Green", "cone"), ("Green", "cube"), ("blue", "ball")]
    assert split.columns("open") == open_cols and split.columns("closed") == split.pairs
    with pytest.raises(ValueError, match="world"):
        split.columns("half")
    cols = split.pairs  # Green ball, Green cone, blue ball, blue cube, red ball, red cone, red cube
    assert split.seen_mask().tolist() == [False, True, True, False, True, False, True]
    assert split.closed_mask("val").tolist() == [False, True, True, True, True, False, True]
    assert split.closed_mask("test").tolist() == [True, True, True, False, True, True, True]
    assert split.closed_mask("train").tolist() == split.seen_mask().tolist()
    attrs, objs = split.pair_parts(cols)
    assert [(split.attrs[a], split.objs[o]) for a, o in zip(attrs.tolist(), objs.tolist())] == cols
    assert split.pair_index(cols)[("red", "cone")] == 5
    assert split.labels("test").tolist() == [2, 2, 0, 0, 5, 5]
    assert split.labels("test", open_cols).tolist() == [open_cols.index((s.attr, s.obj)) for s in split.samples["test"]]
    assert split.seen_mask(open_cols).sum() == len(TRAIN)
    with pytest.raises(DataError, match="not among the columns"):
        split.labels("test", split.train_pairs)
    with pytest.raises(ValueError, match="phase"):
        split.closed_mask("dev")


def test_dataset_items(czsl_root):
    split = load_czsl(czsl_root)

    def to_tensor(img):
        return torch.from_numpy(np.asarray(img, dtype=np.float32))

    ds = CZSLDataset(split, "test", to_tensor)
    assert len(ds) == 6
    image, a, o, p = ds[4]
    assert image.shape == (6, 8, 3) and image[0, 0].tolist() == [220.0, 30.0, 30.0]
    assert (split.attrs[a], split.objs[o], split.pairs[p]) == ("red", "cone", ("red", "cone"))
    opened = CZSLDataset(split, "test", to_tensor, columns=split.open_world_pairs())
    assert opened[4][3] == split.open_world_pairs().index(("red", "cone"))
    assert opened.pair_labels.tolist() == split.labels("test", split.open_world_pairs()).tolist()
    train = CZSLDataset(split, "train", columns=split.train_pairs)
    assert train.pair_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert isinstance(train[0][0], Image.Image)  # no transform: the RGB image
    with pytest.raises(DataError, match="outside the given columns"):
        CZSLDataset(split, "val", columns=split.train_pairs)


def test_missing_and_corrupt_images(czsl_root, caplog):
    split = load_czsl(czsl_root)
    (czsl_root / "images" / "blue_ball/test1.png").unlink()
    (czsl_root / "images" / "red_cone/test0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="blue_ball/test1.png"):
        CZSLDataset(split, "test")
    with caplog.at_level(logging.WARNING):
        ds = CZSLDataset(split, "test", skip_missing=True)
    assert len(ds) == 5 and ds.skipped == {"missing": 1, "corrupt": 0}
    assert ds.skipped_files == [str(czsl_root / "images" / "blue_ball/test1.png")]
    assert "skipped 1 missing" in caplog.text
    with pytest.raises(DataError, match="red_cone/test0.png"):
        ds[3]  # the corrupt file, found when read
    checked = CZSLDataset(split, "test", skip_missing=True, verify_images=True)
    assert len(checked) == 4 and checked.skipped == {"missing": 1, "corrupt": 1}
    write_images(czsl_root, [entry("blue_ball/test1.png", "blue", "ball", "test")])
    assert len(CZSLDataset(split, "test")) == 6  # unverified: the corrupt file passes until read
    with pytest.raises(DataError, match="cannot read image .*red_cone/test0.png"):
        CZSLDataset(split, "test", verify_images=True)


def test_pair_file_errors(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("\nred ball\nred big ball\n")
    with pytest.raises(DataError, match=r"p\.txt:3: expected two names"):
        read_pairs(path)
    path.write_text("red ball\nblue\n")
    with pytest.raises(DataError, match=r"p\.txt:2"):
        read_pairs(path)
    path.write_text("red ball\n\nblue cube\n")
    with pytest.raises(DataError, match=r"p\.txt:2"):
        read_pairs(path)
    path.write_text("\n  \n")
    with pytest.raises(DataError, match="no pairs"):
        read_pairs(path)
    path.write_text("\nred ball\r\nblue\tcube  \n\n")
    assert read_pairs(path) == [("red", "ball"), ("blue", "cube")]
    with pytest.raises(DataError, match="not found"):
        read_pairs(tmp_path / "none.txt")


def test_split_errors(tmp_path):
    entries = [entry("a.png", "red", "ball", "train")]
    with pytest.raises(DataError, match="does not exist"):
        load_czsl(tmp_path / "nowhere")
    with pytest.raises(DataError, match="split folder"):
        load_czsl(tmp_path)
    # A val pair whose object no train pair has.
    root = write_czsl(tmp_path / "novel", TRAIN, VAL + [("red", "hat")], TEST, entries)
    with pytest.raises(DataError, match=r"val_pairs\.txt:3: pair \(red, hat\) uses 'hat'"):
        load_czsl(root)
    split = load_czsl(root, allow_novel_primitives=True)
    assert "hat" in split.objs
    # Every val pair is also a train pair: no unseen pairs.
    root = write_czsl(tmp_path / "allseen", TRAIN, TRAIN[:2], TEST, entries)
    with pytest.raises(DataError, match="no unseen pairs"):
        load_czsl(root)
    # A differently named split folder.
    root = write_czsl(tmp_path / "named", TRAIN, VAL, TEST, entries, split="my-split")
    assert load_czsl(root, "my-split").split == "my-split"
    with pytest.raises(DataError, match="split folder"):
        load_czsl(root)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"image": "a"}, "expected a list"),
        ([["a.png", "red", "ball", "train"]], "entry 0 is a list"),
        ([entry("a.png", "red", "ball", "train"), {"image": "b.png", "attr": "red", "obj": "ball"}], "entry 1 needs"),
        ([entry("a.png", "red", "ball", "dev")], "entry 0 .* has set 'dev'"),
    ],
)
def test_metadata_errors(tmp_path, content, message):
    write_czsl(tmp_path, TRAIN, VAL, TEST, [])
    torch.save(content, tmp_path / f"metadata_{DEFAULT_SPLIT}.t7")
    with pytest.raises(DataError, match=message):
        load_czsl(tmp_path)


class Unsafe:  # not loadable with weights_only=True
    pass


def test_metadata_unsafe_or_missing(tmp_path):
    write_czsl(tmp_path, TRAIN, VAL, TEST, [])
    meta = tmp_path / f"metadata_{DEFAULT_SPLIT}.t7"
    torch.save([Unsafe()], meta)
    with pytest.raises(DataError, match="weights_only"):
        load_czsl(tmp_path)
    meta.unlink()
    with pytest.raises(DataError, match="metadata file not found"):
        load_czsl(tmp_path)


def test_writer_is_atomic_and_round_trips(tmp_path):
    entries = [entry("x/1.png", "red", "ball", "train") | {"_image": "orig/1.jpg"}]
    write_czsl(tmp_path, TRAIN, VAL, TEST, entries)
    write_czsl(tmp_path, TRAIN, VAL, TEST, entries)  # overwriting is fine
    split_dir = tmp_path / DEFAULT_SPLIT
    assert sorted(p.name for p in split_dir.iterdir()) == ["test_pairs.txt", "train_pairs.txt", "val_pairs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEFAULT_SPLIT, f"metadata_{DEFAULT_SPLIT}.t7"]
    assert (split_dir / "val_pairs.txt").read_text() == "red ball\nblue cube\n"
    assert torch.load(tmp_path / f"metadata_{DEFAULT_SPLIT}.t7", weights_only=True) == entries
    split = load_czsl(tmp_path)
    assert split.samples["train"] == [CZSLSample("x/1.png", "red", "ball")]
    with pytest.raises(ValueError, match="without spaces"):
        write_czsl(tmp_path / "bad", [("red car", "x")], VAL, TEST, [])
    with pytest.raises(ValueError, match="set 'dev'"):
        write_czsl(tmp_path / "bad", TRAIN, VAL, TEST, [entry("a.png", "red", "ball", "dev")])
    with pytest.raises(ValueError, match="needs a string 'obj'"):
        write_czsl(tmp_path / "bad", TRAIN, VAL, TEST, [{"image": "a.png", "attr": "red", "set": "train"}])
    with pytest.raises(ValueError, match="plain values"):
        write_czsl(tmp_path / "bad", TRAIN, VAL, TEST, [entry("a.png", "red", "ball", "train") | {"x": [1]}])
    assert not (tmp_path / "bad").exists()  # checked before anything is written
