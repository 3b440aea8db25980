"""Data loss and silent wrong results: run directories, random weights, offline loading, image modes, checksums."""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from vlprompt.backbones import BackboneError, load_backbone
from vlprompt.backbones import loading as loading_module
from vlprompt.cli import main
from vlprompt.data import DataError, image_folder, load_rgb
from vlprompt.io import CorruptFileError, load_checkpoint, tensors_sha256
from vlprompt.methods import build_method
from vlprompt.prompts import BackboneMismatchWarning, PromptFileError, load_prompt, save_pretrained
from vlprompt.rundir import MARKER, RunDirError, is_run_dir, mark_run_dir, prepare_run_dir

TINY = ["--backbone.name", "tiny-random-vit"]


def _train_args(image_root: Path, split_file: Path, out: Path, *extra: str) -> list[str]:
    data = ["--data.root", str(image_root), "--data.split_file", str(split_file), "--data.shots", "2"]
    recipe = ["--train.epochs", "2", "--train.batch_size", "4", "--seeds", "[1]"]
    return ["train", *TINY, *data, *recipe, "--out", str(out), *extra]


def _user_folder(path: Path) -> Path:
    (path / "notes").mkdir(parents=True)
    (path / "thesis.tex").write_text("irreplaceable")
    (path / "notes" / "todo.txt").write_text("finish")
    return path


def _intact(path: Path) -> bool:
    return (path / "thesis.tex").read_text() == "irreplaceable" and (path / "notes" / "todo.txt").is_file()


# ------------------------------------------------------------------------------------ run directories


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, image_root, split_file, capsys):
    out = _user_folder(tmp_path / "mine")
    assert main(_train_args(image_root, split_file, out, "--overwrite", "true")) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "not a vlprompt run directory" in err and "Traceback" not in err
    assert _intact(out) and not (out / MARKER).exists()


def test_overwrite_never_deletes_cwd_its_parents_home_or_root(tmp_path, image_root, split_file, monkeypatch, capsys):
    work = mark_run_dir(_user_folder(tmp_path / "work"))  # a marker does not make these deletable
    monkeypatch.chdir(work)
    assert main(_train_args(image_root, split_file, Path("."), "--overwrite", "true")) == 2
    assert "current working directory" in capsys.readouterr().err
    assert _intact(work)
    deep = work / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    with pytest.raises(RunDirError, match="contains the current working directory"):
        prepare_run_dir(work, resume=False, overwrite=True)
    with pytest.raises(RunDirError, match="contains the current working directory"):
        prepare_run_dir("..", resume=False, overwrite=True)
    assert _intact(work)
    home = mark_run_dir(_user_folder(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunDirError, match="home directory"):
        prepare_run_dir(home, resume=False, overwrite=True)
    with pytest.raises(RunDirError, match="filesystem root"):
        prepare_run_dir("/", resume=False, overwrite=True)
    assert _intact(home)


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path, image_root, split_file, capsys):
    out = _user_folder(tmp_path / "mine")
    assert main(_train_args(image_root, split_file, out, "--resume", "true")) == 2
    err = capsys.readouterr().err
    assert f"cannot resume in {out}" in err and MARKER in err
    assert _intact(out) and not (out / "config.yaml").exists()


def test_overwrite_replaces_a_previous_run(tmp_path, image_root, split_file):
    out = tmp_path / "run"
    assert main(_train_args(image_root, split_file, out)) == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["format"] == "vlprompt-run" and marker["version"] == 1 and marker["command"] == "train"
    (out / "stale.txt").write_text("from the old run")
    assert main(_train_args(image_root, split_file, out, "--overwrite", "true")) == 0
    assert not (out / "stale.txt").exists() and is_run_dir(out) and (out / "seed1" / "prompt").is_dir()


def test_run_dir_edge_cases(tmp_path):
    fresh = prepare_run_dir(tmp_path / "a" / "b", resume=True, overwrite=False, command="czsl")
    assert is_run_dir(fresh) and json.loads((fresh / MARKER).read_text())["command"] == "czsl"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_run_dir(prepare_run_dir(empty, resume=False, overwrite=False))
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_run_dir(fresh, resume=False, overwrite=False)
    (tmp_path / "link").symlink_to(fresh)
    with pytest.raises(RunDirError, match="symbolic link"):
        prepare_run_dir(tmp_path / "link", resume=False, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="not a directory"):
        prepare_run_dir(tmp_path / "file", resume=False, overwrite=True)
    fake = _user_folder(tmp_path / "fake")
    (fake / MARKER).write_text("not json")  # a marker must be the real thing
    with pytest.raises(RunDirError, match="not a vlprompt run"):
        prepare_run_dir(fake, resume=False, overwrite=True)
    assert _intact(fake) and is_run_dir(fresh)


