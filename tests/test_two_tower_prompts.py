"""MaPLe and IVLP against the reference procedure written out by hand on open_clip's own modules.

The reference (muzairkhattak/multimodal-prompt-learning) encodes "a photo of a {class}." over the full
77 tokens with the first n_ctx word embeddings replaced by the context and the deep text prompts
replacing those positions before each later block; it appends the image prompts after the patches and
replaces the last n tokens before each later block. Here both are rebuilt from those equations.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlprompt.backbones import BackboneError
from vlprompt.methods import IVLP, Batch, IVLPConfig, MaPLe, MaPLeConfig

NAMES = ["red square", "green circle", "blue star"]


def reference_text(bb, ctx, deep, n):
    """Full-context text features of "a photo of a {name}." with the reference's replacements."""
    model = bb.model
    ids = bb.tokenize([f"a photo of a {name}." for name in NAMES])
    x = model.token_embedding(ids).clone()
    x[:, 1 : 1 + n] = ctx
    x = x + model.positional_embedding
    for i, block in enumerate(model.transformer.resblocks):
        if 0 < i <= len(deep):
            x = torch.cat([x[:, :1], deep[i - 1].expand(len(x), -1, -1), x[:, 1 + n :]], dim=1)
        x = block(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)[torch.arange(len(NAMES)), ids.argmax(-1)]
    return F.normalize(x @ model.text_projection, dim=-1)


def reference_image(bb, pixels, shallow, deep):
    """The reference's image tower: prompts appended after the patches, the last n replaced per block."""
    visual, n = bb.model.visual, shallow.shape[0]
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(len(x), 1, -1), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(torch.cat([x, shallow.expand(len(x), -1, -1)], dim=1))
    for i, block in enumerate(visual.transformer.resblocks):
        if 0 < i <= len(deep):
            x = torch.cat([x[:, :-n], deep[i - 1].expand(len(x), -1, -1)], dim=1)
        x = block(x)
    return F.normalize(visual.ln_post(x[:, 0]) @ visual.proj, dim=-1)


def pixels_for(bb, seed=0):
    return torch.randn(2, 3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(seed))


def perturb(method, scale=0.3):
    with torch.no_grad():
        for p in method.parameters():
            p.add_(torch.randn_like(p) * scale)


@pytest.mark.parametrize("depth", [2, 1])  # depth 1: shallow MaPLe, prompts at the input only
def test_maple_equals_the_reference_procedure(vit_backbone, depth):
    bb = vit_backbone
    torch.manual_seed(0)
    maple = MaPLe(bb, NAMES, MaPLeConfig(depth=depth)).eval()
    # "a photo" is learned, "of a" stays: the context starts as those two words' embeddings
    torch.testing.assert_close(maple.ctx.detach(), bb.token_embedding(torch.tensor(bb.token_ids("a photo"))))
    # the deep projections start as copies of one initialisation (the reference's _get_clones)
    assert len(maple.deep_proj) == depth - 1 and maple.proj.weight.shape == (bb.vision_width, bb.text_width)
    perturb(maple)
    x = pixels_for(bb)
    with torch.no_grad():
        text = reference_text(bb, maple.ctx, list(maple.deep_text), 2)
        deep = [proj(p) for proj, p in zip(maple.deep_proj, maple.deep_text)]
        image = reference_image(bb, x, maple.proj(maple.ctx), deep)
        torch.testing.assert_close(maple(bb, Batch(pixels=x)), 100 * image @ text.t(), atol=1e-4, rtol=0)


def test_maple_deep_projections_start_equal_and_bad_depths(vit_backbone, resnet_backbone):
    import open_clip

    from vlprompt.backbones import Backbone
    from vlprompt.backbones.adapter import OPENAI_MEAN, OPENAI_STD
    from vlprompt.backbones.bundled import build_clip

    torch.manual_seed(0)
    vision = {"layers": 3, "width": 40, "patch_size": 8, "image_size": 24, "head_width": 20}
    text = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3}
    model = build_clip({"embed_dim": 24, "vision_cfg": vision, "text_cfg": text, "quick_gelu": True})
    prep = {"size": 24, "mean": OPENAI_MEAN, "std": OPENAI_STD}
    bb = Backbone(model, open_clip.tokenizer.SimpleTokenizer(), prep, "three-block", "random")
    maple = MaPLe(bb, NAMES, MaPLeConfig(depth=3))
    first, second = maple.deep_proj
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert not torch.equal(first.weight, maple.proj.weight)  # the input projection is its own
    assert not torch.equal(maple.deep_text[0], maple.deep_text[1])  # each deep text prompt is drawn anew
    with pytest.raises(BackboneError, match="token prompts need a ViT image tower"):
        MaPLe(resnet_backbone, NAMES, MaPLeConfig(depth=1))
    with pytest.raises(BackboneError, match="3 prompt layers asked of a 2-layer image tower"):
        MaPLe(vit_backbone, NAMES, MaPLeConfig(depth=3))


def test_ivlp_equals_the_reference_procedure(vit_backbone):
    bb = vit_backbone
    torch.manual_seed(1)
    ivlp = IVLP(bb, NAMES, IVLPConfig(depth_text=2, depth_vision=2, n_ctx_vision=3)).eval()
    assert ivlp.vision.shape == (2, 3, bb.vision_width) and ivlp.deep_text.shape == (1, 2, bb.text_width)
    perturb(ivlp)
    x = pixels_for(bb, seed=1)
    with torch.no_grad():
        text = reference_text(bb, ivlp.ctx, list(ivlp.deep_text), 2)
        image = reference_image(bb, x, ivlp.vision[0], list(ivlp.vision[1:]))
        torch.testing.assert_close(ivlp(bb, Batch(pixels=x)), 100 * image @ text.t(), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="ivlp text depth 3 exceeds the 2-layer text tower"):
        IVLP(bb, NAMES, IVLPConfig(depth_text=3, depth_vision=2))


@pytest.mark.parametrize("name", ["maple", "ivlp"])
def test_a_two_tower_prompt_on_a_backbone_of_another_width_is_a_clear_error(name, vit_backbone, tmp_path):
    from test_backbone import _odd_sized_backbone

    from vlprompt.methods import build_method
    from vlprompt.prompts import PromptFileError, load_prompt, save_pretrained

    options = {"depth": 2} if name == "maple" else {"depth_text": 2, "depth_vision": 2}
    save_pretrained(build_method(name, vit_backbone, NAMES, options), vit_backbone, tmp_path / name)
    with pytest.raises(PromptFileError, match="trained on a backbone with text_width=32, this backbone has 64"):
        load_prompt(tmp_path / name, _odd_sized_backbone())
