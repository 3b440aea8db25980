"""CLIP-LoRA and full fine-tuning: the delta is the method's alone, saved alone, and computes what it should."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import assert_state_equal, state_snapshot
from safetensors.torch import load_file
from torch import nn

from vlprompt.backbones import BackboneError, tiny_random_backbone
from vlprompt.backbones.adapter import SplitAttention
from vlprompt.data import image_folder
from vlprompt.engine import FeatureCache, TrainConfig, fit
from vlprompt.methods import Batch, build_method
from vlprompt.methods.base import MethodOptionError
from vlprompt.prompts import TENSORS_FILE, load_prompt, save_pretrained

CLASSES = ("blue_square", "gold", "green_square", "red_square")
STEP = TrainConfig(epochs=1, batch_size=8, lr=0.05, schedule="constant", warmup_epochs=0, optimizer="adamw")


@pytest.fixture()
def pixels(image_root, vit_backbone):
    data = image_folder(image_root, vit_backbone.image_transform())
    return torch.stack([data[i][0] for i in range(6)])


# ---------------------------------------------------------------- the adapter's split attention
def test_split_attention_copy_computes_the_same_features(vit_backbone, pixels):
    before = state_snapshot(vit_backbone)
    twin = vit_backbone.split_attention_copy(["text", "image"])
    assert all(isinstance(twin.model.get_submodule(n.removeprefix("model.")), SplitAttention)
               for t in ("text", "image") for n in twin.attention_modules(t))  # fmt: skip
    texts = ["a photo of a gold.", "a red square", "x"]
    torch.testing.assert_close(twin.encode_text(texts), vit_backbone.encode_text(texts), atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(twin.encode_image(pixels), vit_backbone.encode_image(pixels), atol=1e-5, rtol=0)
        prompts = torch.randn(2, vit_backbone.vision_width)
        torch.testing.assert_close(
            twin.encode_image(pixels, token_prompts=prompts),
            vit_backbone.encode_image(pixels, token_prompts=prompts),
            atol=1e-5,
            rtol=0,
        )
    assert_state_equal(before, vit_backbone)
    assert isinstance(vit_backbone.model.transformer.resblocks[0].attn, nn.MultiheadAttention)


@pytest.mark.parametrize("batch_first", [True, False])
def test_split_attention_matches_multihead_attention_with_masks(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
    split = SplitAttention(mha).eval()
    x = torch.randn(3, 5, 8) if batch_first else torch.randn(5, 3, 8)
    causal = torch.full((5, 5), float("-inf")).triu(1)
    for mask in (None, causal, causal.isinf()):  # float (additive) and boolean (True = masked)
        expected = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
        torch.testing.assert_close(split(x, x, x, attn_mask=mask)[0], expected, atol=1e-6, rtol=0)


def test_tower_parameters_split_the_model(vit_backbone):
    text, image = vit_backbone.tower_parameters("text"), vit_backbone.tower_parameters("image")
    assert all(n.startswith("model.visual.") for n in image) and not any(n.startswith("model.visual.") for n in text)
    assert set(text) | set(image) | {"model.logit_scale"} == {n for n, _ in vit_backbone.named_parameters()}
    with pytest.raises(BackboneError, match="tower must be one of"):
        vit_backbone.tower_parameters("audio")


# ---------------------------------------------------------------- CLIP-LoRA
def test_clip_lora_defaults_are_the_releases(vit_backbone):
    method = build_method("clip-lora", vit_backbone, CLASSES)
    cfg = method.config
    assert (cfg.rank, cfg.alpha, cfg.dropout, cfg.projections, cfg.towers) == (2, 1.0, 0.25, ["q", "k", "v"],
                                                                               ["text", "image"])  # fmt: skip
    blocks = vit_backbone.text_layers + vit_backbone.vision_layers
    assert len(method.lora) == 3 * blocks and len(method.trainable_state()) == 2 * 3 * blocks
    assert all(torch.equal(part.B.weight, torch.zeros_like(part.B.weight)) for part in method.lora.values())
    assert all(isinstance(part.dropout, nn.Dropout) and part.dropout.p == 0.25 for part in method.lora.values())
    layer = method.tuned.model.transformer.resblocks[0].attn.q_proj
    assert layer.scaling["default"] == pytest.approx(1 / math.sqrt(2))  # alpha / sqrt(r)


def test_untrained_clip_lora_and_full_finetune_score_as_zero_shot_clip(vit_backbone, pixels):
    zero_shot = build_method("zeroshot", vit_backbone, CLASSES, {"templates": ["a photo of a {}."]}).eval()
    batch = Batch(pixels=pixels)
    with torch.no_grad():
        expected = zero_shot(vit_backbone, Batch(features=vit_backbone.encode_image(pixels)))
        for name in ("clip-lora", "full-finetune"):
            method = build_method(name, vit_backbone, CLASSES).eval()
            torch.testing.assert_close(method(vit_backbone, batch), expected, atol=1e-4, rtol=0, msg=name)


def test_clip_lora_fixed_logit_scale_is_the_releases_100(pixels):
    """logit_scale 100 (the release's main.py) replaces the backbone's exp(logit scale); 0 keeps it."""
    backbone = tiny_random_backbone("vit")
    with torch.no_grad():
        backbone.model.logit_scale.fill_(math.log(30.0))  # a checkpoint whose scale is not 100
    own = build_method("clip-lora", backbone, CLASSES).eval()
    fixed = build_method("clip-lora", backbone, CLASSES, {"logit_scale": 100.0}).eval()
    batch = Batch(pixels=pixels)
    with torch.no_grad():
        image, text = fixed.image_features(backbone, batch), fixed.text_features(backbone)
        cosine = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).t()
        torch.testing.assert_close(fixed(backbone, batch), 100.0 * cosine, atol=1e-4, rtol=0)
        torch.testing.assert_close(own(backbone, batch), 30.0 * cosine, atol=1e-4, rtol=0)


def test_clip_lora_update_is_w_plus_scaled_b_times_a(vit_backbone, pixels):
    """In eval, each LoRA'd projection equals the original attention with W + (alpha / sqrt r) · B A merged in."""
    torch.manual_seed(1)
    method = build_method("clip-lora", vit_backbone, CLASSES, {"rank": 3, "alpha": 2.0}).eval()
    with torch.no_grad():
        for part in method.lora.values():
            part.B.weight.normal_(std=0.3)
    scale = 2.0 / math.sqrt(3)
    merged = {}
    for tower in ("text", "image"):
        for i, name in enumerate(vit_backbone.attention_modules(tower)):
            weight = dict(vit_backbone.named_parameters())[f"{name}.in_proj_weight"]
            deltas = [method.lora[f"{tower}_{i}_{p}"] for p in "qkv"]
            merged[f"{name}.in_proj_weight"] = weight + scale * torch.cat([d.B.weight @ d.A.weight for d in deltas])
    with torch.no_grad():
        image = vit_backbone.with_weights(merged, "encode_image", pixels)
        text = vit_backbone.with_weights(merged, "encode_token_ids", method.prompt_ids)
        torch.testing.assert_close(method.image_features(vit_backbone, Batch(pixels=pixels)), image, atol=1e-5, rtol=0)
        torch.testing.assert_close(method.text_features(vit_backbone), text, atol=1e-5, rtol=0)
        assert (image - vit_backbone.encode_image(pixels)).abs().max() > 1e-3  # the update is not negligible


def test_clip_lora_dropout_acts_only_while_training(vit_backbone, pixels):
    method = build_method("clip-lora", vit_backbone, CLASSES, {"zero_init_b": False})
    batch = Batch(pixels=pixels)
    with torch.no_grad():
        method.train()
        assert not torch.equal(method.image_features(vit_backbone, batch), method.image_features(vit_backbone, batch))
        method.eval()
        assert torch.equal(method.image_features(vit_backbone, batch), method.image_features(vit_backbone, batch))


@pytest.mark.parametrize("name", ["clip-lora", "full-finetune"])
def test_delta_trains_alone_is_saved_alone_and_never_touches_the_shared_backbone(
    name, vit_backbone, image_root, tmp_path
):
    data = image_folder(image_root, vit_backbone.image_transform())
    torch.manual_seed(0)
    method = build_method(name, vit_backbone, CLASSES)
    other = build_method("coop", vit_backbone, CLASSES, {"n_ctx": 4}).eval()
    features = Batch(features=vit_backbone.encode_image(torch.zeros(2, 3, 32, 32)))
    with torch.no_grad():
        other_before = other(vit_backbone, features)
    backbone_before = state_snapshot(vit_backbone)
    key_before = method.cache_key()
    tensors_before = {k: v.clone() for k, v in method.trainable_state().items()}
    fit(method, vit_backbone, data, STEP, cache=FeatureCache(), progress=False)
    assert_state_equal(backbone_before, vit_backbone)  # bit-identical after training
    moved = [k for k, v in method.trainable_state().items() if not torch.equal(v, tensors_before[k])]
    assert moved and method.cache_key() != key_before
    save_pretrained(method, vit_backbone, tmp_path / "prompt")
    saved = load_file(str(tmp_path / "prompt" / TENSORS_FILE))
    assert set(saved) == {k for k, _ in method.named_parameters()}  # only the delta
    if name == "clip-lora":
        assert all(".A." in k or ".B." in k for k in saved) and sum(v.numel() for v in saved.values()) < 5000
    else:
        tuned = {**vit_backbone.tower_parameters("text"), **vit_backbone.tower_parameters("image")}
        assert len(saved) == len(tuned)
    loaded = load_prompt(tmp_path / "prompt", vit_backbone).eval()
    method.eval()
    batch = Batch(pixels=torch.stack([data[i][0] for i in range(4)]))
    with torch.no_grad():
        torch.testing.assert_close(loaded(vit_backbone, batch), method(vit_backbone, batch), atol=1e-5, rtol=0)
        assert torch.equal(other(vit_backbone, features), other_before)  # other methods see the backbone unchanged
    assert_state_equal(backbone_before, vit_backbone)  # ... and after load


def test_text_only_tuning_keeps_image_features_cacheable(resnet_backbone):
    for name in ("clip-lora", "full-finetune"):
        method = build_method(name, resnet_backbone, CLASSES, {"towers": ["text"]})
        assert not method.changes_image_tower and method.transfers_to_new_classes
        method.set_classes(resnet_backbone, ["purple_square", "orange"])
        assert method.text_features(resnet_backbone).shape == (2, resnet_backbone.embed_dim)


def test_lora_on_a_resnet_image_tower_is_a_clear_error(resnet_backbone):
    with pytest.raises(BackboneError, match="need a ViT image tower"):
        build_method("clip-lora", resnet_backbone, CLASSES)


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("clip-lora", {"projections": ["q", "x"]}, "projections must be"),
        ("clip-lora", {"layers": [0, 7]}, r"layers \[7\] outside the 2-block text tower"),
        ("clip-lora", {"rank": 0}, "rank must be >= 1"),
        ("full-finetune", {"towers": ["audio"]}, "towers must be a non-empty list"),
        ("full-finetune", {"towers": []}, "towers must be a non-empty list"),
        ("full-finetune", {"template": "a photo"}, "has no '{}'"),
    ],
)
def test_bad_options_are_clear_errors(name, options, message, vit_backbone):
    with pytest.raises(MethodOptionError, match=message):
        build_method(name, vit_backbone, CLASSES, options)


