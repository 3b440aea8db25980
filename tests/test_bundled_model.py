"""The bundled tiny CLIP: offline loading, integrity checks, and a reproducible pretraining script."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from open_clip.model import CLIP
from safetensors.torch import load_file

from vlprompt.backbones import bundled

NAME = "vlprompt/tiny-shapes"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_tiny_shapes.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pretrain_tiny_shapes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_loads_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, preprocess, identity = bundled.load_bundled(NAME)
    assert isinstance(model, CLIP) and not model.training
    assert preprocess["size"] == model.visual.image_size[0] and len(preprocess["mean"]) == 3
    assert identity["name"] == NAME and len(identity["sha256"]) == 64
    with torch.no_grad():
        image = model.encode_image(torch.zeros(1, 3, preprocess["size"], preprocess["size"]))
        text = model.encode_text(torch.zeros(1, 77, dtype=torch.long))
    assert image.shape == text.shape == (1, bundled.read_manifest(NAME)[1]["model_cfg"]["embed_dim"])
    table = model.token_embedding.weight
    assert 0 < int((table.abs().sum(1) > 0).sum()) < table.shape[0] // 100  # sparse token table


def test_weight_file_is_small_and_sparse() -> None:
    folder, manifest = bundled.read_manifest(NAME)
    assert (folder / "weights.safetensors").stat().st_size < 8 * 2**20
    assert (folder / "CARD.md").is_file() and "pretrain_tiny_shapes.py" in (folder / "CARD.md").read_text()
    assert {"zero_shot_web_pairs", "zero_shot_benchmark_pairs"} <= set(manifest["metrics"])


def test_corrupted_weights_give_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    copy = tmp_path / "tiny_shapes"
    shutil.copytree(bundled.BUNDLED[NAME], copy)
    weights = copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setitem(bundled.BUNDLED, NAME, copy)
    with pytest.raises(bundled.BundledModelError, match=r"is corrupted \(sha256 [0-9a-f]{64} != [0-9a-f]{64}\)"):
        bundled.load_bundled(NAME)


def test_unknown_name_lists_available() -> None:
    with pytest.raises(bundled.BundledModelError, match="available: vlprompt/tiny-shapes"):
        bundled.load_bundled("vlprompt/tiny-circles")


def test_sparse_state_dict_round_trip() -> None:
    state = {"token_embedding.weight": torch.zeros(10, 4), "x": torch.ones(2)}
    state["token_embedding.weight"][[1, 7]] = torch.randn(2, 4)
    sparse = bundled.sparse_state_dict(state, torch.tensor([1, 7]))
    assert sparse["token_embedding.values"].shape == (2, 4) and "token_embedding.weight" not in sparse
    dense = bundled.dense_state_dict(sparse, 10)
    assert all(torch.equal(dense[k], v) for k, v in state.items())


def test_shortened_pretraining_is_deterministic(script: ModuleType, tmp_path: Path) -> None:
    args = ["--steps", "3", "--images", "256", "--batch-size", "64", "--warmup", "1", "--eval-web-images", "100"]
    threads = torch.get_num_threads()
    manifests = [script.main([*args, "--out", str(tmp_path / name), "--quiet"]) for name in ("a", "b")]
    assert torch.get_num_threads() == threads  # the script restores the caller's thread count
    first, second = ((tmp_path / name / "weights.safetensors").read_bytes() for name in ("a", "b"))
    assert first == second
    assert manifests[0]["sha256"] == manifests[1]["sha256"]
    assert manifests[0]["metrics"] == manifests[1]["metrics"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["CARD.md", "manifest.json", "weights.safetensors"]
    script.main([*args, "--seed", "1", "--out", str(tmp_path / "c"), "--quiet"])
    reseeded = load_file(tmp_path / "c" / "weights.safetensors")["text_projection"]
    assert not torch.allclose(
        reseeded.float(), load_file(tmp_path / "a" / "weights.safetensors")["text_projection"].float()
    )


def test_shipped_zero_shot_metrics_are_reproduced(script: ModuleType) -> None:
    _, manifest = bundled.read_manifest(NAME)
    fields = {f for f in script.Recipe.__dataclass_fields__}
    recipe = script.Recipe(**{k: v for k, v in manifest["recipe"].items() if k in fields})
    model, _, _ = bundled.load_bundled(NAME)
    threads = torch.get_num_threads()
    measured = script.zero_shot(model, recipe)
    assert torch.get_num_threads() == threads
    for key, value in manifest["metrics"].items():
        assert abs(measured[key] - value) <= 1.0, key
    # It knows colours and shapes on its web images, far above chance (1% for pairs, 10% for each part);
    # the benchmark's warm illuminant, clutter and smaller shapes make both harder, by design.
    assert measured["zero_shot_web_colour_of_pair"] > 95 and measured["zero_shot_web_shape_of_pair"] > 60
    assert measured["zero_shot_web_pairs"] > 60
    assert 30 < measured["zero_shot_benchmark_colour_of_pair"] < measured["zero_shot_web_colour_of_pair"] - 10
    assert 20 < measured["zero_shot_benchmark_shape_of_pair"] < measured["zero_shot_web_shape_of_pair"] - 10
