"""Methods: zero-shot ensembling, CoOp layouts and init, CoCoOp batching, training, registry errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_state_equal, state_snapshot

from vlprompt.backbones import Backbone
from vlprompt.data import image_folder
from vlprompt.engine import FeatureCache, TrainConfig, fit
from vlprompt.engine.memory import held_bytes
from vlprompt.methods import (
    METHODS,
    CoCoOp,
    CoCoOpConfig,
    CoOp,
    CoOpConfig,
    LinearProbe,
    LinearProbeConfig,
    ZeroShot,
    ZeroShotConfig,
    build_method,
    method_class,
)
from vlprompt.methods.base import Batch
from vlprompt.methods.zeroshot import COOP_ENSEMBLE_TEMPLATES, ENSEMBLES

NAMES = ["golden_retriever", "tabby cat", "airliner", "sea anemone", "x"]


def full_context_text_features(backbone: Backbone, embeds: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """Reference text tower: all 77 positions, full causal mask, feature read at ``eot``."""
    m = backbone.model
    x = m.ln_final(m.transformer(embeds + m.positional_embedding, attn_mask=m.attn_mask))
    return x[torch.arange(x.shape[0]), eot] @ m.text_projection


def manual_prompt_embeddings(
    backbone: Backbone, ctx: torch.Tensor, names: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[SOT] ctx [name] . [EOT] pad..`` for each name, built by hand from 77-token ids."""
    n = ctx.shape[-2]
    ids = backbone.tokenize([" ".join(["X"] * n) + f" {name.replace('_', ' ')}." for name in names])
    embeds = backbone.token_embedding(ids)
    ctx = ctx.expand(len(names), -1, -1) if ctx.dim() == 2 else ctx
    embeds = torch.cat([embeds[:, :1], ctx, embeds[:, 1 + n :]], dim=1)
    return embeds, backbone.eot_index(ids)


# ------------------------------------------------------------------------------------- zero-shot
def test_ensemble_formula_by_hand(vit_backbone):
    bb = vit_backbone
    templates = ["a photo of a {}.", "itap of a {}.", "art of the {}."]
    method = ZeroShot(bb, NAMES, ZeroShotConfig(templates=templates))
    expected = []
    with torch.no_grad():
        for name in NAMES:
            clean = name.replace("_", " ")
            feats = [bb.model.encode_text(bb.tokenize([t.format(clean)]))[0] for t in templates]
            mean = sum(f / f.norm() for f in feats) / len(feats)
            expected.append(mean / mean.norm())
    expected = torch.stack(expected)
    torch.testing.assert_close(method.text_features(bb), expected, atol=1e-5, rtol=0)
    # the per-template normalization matters: a plain average of raw features differs
    with torch.no_grad():
        raw = torch.stack([bb.encode_text([t.format(n.replace("_", " ")) for n in NAMES]) for t in templates])
    assert (F.normalize(raw.mean(0), dim=-1) - expected).abs().max() > 1e-4
    # logits = 100 * cos
    img = torch.randn(3, bb.embed_dim)
    torch.testing.assert_close(
        method(bb, Batch(features=img)), 100 * F.normalize(img, dim=-1) @ expected.t(), atol=1e-4, rtol=0
    )


def test_ensemble_template_sets(vit_backbone):
    coop7 = ZeroShotConfig(templates=["a photo of a {}, a type of pet."], ensemble="coop7").all_templates()
    assert len(coop7) == 8 and coop7[-1] == "a photo of a {}, a type of pet."
    assert set(COOP_ENSEMBLE_TEMPLATES) <= set(coop7)
    imagenet = ENSEMBLES["imagenet80"]
    assert len(imagenet) == 80 and len(set(imagenet)) == 80 and all("{}" in t for t in imagenet)
    # the default dataset template is one of the 80: no duplicate
    assert len(ZeroShotConfig(ensemble="imagenet80").all_templates()) == 80
    with pytest.raises(ValueError, match="ensemble must be one of"):
        ZeroShotConfig(ensemble="imagenet81").all_templates()
    with pytest.raises(ValueError, match="has no"):
        ZeroShotConfig(templates=["a photo"]).all_templates()


def test_coop7_ensemble_features(vit_backbone):
    bb = vit_backbone
    method = ZeroShot(bb, NAMES[:2], ZeroShotConfig(templates=["a photo of a {}, a type of pet."], ensemble="coop7"))
    templates = list(COOP_ENSEMBLE_TEMPLATES) + ["a photo of a {}, a type of pet."]
    per = torch.stack(
        [F.normalize(bb.encode_text([t.format(n.replace("_", " ")) for n in NAMES[:2]]), dim=-1) for t in templates]
    )
    torch.testing.assert_close(method.text_features(bb), F.normalize(per.mean(0), dim=-1), atol=1e-6, rtol=0)
    single = ZeroShot(bb, NAMES[:2]).text_features(bb)
    assert (single - method.text_features(bb)).abs().max() > 1e-3


