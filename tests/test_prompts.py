"""Prompt files: save / load round trips, the JSON config, safety and backbone checks."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file

import vlprompt
from vlprompt.backbones import Backbone, tiny_random_backbone, tiny_random_clip
from vlprompt.methods import build_method
from vlprompt.methods.base import Batch
from vlprompt.prompts import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    TENSORS_FILE,
    BackboneMismatchWarning,
    PromptFileError,
    load_prompt,
    read_prompt_config,
    save_pretrained,
)

CLASSES = ["red_square", "green square", "blue", "gold"]
METHODS = [
    ("zeroshot", {"templates": ["itap of a {}.", "a photo of a {}."]}),
    ("coop", {"n_ctx": 4}),
    ("coop", {"ctx_init": "a photo of a", "class_specific": True, "class_token_position": "front"}),
    ("cocoop", {"n_ctx": 2, "ctx_init": ""}),
    ("linear-probe", {}),
]


def trained_looking(name: str, options: dict, backbone: Backbone, seed: int = 0):
    """A method whose tensors are moved away from their initial values."""
    torch.manual_seed(seed)
    method = build_method(name, backbone, CLASSES, options)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return method.eval()


def logits(method, backbone, feats):
    with torch.no_grad():
        return method(backbone, Batch(features=feats))


@pytest.mark.parametrize("kind", ["vit", "resnet"])
@pytest.mark.parametrize(("name", "options"), METHODS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(METHODS)])
def test_round_trip_gives_identical_logits(tmp_path, name, options, kind, vit_backbone, resnet_backbone):
    bb = vit_backbone if kind == "vit" else resnet_backbone
    method = trained_looking(name, options, bb)
    feats = torch.randn(5, bb.embed_dim, generator=torch.Generator().manual_seed(1))
    save_pretrained(method, bb, tmp_path / "prompt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same backbone: no warning at all
        loaded = load_prompt(tmp_path / "prompt", bb)
    assert type(loaded) is type(method) and loaded.labels == method.labels and not loaded.training
    assert torch.equal(logits(loaded, bb, feats), logits(method, bb, feats))
    fresh = build_method(name, bb, CLASSES, options)  # a different init scores differently
    if name != "zeroshot":
        assert not torch.allclose(logits(fresh, bb, feats), logits(method, bb, feats), atol=1e-3)
    tensors = load_file(str(tmp_path / "prompt" / TENSORS_FILE))
    assert set(tensors) == {k for k, _ in method.named_parameters()}  # only the trainable tensors
    for k, p in method.named_parameters():
        assert torch.equal(tensors[k], p.detach())


def test_prompt_json_fields(tmp_path, vit_backbone):
    method = trained_looking("coop", {"n_ctx": 4}, vit_backbone)
    save_pretrained(method, vit_backbone, tmp_path, extra={"dataset": "squares"})
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["format"] == FORMAT == "vlprompt-prompt" and config["format_version"] == FORMAT_VERSION == 2
    assert config["method"] == "coop" and config["labels"] == {"kind": "classes", "names": CLASSES}
    assert config["config"] == {
        "n_ctx": 4,
        "ctx_init": "",
        "class_specific": False,
        "class_token_position": "end",
        "init_std": 0.02,
    }
    assert config["backbone"] == vit_backbone.identity.to_dict()
    assert config["backbone"]["model"] == "tiny-random-vit" and config["backbone"]["text_width"] == 32
    assert config["backbone"]["preprocess"]["size"] == 32 and len(config["backbone"]["preprocess"]["mean"]) == 3
    assert config["library_version"] == vlprompt.__version__ and config["extra"] == {"dataset": "squares"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILE, TENSORS_FILE]
    assert (tmp_path / TENSORS_FILE).stat().st_size < 4 * 32 * 4 + 1024  # a few hundred bytes


def test_format_1_prompt_files_still_load(tmp_path, vit_backbone):
    """Format 1 stored the label space as "classes": a list of names (or a pair dict)."""
    method = trained_looking("coop", {"n_ctx": 4}, vit_backbone)
    save_pretrained(method, vit_backbone, tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["format_version"] = 1
    config["classes"] = config.pop("labels")["names"]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    loaded = load_prompt(tmp_path, vit_backbone)
    assert loaded.labels == method.labels
    torch.testing.assert_close(loaded.text_features(vit_backbone), method.text_features(vit_backbone), atol=0, rtol=0)


class _Trap:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_instead_of_safetensors_is_refused(tmp_path, vit_backbone):
    method = trained_looking("coop", {"n_ctx": 4}, vit_backbone)
    save_pretrained(method, vit_backbone, tmp_path / "p")
    marker = tmp_path / "unpickled"
    torch.save({"ctx": method.ctx.detach(), "trap": _Trap(marker)}, tmp_path / "p" / TENSORS_FILE)
    with pytest.raises(PromptFileError, match="pickle.*never unpickles"):
        load_prompt(tmp_path / "p", vit_backbone)
    assert not marker.exists()
    (tmp_path / "p" / TENSORS_FILE).write_bytes(b"garbage bytes, not a tensor file")
    with pytest.raises(PromptFileError, match="not a safetensors file"):
        load_prompt(tmp_path / "p", vit_backbone)
    (tmp_path / "p" / TENSORS_FILE).unlink()
    with pytest.raises(PromptFileError, match=f"{TENSORS_FILE} not found"):
        load_prompt(tmp_path / "p", vit_backbone)


def test_other_width_is_an_error(tmp_path, vit_backbone):
    save_pretrained(trained_looking("coop", {"n_ctx": 4}, vit_backbone), vit_backbone, tmp_path)
    wide = Backbone(
        tiny_random_clip("vit", embed_dim=48),
        open_clip.tokenizer.SimpleTokenizer(),
        dict(vit_backbone.preprocess_cfg),
        "tiny-random-vit-48",
        "seed0",
    )
    assert wide.embed_dim == 48
    with pytest.raises(PromptFileError, match="embed_dim=32, this backbone has 48"):
        load_prompt(tmp_path, wide)


def test_other_identity_warns_and_can_be_silenced(tmp_path, vit_backbone):
    method = trained_looking("coop", {"n_ctx": 4}, vit_backbone)
    save_pretrained(method, vit_backbone, tmp_path)
    other = tiny_random_backbone("vit", seed=1)
    differs = r"differs in pretrained: 'seed0' vs 'seed1'"  # the warning says what differs
    with pytest.warns(BackboneMismatchWarning, match=r"trained on tiny-random-vit \(seed0\).*\(seed1\); " + differs):
        loaded = load_prompt(tmp_path, other)
    assert torch.equal(loaded.ctx, method.ctx)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=BackboneMismatchWarning)
        load_prompt(tmp_path, other)
    assert not caught
    with pytest.raises(PromptFileError, match="trained on tiny-random-vit"):
        load_prompt(tmp_path, other, strict_backbone=True)


def test_unknown_keys_warn_and_still_load(tmp_path, vit_backbone):
    method = trained_looking("cocoop", {}, vit_backbone)
    save_pretrained(method, vit_backbone, tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["from_the_future"] = {"x": 1}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.warns(UserWarning, match=r"ignoring unknown key\(s\) \['from_the_future'\]"):
        loaded = load_prompt(tmp_path, vit_backbone)
    feats = torch.randn(3, vit_backbone.embed_dim)
    assert torch.equal(logits(loaded, vit_backbone, feats), logits(method, vit_backbone, feats))


def test_bad_config_files(tmp_path, vit_backbone):
    with pytest.raises(PromptFileError, match=f"{tmp_path / CONFIG_FILE} not found"):
        load_prompt(tmp_path, vit_backbone)
    (tmp_path / CONFIG_FILE).write_text("{")
    with pytest.raises(PromptFileError, match="not valid JSON"):
        read_prompt_config(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(PromptFileError, match="field 'format' is 'something-else'"):
        read_prompt_config(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, "format_version": 1, "method": "coop"}))
    with pytest.raises(PromptFileError, match="missing field 'config'"):
        read_prompt_config(tmp_path)


def test_tensors_of_another_method_are_refused(tmp_path, vit_backbone):
    save_pretrained(trained_looking("coop", {"n_ctx": 4}, vit_backbone), vit_backbone, tmp_path / "coop")
    save_pretrained(trained_looking("linear-probe", {}, vit_backbone), vit_backbone, tmp_path / "probe")
    (tmp_path / "coop" / TENSORS_FILE).write_bytes((tmp_path / "probe" / TENSORS_FILE).read_bytes())
    with pytest.raises(PromptFileError, match="tensors do not match coop: missing \\['ctx'\\]"):
        load_prompt(tmp_path / "coop", vit_backbone)


def test_loaded_coop_transfers_to_new_classes(tmp_path, vit_backbone):
    method = trained_looking("coop", {"n_ctx": 4}, vit_backbone)
    save_pretrained(method, vit_backbone, tmp_path)
    loaded = load_prompt(tmp_path, vit_backbone)
    loaded.set_classes(vit_backbone, ["purple", "orange"])
    method.set_classes(vit_backbone, ["purple", "orange"])
    with torch.no_grad():
        assert torch.equal(loaded.text_features(vit_backbone), method.text_features(vit_backbone))


def test_save_pretrained_and_from_pretrained_on_the_objects_users_hold(tmp_path, image_root):
    """peft's style: ``method.save_pretrained(dir)``, ``Class.from_pretrained(dir)`` (backbone: the recorded one)."""
    from vlprompt.bank import PromptBank
    from vlprompt.methods import VP, CoOp, PromptMethod

    backbone = tiny_random_backbone("vit")
    torch.manual_seed(0)
    coop = build_method("coop", backbone, CLASSES, {"n_ctx": 2})
    coop.save_pretrained(tmp_path / "coop", backbone)
    for cls in (PromptMethod, CoOp):
        loaded = cls.from_pretrained(tmp_path / "coop")  # onto the backbone the prompt records
        assert type(loaded) is CoOp and torch.equal(loaded.ctx, coop.ctx)
    with pytest.raises(PromptFileError, match="holds a coop prompt, not VP"):
        VP.from_pretrained(tmp_path / "coop", backbone)
    bank = PromptBank({"colour": coop, "shape": build_method("zeroshot", backbone, ["square", "coin"])})
    bank.save_pretrained(tmp_path / "bank", backbone)
    again = PromptBank.from_pretrained(tmp_path / "bank")
    assert again.names == ["colour", "shape"] and torch.equal(again["colour"].ctx, coop.ctx)
    image = str(next(image_root.glob("*/*.png")))
    predictor = vlprompt.Predictor.from_pretrained(tmp_path / "coop")
    predictor.save_pretrained(tmp_path / "copy")
    assert torch.equal(
        vlprompt.Predictor.from_pretrained(tmp_path / "copy").probabilities([image]), predictor.probabilities([image])
    )
