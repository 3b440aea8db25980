"""A checkpoint in OpenAI's released CLIP format gives the probabilities OpenAI's own code gives."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from vlprompt.backbones import load_backbone
from vlprompt.methods import ZeroShot, ZeroShotConfig
from vlprompt.methods.base import Batch


def _import_openai_clip():
    """Import OpenAI's ``clip`` package (``openai-clip``), which still imports ``pkg_resources``."""
    stubbed = False
    try:
        import pkg_resources  # noqa: F401
    except ImportError:  # modern setuptools: give clip the one thing it takes from there
        import packaging
        import packaging.version

        stub = types.ModuleType("pkg_resources")
        stub.packaging = packaging
        sys.modules["pkg_resources"] = stub
        stubbed = True
    try:
        return pytest.importorskip("clip")
    finally:
        if stubbed:
            sys.modules.pop("pkg_resources", None)


clip = _import_openai_clip()
from clip.model import CLIP as OpenAICLIP  # noqa: E402
from clip.model import convert_weights  # noqa: E402

# clip.load tries torch.jit.load first (OpenAI's released files are TorchScript archives)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

TEXTS = ["a red square", "a photo of a dog.", "noise", "a green square on a dark background", "gold"]

ARCHS = {
    # widths are multiples of 64: OpenAI's build_model infers heads = width // 64
    "vit": dict(image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8),
    "resnet": dict(image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=16, vision_patch_size=None),
}


def make_checkpoint(path, kind: str) -> None:
    """A small random CLIP saved as OpenAI's released state dicts are (half-precision weights)."""
    torch.manual_seed(0)
    model = OpenAICLIP(
        embed_dim=32,
        context_length=77,
        vocab_size=49408,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=2,
        **ARCHS[kind],
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(math.log(100.0))
            elif name == "token_embedding.weight":
                p.normal_(0, 0.5)
            else:
                p.add_(torch.randn_like(p) * 0.05)
    convert_weights(model)
    torch.save(model.state_dict(), path)


def sample_image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(43, 57, 3), dtype=np.uint8)  # not square: resize + centre crop
    pixels[10:30, 20:40] = (200, 30, 30)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module", params=sorted(ARCHS))
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("openai") / f"tiny-{request.param}.pt"
    make_checkpoint(path, request.param)
    return path


def openai_load(path):
    """``clip.load(path, device="cpu", jit=False)``.

    With recent torch, ``clip.load`` cannot read a plain state-dict file: its failed
    ``torch.jit.load`` attempt leaves the shared file handle at the end, so its ``torch.load`` then
    raises EOFError. In that case run the rest of its state-dict branch, unchanged.
    """
    try:
        return clip.load(str(path), device="cpu", jit=False)
    except EOFError:
        model = clip.model.build_model(torch.load(path, map_location="cpu", weights_only=True)).float()
        return model, clip.clip._transform(model.visual.input_resolution)


def openai_probs(path, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    model, preprocess = openai_load(path)
    pixels = preprocess(image).unsqueeze(0)
    with torch.no_grad():
        logits_per_image, _ = model(pixels, clip.tokenize(TEXTS))
    return logits_per_image.softmax(dim=-1)[0], pixels[0]


def our_probs(backbone, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = backbone.image_transform()(image)
    method = ZeroShot(backbone, TEXTS, ZeroShotConfig(templates=["{}"]))
    with torch.no_grad():
        logits = method(backbone, Batch(pixels=pixels[None]))
    return logits.softmax(dim=-1)[0], pixels


def test_zero_shot_probabilities_equal_openai_clip(checkpoint):
    image = sample_image()
    expected, expected_pixels = openai_probs(checkpoint, image)
    backbone = load_backbone(str(checkpoint))
    probs, pixels = our_probs(backbone, image)
    torch.testing.assert_close(pixels, expected_pixels, atol=1e-6, rtol=0)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)
    assert expected.max() - expected.min() > 0.05  # the probabilities are far from uniform
    assert backbone.identity.pretrained.startswith("sha256:") and float(backbone.logit_scale) == pytest.approx(100)


def test_quick_gelu_matters(checkpoint):
    image = sample_image()
    expected, _ = openai_probs(checkpoint, image)
    gelu = load_backbone(str(checkpoint), quick_gelu=False)
    probs, _ = our_probs(gelu, image)
    assert (probs - expected).abs().max() > 1e-4
    assert gelu.identity.model.endswith(":gelu")


def test_a_run_on_a_local_openai_checkpoint_replays_from_its_config(checkpoint, image_root, split_file, tmp_path):
    """config.yaml records the checkpoint's path, so `vlprompt train --config` loads the same weights again."""
    import json

    import yaml

    from vlprompt.cli import main

    out = tmp_path / "run"
    args = ["train", "--backbone.name", str(checkpoint), "--data.root", str(image_root), "--data.split_file",
            str(split_file), "--data.shots", "2", "--train.epochs", "2", "--train.batch_size", "4",
            "--method_options", "{n_ctx: 2}", "--seeds", "[1]", "--backbone.device", "cpu"]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["backbone"]["name"] == str(checkpoint)
    assert main(["train", "--config", str(out / "config.yaml"), "--out", str(tmp_path / "replay")]) == 0
    rows = [json.loads((d / "results.json").read_text())["per_seed"] for d in (out, tmp_path / "replay")]
    for row in rows:
        row[0].pop("train_seconds")
    assert rows[0] == rows[1]
    prompt = json.loads((out / "seed1" / "prompt" / "prompt.json").read_text())
    assert prompt["backbone"]["pretrained"].startswith("sha256:")
