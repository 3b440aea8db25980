"""The benchmark dataset registry: layouts, loaders, `vlprompt data check` and its error messages."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from benchmark_fixtures import PER_SPLIT, WNIDS, fixture_classes, write_fixture
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from vlprompt.cli import main
from vlprompt.data import DataError
from vlprompt.data.benchmarks import (
    DATASETS,
    FEW_SHOT_DATASETS,
    IMAGENET_VARIANTS,
    KNOWN_CLASSES,
    REGISTRY_FILE,
    check_dataset,
    get_dataset,
    imagenet_index,
    imagenet_subset,
    imagenet_wnids,
    read_registry,
)
from vlprompt.runs import Classification, ClassificationRun, DataConfig


def test_registry_holds_the_field_benchmark_with_coop_templates():
    assert len(FEW_SHOT_DATASETS) == 11 and len(IMAGENET_VARIANTS) == 4 and len(DATASETS) == 15
    assert DATASETS["dtd"].template == "{} texture."
    assert DATASETS["eurosat"].template == "a centered satellite photo of {}."
    assert DATASETS["ucf101"].template == "a photo of a person doing {}."
    assert DATASETS["oxford_pets"].split_file == "split_zhou_OxfordPets.json"
    assert get_dataset("OxfordFlowers").name == "oxford_flowers"
    assert {d.num_classes for d in map(get_dataset, ("imagenet_a", "imagenet_r"))} == {200}
    assert len(imagenet_wnids()) == 1000 and imagenet_wnids() == sorted(imagenet_wnids())
    a, r = imagenet_subset("imagenet_a"), imagenet_subset("imagenet_r")
    assert len(set(a)) == len(set(r)) == 200 and a[0] == "n01498041"  # stingray, ImageNet label 6
    assert imagenet_index()["n01498041"] == 6 and IMAGENET_CLASSNAMES[6] == "stingray"
    assert len(DATASETS["oxford_pets"].known_classes()) == 37 and len(DATASETS["dtd"].known_classes()) == 47


def test_registry_file_reads_into_the_registry_the_python_code_built():
    # The digest of every field of every dataset as the registry was written in Python before it moved to
    # datasets.json. Change it only with a deliberate change to the registry.
    registry = repr((DATASETS, KNOWN_CLASSES, FEW_SHOT_DATASETS, IMAGENET_VARIANTS))
    assert hashlib.sha256(registry.encode()).hexdigest() == (
        "868f8594665e106c0d418d802dd4f8f0876cbe319511b56373097dab12e75871"
    )
    assert IMAGENET_VARIANTS == ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
    assert DATASETS["oxford_pets"].required[-1].path == "split_zhou_OxfordPets.json"
    assert [r.path for r in DATASETS["imagenet"].required] == ["images/train", "images/val", "classnames.txt"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d[1].pop("template"), r"datasets\[1\]: field 'template' is missing"),
        (lambda d: d[1].update(num_classes="100"), r"datasets\[1\]: field 'num_classes' must be of type int"),
        (lambda d: d[1].update(num_classes=True), r"field 'num_classes' must be of type int"),
        (lambda d: d[1].update(colour="red"), r"datasets\[1\]: unknown field 'colour'"),
        (lambda d: d[1].update(layout="zip"), r"unknown layout 'zip'"),
        (lambda d: d[1].update(template="a photo."), r"a template with one '\{\}'"),
        (lambda d: d[1].pop("split_drive_id"), r"'split_file' and 'split_drive_id' go together"),
        (lambda d: d[0].update(split_file="x.json"), r"datasets\[0\]: 'split_file' and 'split_drive_id' go"),
        (lambda d: d[1].update(downloads=[{"source": "x"}]), r"each download is"),
        (lambda d: d[2].update(classes=["a", "a"]), r"'classes' must be 37 distinct class names"),
        (lambda d: d[14].update(subset="imagenet_b"), r"subset must be one of"),
        (lambda d: d[2].update(title="caltech101"), r"datasets\[2\]: 'oxford_pets' \(caltech101\) clashes"),
        (lambda d: d[2].update(name="Pets"), r"the name 'Pets' must be lowercase"),
    ],
)
def test_registry_file_is_checked(tmp_path, edit, message):
    data = json.loads(REGISTRY_FILE.read_text())
    edit(data["datasets"])
    path = tmp_path / "datasets.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message):
        read_registry(path)


@pytest.mark.parametrize("name", list(DATASETS))
def test_each_layout_loads_and_checks(tmp_path, name):
    write_fixture(name, tmp_path, n_classes=3)
    report = check_dataset(name, tmp_path)
    assert report.ok, report.text()
    ds = DATASETS[name]
    assert f"3 classes of {ds.num_classes}: a subset" in report.summary
    splits = ds.load(tmp_path)
    expected = {"test"} if ds.test_only else {"train", "test"} if name == "imagenet" else {"train", "val", "test"}
    assert set(splits) == expected
    for split, data in splits.items():
        per_class = PER_SPLIT["test" if ds.test_only else split]
        assert len(data) == 3 * per_class and sorted(set(data.labels)) == [0, 1, 2]
    if ds.layout.startswith("imagenet"):
        assert splits["test"].classnames == [IMAGENET_CLASSNAMES[imagenet_index()[w]] for w in WNIDS[:3]]
    else:
        assert splits["test"].classnames == fixture_classes(name, 3)


def test_data_config_reads_a_registry_dataset(tmp_path):
    write_fixture("dtd", tmp_path)
    splits = DataConfig(format="benchmark", dataset="dtd", root=str(tmp_path)).load()
    assert splits["train"].classnames == ["banded", "blotchy", "braided", "bubbly"]
    with pytest.raises(DataError, match="imagenet_a is an evaluation-only dataset"):
        Classification(
            ClassificationRun(data=DataConfig(format="benchmark", dataset="imagenet_a", root="x"))
        ).validate()
    with pytest.raises(DataError, match="unknown dataset 'pets'; the registry has: imagenet, caltech101"):
        DataConfig(format="benchmark", dataset="pets", root=str(tmp_path)).validate()


def test_missing_split_file_names_it_and_where_to_get_it(tmp_path):
    folder = write_fixture("oxford_pets", tmp_path)
    (folder / "split_zhou_OxfordPets.json").unlink()
    report = check_dataset("oxford_pets", tmp_path)
    assert not report.ok
    assert report.problems == [
        f"missing file {folder / 'split_zhou_OxfordPets.json'}: CoOp's fixed split (DATASETS.md of KaiyangZhou/CoOp): "
        "https://drive.google.com/file/d/1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs/view"
    ]
    with pytest.raises(DataError, match="oxford_pets: missing file .*split_zhou_OxfordPets.json"):
        DATASETS["oxford_pets"].load(tmp_path)


def test_missing_image_folder_and_class_folder_are_named(tmp_path):
    folder = write_fixture("eurosat", tmp_path)
    shutil.rmtree(folder / "2750" / "Forest")
    with pytest.raises(DataError) as err:
        DATASETS["eurosat"].load(tmp_path)
    assert str(err.value) == (
        f"class folder {folder / '2750' / 'Forest'} (class 'Forest', listed in split_zhou_EuroSAT.json) is missing "
        f"under {folder / '2750'}"
    )
    shutil.rmtree(folder / "2750")
    assert check_dataset("eurosat", tmp_path).problems == [
        f"missing folder {folder / '2750'}: EuroSAT.zip (RGB) from https://github.com/phelber/EuroSAT "
        "(was http://madm.dfki.de/files/sentinel/EuroSAT.zip)"
    ]


def test_imagenet_val_missing_a_class_folder(tmp_path):
    folder = write_fixture("imagenet", tmp_path)
    shutil.rmtree(folder / "images" / "val" / WNIDS[1])
    report = check_dataset("imagenet", tmp_path)
    assert report.problems == [
        f"{folder / 'images' / 'val'}: class folders differ from the training classes "
        f"(missing ['{WNIDS[1]}'], extra [])"
    ]


def test_split_class_names_that_disagree_with_the_registry(tmp_path):
    folder = write_fixture("oxford_pets", tmp_path)
    path = folder / "split_zhou_OxfordPets.json"
    split = json.loads(path.read_text())
    for key in split:
        split[key] = [[p, label, "Abyssinian cat" if label == 0 else name] for p, label, name in split[key]]
    path.write_text(json.dumps(split))
    with pytest.raises(DataError) as err:
        DATASETS["oxford_pets"].load(tmp_path)
    assert str(err.value) == (
        f"{path}: class name 'Abyssinian cat' (close: ['abyssinian']) is not a OxfordPets class name; the registry's "
        "names are CoOp's (e.g. ['abyssinian', 'american_bulldog', 'american_pit_bull_terrier']). Use CoOp's split "
        "file, or rename the classes"
    )


def test_classnames_txt_that_disagrees_with_imagenet(tmp_path):
    folder = write_fixture("imagenet", tmp_path)
    lines = (folder / "classnames.txt").read_text().splitlines()
    lines[1] = f"{WNIDS[1]} a kind of fish"
    (folder / "classnames.txt").write_text("\n".join(lines) + "\n")
    expected = IMAGENET_CLASSNAMES[imagenet_index()[WNIDS[1]]]
    with pytest.raises(DataError) as err:
        DATASETS["imagenet"].load(tmp_path)
    assert str(err.value) == (
        f"{folder / 'classnames.txt'}:2: names {WNIDS[1]} 'a kind of fish'; "
        f"the registry (CLIP's names) has {expected!r}"
    )


def test_imagenet_a_class_outside_its_200_classes(tmp_path):
    write_fixture("imagenet_a", tmp_path, wnids=[*WNIDS[:2], "n01440764"])  # tench: not in ImageNet-A
    folder = DATASETS["imagenet_a"].directory(tmp_path) / "imagenet-a"
    with pytest.raises(DataError) as err:
        DATASETS["imagenet_a"].load(tmp_path)
    assert str(err.value) == (
        f"{folder / 'n01440764'}: class n01440764 ('tench') is not one of ImageNetA's 200 classes "
        "(see vlprompt.data.benchmarks.imagenet_subset('imagenet_a'))"
    )
    write_fixture("imagenet_r", tmp_path, wnids=[*WNIDS[:2], "n01440764"])
    assert "is not one of ImageNetR's 200 classes" in check_dataset("imagenet_r", tmp_path).problems[0]


def test_fgvc_aircraft_line_with_an_unknown_variant(tmp_path):
    folder = write_fixture("fgvc_aircraft", tmp_path)
    path = folder / "images_variant_val.txt"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].split(" ")[0] + " 747-999"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"images_variant_val.txt:3: variant '747-999' is not in .*variants.txt"):
        DATASETS["fgvc_aircraft"].load(tmp_path)


def test_cli_data_check(tmp_path, capsys):
    write_fixture("dtd", tmp_path)
    assert main(["data", "check", "dtd", "--data.root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "dtd: OK (4 classes of 47: a subset; images: train 16, val 8, test 12)" in out
    assert main(["data", "check", "dtd", "eurosat", "--data.root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"eurosat: NOT READY in {tmp_path / 'eurosat'}\n  - missing folder {tmp_path / 'eurosat' / '2750'}" in out
    assert "1 of 2 dataset(s) ready" in out
    assert main(["data", "check", "all", "--data.root", str(tmp_path)]) == 1
    assert "1 of 15 dataset(s) ready" in capsys.readouterr().out
    assert main(["data", "check", "dtd"]) == 2
    assert "--data.root is required" in capsys.readouterr().err