def test_lora_on_some_layers_and_projections(vit_backbone):
    method = build_method("clip-lora", vit_backbone, CLASSES, {"layers": [1], "projections": ["v", "o"]})
    assert sorted(method.lora) == ["image_1_o", "image_1_v", "text_1_o", "text_1_v"]
    injected = sorted(n for n, m in method.tuned.model.named_modules() if hasattr(m, "lora_A"))
    assert injected == [f"{tower}resblocks.1.attn.{p}_proj" for tower in ("transformer.", "visual.transformer.")
                        for p in ("out", "v")]  # fmt: skip


@pytest.mark.parametrize(
    "name,options",
    [
        ("kgcoop", "{template: 'a photo of a {}, a shape.'}"),
        ("promptsrc", "{depth_text: 2, depth_vision: 2, gpa_mean: 1}"),
        ("clip-lora", "{rank: 1, towers: [image, text]}"),
        ("full-finetune", "{towers: [image]}"),
    ],
)
def test_base_to_new_from_the_command_line(name, options, tmp_path, image_root, split_file):
    from vlprompt.cli import main

    out = tmp_path / "run"
    args = ["train", "--backbone.name", "tiny-random-vit", "--data.root", str(image_root)]
    args += ["--data.split_file", str(split_file), "--data.shots", "4", "--data.class_split", "base-to-new"]
    args += ["--method", name, "--method_options", options, "--train.epochs", "1", "--train.batch_size", "4"]
    assert main([*args, "--seeds", "[1]", "--out", str(out)]) == 0
    row = json.loads((out / "results.json").read_text())["per_seed"][0]
    assert {"base", "new", "hm"} <= set(row) and 0 <= row["hm"] <= 100
    loaded = load_prompt(out / "seed1" / "prompt", tiny_random_backbone("vit"))
    assert loaded.name == name and loaded.labels.names == ("blue_square", "gold")  # the base half
