"""Prompt hooks on both towers: shallow and deep token prompts, coupling functions, pooling, truncation."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from vlprompt.backbones import Backbone, BackboneError
from vlprompt.backbones.adapter import OPENAI_MEAN, OPENAI_STD

TEXTS = ["a photo of a cat.", "a photo of a very large and fluffy tabby cat on a sofa.", "x x x x dog"]


def _blocks_reference(transformer, x, deep, n, mask=None):
    """Block by block with the prompt positions 1..n replaced by ``deep[i - 1]`` before block i >= 1."""
    for i, block in enumerate(transformer.resblocks):
        if 0 < i <= len(deep):
            x = torch.cat([x[:, :1], deep[i - 1].expand(x.shape[0], -1, -1), x[:, 1 + n :]], dim=1)
        x = block(x, attn_mask=mask)
    return x


def _padded_text_reference(bb: Backbone, embeds, eot, deep, n):
    """The untruncated text tower (all 77 positions, full causal mask) with deep prompts."""
    model = bb.model
    x = embeds + model.positional_embedding
    x = _blocks_reference(model.transformer, x, deep, n, model.attn_mask)
    x = model.ln_final(x)[torch.arange(len(eot)), eot]
    return x @ model.text_projection


def _context_embeds(bb: Backbone, n: int, seed: int = 0):
    ids = bb.tokenize(TEXTS)
    embeds = bb.token_embedding(ids)
    gen = torch.Generator().manual_seed(seed)
    embeds[:, 1 : 1 + n] = torch.randn(n, bb.text_width, generator=gen)
    deep = [torch.randn(n, bb.text_width, generator=gen) for _ in range(bb.model.transformer.layers - 1)]
    return embeds, bb.eot_index(ids), deep


def test_deep_text_prompts_are_exact_under_truncation(vit_backbone):
    bb, n = vit_backbone, 3
    embeds, eot, deep = _context_embeds(bb, n)
    with torch.no_grad():
        ours = bb.encode_text_embeddings(embeds, eot, deep_prompts=deep)
        full = _padded_text_reference(bb, embeds, eot, deep, n)
        shallow = bb.encode_text_embeddings(embeds, eot)
        per_prompt = bb.encode_text_embeddings(embeds, eot, deep_prompts=[d.expand(3, -1, -1) for d in deep])
    torch.testing.assert_close(ours, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(per_prompt, ours, atol=1e-6, rtol=0)
    assert (ours - shallow).abs().max() > 1e-3  # the deep prompts are used


def test_deep_prompt_function_sees_the_previous_layer(vit_backbone):
    bb, n = vit_backbone, 2
    embeds, eot, deep = _context_embeds(bb, n, seed=1)
    seen = []

    def keep(i, previous):
        seen.append((i, tuple(previous.shape)))
        return previous  # replacing the prompt states by themselves changes nothing

    with torch.no_grad():
        shallow = bb.encode_text_embeddings(embeds, eot)
        torch.testing.assert_close(
            bb.encode_text_embeddings(embeds, eot, keep, n_prompts=n), shallow, atol=1e-6, rtol=0
        )
        torch.testing.assert_close(
            bb.encode_text_embeddings(embeds, eot, lambda i, prev: None, n_prompts=n), shallow, atol=1e-6, rtol=0
        )
        fixed = bb.encode_text_embeddings(embeds, eot, lambda i, prev: deep[i - 1], n_prompts=n)
        torch.testing.assert_close(fixed, bb.encode_text_embeddings(embeds, eot, deep), atol=1e-6, rtol=0)
    assert seen == [(i, (3, n, bb.text_width)) for i in range(1, bb.model.transformer.layers)]


def test_deep_text_prompts_must_sit_before_end_of_text(vit_backbone):
    bb = vit_backbone
    ids = bb.tokenize(["a", "a photo of a cat."])
    with pytest.raises(BackboneError, match="do not fit before the end-of-text"):
        bb.encode_text_embeddings(bb.token_embedding(ids), bb.eot_index(ids), [torch.zeros(2, bb.text_width)])
    with pytest.raises(BackboneError, match="pass n_prompts"):
        bb.encode_text_embeddings(bb.token_embedding(ids), bb.eot_index(ids), lambda i, p: None)


def _vit_backbone(pool_type: str) -> Backbone:
    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=3, width=40, patch_size=8, image_size=24, head_width=20, pool_type=pool_type)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)
    model = CLIP(24, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()
    return Backbone(
        model,
        open_clip.tokenizer.SimpleTokenizer(),
        {"size": 24, "mean": OPENAI_MEAN, "std": OPENAI_STD},
        f"vit-{pool_type}",
        "random",
    )


def _image_reference(bb: Backbone, pixels, shallow, deep, append: bool):
    """Prompts after the class token (vlprompt's rule) or appended after the patches (MaPLe's code)."""
    visual, n = bb.model.visual, shallow.shape[0]
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(len(x), 1, -1), x], dim=1) + visual.positional_embedding
    p = shallow.expand(len(x), -1, -1)
    x = torch.cat([x, p], dim=1) if append else torch.cat([x[:, :1], p, x[:, 1:]], dim=1)
    x = visual.ln_pre(x)
    for i, block in enumerate(visual.transformer.resblocks):
        if 0 < i <= len(deep):
            fresh = deep[i - 1].expand(len(x), -1, -1)
            x = torch.cat([x[:, :-n], fresh], dim=1) if append else torch.cat([x[:, :1], fresh, x[:, 1 + n :]], dim=1)
        x = block(x)
    x = x[:, :-n] if append else torch.cat([x[:, :1], x[:, 1 + n :]], dim=1)  # prompt tokens are not pooled
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj


@pytest.mark.parametrize("pool_type", ["tok", "avg"])
def test_image_prompts_follow_the_documented_rule(pool_type):
    bb = _vit_backbone(pool_type)
    gen = torch.Generator().manual_seed(2)
    pixels = torch.randn(2, 3, 24, 24, generator=gen)
    shallow = torch.randn(4, bb.vision_width, generator=gen)
    deep = [torch.randn(4, bb.vision_width, generator=gen) for _ in range(2)]
    with torch.no_grad():
        ours = bb.encode_image(pixels, token_prompts=shallow, deep_prompts=deep)
        after_cls = _image_reference(bb, pixels, shallow, deep, append=False)
        appended = _image_reference(bb, pixels, shallow, deep, append=True)
        plain = bb.model.encode_image(pixels)
        none = bb.encode_image(pixels, token_prompts=shallow[:0])
    torch.testing.assert_close(ours, after_cls, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours, appended, atol=1e-5, rtol=0)  # MaPLe's placement: same up to rounding
    torch.testing.assert_close(none, plain, atol=1e-5, rtol=0)
    assert (ours - plain).abs().max() > 1e-3


def test_avg_pooling_excludes_prompt_tokens():
    bb = _vit_backbone("avg")
    pixels = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    visual = bb.model.visual
    with torch.no_grad():
        ours = bb.encode_image(pixels, token_prompts=torch.zeros(2, bb.vision_width))
        x = visual.conv1(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(1, 1, -1), x], dim=1) + visual.positional_embedding
        x = torch.cat([x[:, :1], torch.zeros(1, 2, bb.vision_width), x[:, 1:]], dim=1)
        x = visual.transformer(visual.ln_pre(x))
        with_prompts = visual.ln_post(x)[:, 1:].mean(1) @ visual.proj  # what pooling over prompts would give
    assert (ours - with_prompts).abs().max() > 1e-4


def test_per_image_prompts_and_image_prompt_functions(vit_backbone):
    bb = vit_backbone
    gen = torch.Generator().manual_seed(4)
    pixels = torch.randn(2, 3, bb.image_size, bb.image_size, generator=gen)
    prompts = torch.randn(2, 3, bb.vision_width, generator=gen)
    deep = torch.randn(3, bb.vision_width, generator=gen)
    with torch.no_grad():
        batched = bb.encode_image(pixels, token_prompts=prompts, deep_prompts=[deep])
        singles = torch.cat(
            [bb.encode_image(pixels[i : i + 1], token_prompts=prompts[i], deep_prompts=[deep]) for i in range(2)]
        )
        through_function = bb.encode_image(pixels, token_prompts=prompts, deep_prompts=lambda i, prev: deep)
    torch.testing.assert_close(batched, singles, atol=1e-6, rtol=0)
    torch.testing.assert_close(through_function, batched, atol=0, rtol=0)
    with pytest.raises(BackboneError, match="need token_prompts"):
        bb.encode_image(pixels, deep_prompts=[deep])


def test_text_hooks_work_on_resnet_backbones(resnet_backbone):
    bb, n = resnet_backbone, 2
    embeds, eot, deep = _context_embeds(bb, n)
    with torch.no_grad():
        torch.testing.assert_close(
            bb.encode_text_embeddings(embeds, eot, deep),
            _padded_text_reference(bb, embeds, eot, deep, n),
            atol=1e-5,
            rtol=0,
        )