def test_demo_twice_into_the_same_out_with_overwrite(tmp_path, image_root, split_file, monkeypatch, capsys):
    import vlprompt.data.synthetic
    import vlprompt.demo

    paths = SimpleNamespace(root=image_root, image_root=image_root, splits={"colours": split_file}, czsl_root=None)
    monkeypatch.setattr(vlprompt.demo, "build_benchmark", lambda: paths)
    monkeypatch.setattr(vlprompt.data.synthetic, "build_benchmark", lambda: paths)  # the bench's built-in views
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--seeds", "[1]", "--methods", "[zeroshot]", "--data.shots", "2"]
    assert main(args) == 0
    assert main([*args, "--overwrite", "true"]) == 0
    assert is_run_dir(out) and is_run_dir(out / "classification" / "colours" / "zeroshot" / "shots2")
    mine = _user_folder(tmp_path / "mine")
    assert main(["demo", "--out", str(mine), "--seeds", "[1]", "--methods", "[zeroshot]", "--overwrite", "true"]) == 2
    assert "not a vlprompt run directory" in capsys.readouterr().err and _intact(mine)


# ------------------------------------------------------------------------------------- random weights

TINY_ARCH = "vlprompt-test-tiny-vit"


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory) -> str:
    """A tiny open_clip architecture registered under :data:`TINY_ARCH` (no pretrained tags)."""
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    path = tmp_path_factory.mktemp("arch") / f"{TINY_ARCH}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return TINY_ARCH


def test_architecture_without_pretrained_is_an_error_listing_tags(
    monkeypatch, tmp_path, image_root, split_file, capsys
):
    def never(*args, **kwargs):
        raise AssertionError("nothing may be built")

    monkeypatch.setattr(open_clip, "create_model", never)
    with pytest.raises(BackboneError, match="--backbone.pretrained random") as info:
        load_backbone("RN50")
    assert "openai" in str(info.value) and "yfcc15m" in str(info.value) and "TAG|FILE" in str(info.value)
    with pytest.raises(BackboneError, match="'opnai' is neither a pretrained tag of RN50"):
        load_backbone("RN50", "opnai")
    args = _train_args(image_root, split_file, tmp_path / "run")
    args[args.index("tiny-random-vit")] = "RN50"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "RN50 needs pretrained weights" in err and "Traceback" not in err


def test_random_weights_when_asked_for_are_seeded(tiny_arch):
    state = torch.random.get_rng_state()
    a = load_backbone(tiny_arch, "random")
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is left alone
    assert a.identity.pretrained == "random" and a.identity.model == tiny_arch
    b = load_backbone(tiny_arch, "random")
    assert torch.equal(a.model.text_projection, b.model.text_projection)
    with pytest.raises(BackboneError, match="open_clip knows none"):
        load_backbone(tiny_arch)


def test_prompt_on_random_weights_predicts_without_naming_the_backbone(tiny_arch, tmp_path, image_root, capsys):
    backbone = load_backbone(tiny_arch, "random")
    method = build_method("coop", backbone, ["red square", "gold"], {"n_ctx": 2})
    save_pretrained(method, backbone, tmp_path / "prompt")
    image = str(next((image_root / "gold").glob("*.png")))
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackboneMismatchWarning)  # the same seeded random model is rebuilt
        assert main(["predict", image, "--prompt", str(tmp_path / "prompt"), "--json", "true"]) == 0
    assert "gold" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ offline loading


