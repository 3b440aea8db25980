"""IVLP and PromptSRC with one tower left unprompted (depth 0): language-only and vision-only prompting.

muzairkhattak/multimodal-prompt-learning@69bce21: at ``vision_depth`` 0 its clip/model.py builds no image
prompts (configs/trainers/IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only.yaml); its IVLP trainer refuses text
depth 0, and its VPT trainer (the same image prompts) scores with frozen "a photo of a {class}." text. Here the
unprompted tower is checked against frozen CLIP and the prompted one against the hand-written reference of
tests/test_two_tower_prompts.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_state_equal, state_snapshot
from safetensors.torch import load_file
from test_two_tower_prompts import NAMES, perturb, pixels_for, reference_image, reference_text

from vlprompt.data import image_folder
from vlprompt.engine import FeatureCache, TrainConfig, fit
from vlprompt.engine.presets import preset, preset_recipe
from vlprompt.methods import IVLP, Batch, PromptSRC, build_method
from vlprompt.methods.base import MethodOptionError
from vlprompt.prompts import TENSORS_FILE, load_prompt, save_pretrained

METHODS = ("ivlp", "promptsrc")
LANGUAGE_ONLY = {"depth_text": 2, "depth_vision": 0, "n_ctx_text": 2}
VISION_ONLY = {"depth_text": 0, "depth_vision": 2, "n_ctx_vision": 3}
CLASSES = ("blue_square", "gold", "green_square", "red_square")  # the fixture image folder's


def hand_text(bb, names=NAMES, phrase="a photo of a"):
    """Frozen CLIP (open_clip's own full-context encode_text) on the hand-written prompt, normalised."""
    ids = bb.tokenize([f"{phrase} {name.replace('_', ' ')}." for name in names])
    return F.normalize(bb.model.encode_text(ids), dim=-1)


def build(name, bb, options, classes=NAMES, seed=0):
    torch.manual_seed(seed)
    return build_method(name, bb, list(classes), options)


@pytest.mark.parametrize("name", METHODS)
def test_language_only_runs_the_frozen_image_tower_and_deep_text_prompts(name, vit_backbone):
    bb = vit_backbone
    method = build(name, bb, LANGUAGE_ONLY).eval()
    assert not hasattr(method, "vision") and {k for k, _ in method.named_parameters()} == {"ctx", "deep_text"}
    assert not method.changes_image_tower and method.has_context  # the image features are cacheable
    flags = type(method).capabilities(type(method).Config(**LANGUAGE_ONLY))
    assert not flags["changes_image_tower"] and flags["has_context"]
    perturb(method)
    x = pixels_for(bb, seed=2)
    with torch.no_grad():
        frozen = bb.encode_image(x)
        assert torch.equal(method.image_features(bb, Batch(pixels=x)), frozen)  # no prompts: frozen CLIP exactly
        text = reference_text(bb, method.ctx, list(method.deep_text), 2)  # deep text prompts only
        torch.testing.assert_close(F.normalize(method.text_features(bb), dim=-1), text, atol=1e-5, rtol=0)
        expected = 100 * F.normalize(frozen, dim=-1) @ text.t()
        torch.testing.assert_close(method(bb, Batch(pixels=x)), expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(method.score(bb, Batch(features=frozen)), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", METHODS)
def test_vision_only_scores_with_the_frozen_hand_prompt_and_deep_image_prompts(name, vit_backbone):
    bb = vit_backbone
    method = build(name, bb, VISION_ONLY).eval()
    assert {k for k, _ in method.named_parameters()} == {"vision"} and method.vision.shape == (2, 3, bb.vision_width)
    assert method.changes_image_tower and not method.has_context
    flags = type(method).capabilities(type(method).Config(**VISION_ONLY))
    assert flags["changes_image_tower"] and not flags["has_context"]
    perturb(method)
    x = pixels_for(bb, seed=3)
    with torch.no_grad():
        text = hand_text(bb)  # frozen CLIP on "a photo of a {class}.", as the release's VPT trainer
        torch.testing.assert_close(F.normalize(method.text_features(bb), dim=-1), text, atol=1e-6, rtol=0)
        image = reference_image(bb, x, method.vision[0], list(method.vision[1:]))
        torch.testing.assert_close(method(bb, Batch(pixels=x)), 100 * image @ text.t(), atol=1e-4, rtol=0)
    with pytest.raises(MethodOptionError, match="depth_text 0 learns no text context"):
        method.nearest_words(bb)
    # the hand prompt opens with ctx_init and follows the label space
    other = build(name, bb, {**VISION_ONLY, "ctx_init": "a drawing of a"})
    other.set_classes(bb, ["purple_square", "orange"])
    with torch.no_grad():
        expected = hand_text(bb, ["purple_square", "orange"], "a drawing of a")
        torch.testing.assert_close(F.normalize(other.text_features(bb), dim=-1), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", METHODS)
def test_both_towers_at_zero_and_bad_sizes_are_refused(name, vit_backbone):
    with pytest.raises(MethodOptionError, match=f"{name} options depth_text and depth_vision are both 0"):
        build(name, vit_backbone, {"depth_text": 0, "depth_vision": 0})
    with pytest.raises(MethodOptionError, match="depth_text and depth_vision must be >= 0, not -1 and 2"):
        build(name, vit_backbone, {"depth_text": -1, "depth_vision": 2})
    with pytest.raises(MethodOptionError, match="n_ctx_text must be >= 1 with depth_text 2, not 0"):
        build(name, vit_backbone, {"depth_text": 2, "depth_vision": 2, "n_ctx_text": 0})
    with pytest.raises(MethodOptionError, match="n_ctx_vision must be >= 1 with depth_vision 2, not 0"):
        build(name, vit_backbone, {"depth_text": 2, "depth_vision": 2, "n_ctx_vision": 0})
    build(name, vit_backbone, {**LANGUAGE_ONLY, "n_ctx_vision": 0})  # an unprompted tower's size is not read


@pytest.mark.parametrize("name", METHODS)
def test_a_shallow_text_tower(name, vit_backbone):
    """Text depth 1: the input context only (it used to fail: the adapter had no deep prompt to count)."""
    bb = vit_backbone
    method = build(name, bb, {"depth_text": 1, "depth_vision": 2, "n_ctx_text": 2}).eval()
    assert method.deep_text.shape == (0, 2, bb.text_width)
    perturb(method)
    with torch.no_grad():
        text = reference_text(bb, method.ctx, [], 2)
        torch.testing.assert_close(F.normalize(method.text_features(bb), dim=-1), text, atol=1e-5, rtol=0)


def test_language_only_needs_no_vit_image_tower(resnet_backbone):
    method = build("ivlp", resnet_backbone, LANGUAGE_ONLY).eval()
    x = pixels_for(resnet_backbone)
    with torch.no_grad():
        assert torch.equal(method.image_features(resnet_backbone, Batch(pixels=x)), resnet_backbone.encode_image(x))


def engine_batch(method, bb, data, cache):
    """Eight training images as the engine feeds them: pixels to a prompted image tower, else cached features."""
    subset = data.subset(range(8))
    targets = torch.tensor(subset.labels)
    if method.changes_image_tower:
        return Batch(pixels=torch.stack([subset[i][0] for i in range(8)]), targets=targets)
    return Batch(features=cache.features(bb, subset, progress=False), targets=targets)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("options", [LANGUAGE_ONLY, VISION_ONLY], ids=["language-only", "vision-only"])
def test_a_training_step_reaches_only_the_prompted_tower(name, options, vit_backbone, image_root):
    bb, cache = vit_backbone, FeatureCache()
    data = image_folder(image_root, bb.image_transform())
    method = build(name, bb, options, CLASSES)
    prompted = {"ctx", "deep_text"} if options["depth_vision"] == 0 else {"vision"}
    assert {k for k, p in method.named_parameters() if p.requires_grad} == prompted
    batch = engine_batch(method, bb, data, cache)
    method.train()
    logits = method(bb, batch)
    method.loss(bb, batch, logits).backward()
    for key, p in method.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, key
    method.zero_grad(set_to_none=True)
    backbone_before = state_snapshot(bb)
    before = {k: p.detach().clone() for k, p in method.named_parameters()}
    config = TrainConfig(epochs=1, batch_size=8, lr=0.05, schedule="constant", warmup_epochs=0, momentum=0.0)
    fit(method, bb, data, config, cache=cache, progress=False)
    assert_state_equal(backbone_before, bb)
    assert all(not torch.equal(p.detach(), before[k]) for k, p in method.named_parameters())


def test_promptsrc_regularisers_with_a_frozen_image_tower(vit_backbone, image_root):
    """Image depth 0: v̂ = v̂₀, so the image L1 term is 0; CE, the text L1 and the KL term stay (cached features)."""
    bb = vit_backbone
    method = build("promptsrc", bb, LANGUAGE_ONLY, CLASSES)
    perturb(method, 0.2)
    batch = engine_batch(method, bb, image_folder(image_root, bb.image_transform()), FeatureCache())
    assert batch.pixels is None
    method.train()
    logits = method(bb, batch)
    loss = method.loss(bb, batch, logits)
    with torch.no_grad():
        teacher, frozen = F.normalize(method.teacher, dim=-1), F.normalize(batch.features, dim=-1)
        text = F.normalize(method.text_features(bb), dim=-1)
        z0 = bb.logit_scale * frozen @ teacher.t()
        q = F.softmax(z0, 1)
        kl = (q * (q.log() - F.log_softmax(logits, 1))).sum() / logits.numel()
        expected = F.cross_entropy(logits, batch.targets) + 25 * (text - teacher).abs().mean() + kl
    assert float(kl) > 1e-4
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=0)


def test_promptsrc_regularisers_with_a_frozen_text_tower(vit_backbone, image_root):
    """Text depth 0: t̂ is the frozen hand prompt's feature (its L1 term a constant); the image terms stay."""
    bb = vit_backbone
    method = build("promptsrc", bb, VISION_ONLY, CLASSES)
    perturb(method, 0.2)
    batch = engine_batch(method, bb, image_folder(image_root, bb.image_transform()), FeatureCache())
    method.train()
    logits = method(bb, batch)
    loss = method.loss(bb, batch, logits)
    with torch.no_grad():
        teacher, text = F.normalize(method.teacher, dim=-1), hand_text(bb, CLASSES)
        frozen = F.normalize(bb.encode_image(batch.pixels), dim=-1)
        image = F.normalize(method.image_features(bb, batch), dim=-1)
        z0 = bb.logit_scale * frozen @ teacher.t()
        q = F.softmax(z0, 1)
        kl = (q * (q.log() - F.log_softmax(logits, 1))).sum() / logits.numel()
        terms = 25 * (text - teacher).abs().mean() + 10 * (image - frozen).abs().mean() + kl
        expected = F.cross_entropy(logits, batch.targets) + terms
    assert float((image - frozen).abs().mean()) > 1e-4
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("options", [LANGUAGE_ONLY, VISION_ONLY], ids=["language-only", "vision-only"])
def test_save_load_round_trip(name, options, vit_backbone, tmp_path):
    bb = vit_backbone
    method = build(name, bb, options).eval()
    perturb(method, 0.1)
    x = pixels_for(bb, seed=4)
    with torch.no_grad():
        logits = method(bb, Batch(pixels=x))
    save_pretrained(method, bb, tmp_path / "prompt")
    expected = {"ctx", "deep_text"} if options["depth_vision"] == 0 else {"vision"}
    assert set(load_file(str(tmp_path / "prompt" / TENSORS_FILE))) == expected  # no empty tower tensors
    loaded = load_prompt(tmp_path / "prompt", bb)
    assert type(loaded) is type(method) and loaded.config == method.config
    assert loaded.changes_image_tower == method.changes_image_tower
    with torch.no_grad():
        torch.testing.assert_close(loaded(bb, Batch(pixels=x)), logits, atol=1e-6, rtol=0)


def test_the_released_language_and_vision_only_configs():
    """multimodal-prompt-learning's configs/trainers/IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only.yaml and
    configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml (trainer VPT: IVLP's image prompts, frozen hand text)."""
    language, vision = preset_recipe("ivlp-language-only"), preset_recipe("ivlp-vision-only")
    assert {k: language.options[k] for k in ("n_ctx_text", "depth_text", "depth_vision")} == {
        "n_ctx_text": 4,
        "depth_text": 12,
        "depth_vision": 0,
    }
    assert {k: vision.options[k] for k in ("n_ctx_vision", "depth_vision", "depth_text")} == {
        "n_ctx_vision": 8,
        "depth_vision": 12,
        "depth_text": 0,
    }
    for name in ("ivlp-language-only", "ivlp-vision-only"):
        config = preset(name)
        assert (config.epochs, config.batch_size, config.lr, config.optimizer) == (5, 4, 0.0025, "sgd")
    assert not IVLP.capabilities(IVLP.Config(**language.options))["changes_image_tower"]
    assert not IVLP.capabilities(IVLP.Config(**vision.options))["has_context"]
    assert PromptSRC.capabilities()["changes_image_tower"] and IVLP.capabilities()["has_context"]  # defaults


def test_wrappers_read_the_per_config_flags(vit_backbone):
    """TPT tunes a text context: a vision-only IVLP has none (a clear error); DePT over a language-only PromptSRC
    leaves the image tower frozen, so its image features stay cacheable."""
    with pytest.raises(MethodOptionError, match="tpt tunes a text context: method 'ivlp' has none"):
        build_method("tpt", vit_backbone, list(NAMES), {"method": "ivlp", "options": VISION_ONLY})
    dept = build_method("dept", vit_backbone, list(NAMES), {"method": "promptsrc", "options": LANGUAGE_ONLY})
    assert not dept.changes_image_tower
