"""VP and VPT against cases computed by hand from the papers' equations, on the tiny models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_prompt_hooks import _image_reference

from vlprompt.backbones import BackboneError
from vlprompt.methods import VP, VPT, Batch, VPConfig, VPTConfig

NAMES = ["red square", "green circle", "blue star"]


def hand_text(bb, template: str) -> torch.Tensor:
    """Frozen class features straight from open_clip: normalize(encode_text(template.format(name)))."""
    with torch.no_grad():
        return F.normalize(bb.model.encode_text(bb.tokenize([template.format(n) for n in NAMES])), dim=-1)


def pixels_for(bb, n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(seed))


def test_padding_prompt_is_the_papers_frame_added_after_normalisation(vit_backbone):
    bb, p = vit_backbone, 4
    vp = VP(bb, NAMES, VPConfig(prompt_size=p)).eval()
    size = bb.image_size
    expected = torch.zeros(1, 3, size, size)
    expected[:, :, :p, :] = vp.pad_up.detach()
    expected[:, :, size - p :, :] = vp.pad_down.detach()
    expected[:, :, p : size - p, :p] = vp.pad_left.detach()
    expected[:, :, p : size - p, size - p :] = vp.pad_right.detach()
    assert torch.equal(vp.prompt().detach(), expected)
    assert vp.pad_up.shape == (1, 3, p, size) and vp.pad_left.shape == (1, 3, size - 2 * p, p)  # corners: top/bottom
    assert 0.8 < float(torch.cat([t.detach().flatten() for t in vp.parameters()]).std()) < 1.2  # N(0, 1) init
    x = pixels_for(bb)
    with torch.no_grad():
        logits = vp(bb, Batch(pixels=x))
        image = F.normalize(bb.model.encode_image(x + expected), dim=-1)
    torch.testing.assert_close(logits, 100 * image @ hand_text(bb, "This is a photo of a {}").t(), atol=1e-4, rtol=0)


def test_patch_prompters(vit_backbone):
    bb, p, size = vit_backbone, 5, vit_backbone.image_size
    fixed = VP(bb, NAMES, VPConfig(prompter="fixed_patch", prompt_size=p))
    expected = torch.zeros(1, 3, size, size)
    expected[:, :, :p, :p] = fixed.patch.detach()
    assert torch.equal(fixed.prompt().detach(), expected)

    rand = VP(bb, NAMES, VPConfig(prompter="random_patch", prompt_size=p)).train()
    torch.manual_seed(3)
    places = []
    for _ in range(300):
        nonzero = rand.prompt().detach()[0, 0].abs().sum(1).nonzero().flatten()
        places.append(int(nonzero[0]))
    torch.manual_seed(3)
    assert [int(torch.randint(size - p, (2,))[0]) for _ in range(300)] == places  # seeded: torch's RNG
    assert min(places) == 0 and max(places) == size - p - 1  # never the last offset, as the reference
    rand.eval()
    assert torch.equal(rand.prompt(), rand.prompt())  # evaluation is reproducible


def test_vp_sizes_come_from_the_backbone_and_bad_sizes_are_refused(vit_backbone, resnet_backbone):
    assert VP(resnet_backbone, NAMES, VPConfig(prompt_size=8)).pad_up.shape == (1, 3, 8, resnet_backbone.image_size)
    with pytest.raises(ValueError, match="leaves no image inside a 32 px input"):
        VP(vit_backbone, NAMES, VPConfig(prompt_size=16))
    with pytest.raises(ValueError, match="prompter must be one of"):
        VP(vit_backbone, NAMES, VPConfig(prompter="corner"))


@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
def test_vpt_equals_the_papers_forward(vit_backbone, deep):
    bb = vit_backbone
    torch.manual_seed(0)
    vpt = VPT(bb, NAMES, VPTConfig(n_tokens=3, deep=deep)).eval()
    assert vpt.prompts.shape == ((bb.vision_layers if deep else 1), 3, bb.vision_width)
    bound = math.sqrt(6.0 / (3 * bb.patch_size**2 + bb.vision_width))
    largest = float(vpt.prompts.detach().abs().max())
    assert 0.9 * bound < largest <= bound
    x = pixels_for(bb, seed=1)
    prompts = vpt.prompts.detach()
    with torch.no_grad():
        image = _image_reference(bb, x, prompts[0], list(prompts[1:]), append=False)
        expected = 100 * F.normalize(image, dim=-1) @ hand_text(bb, "a photo of a {}.").t()
        torch.testing.assert_close(vpt(bb, Batch(pixels=x)), expected, atol=1e-4, rtol=0)
        plain = 100 * F.normalize(bb.model.encode_image(x), dim=-1) @ hand_text(bb, "a photo of a {}.").t()
    assert (expected - plain).abs().max() > 1e-3  # the prompts change the logits


def test_vpt_dropout_and_bad_depths(vit_backbone, resnet_backbone):
    bb = vit_backbone
    vpt = VPT(bb, NAMES, VPTConfig(n_tokens=4, dropout=0.5)).train()
    x = pixels_for(bb, n=2, seed=2)
    with torch.no_grad():
        a, b = vpt(bb, Batch(pixels=x)), vpt(bb, Batch(pixels=x))
        vpt.eval()
        c, d = vpt(bb, Batch(pixels=x)), vpt(bb, Batch(pixels=x))
    assert (a - b).abs().max() > 1e-4 and torch.equal(c, d)
    with pytest.raises(BackboneError, match="3 prompt layers asked of a 2-layer image tower"):
        VPT(bb, NAMES, VPTConfig(deep=True, depth=3))
    with pytest.raises(BackboneError, match="token prompts need a ViT image tower.*ModifiedResNet"):
        VPT(resnet_backbone, NAMES)


def test_warmup_in_steps(vit_backbone, image_root):
    from vlprompt.data import image_folder
    from vlprompt.engine import TrainConfig, fit

    data = image_folder(image_root, vit_backbone.image_transform())  # 24 images: 6 steps of 4 an epoch
    vp = VP(vit_backbone, NAMES[:1] + ["a", "b", "c"], VPConfig(prompt_size=2))
    config = TrainConfig(epochs=2, batch_size=4, lr=1.0, momentum=0.0, schedule="constant", warmup_steps=9)
    history = fit(vp, vit_backbone, data, config, progress=False).history
    assert [h["lr"] for h in history] == pytest.approx([6 / 9, 1.0])  # the lr of each epoch's last step


@pytest.mark.parametrize("method,options", [("vp", "{prompt_size: 4}"), ("vpt", "{n_tokens: 2, deep: true, depth: 2}")])
def test_visual_methods_train_predict_and_evaluate_from_the_cli(
    method, options, tmp_path, image_root, split_file, capsys
):
    import json

    from vlprompt.cli import main

    out = tmp_path / method
    data = ["--data.root", str(image_root), "--data.split_file", str(split_file), "--data.shots", "2"]
    args = ["train", "--backbone.name", "tiny-random-vit", *data, "--method", method, "--method_options", options]
    assert main([*args, "--train.epochs", "2", "--train.batch_size", "4", "--seeds", "[1]", "--out", str(out)]) == 0
    result = json.loads((out / "seed1" / "results.json").read_text())
    capsys.readouterr()
    assert main(["eval", "--prompt", str(out / "seed1" / "prompt"), *data]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(result["accuracy"])
    assert main(["predict", str(image_root / "gold" / "0.png"), "--prompt", str(out / "seed1" / "prompt")]) == 0


def test_a_vp_prompt_on_a_backbone_of_another_resolution_is_a_clear_error(vit_backbone, tmp_path):
    import warnings

    import open_clip

    from vlprompt.backbones import Backbone
    from vlprompt.backbones.adapter import OPENAI_MEAN, OPENAI_STD
    from vlprompt.backbones.bundled import build_clip
    from vlprompt.prompts import PromptFileError, load_prompt, save_pretrained

    save_pretrained(VP(vit_backbone, NAMES, VPConfig(prompt_size=4)), vit_backbone, tmp_path / "vp")
    vision = {"layers": 2, "width": 48, "patch_size": 8, "image_size": 64, "head_width": 16}  # the tiny ViT at 64 px
    text = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
    model = build_clip({"embed_dim": 32, "vision_cfg": vision, "text_cfg": text, "quick_gelu": True})
    prep = {"size": 64, "mean": OPENAI_MEAN, "std": OPENAI_STD}
    larger = Backbone(model, open_clip.tokenizer.SimpleTokenizer(), prep, "tiny-64", "random")
    with warnings.catch_warnings(), pytest.raises(PromptFileError, match="trained at 32 px inputs .* at the 64 px"):
        warnings.simplefilter("ignore")
        load_prompt(tmp_path / "vp", larger)


def saved_activation_bytes(method, bb, x) -> int:
    """Bytes autograd keeps for the backward pass of one training step."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = method(bb, Batch(pixels=x)).logsumexp(-1).mean()
    loss.backward()
    return total[0]


def test_activation_checkpointing_keeps_the_numbers_and_saves_memory(vit_backbone, image_root):
    from vlprompt.data import image_folder
    from vlprompt.engine import TrainConfig, fit

    bb = vit_backbone
    data = image_folder(image_root, bb.image_transform())
    trained = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        vpt = VPT(bb, ["blue_square", "gold", "green_square", "red_square"], VPTConfig(n_tokens=4, deep=True))
        config = TrainConfig(
            epochs=2, batch_size=8, lr=0.1, schedule="constant", activation_checkpointing=checkpointing
        )
        fit(vpt, bb, data, config, progress=False)
        trained.append(vpt.prompts.detach().clone())
    assert torch.equal(trained[0], trained[1]) and not bb.activation_checkpointing  # restored after fit
    vpt.train()
    x = pixels_for(bb, n=4)
    plain = saved_activation_bytes(vpt, bb, x)
    with bb.checkpointing():
        checkpointed = saved_activation_bytes(vpt, bb, x)
    assert checkpointed < 0.7 * plain, (checkpointed, plain)