@pytest.fixture()
def empty_hub_cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty Hugging Face cache (and home, for open_clip's URL cache)."""
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(cache))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_offline_tag_not_cached_fails_fast_naming_the_source(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(BackboneError, match="not available offline") as info:
        load_backbone("ViT-B-32", "openai")
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "timm/vit_base_patch32_clip_224.openai" in message and "HF_HUB_OFFLINE is set" in message
    assert str(empty_hub_cache) in message and "--backbone.pretrained /path/to" in message


class _Built(Exception):
    """Raised by a stand-in create_model: the download check let the load through."""


def _online(monkeypatch, reachable: bool) -> list[str]:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    probes: list[str] = []

    def probe(url, timeout=3.0):
        probes.append(url)
        return None if reachable else "huggingface.co cannot be reached (test)"

    def create_model(*args, **kwargs):
        raise _Built

    monkeypatch.setattr(loading_module, "_unreachable", probe)
    monkeypatch.setattr(open_clip, "create_model", create_model)
    return probes


def test_unreachable_hub_fails_at_once_with_one_probe(empty_hub_cache, monkeypatch):
    probes = _online(monkeypatch, reachable=False)
    with pytest.raises(BackboneError, match="huggingface.co cannot be reached"):
        load_backbone("ViT-B-32", "laion2b_s34b_b79k")
    assert len(probes) == 1


def test_online_download_is_logged_and_cached_weights_need_no_network(empty_hub_cache, monkeypatch, caplog):
    probes = _online(monkeypatch, reachable=True)
    with caplog.at_level(logging.INFO, logger="vlprompt"), pytest.raises(_Built):
        load_backbone("ViT-B-32", "openai")
    lines = [r.getMessage() for r in caplog.records if "downloading weights" in r.getMessage()]
    assert len(lines) == 1 and "timm/vit_base_patch32_clip_224.openai" in lines[0] and len(probes) == 1
    # A cached copy (the Hugging Face cache layout) needs no probe at all.
    repo = empty_hub_cache / "models--timm--vit_base_patch32_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "open_clip_model.safetensors").write_bytes(b"weights")
    with pytest.raises(_Built):
        load_backbone("ViT-B-32", "openai")
    assert len(probes) == 1


# ---------------------------------------------------------------------------------------- image modes


def _grey(path: Path) -> list[int]:
    rgb = np.asarray(load_rgb(path))
    assert rgb.dtype == np.uint8 and rgb.shape[-1] == 3
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[..., 0].ravel().tolist()


def test_16_bit_images_are_scaled_not_white(tmp_path):
    values = np.array([[0, 32768], [65535, 257 * 100]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode in ("I;16", "I")
    assert _grey(tmp_path / "a.png") == [0, 128, 255, 100]
    Image.fromarray(values.astype(">u2")).save(tmp_path / "b.tif")
    assert Image.open(tmp_path / "b.tif").mode == "I;16B"
    assert _grey(tmp_path / "b.tif") == [0, 128, 255, 100]


def test_32_bit_integer_tiffs_follow_the_documented_rule(tmp_path):
    Image.fromarray(np.array([[0, 32768], [65535, 5140]], dtype=np.int32)).save(tmp_path / "as16.tif")
    assert Image.open(tmp_path / "as16.tif").mode == "I"
    assert _grey(tmp_path / "as16.tif") == [0, 128, 255, 20]  # max <= 65535: read as 16-bit
    Image.fromarray(np.array([[0, 2**30], [2**31 - 1, 70000]], dtype=np.int32)).save(tmp_path / "as32.tif")
    assert _grey(tmp_path / "as32.tif") == [0, 128, 255, 0]  # above 65535: read as 32-bit
    Image.fromarray(np.array([[-1, 0]], dtype=np.int32)).save(tmp_path / "neg.tif")
    with pytest.raises(DataError, match="neg.tif.*negative"):
        load_rgb(tmp_path / "neg.tif")


def test_float_tiffs_in_unit_range_and_refused_outside(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    assert _grey(tmp_path / "f.tif") == [0, 128, 255, 64]
    Image.fromarray(np.array([[0.0, 300.0]], dtype=np.float32)).save(tmp_path / "big.tif")
    with pytest.raises(DataError, match=r"big.tif.*\[0, 300\].*only in \[0, 1\]"):
        load_rgb(tmp_path / "big.tif")
    Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match="nan.tif"):
        load_rgb(tmp_path / "nan.tif")


def test_8_bit_modes_convert_as_pil_does(tmp_path):
    Image.new("L", (2, 2), 100).save(tmp_path / "l.png")
    assert _grey(tmp_path / "l.png") == [100] * 4
    Image.new("RGBA", (2, 2), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    assert np.asarray(load_rgb(tmp_path / "rgba.png"))[0, 0].tolist() == [10, 20, 30]  # alpha dropped
    Image.new("RGB", (2, 2), (200, 50, 25)).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    assert np.asarray(load_rgb(tmp_path / "p.png"))[0, 0].tolist() == [200, 50, 25]
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")
    assert np.asarray(load_rgb(tmp_path / "cmyk.tif"))[0, 0].tolist() == [255, 0, 0]
    Image.new("1", (2, 2), 1).save(tmp_path / "one.png")
    assert _grey(tmp_path / "one.png") == [255] * 4


def test_dataset_items_of_16_bit_images_keep_their_brightness(tmp_path):
    for name, value in (("dark", 8192), ("light", 57344)):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((4, 4), value, dtype=np.uint16)).save(tmp_path / name / "0.png")
    data = image_folder(tmp_path)
    (dark, _), (light, _) = data[0], data[1]
    assert np.asarray(dark).max() == 32 and np.asarray(light).min() == 223


# ------------------------------------------------------------------------------ prompt file checksums


@pytest.fixture()
def saved_prompt(tmp_path, vit_backbone) -> Path:
    torch.manual_seed(0)
    method = build_method("coop", vit_backbone, ["red square", "gold"], {"n_ctx": 2})
    return save_pretrained(method, vit_backbone, tmp_path / "prompt")


def test_prompt_json_records_the_checksum(saved_prompt, vit_backbone):
    config = json.loads((saved_prompt / "prompt.json").read_text())
    assert config["tensors_sha256"] == tensors_sha256(load_file(str(saved_prompt / "prompt.safetensors")))
    load_prompt(saved_prompt, vit_backbone)


def test_altered_tensor_bytes_are_reported_as_corrupted(saved_prompt, vit_backbone, image_root, capsys):
    path = saved_prompt / "prompt.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor value: still a valid safetensors file
    path.write_bytes(bytes(data))
    with pytest.raises(PromptFileError, match=f"{path} is corrupted"):
        load_prompt(saved_prompt, vit_backbone)
    image = str(next((image_root / "gold").glob("*.png")))
    assert main(["predict", image, "--prompt", str(saved_prompt), *TINY]) == 2
    err = capsys.readouterr().err
    assert "is corrupted" in err and "Traceback" not in err


def test_non_finite_prompts_are_refused_at_save_and_at_load(tmp_path, saved_prompt, vit_backbone):
    method = load_prompt(saved_prompt, vit_backbone)
    with torch.no_grad():
        method.ctx[0, 0] = float("nan")
    with pytest.raises(PromptFileError, match=r"\['ctx'\] hold NaN"):
        save_pretrained(method, vit_backbone, tmp_path / "nan")
    assert not (tmp_path / "nan" / "prompt.safetensors").exists()
    # A NaN file written by hand, with a checksum that matches it: still refused, naming the tensor.
    tensors = load_file(str(saved_prompt / "prompt.safetensors"))
    tensors["ctx"][1, 1] = float("inf")
    save_file(tensors, str(saved_prompt / "prompt.safetensors"))
    config = json.loads((saved_prompt / "prompt.json").read_text())
    config["tensors_sha256"] = tensors_sha256(tensors)
    (saved_prompt / "prompt.json").write_text(json.dumps(config))
    with pytest.raises(PromptFileError, match=r"prompt.safetensors: tensor\(s\) \['ctx'\] hold NaN or infinite"):
        load_prompt(saved_prompt, vit_backbone)


def test_old_prompt_files_without_a_checksum_still_load(saved_prompt, vit_backbone, caplog):
    config = json.loads((saved_prompt / "prompt.json").read_text())
    del config["tensors_sha256"]
    (saved_prompt / "prompt.json").write_text(json.dumps(config))
    with caplog.at_level(logging.DEBUG, logger="vlprompt.prompts"):
        method = load_prompt(saved_prompt, vit_backbone)
    assert method.ctx.shape == (2, 32) and "not verified" in caplog.text


# --------------------------------------------------------------------------------- checkpoint checksums


def test_corrupted_checkpoint_is_a_clear_error_on_resume(tmp_path, image_root, split_file, capsys):
    out = tmp_path / "run"
    assert main(_train_args(image_root, split_file, out)) == 0
    checkpoint = out / "seed1" / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["method_sha256"] == tensors_sha256(state["method"])
    state["method"]["ctx"] += 1.0  # altered values under the old checksum
    torch.save(state, checkpoint)
    assert main(_train_args(image_root, split_file, out, "--resume", "true")) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {checkpoint} is corrupted" in err and "Traceback" not in err
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])  # truncated
    with pytest.raises(CorruptFileError, match="corrupted or unreadable"):
        load_checkpoint(checkpoint)
