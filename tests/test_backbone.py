"""The backbone adapter: exact truncation, image encoding with prompts, dimensions, loading errors."""

from __future__ import annotations

import open_clip
import pytest
import torch

from vlprompt.backbones import Backbone, BackboneError, available_backbones, load_backbone
from vlprompt.backbones.adapter import OPENAI_MEAN, OPENAI_STD
from vlprompt.backbones.bundled import build_clip
from vlprompt.methods import CoOp

SHORT = ["a", "dog", "a photo of a cat."]
LONG = ["a photo of a " + "very " * 30 + "large tabby cat sitting on the red sofa.", "x " * 60 + "end"]
MIXED = ["a", LONG[0], "a photo of a dog.", LONG[1], "itap of a goldfish."]


def padded_reference(backbone: Backbone, embeds: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """The untruncated computation: all 77 positions through the transformer with the full mask."""
    text = backbone.model
    x = embeds + text.positional_embedding
    x = text.transformer(x, attn_mask=text.attn_mask)
    x = text.ln_final(x)
    x = x[torch.arange(x.shape[0]), eot]
    return x @ text.text_projection


@pytest.fixture(scope="module", params=["vit", "resnet"])
def backbone(request, vit_backbone, resnet_backbone):
    return vit_backbone if request.param == "vit" else resnet_backbone


@pytest.mark.parametrize("texts", [SHORT, LONG, MIXED], ids=["short", "long", "mixed"])
def test_truncated_text_encoding_equals_open_clip(backbone, texts):
    ids = backbone.tokenize(texts)
    eot = backbone.eot_index(ids)
    with torch.no_grad():
        reference = backbone.model.encode_text(ids)
        ours = backbone.encode_text_embeddings(backbone.token_embedding(ids), eot)
        cut = backbone.encode_text_embeddings(backbone.token_embedding(ids[:, : int(eot.max()) + 1]), eot)
    assert reference.abs().max() > 0.1
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(cut, reference, atol=1e-5, rtol=0)
    # features of different prompts differ clearly (the comparison above is not vacuous)
    assert torch.cdist(reference, reference).fill_diagonal_(1).min() > 1e-2


def test_truncation_on_spliced_embeddings_equals_full_context(backbone):
    """Random (non-word) embeddings in the prompt: truncated == padded to 77, batch-independent."""
    ids = backbone.tokenize(MIXED)
    eot = backbone.eot_index(ids)
    embeds = backbone.token_embedding(ids)
    gen = torch.Generator().manual_seed(0)
    embeds[:, 1:5] = torch.randn(len(MIXED), 4, backbone.text_width, generator=gen)
    with torch.no_grad():
        full = padded_reference(backbone, embeds, eot)
        ours = backbone.encode_text_embeddings(embeds, eot)
        one_by_one = torch.cat([backbone.encode_text_embeddings(embeds[i : i + 1], eot[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(ours, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(one_by_one, full, atol=1e-5, rtol=0)
    # reading at a wrong position would give a different feature
    assert (padded_reference(backbone, embeds, eot - 1) - full).abs().max() > 1e-3


def shared_context_prompts(backbone: Backbone, images: int = 1):
    """CoOp's prompts of MIXED's lengths: [SOS] ctx x4 (one context a group, the same tensor for its classes) then
    each text's tokens; and the context, a leaf requiring gradients."""
    ids = backbone.tokenize(MIXED)
    eot = backbone.eot_index(ids)
    gen = torch.Generator().manual_seed(0)
    ctx = torch.randn(images, 1, 4, backbone.text_width, generator=gen).requires_grad_()
    fixed = backbone.token_embedding(ids)
    embeds = torch.cat([fixed[:, :1].expand(images, -1, -1, -1), ctx.expand(-1, 5, -1, -1),
                        fixed[:, 1:-4].expand(images, -1, -1, -1)], dim=2)  # fmt: skip
    return embeds.reshape(images * 5, *embeds.shape[2:]), (eot + 4).repeat(images), ctx


@pytest.mark.parametrize("images", [1, 3])
@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
@pytest.mark.parametrize("checkpoint", [False, True], ids=["stored", "checkpointed"])
def test_shared_prefix_and_length_groups_equal_the_full_context(backbone, images, deep, checkpoint):
    """The first positions run once a group and each length apart: the features and the gradients of the full
    77-position computation (its authors' procedure), deep prompts at the context's positions included."""
    from vlprompt.backbones.adapter import encode_text_tower

    embeds, eot, ctx = shared_context_prompts(backbone, images)
    gen = torch.Generator().manual_seed(1)
    layers = len(backbone.model.transformer.resblocks)
    prompts = [torch.randn(4, backbone.text_width, generator=gen) for _ in range(layers - 1)] if deep else None
    text = backbone.model

    def features(**how):
        return encode_text_tower(text, embeds, eot, prompts, checkpoint=checkpoint, **how)

    full = features(length=77)  # every sequence over every position, as one batch (the reference procedure)
    ours = features(shared_prefix=5, prefix_groups=images)
    torch.testing.assert_close(ours, full, atol=2e-5, rtol=0)
    (full_grad,) = torch.autograd.grad(full.square().sum(), ctx)
    (our_grad,) = torch.autograd.grad(ours.square().sum(), ctx)
    torch.testing.assert_close(our_grad, full_grad, atol=1e-4 * float(full_grad.abs().max()), rtol=0)
    assert full_grad.abs().max() > 0
    wrong = 6 if images == 1 else 5  # the texts' first words differ; or the images' contexts, in one group
    with pytest.raises(BackboneError, match=f"the first {wrong} positions differ within a group"):
        encode_text_tower(text, embeds, eot, shared_prefix=wrong, prefix_groups=1)


@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
def test_prefix_groups_given_row_by_row_equal_the_full_context(backbone, deep):
    """Groups as each row's group id (rows of a group need not be consecutive, e.g. a task's classes): the features
    and gradients of the full 77 positions; a group id that leaves a group empty, or a row not in its group's
    prefix, is refused."""
    from vlprompt.backbones.adapter import encode_text_tower

    embeds, eot, ctx = shared_context_prompts(backbone, 3)
    order = torch.randperm(15, generator=torch.Generator().manual_seed(2))
    embeds, eot, group = embeds[order], eot[order], (torch.arange(15) // 5)[order]
    gen = torch.Generator().manual_seed(1)
    layers = len(backbone.model.transformer.resblocks)
    prompts = [torch.randn(4, backbone.text_width, generator=gen) for _ in range(layers - 1)] if deep else None
    full = encode_text_tower(backbone.model, embeds, eot, prompts, length=77)
    ours = encode_text_tower(backbone.model, embeds, eot, prompts, shared_prefix=5, prefix_groups=group)
    torch.testing.assert_close(ours, full, atol=2e-5, rtol=0)
    (full_grad,) = torch.autograd.grad(full.square().sum(), ctx, retain_graph=True)  # the row order's graph
    (our_grad,) = torch.autograd.grad(ours.square().sum(), ctx)
    torch.testing.assert_close(our_grad, full_grad, atol=1e-4 * float(full_grad.abs().max()), rtol=0)
    from vlprompt.backbones.adapter import _prefix_rows

    on_meta, first = _prefix_rows(group, 15, torch.device("meta"))  # read on the host: memory is counted on meta
    assert on_meta.device.type == "meta" and first.shape == (3,)
    with torch.no_grad():
        with pytest.raises(BackboneError, match="leave a group without a sequence"):
            encode_text_tower(backbone.model, embeds, eot, shared_prefix=5, prefix_groups=group * 2)
        with pytest.raises(BackboneError, match="the first 5 positions differ within a group"):
            encode_text_tower(backbone.model, embeds, eot, shared_prefix=5, prefix_groups=group.roll(1))


def test_what_cannot_share_positions_runs_as_one_batch(vit_backbone, monkeypatch):
    """Residuals, inserted tokens, per-sequence deep prompts and dropout at work run every sequence in one batch."""
    import vlprompt.backbones.adapter as adapter

    embeds, eot, _ = shared_context_prompts(vit_backbone)
    text = vit_backbone.model
    calls = []
    monkeypatch.setattr(adapter, "_encode_by_length", lambda *a, **k: calls.append(1) or torch.zeros(5, 32))
    adapter.encode_text_tower(text, embeds, eot, shared_prefix=5)
    assert calls == [1]
    per_sequence = [torch.zeros(5, 4, vit_backbone.text_width)]
    adapter.encode_text_tower(text, embeds, eot, per_sequence, shared_prefix=5)
    adapter.encode_text_tower(text, embeds, eot, shared_prefix=5, block_residuals={0: lambda x: x})
    adapter.encode_text_tower(text, embeds, eot, inserted=torch.zeros(2, vit_backbone.text_width), insert_at=1)
    adapter.encode_text_tower(text, embeds[:1], eot[:1], shared_prefix=5)
    block = text.transformer.resblocks[0]
    monkeypatch.setattr(block.attn, "dropout", 0.1)
    block.train()
    try:
        adapter.encode_text_tower(text, embeds, eot, shared_prefix=5)
    finally:
        block.eval()
    assert calls == [1]


def test_encode_text_is_batched_consistently(vit_backbone):
    texts = [f"a photo of a thing number {i}." for i in range(7)]
    whole = vit_backbone.encode_text(texts)
    small = vit_backbone.encode_text(texts, batch_size=3)
    torch.testing.assert_close(small, whole, atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(
            whole, vit_backbone.model.encode_text(vit_backbone.tokenize(texts)), atol=1e-5, rtol=0
        )


def test_encode_image_matches_open_clip(backbone):
    pixels = torch.randn(3, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = backbone.model.encode_image(pixels)
        ours = backbone.encode_image(pixels)
    assert ours.shape == (3, backbone.embed_dim)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_vit_token_prompts(vit_backbone):
    bb = vit_backbone
    pixels = torch.randn(2, 3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        plain = bb.model.encode_image(pixels)
        empty = bb.encode_image(pixels, token_prompts=torch.zeros(0, bb.vision_width))
        shallow = bb.encode_image(pixels, token_prompts=torch.randn(3, bb.vision_width, generator=gen))
        deep = torch.randn(bb.vision_layers, 3, bb.vision_width, generator=gen)
        deep_out = bb.encode_image(pixels, token_prompts=deep[0], deep_prompts=list(deep[1:]))
        deep_first_only = bb.encode_image(pixels, token_prompts=deep[0])
    torch.testing.assert_close(empty, plain, atol=1e-5, rtol=0)
    assert (shallow - plain).abs().max() > 1e-3
    assert (deep_out - deep_first_only).abs().max() > 1e-3  # later layers' prompts are used
    with pytest.raises(BackboneError, match=r"3 prompt layers asked of a 2-layer tower"):
        bb.encode_image(pixels, token_prompts=torch.zeros(1, bb.vision_width), deep_prompts=[torch.zeros(1, 48)] * 2)
    with pytest.raises(BackboneError, match=r"3 prompt layers asked of a 2-layer image tower"):
        bb.check_token_prompts(depth=3)


def test_token_prompts_on_resnet_are_a_clear_error(resnet_backbone):
    bb = resnet_backbone
    pixels = torch.zeros(1, 3, bb.image_size, bb.image_size)
    with pytest.raises(BackboneError, match="token prompts need a ViT image tower.*ModifiedResNet"):
        bb.encode_image(pixels, token_prompts=torch.zeros(2, bb.vision_width))
    with pytest.raises(BackboneError, match="token prompts need a ViT image tower.*ModifiedResNet"):
        bb.check_token_prompts()
    assert bb.vision_layers == 0 and bb.patch_size == 0


def test_pixel_prompt_is_added_to_pixels(vit_backbone):
    bb = vit_backbone
    pixels = torch.randn(2, 3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(4))
    delta = torch.randn(3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(bb.encode_image(pixels, pixel_prompt=delta), bb.model.encode_image(pixels + delta))


def _odd_sized_backbone() -> Backbone:
    torch.manual_seed(0)
    model = build_clip(
        {
            "embed_dim": 24,
            "vision_cfg": {"layers": 1, "width": 40, "patch_size": 8, "image_size": 24, "head_width": 20},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 1},
            "quick_gelu": True,
        }
    )
    prep = {"size": 24, "mean": OPENAI_MEAN, "std": OPENAI_STD}
    return Backbone(model, open_clip.tokenizer.SimpleTokenizer(), prep, "odd", "random")


def test_dimensions_come_from_the_model():
    bb = _odd_sized_backbone()
    assert (bb.text_width, bb.embed_dim, bb.vision_width) == (64, 24, 40)
    assert (bb.vision_layers, bb.patch_size, bb.image_size, bb.context_length) == (1, 8, 24, 77)
    assert bb.identity.to_dict()["text_width"] == 64 and bb.identity.embed_dim == 24
    coop = CoOp(bb, ["cat", "dog"])
    assert coop.ctx.shape == (16, 64)
    with torch.no_grad():
        assert coop.text_features(bb).shape == (2, 24)
        assert bb.encode_image(torch.zeros(1, 3, 24, 24)).shape == (1, 24)
        assert bb.encode_image(torch.zeros(1, 3, 24, 24), token_prompts=torch.zeros(2, 40)).shape == (1, 24)


def test_backbone_is_frozen_and_stays_in_eval(vit_backbone):
    assert not any(p.requires_grad for p in vit_backbone.parameters())
    vit_backbone.train()
    assert not vit_backbone.training and not vit_backbone.model.training
    assert float(vit_backbone.logit_scale) == pytest.approx(100.0)


def test_identity_key_changes_with_weights_and_preprocessing():
    from vlprompt.backbones import tiny_random_backbone

    a, b = tiny_random_backbone("vit", seed=0), tiny_random_backbone("vit", seed=1)
    assert a.identity == tiny_random_backbone("vit", seed=0).identity
    assert a.identity.key != b.identity.key
    # same seed gives the same weights
    assert torch.equal(a.model.text_projection, tiny_random_backbone("vit", seed=0).model.text_projection)
    assert not torch.equal(a.model.text_projection, b.model.text_projection)


def test_bpe_length_and_word_vectors(vit_backbone):
    assert vit_backbone.bpe_length("a photo of a") == 4
    ids = vit_backbone.tokenizer.encode("goldfish")
    vec = vit_backbone.word_vectors(["goldfish"])[0]
    torch.testing.assert_close(vec, vit_backbone.token_embedding(torch.tensor(ids)).mean(0))


# ---------------------------------------------------------------------------------------- loading
def test_tiny_random_names_load(vit_backbone):
    bb = load_backbone("tiny-random-vit")
    assert torch.equal(bb.model.text_projection, vit_backbone.model.text_projection)
    assert isinstance(load_backbone("tiny-random-resnet").model.visual, open_clip.modified_resnet.ModifiedResNet)


def test_unknown_backbone_lists_available_names():
    names = available_backbones()
    assert "tiny-random-vit" in names and "tiny-random-resnet" in names
    with pytest.raises(BackboneError, match="unknown backbone 'no-such-model'") as info:
        load_backbone("no-such-model")
    for name in names:
        assert name in str(info.value)
    assert "ViT-B-32" in str(info.value) or "open_clip architectures" in str(info.value)
    with pytest.raises(BackboneError, match="unknown bundled backbone"):
        load_backbone("vlprompt/no-such-bundle")


def test_missing_checkpoint_file_is_named(tmp_path):
    missing = tmp_path / "weights" / "ViT-B-32.pt"
    with pytest.raises(BackboneError, match=f"{missing}.*does not exist"):
        load_backbone(str(missing))
    with pytest.raises(BackboneError, match=f"checkpoint file {tmp_path / 'nope.safetensors'} does not exist"):
        load_backbone("ViT-B-32", pretrained=str(tmp_path / "nope.safetensors"))


def test_garbage_checkpoint_is_named(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(BackboneError, match=str(bad)):
        load_backbone(str(bad))
    not_clip = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, not_clip)
    with pytest.raises(BackboneError, match="not a CLIP checkpoint in OpenAI's format"):
        load_backbone(str(not_clip))


def test_pretrained_tag_offline_says_how_to_supply_weights():
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest: no network access is even tried
    with pytest.raises(BackboneError, match="not available offline") as info:
        load_backbone("RN50", pretrained="openai")
    assert "pretrained" in str(info.value) and ".pt" in str(info.value)
