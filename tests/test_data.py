"""Datasets and sampling: ImageFolder, CoOp split files, bad input, few-shot subsets, base/new."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vlprompt.data import (
    DataError,
    LabeledImages,
    Sample,
    base_new_labels,
    base_new_split,
    few_shot,
    few_shot_indices,
    image_folder,
    split_json,
)
from vlprompt.engine import FeatureCache

CLASSNAMES = ["blue_square", "gold", "green_square", "red_square"]  # sorted folder names


def write_split(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


# ----------------------------------------------------------------------------------- image folder
def test_image_folder(image_root, vit_backbone):
    data = image_folder(image_root, vit_backbone.image_transform())
    assert data.classnames == CLASSNAMES and len(data) == 24
    assert data.labels == [c for c in range(4) for _ in range(6)]
    pixels, label = data[7]
    assert label == 1 and Path(data.samples[7].path).parent.name == "gold"
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    # the model's own preprocessing: resize 40 -> 32, OpenAI mean/std normalisation
    assert pixels.min() < -1.0 and pixels.max() > 1.0
    raw, _ = image_folder(image_root)[7]
    assert raw.size == (40, 40) and raw.mode == "RGB"


def test_image_folder_errors(tmp_path, fresh_image_root):
    with pytest.raises(DataError, match=f"image folder {tmp_path / 'nope'} does not exist"):
        image_folder(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="has no class sub-folders"):
        image_folder(tmp_path / "flat")
    empty = fresh_image_root / "zebra"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"class folder {empty} has no images"):
        image_folder(fresh_image_root)


# ------------------------------------------------------------------------------------- split json
def test_split_json(split_file, image_root):
    train = split_json(split_file, image_root, "train")
    val, test = split_json(split_file, image_root, "val"), split_json(split_file, image_root, "test")
    assert train.classnames == val.classnames == test.classnames == CLASSNAMES
    assert (len(train), len(val), len(test)) == (16, 4, 4)
    assert train.samples[0] == Sample(str(image_root / "blue_square" / "0.png"), 0)
    assert test.labels == [0, 1, 2, 3]
    with pytest.raises(DataError, match="split must be one of"):
        split_json(split_file, image_root, "dev")


def test_split_json_missing_key(tmp_path, split_file, image_root):
    data = json.loads(split_file.read_text())
    del data["val"]
    bad = write_split(tmp_path / "nokey.json", data)
    with pytest.raises(DataError, match=f"{bad}: missing key 'val'"):
        split_json(bad, image_root, "train")


def test_split_json_bad_entries(tmp_path, split_file, image_root):
    data = json.loads(split_file.read_text())
    data["test"].append(["red_square/0.png", 7, "purple"])
    bad = write_split(tmp_path / "range.json", data)
    with pytest.raises(DataError, match=f"{bad}: label 7 is out of range: labels must be 0..4"):
        split_json(bad, image_root, "train")

    data = json.loads(split_file.read_text())
    data["train"][3] = ["blue_square/3.png", 0, "navy"]
    bad = write_split(tmp_path / "names.json", data)
    with pytest.raises(DataError, match=r"train\[3\] names label 0 'navy', elsewhere 'blue_square'"):
        split_json(bad, image_root, "train")

    data = json.loads(split_file.read_text())
    data["val"][0] = ["blue_square/4.png", "0"]
    bad = write_split(tmp_path / "shape.json", data)
    with pytest.raises(DataError, match=r"val\[0\] must be \[relative path, label, class name\]"):
        split_json(bad, image_root, "val")

    data = json.loads(split_file.read_text())
    data["val"][0][1] = -1
    with pytest.raises(DataError, match="negative label -1"):
        split_json(write_split(tmp_path / "neg.json", data), image_root, "val")

    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="broken.json: not valid JSON"):
        split_json(tmp_path / "broken.json", image_root, "train")
    with pytest.raises(DataError, match="split file not found: .*missing.json"):
        split_json(tmp_path / "missing.json", image_root, "train")


def test_label_out_of_range_in_dataset(image_root):
    with pytest.raises(DataError, match="label 2 of .*0.png is out of range 0..1"):
        LabeledImages([Sample(str(image_root / "gold" / "0.png"), 2)], ["a", "b"])


# --------------------------------------------------------------------------------- missing, corrupt
def test_missing_image_is_named(tmp_path, split_file, image_root):
    root = tmp_path / "copy"
    shutil.copytree(image_root, root)
    (root / "gold" / "2.png").unlink()
    with pytest.raises(DataError, match=f"image file not found: {root / 'gold' / '2.png'}"):
        split_json(split_file, root, "train")
    data = split_json(split_file, root, "train", skip_bad_images=True)
    assert len(data) == 15 and len(data.skipped) == 1 and "gold/2.png" in data.skipped[0]
    assert split_json(split_file, root, "test").labels == [0, 1, 2, 3]  # other splits are unaffected


def test_corrupt_image_is_named_and_can_be_skipped(fresh_image_root, vit_backbone, caplog):
    bad = fresh_image_root / "green_square" / "3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    data = image_folder(fresh_image_root, vit_backbone.image_transform())
    index = [s.path for s in data.samples].index(str(bad))
    data[index - 1]  # its neighbours load
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        data[index]
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        FeatureCache().features(vit_backbone, data, progress=False)

    skipping = image_folder(fresh_image_root, vit_backbone.image_transform(), skip_bad_images=True)
    assert len(skipping) == 23 and len(skipping.skipped) == 1 and str(bad) in skipping.skipped[0]
    assert str(bad) not in [s.path for s in skipping.samples]
    assert "skipped 1 unreadable image(s)" in caplog.text
    assert FeatureCache().features(vit_backbone, skipping, progress=False).shape == (23, vit_backbone.embed_dim)


# ---------------------------------------------------------------------------------------- few-shot
def test_few_shot_is_a_function_of_seed(image_root):
    data = image_folder(image_root)
    a, b = few_shot_indices(data, 2, seed=1), few_shot_indices(data, 2, seed=1)
    assert a == b and len(a) == 8
    assert [data.labels[i] for i in a] == [0, 0, 1, 1, 2, 2, 3, 3]
    others = {tuple(few_shot_indices(data, 2, seed=s)) for s in range(2, 7)}
    assert len(others | {tuple(a)}) > 1
    assert few_shot_indices(data, 2, seed=2) != a
    subset = few_shot(data, 2, seed=1)
    assert [s.path for s in subset.samples] == [data.samples[i].path for i in a]
    assert few_shot(data, 0, seed=1) is data


def test_too_many_shots_names_the_class(image_root):
    data = image_folder(image_root)
    uneven = data.subset([i for i in range(24) if not (data.labels[i] == 2 and i % 6 >= 3)])
    few_shot(uneven, 3, seed=1)
    with pytest.raises(DataError, match="class 'green_square' has 3 image.*fewer than the 4 shots"):
        few_shot(uneven, 4, seed=1)


def test_few_shot_index_file_is_persisted_and_reused(tmp_path, image_root):
    data = image_folder(image_root)
    index = tmp_path / "fewshot" / "shots2_seed1.json"
    first = few_shot(data, 2, seed=1, index_file=index)
    saved = json.loads(index.read_text())
    assert saved["shots"] == 2 and saved["seed"] == 1 and saved["paths"] == [s.path for s in first.samples]
    # the file, not the RNG, decides: edit it and the edit is used
    chosen = [data.samples[i].path for i in (0, 1, 6, 7, 12, 13, 18, 19)]
    index.write_text(json.dumps({**saved, "paths": chosen}))
    assert [s.path for s in few_shot(data, 2, seed=1, index_file=index).samples] == chosen
    # a file for other settings is neither reused nor overwritten: it names what it holds
    with pytest.raises(DataError, match="shots=2, seed=1, not shots=3, seed=1"):
        few_shot(data, 3, seed=1, index_file=index)
    assert json.loads(index.read_text())["paths"] == chosen
    index.write_text("{not json")
    with pytest.raises(DataError, match="shots2_seed1.json: not valid JSON"):
        few_shot(data, 2, seed=1, index_file=index)
    index.write_text(json.dumps({"shots": 2, "seed": 1, "paths": ["/elsewhere/x.png"]}))
    with pytest.raises(DataError, match="not in the dataset, e.g. /elsewhere/x.png"):
        few_shot(data, 2, seed=1, index_file=index)


# -------------------------------------------------------------------------------------- base / new
def test_base_new_labels():
    assert base_new_labels(4) == ([0, 1], [2, 3])
    assert base_new_labels(5) == ([0, 1, 2], [3, 4])
    assert base_new_labels(1) == ([0], [])


def test_base_new_split_relabels(image_root):
    files = sorted(str(p) for p in image_root.rglob("*.png"))[:10]
    names = ["c0", "c1", "c2", "c3", "c4"]
    data = LabeledImages([Sample(f, i % 5) for i, f in enumerate(files)], names)
    base, new = base_new_split(data, "base"), base_new_split(data, "new")
    assert base.classnames == ["c0", "c1", "c2"] and new.classnames == ["c3", "c4"]
    assert sorted(set(base.labels)) == [0, 1, 2] and sorted(set(new.labels)) == [0, 1]
    assert len(base) == 6 and len(new) == 4
    for s in new.samples:
        assert s.label == files.index(s.path) % 5 - 3
    assert base_new_split(data, "all") is data
    with pytest.raises(DataError, match="class_split must be 'all', 'base' or 'new'"):
        base_new_split(data, "old")