def test_zeroshot_has_nothing_to_train(vit_backbone, image_root):
    data = image_folder(image_root, vit_backbone.image_transform())
    method = ZeroShot(vit_backbone, data.classnames)
    assert list(method.parameters()) == [] and method.state_dict() == {}
    with pytest.raises(ValueError, match="nothing to train"):
        fit(method, vit_backbone, data, TrainConfig(epochs=1, batch_size=8), progress=False)


# ------------------------------------------------------------------------------------------ CoOp
@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_coop_init_phrase_equals_zero_shot(kind, vit_backbone, resnet_backbone):
    bb = vit_backbone if kind == "vit" else resnet_backbone
    coop = CoOp(bb, NAMES, CoOpConfig(ctx_init="a photo of a"))
    assert coop.ctx.shape == (4, bb.text_width) and coop.n_ctx == 4
    zero = ZeroShot(bb, NAMES, ZeroShotConfig(templates=["a photo of a {}."]))
    with torch.no_grad():
        feats = F.normalize(coop.text_features(bb), dim=-1)
    torch.testing.assert_close(feats, zero.text_features(bb), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("position", "template"),
    [("end", "a photo of a {}."), ("middle", "a photo {} of a."), ("front", "{} a photo of a.")],
)
def test_class_token_positions(vit_backbone, position, template):
    bb = vit_backbone
    coop = CoOp(bb, NAMES, CoOpConfig(ctx_init="a photo of a", class_token_position=position))
    texts = [template.format(n.replace("_", " ")) for n in NAMES]
    ids = bb.tokenize(texts)
    with torch.no_grad():
        embeds = coop.layout.assemble(coop.ctx)
        manual = bb.token_embedding(ids[:, : embeds.shape[1]])
        assert torch.equal(coop.layout.eot_index, bb.eot_index(ids))
        torch.testing.assert_close(embeds, manual, atol=0, rtol=0)
        torch.testing.assert_close(coop.text_features(bb), bb.model.encode_text(ids), atol=1e-5, rtol=0)


def test_middle_position_with_random_context(vit_backbone):
    """[SOT] ctx[:n/2] [name] ctx[n/2:] . [EOT], with the learned vectors where they belong."""
    bb = vit_backbone
    coop = CoOp(bb, ["sea anemone", "x"], CoOpConfig(n_ctx=5, class_token_position="middle"))
    ctx = coop.ctx.detach()
    embeds = coop.layout.assemble(coop.ctx).detach()
    for c, name in enumerate(["sea anemone", "x"]):
        name_ids = bb.tokenizer.encode(name)
        words = bb.token_embedding(torch.tensor(name_ids))
        k = len(name_ids)
        expected = torch.cat([bb.token_embedding(torch.tensor([bb.tokenizer.sot_token_id])), ctx[:2], words, ctx[2:]])
        torch.testing.assert_close(embeds[c, : 1 + 5 + k], expected, atol=0, rtol=0)
        period_eot = bb.token_embedding(torch.tensor(bb.tokenizer.encode(".") + [bb.eot_token_id]))
        torch.testing.assert_close(embeds[c, 6 + k : 8 + k], period_eot, atol=0, rtol=0)
        assert int(coop.layout.eot_index[c]) == 7 + k


def test_class_specific_with_init_phrase(vit_backbone):
    bb = vit_backbone
    coop = CoOp(bb, NAMES, CoOpConfig(ctx_init="a photo of a", class_specific=True))
    assert coop.ctx.shape == (len(NAMES), 4, bb.text_width)
    zero = ZeroShot(bb, NAMES).text_features(bb)
    with torch.no_grad():
        before = F.normalize(coop.text_features(bb), dim=-1)
        torch.testing.assert_close(before, zero, atol=1e-5, rtol=0)
        coop.ctx[1] += 0.5 * torch.randn(coop.ctx[1].shape, generator=torch.Generator().manual_seed(0))
        after = F.normalize(coop.text_features(bb), dim=-1)
    changed = (after - before).abs().amax(dim=1)
    assert changed[1] > 1e-3 and changed[[0, 2, 3, 4]].max() < 1e-6
    # random class-specific init: a different context per class
    random_cs = CoOp(bb, NAMES, CoOpConfig(n_ctx=3, class_specific=True))
    assert random_cs.ctx.shape == (len(NAMES), 3, bb.text_width)
    assert not torch.equal(random_cs.ctx[0], random_cs.ctx[1])


