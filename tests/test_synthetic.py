"""The synthetic world and the built-in benchmark written from it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlprompt.data import synthetic as S


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> S.BenchmarkPaths:
    return S.build_benchmark(tmp_path_factory.mktemp("cache") / "bench", seed=0)


def _pairs(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split(" ")) for line in path.read_text().splitlines()]


def test_rendering_is_deterministic() -> None:
    for domain in S.DOMAINS:
        first = S.render_image("red", "star", domain, np.random.default_rng(3)).tobytes()
        again = S.render_image("red", "star", domain, np.random.default_rng(3)).tobytes()
        other = S.render_image("red", "star", domain, np.random.default_rng(4)).tobytes()
        assert first == again != other
    image = S.render_image("gray", "crescent", "benchmark", np.random.default_rng(0), texture="dotted")
    assert image.size == (S.IMAGE_SIZE, S.IMAGE_SIZE) and image.mode == "RGB"


def test_web_dataset_is_deterministic_and_covers_pairs() -> None:
    a, b = S.web_dataset(200, seed=1), S.web_dataset(200, seed=1)
    assert a.images.tobytes() == b.images.tobytes() and a.captions == b.captions
    assert S.web_dataset(200, seed=2).images.tobytes() != a.images.tobytes()
    assert len(set(zip(a.colours.tolist(), a.shapes.tolist()))) == len(S.COLOURS) * len(S.SHAPES)
    assert not any("photo" in text for text in a.captions)


def test_captions_use_synonyms_and_single_primitives() -> None:
    rng = np.random.default_rng(0)
    captions = [S.caption("red", "cross", "striped", rng) for _ in range(400)]
    texts = [c.text for c in captions]
    for c in captions:  # the flags the contrastive loss relies on: what each caption names
        assert c.colour == any(w in c.text for w in ("red", "crimson", "scarlet")), c
        assert c.shape == any(w in c.text for w in ("cross", "plus sign")), c
        assert c.texture == ("strip" in c.text), c
    assert {(c.colour, c.shape) for c in captions} == {(True, True), (True, False), (False, True)}
    joined = " ".join(texts)
    for word in ("crimson", "scarlet", "plus sign", "red", "cross", "strip"):
        assert word in joined
    assert any("red" not in t and "crimson" not in t and "scarlet" not in t for t in texts)  # shape only
    assert any("cross" not in t and "plus" not in t for t in texts)  # colour only
    assert not any(" a a" in f" {t}" or "a orange" in t for t in texts)


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown colour"):
        S.render_image("teal", "star", "web", np.random.default_rng(0))


def test_czsl_split_structure(bench: S.BenchmarkPaths) -> None:
    split_dir = bench.czsl_root / "compositional-split-natural"
    train, val, test = (_pairs(split_dir / f"{s}_pairs.txt") for s in ("train", "val", "test"))
    n_pairs = len(S.COLOURS) * len(S.SHAPES)
    assert len(train) == round(0.6 * n_pairs)
    seen = set(train)
    val_unseen, test_unseen = set(val) - seen, set(test) - seen
    assert seen < set(val) and seen < set(test)
    assert val_unseen and test_unseen and not val_unseen & test_unseen
    assert len(seen | val_unseen | test_unseen) == n_pairs
    assert min(Counter(c for c, _ in train).values()) >= 2 and len({c for c, _ in train}) == len(S.COLOURS)
    assert min(Counter(s for _, s in train).values()) >= 2 and len({s for _, s in train}) == len(S.SHAPES)

    samples = torch.load(bench.czsl_root / "metadata_compositional-split-natural.t7", weights_only=True)
    assert all(set(x) == {"image", "attr", "obj", "set"} for x in samples)
    by_set = {name: [x for x in samples if x["set"] == name] for name in ("train", "val", "test")}
    assert {(x["attr"], x["obj"]) for x in by_set["train"]} == seen
    for name, unseen in (("val", val_unseen), ("test", test_unseen)):
        pairs = {(x["attr"], x["obj"]) for x in by_set[name]}
        assert pairs == seen | unseen
    images = [x["image"] for x in samples]
    assert len(images) == len(set(images))  # seen-pair images in val/test are not train images
    assert all((bench.czsl_root / "images" / name).is_file() for name in images)


def test_classification_views(bench: S.BenchmarkPaths) -> None:
    expected_classes = {"pairs": len(S.COLOURS) * len(S.SHAPES), "colours": len(S.COLOURS), "shapes": len(S.SHAPES)}
    for view, path in bench.splits.items():
        split = json.loads(path.read_text())
        assert set(split) == {"train", "val", "test"}
        names = sorted({name for rows in split.values() for _, _, name in rows})
        assert len(names) == expected_classes[view]
        for rows in split.values():
            assert all(label == names.index(name) for _, label, name in rows)
        per_class = Counter(label for _, label, _ in split["train"])
        assert min(per_class.values()) >= 24
        assert len(split["test"]) <= 3000
        assert (bench.image_root / split["test"][0][0]).is_file()
    pairs = json.loads(bench.splits["pairs"].read_text())
    assert "red circle" in {name for _, _, name in pairs["train"]}


def test_written_images_match_in_memory_rendering(bench: S.BenchmarkPaths) -> None:
    images, colours, shapes = S.benchmark_images(0, "val")
    split = json.loads(bench.splits["pairs"].read_text())["val"]
    assert len(split) == len(images)
    for i in (0, len(images) // 2, len(images) - 1):
        relpath, _, name = split[i]
        assert name == f"{list(S.COLOURS)[colours[i]]} {S.SHAPES[shapes[i]]}"
        assert np.array_equal(np.asarray(Image.open(bench.image_root / relpath)), images[i])


def test_benchmark_domain_is_warm() -> None:
    web = S.web_dataset(300, seed=0, with_captions=False).images.reshape(-1, 3).mean(0)
    bench = S.benchmark_images(0, "train")[0][:300].reshape(-1, 3).mean(0)
    assert bench[0] / bench[2] > 1.25 * web[0] / web[2]


def test_build_reuses_complete_and_refuses_partial(bench: S.BenchmarkPaths, tmp_path: Path) -> None:
    assert S.build_benchmark(bench.root, seed=0) == bench  # complete: reused, not rebuilt
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "junk").write_text("x")
    with pytest.raises(FileExistsError, match="no complete benchmark"):
        S.build_benchmark(partial)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path))
    assert S.default_cache_dir(3) == tmp_path / "synthetic" / f"{S.VERSION}-seed3"