def test_coop_matches_manual_full_context_reference(vit_backbone):
    bb = vit_backbone
    torch.manual_seed(0)
    coop = CoOp(bb, NAMES, CoOpConfig(n_ctx=6))
    with torch.no_grad():
        coop.ctx.normal_(0, 0.5)
        embeds, eot = manual_prompt_embeddings(bb, coop.ctx, NAMES)
        torch.testing.assert_close(
            coop.text_features(bb), full_context_text_features(bb, embeds, eot), atol=1e-5, rtol=0
        )


def test_set_classes_keeps_context(vit_backbone):
    bb = vit_backbone
    coop = CoOp(bb, NAMES[:3], CoOpConfig(n_ctx=4))
    with torch.no_grad():
        coop.ctx.normal_(0, 0.3)
    ctx = coop.ctx.detach().clone()
    coop.set_classes(bb, NAMES[3:])
    assert torch.equal(coop.ctx, ctx) and coop.labels.names == tuple(NAMES[3:]) and coop.num_classes == 2
    fresh = CoOp(bb, NAMES[3:], CoOpConfig(n_ctx=4))
    with torch.no_grad():
        fresh.ctx.copy_(ctx)
        torch.testing.assert_close(coop.text_features(bb), fresh.text_features(bb), atol=1e-6, rtol=0)

    specific = CoOp(bb, NAMES[:3], CoOpConfig(n_ctx=4, class_specific=True))
    assert coop.transfers_to_new_classes and not specific.transfers_to_new_classes
    with pytest.raises(ValueError, match="one context for each of its 3 classes, in order"):
        specific.set_classes(bb, NAMES[3:])
    with pytest.raises(ValueError, match="in order"):  # same count, other classes: refused, not misapplied
        specific.set_classes(bb, NAMES[1:4])
    specific.set_classes(bb, NAMES[:3])


def test_nearest_words(vit_backbone):
    coop = CoOp(vit_backbone, NAMES, CoOpConfig(ctx_init="a photo of a"))
    words = coop.nearest_words(vit_backbone, k=2)
    assert len(words) == 4 and all(len(w) == 2 for w in words)
    assert [w[0][0] for w in words] == ["a", "photo", "of", "a"]
    assert all(w[0][1] == pytest.approx(0.0, abs=1e-2) and w[1][1] > 0.5 for w in words)


def test_init_phrase_counts_bpe_tokens(vit_backbone):
    phrase = "a photo of a xylophone"  # 5 words, but "xylophone" is 3 BPE tokens: 7 in all
    assert vit_backbone.bpe_length(phrase) == 7
    assert CoOp(vit_backbone, NAMES, CoOpConfig(ctx_init=phrase)).ctx.shape[0] == 7


# ---------------------------------------------------------------------------------------- CoCoOp
def cocoop_loop_loss(method: CoCoOp, bb: Backbone, image_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The reference procedure: one image at a time, all classes, full 77-token context."""
    losses = []
    for feat, label in zip(image_features, labels):
        shift = method.meta_net(F.normalize(feat, dim=-1))
        ctx = method.ctx + shift
        embeds, eot = manual_prompt_embeddings(bb, ctx, method.labels.names)
        text = F.normalize(full_context_text_features(bb, embeds, eot), dim=-1)
        logits = bb.logit_scale * F.normalize(feat, dim=-1) @ text.t()
        losses.append(F.cross_entropy(logits[None], label[None]))
    return torch.stack(losses).mean()


def _grads(method: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    method.zero_grad(set_to_none=True)
    loss.backward()
    return {k: p.grad.clone() for k, p in method.named_parameters()}


def test_cocoop_batched_equals_per_image_loop(vit_backbone):
    bb = vit_backbone
    torch.manual_seed(0)
    method = CoCoOp(bb, NAMES, CoCoOpConfig(meta_reduction=4))
    with torch.no_grad():  # make the meta-net's contribution large
        for p in method.meta_net.parameters():
            p.normal_(0, 0.5)
    feats = torch.randn(6, bb.embed_dim)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    batched = F.cross_entropy(method(bb, Batch(features=feats)), labels)
    grads_batched = _grads(method, batched)
    loop = cocoop_loop_loss(method, bb, feats, labels)
    grads_loop = _grads(method, loop)
    torch.testing.assert_close(batched, loop, atol=1e-5, rtol=0)
    assert set(grads_batched) == {"ctx", "meta_net.0.weight", "meta_net.0.bias", "meta_net.2.weight", "meta_net.2.bias"}
    for name, g in grads_loop.items():
        assert g.abs().max() > 1e-6, name
        torch.testing.assert_close(grads_batched[name], g, atol=1e-5, rtol=0, msg=name)
    # per-image prompts really differ between images
    text = method.text_features(bb, feats)
    assert text.shape == (6, len(NAMES), bb.embed_dim) and (text[0] - text[1]).abs().max() > 1e-3


def test_cocoop_chunked_equals_unchunked(vit_backbone):
    bb = vit_backbone
    torch.manual_seed(1)
    whole = CoCoOp(bb, NAMES, CoCoOpConfig())
    chunked = CoCoOp(bb, NAMES, CoCoOpConfig(chunk_size=3))
    chunked.load_state_dict(whole.state_dict())
    feats = torch.randn(4, bb.embed_dim)
    labels = torch.tensor([1, 2, 3, 4])
    loss_whole = F.cross_entropy(whole(bb, Batch(features=feats)), labels)
    loss_chunked = F.cross_entropy(chunked(bb, Batch(features=feats)), labels)
    torch.testing.assert_close(loss_chunked, loss_whole, atol=1e-5, rtol=0)
    g_whole, g_chunked = _grads(whole, loss_whole), _grads(chunked, loss_chunked)
    for name in g_whole:
        assert g_whole[name].abs().max() > 1e-6, name
        torch.testing.assert_close(g_chunked[name], g_whole[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("name", ["cocoop", "maple", "mma", "tcp", "mmrl"])
def test_activation_checkpointing_keeps_the_numbers_and_holds_less(vit_backbone, name):
    """``activation_checkpointing`` recomputes both towers' blocks in backward, with what each method puts into them
    (CoCoOp's per-image prompts in the text tower only, MaPLe's deep prompts, MMA's block residuals, TCP's and
    MMRL's inserted tokens): the loss and every gradient are bit-equal, and the forward pass holds less."""
    bb = vit_backbone
    cls = method_class(name)
    torch.manual_seed(2)
    method = build_method(name, bb, NAMES, dict(cls.tiny_recipe(bb).options)).train()
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(6, 3, bb.image_size, bb.image_size, generator=g)
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    batch = (
        Batch(pixels=pixels, targets=targets)
        if method.changes_image_tower
        else Batch(features=bb.encode_image(pixels), targets=targets)
    )
    losses, grads, held = [], [], []
    for checkpointing in (False, True):
        with bb.checkpointing(checkpointing):
            held.append(held_bytes(lambda: method.loss(bb, batch, method.logits(bb, batch))))
            loss = method.loss(bb, batch, method.logits(bb, batch))
            grads.append(_grads(method, loss))
        losses.append(loss.detach())
    assert torch.equal(losses[0], losses[1])
    assert grads[0] and all(torch.equal(grads[1][k], g) for k, g in grads[0].items())
    assert held[1] < 0.7 * held[0], held
    assert not bb.activation_checkpointing


def test_cocoop_needs_image_features(vit_backbone):
    method = CoCoOp(vit_backbone, NAMES)
    assert method.conditions_on_image and not method.changes_image_tower
    with pytest.raises(ValueError, match="pass image_features"):
        method.text_features(vit_backbone)
    method.set_classes(vit_backbone, NAMES[:2])
    assert method.text_features(vit_backbone, torch.randn(3, vit_backbone.embed_dim)).shape == (3, 2, 32)


# ---------------------------------------------------------------------------------- linear probe
def test_linear_probe_zeroshot_init_equals_zero_shot_logits(vit_backbone):
    bb = vit_backbone
    probe = LinearProbe(bb, NAMES, LinearProbeConfig(init="zeroshot"))
    zero = ZeroShot(bb, NAMES)
    img = torch.randn(4, bb.embed_dim)
    with torch.no_grad():
        torch.testing.assert_close(probe(bb, Batch(features=img)), zero(bb, Batch(features=img)), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="init must be"):
        LinearProbe(bb, NAMES, LinearProbeConfig(init="xavier"))


# ------------------------------------------------------------------------ training (shared table)
TRAINABLE = [
    ("coop", {"n_ctx": 4}, "vit"),
    ("coop", {"n_ctx": 4}, "resnet"),
    ("coop", {"n_ctx": 4, "class_specific": True}, "vit"),
    ("coop", {"ctx_init": "a photo of a", "class_specific": True}, "resnet"),
    ("coop", {"ctx_init": "a photo of a", "class_token_position": "middle"}, "vit"),
    ("coop", {"n_ctx": 3, "class_token_position": "front"}, "vit"),
    ("cocoop", {}, "vit"),
    ("cocoop", {"meta_reduction": 4, "chunk_size": 5}, "resnet"),
    ("linear-probe", {}, "vit"),
    ("linear-probe", {"init": "zeroshot"}, "resnet"),
]


@pytest.fixture(scope="module")
def feature_cache():
    return FeatureCache()


@pytest.mark.parametrize(
    ("name", "options", "kind"), TRAINABLE, ids=[f"{n}-{k}-{i}" for i, (n, _, k) in enumerate(TRAINABLE)]
)
def test_method_trains_and_only_its_parameters_change(
    name, options, kind, image_root, vit_backbone, resnet_backbone, feature_cache
):
    bb = vit_backbone if kind == "vit" else resnet_backbone
    data = image_folder(image_root, bb.image_transform())
    torch.manual_seed(0)
    method = build_method(name, bb, data.classnames, options)
    if name == "cocoop":  # random towers give near-identical image features: keep the meta-net's ReLUs alive
        torch.nn.init.constant_(method.meta_net[0].bias, 0.5)
    backbone_before = state_snapshot(bb)
    params_before = {k: p.detach().clone() for k, p in method.named_parameters()}
    buffers_before = {k: b.detach().clone() for k, b in method.named_buffers()}
    config = TrainConfig(
        epochs=6, batch_size=8, optimizer="adamw", lr=0.01, weight_decay=0.0, schedule="constant", warmup_epochs=0
    )
    result = fit(method, bb, data, config, cache=feature_cache, progress=False)
    losses = [r["loss"] for r in result.history]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.05, losses
    assert_state_equal(backbone_before, bb)
    assert not any(p.requires_grad for p in bb.parameters())
    for k, p in method.named_parameters():
        assert not torch.equal(p, params_before[k]), f"{k} did not train"
    for k, b in method.named_buffers():
        assert torch.equal(b, buffers_before[k]), f"buffer {k} changed"
    # saved tensors are exactly the trainable parameters (constant buffers are not persistent)
    assert set(method.state_dict()) == set(params_before)


# --------------------------------------------------------------------------------------- registry
def test_registry_and_unknown_names(vit_backbone):
    assert {"cocoop", "coop", "linear-probe", "zeroshot"} <= set(METHODS)
    assert all(name == name.lower() and cls.name == name for name, cls in METHODS.items())
    assert isinstance(build_method("CoOp", vit_backbone, NAMES, {"n_ctx": 2}), CoOp)
    with pytest.raises(ValueError, match="unknown method 'coopp'") as info:
        build_method("coopp", vit_backbone, NAMES)
    for name in METHODS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['nctx'\] for method coop") as info:
        build_method("coop", vit_backbone, NAMES, {"nctx": 4})
    for field in ("n_ctx", "ctx_init", "class_specific", "class_token_position"):
        assert field in str(info.value)
    with pytest.raises(ValueError, match="class_token_position must be one of"):
        build_method("coop", vit_backbone, NAMES, {"class_token_position": "start"})
    config = CoOpConfig(n_ctx=2)
    assert build_method("coop", vit_backbone, NAMES, config).config is config


def test_every_method_with_context_vectors_can_be_interpreted(vit_backbone):
    from vlprompt.labels import PairSpace
    from vlprompt.methods import METHODS

    pairs = PairSpace(("red", "blue"), ("cat", "dog"), (("red", "cat"), ("blue", "dog")))
    tiny = {"depth_text": 2, "depth_vision": 2}
    options = {"maple": {"depth": 2}, "ivlp": tiny, "promptsrc": tiny, "tcp": {"layer": 1}}
    options["coprompt"] = {"depth": 2, "sentences": {n: ["a thing."] for n in NAMES}}
    for name, cls in METHODS.items():
        if not cls.has_context:
            continue
        labels = pairs if cls.label_kind is PairSpace else NAMES
        method = build_method(name, vit_backbone, labels, options.get(name))
        words = method.nearest_words(vit_backbone, k=2)
        vectors = method.context if name == "czsl-coop" else method.ctx  # one word list per learned vector
        assert len(words) == vectors.reshape(-1, vectors.shape[-1]).shape[0], name
        assert all(len(w) == 2 and isinstance(w[0][0], str) for w in words), name
    expected = {"coop", "cocoop", "czsl-coop", "maple", "ivlp", "kgcoop", "promptsrc"}
    assert {n for n, c in METHODS.items() if c.has_context} >= expected
