"""TCP, DePT and MMA against hand computations of their authors' equations, and the bad inputs they refuse.

The references below run the tiny open_clip model's blocks directly (full context, no truncation, the way the
releases do), independently of vlprompt's backbone adapter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlprompt.labels import ClassNames
from vlprompt.methods import Batch, build_method
from vlprompt.methods.kgcoop import knowledge_distance

CLASSES = ("blue_square", "gold", "green_square", "red_square")
NAMES = [c.replace("_", " ") for c in CLASSES]


def reference_text(backbone, embeds: torch.Tensor, ids: torch.Tensor, inject=None, residual=None) -> torch.Tensor:
    """CLIP's text tower over the full context: ``inject(k, x)`` may rewrite the input of block k, ``residual(k, x)``
    adds to block k's output (computed from its input)."""
    model = backbone.model
    x = embeds + model.positional_embedding
    for k, block in enumerate(model.transformer.resblocks):
        if inject is not None:
            x = inject(k, x)
        out = block(x, attn_mask=model.attn_mask)
        x = out + residual(k, block, x) if residual is not None else out
    x = model.ln_final(x)
    eot = ids.argmax(dim=-1)  # the releases' argmax (OpenAI's end-of-text id is the largest)
    return x[torch.arange(x.shape[0]), eot] @ model.text_projection


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


# ---------------------------------------------------------------- TCP
def tcp_reference(method, backbone, prompt: str, template: str) -> torch.Tensor:
    """trainers/tcp.py: ctx over tokens 1..4 of the prompt, meta_net(h_c) replacing them at the input of block 1."""
    ids = backbone.tokenize([prompt.format(n) for n in NAMES])
    embeds = backbone.token_embedding(ids)
    embeds[:, 1:5] = method.ctx
    hand = backbone.encode_text([template.format(n) for n in NAMES])
    hand = hand / hand.norm(dim=-1, keepdim=True)
    net = method.meta_net
    tokens = quick_gelu(hand @ net.linear1.weight.t() + net.linear1.bias) @ net.linear2.weight.t() + net.linear2.bias
    tokens = tokens.reshape(len(NAMES), 4, -1)

    def inject(k, x):
        return torch.cat([x[:, :1], 1.0 * tokens + 0.0 * x[:, 1:5], x[:, 5:]], dim=1) if k == 1 else x

    return reference_text(backbone, embeds, ids, inject=inject)


def tcp(backbone, **options):
    torch.manual_seed(0)
    method = build_method("tcp", backbone, CLASSES, {"layer": 1, **options})
    with torch.no_grad():
        for p in method.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return method


def test_tcp_text_features_are_the_releases(vit_backbone):
    prompt, template = "X X X X {}, a type of shape.", "a photo of a {}, a kind of shape."
    method = tcp(vit_backbone, prompt=prompt, template=template)
    with torch.no_grad():
        expected = tcp_reference(method, vit_backbone, prompt, template)
        torch.testing.assert_close(method.text_features(vit_backbone), expected, atol=1e-5, rtol=0)
        # the class-aware tokens matter: other priors give other features
        method.hand_features.mul_(-1)
        assert (method.text_features(vit_backbone) - expected).abs().max() > 1e-3


def test_tcp_keeps_fixed_words_after_the_context(vit_backbone):
    """UCF101's prompt "a photo of a person doing {}.": ctx replaces "a photo of a", "person doing" stays."""
    prompt = "a photo of a person doing {}."
    method = tcp(vit_backbone, prompt=prompt)
    with torch.no_grad():
        expected = tcp_reference(method, vit_backbone, prompt, "a photo of a {}.")
        torch.testing.assert_close(method.text_features(vit_backbone), expected, atol=1e-5, rtol=0)


def test_tcp_loss_is_cross_entropy_plus_eight_times_the_distance(vit_backbone):
    method = tcp(vit_backbone)
    features = torch.randn(5, vit_backbone.embed_dim)
    batch = Batch(features=features, targets=torch.tensor([0, 1, 2, 3, 0]))
    method.train()
    logits = method(vit_backbone, batch)
    loss = method.loss(vit_backbone, batch, logits)
    with torch.no_grad():
        text = tcp_reference(method, vit_backbone, "X X X X {}.", "a photo of a {}.")
        text_n, image_n = F.normalize(text, dim=-1), F.normalize(features, dim=-1)
        expected_logits = vit_backbone.logit_scale * image_n @ text_n.t()
        hand = F.normalize(vit_backbone.encode_text([f"a photo of a {n}." for n in NAMES]), dim=-1)
        distance = 1 - (text_n * hand).sum(-1).mean()
        expected = F.cross_entropy(expected_logits, batch.targets) + 8.0 * distance
    torch.testing.assert_close(logits.detach(), expected_logits, atol=1e-4, rtol=0)
    assert float(distance) > 1e-3
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=0)
    assert float(knowledge_distance(text, hand)) == pytest.approx(float(distance), abs=1e-6)


def test_tcp_new_classes_get_tokens_from_their_own_priors(vit_backbone):
    method = tcp(vit_backbone)
    method.set_classes(vit_backbone, ClassNames(("purple_square", "orange")))
    hand = F.normalize(vit_backbone.encode_text(["a photo of a purple square.", "a photo of a orange."]), dim=-1)
    torch.testing.assert_close(method.hand_features, hand, atol=1e-6, rtol=0)
    assert method.class_tokens().shape == (2, 4, vit_backbone.text_width)


def test_tcp_takes_the_authors_prompt_and_template_per_dataset():
    from vlprompt.methods import TCP

    assert TCP.with_dataset_template({}, "oxford_pets", "a photo of a {}, a type of pet.") == {
        "template": "a photo of a {}, a type of pet.",
        "prompt": "X X X X {}, a type of pet.",
    }
    assert TCP.with_dataset_template({}, "fgvc_aircraft", "x {}") == {
        "template": "a photo of an aircraft {}.",
        "prompt": "X X X X {}, a type of aircraft.",
    }
    assert TCP.with_dataset_template({}, "imagenet", "a photo of a {}.") == {"template": "a photo of a {}."}
    assert TCP.with_dataset_template({"prompt": "X X X X {}!"}, "dtd", "{} texture.") == {
        "prompt": "X X X X {}!",
        "template": "a photo of a {}, a type of texture.",
    }


@pytest.mark.parametrize(
    "options,message",
    [
        ({"layer": 2}, "layer 2 must be below the text tower's 2 blocks"),
        ({"prompt": "X X X X"}, "needs one '{}'"),
        ({"prompt": "X X {}."}, "at least 4 tokens"),
    ],
)
def test_tcp_refuses_bad_options(vit_backbone, options, message):
    with pytest.raises(ValueError, match=message):
        build_method("tcp", vit_backbone, CLASSES, {"layer": 1, **options})


# ---------------------------------------------------------------- DePT
def dept(backbone, method: str = "coop", options: dict | None = None, **dept_options):
    torch.manual_seed(0)
    opts = {"method": method, "options": options if options is not None else {"n_ctx": 4}, **dept_options}
    model = build_method("dept", backbone, CLASSES, opts)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # γ, β and the head off their initialisation
    return model


def head_by_hand(model, features: torch.Tensor, side: str) -> torch.Tensor:
    """elp_maple.py FiLM (x · scale + bias), then Linear(D, n_base)."""
    film = model.cwt_image if side == "image" else model.cwt_text
    return (features * film.scale + film.bias) @ model.head.weight.t() + model.head.bias


@pytest.mark.parametrize("method,options,own_weight", [("coop", {"n_ctx": 4}, 0.0), ("kgcoop", {"weight": 2.0}, 2.0)])
def test_dept_loss_is_the_releases(vit_backbone, method, options, own_weight):
    """(1 − λ) CE(s, y) + λ CE(head(cat(cwT_t(t)[y], cwT_v(v))), [y; y]) (+ KgCoOp's W · distance), λ = 0.7."""
    model = dept(vit_backbone, method, options)
    features = torch.randn(5, vit_backbone.embed_dim)
    targets = torch.tensor([0, 1, 2, 3, 0])
    batch = Batch(features=features, targets=targets)
    model.train()
    logits = model(vit_backbone, batch)
    loss = model.loss(vit_backbone, batch, logits)
    with torch.no_grad():
        text = model.inner.text_features(vit_backbone)
        s = vit_backbone.logit_scale * F.normalize(features, dim=-1) @ F.normalize(text, dim=-1).t()
        head = torch.cat([head_by_hand(model, text[targets], "text"), head_by_hand(model, features, "image")])
        expected = 0.3 * F.cross_entropy(s, targets) + 0.7 * F.cross_entropy(head, torch.cat([targets, targets]))
        if own_weight:
            expected = expected + own_weight * knowledge_distance(text, model.inner.hand_features)
    torch.testing.assert_close(logits.detach(), s, atol=1e-4, rtol=0)  # training returns the wrapped logits
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=0)


def test_dept_fuses_the_head_on_base_classes_only(vit_backbone):
    model = dept(vit_backbone).eval()
    features = torch.randn(3, vit_backbone.embed_dim)
    batch = Batch(features=features)
    with torch.no_grad():
        text = model.inner.text_features(vit_backbone)
        s = vit_backbone.logit_scale * F.normalize(features, dim=-1) @ F.normalize(text, dim=-1).t()
        head = head_by_hand(model, features, "image")
        torch.testing.assert_close(model(vit_backbone, batch), 0.3 * s + 0.7 * head, atol=1e-4, rtol=0)
        # a subset of the base classes, reordered: the head's rows of those classes (ImageNet-A/R in the release)
        model.set_classes(vit_backbone, ClassNames(("red_square", "gold")))
        plain = model.inner.logits(vit_backbone, batch)
        torch.testing.assert_close(model(vit_backbone, batch), 0.3 * plain + 0.7 * head[:, [3, 1]], atol=1e-4, rtol=0)
        # new classes, or base and new together: the wrapped method's logits alone
        for labels in (("purple_square", "orange"), ("gold", "orange")):
            model.set_classes(vit_backbone, ClassNames(labels))
            torch.testing.assert_close(model(vit_backbone, batch), model.inner.logits(vit_backbone, batch))


def test_dept_trains_its_head_at_the_staged_lr(vit_backbone):
    """STAGED_LR: head and cwT at lr · 6.5, the prompt at lr; both at 1e-5 in Dassl's warmup epoch."""
    from vlprompt.engine import TrainConfig
    from vlprompt.engine.trainer import StepPlan, TrainingState

    model = dept(vit_backbone)
    config = TrainConfig(epochs=10, lr=0.0035, schedule="dassl-cosine", warmup_epochs=1, warmup_lr=1e-5)
    state = TrainingState.build(model, config, StepPlan.build(96, config), torch.device("cpu"))
    prompt, head = state.optimizer.param_groups
    assert {id(p) for p in prompt["params"]} == {id(model.inner.ctx)}
    assert len(head["params"]) == 6  # γ, β twice and the head's weight and bias
    assert [g["lr"] for g in state.optimizer.param_groups] == pytest.approx([1e-5, 1e-5])  # warmup epoch
    state.optimizer.step()  # no gradients: nothing moves
    state.scheduler.step()
    assert [g["lr"] for g in state.optimizer.param_groups] == pytest.approx([0.0035, 0.0035 * 6.5])


def test_dept_refuses_a_method_without_class_features_before_any_work():
    from vlprompt.methods import DePT

    with pytest.raises(ValueError, match="linear-probe scores with a classifier head, not class text features"):
        DePT(None, CLASSES, DePT.Config(method="linear-probe"))  # type: ignore[arg-type]  # no backbone is touched
    with pytest.raises(ValueError, match="is a wrapper itself"):
        DePT(None, CLASSES, DePT.Config(method="tpt"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "method,options",
    [
        ("coop", {"n_ctx": 4}),
        ("kgcoop", {}),
        ("cocoop", {}),
        ("maple", {"depth": 2}),
        ("promptsrc", {"depth_text": 2, "depth_vision": 2}),
    ],
)
def test_dept_over_each_method_keeps_the_contract(vit_backbone, image_root, method, options, tmp_path):
    """Gradients reach every tensor, only its own move; save/load; set_classes and back (the wrapper combinations)."""
    from test_contract import batch_for, check_one_step

    from vlprompt.data import image_folder
    from vlprompt.engine import FeatureCache
    from vlprompt.prompts import load_prompt, save_pretrained

    data = image_folder(image_root, vit_backbone.image_transform())
    cache = FeatureCache()
    model = dept(vit_backbone, method, options)
    check_one_step(model, vit_backbone, data, cache)
    model.eval()
    batch = batch_for(model, vit_backbone, data, cache)
    with torch.no_grad():
        logits = model(vit_backbone, batch)
        model.set_classes(vit_backbone, ClassNames(("purple_square", "orange")))
        save_pretrained(model, vit_backbone, tmp_path / "prompt")  # saved while scoring new classes
        loaded = load_prompt(tmp_path / "prompt", vit_backbone)
        assert loaded.head.weight.shape[0] == len(CLASSES) and loaded.config.base_classes == list(CLASSES)
        loaded.set_classes(vit_backbone, ClassNames(CLASSES))
        torch.testing.assert_close(loaded(vit_backbone, batch), logits, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- MMA and the block residuals hook
@pytest.fixture()
def pixels(vit_backbone):
    torch.manual_seed(1)
    size = vit_backbone.image_size
    return torch.randn(3, 3, size, size)


def with_block_hooks(blocks, residual):
    """Forward hooks adding ``residual(k, block, input)`` to block k's output (None: nothing), for open_clip's own
    forward passes; returns the handles."""

    def hook(k):
        def add(block, args, kwargs, out):
            r = residual(k, block, args[0] if args else kwargs["q_x"])
            return out if r is None else out + r

        return add

    return [b.register_forward_hook(hook(k), with_kwargs=True) for k, b in enumerate(blocks)]


def mma_residual(method, adapters):
    """clip/model.py:188-215 without the gradient scaling (identity forward): up(shared(down(ln_1 x))) · α."""
    first = method.config.start - 1

    def residual(k, block, x):
        if k < first or k >= first + len(adapters):
            return None
        adapter, shared = adapters[k - first], method.shared[k - first]
        return adapter.up(shared(adapter.down(block.ln_1(x)))) * method.config.scale

    return residual


def test_block_residuals_of_zero_leave_the_features_unchanged(vit_backbone, pixels):
    zero = {0: torch.zeros_like, 1: torch.zeros_like}
    with torch.no_grad():
        plain = vit_backbone.encode_image(pixels)
        torch.testing.assert_close(vit_backbone.encode_image(pixels, block_residuals=zero), plain, atol=1e-5, rtol=0)
        ids = vit_backbone.tokenize([f"a photo of a {n}." for n in NAMES])
        embeds, eot = vit_backbone.token_embedding(ids), vit_backbone.eot_index(ids)
        plain = vit_backbone.encode_text_embeddings(embeds, eot)
        torch.testing.assert_close(vit_backbone.encode_text_embeddings(embeds, eot, block_residuals=zero), plain)


def mma(backbone, **options):
    torch.manual_seed(0)
    method = build_method("mma", backbone, CLASSES, {"start": 2, "end": 2, "dim": 8, "scale": 0.5, **options})
    with torch.no_grad():  # kaiming weights with zero biases: move the biases too
        for p in method.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return method


def test_mma_features_and_logits_are_the_releases(vit_backbone, pixels):
    """The adapter on block 2 (1-based) of both towers, its shared projection called by both."""
    method = mma(vit_backbone).eval()
    model = vit_backbone.model
    with torch.no_grad():
        handles = with_block_hooks(model.transformer.resblocks, mma_residual(method, method.text_adapters))
        handles += with_block_hooks(model.visual.transformer.resblocks, mma_residual(method, method.image_adapters))
        try:
            text = model.encode_text(vit_backbone.tokenize([f"a photo of a {n}." for n in NAMES]))
            image = model.encode_image(pixels)
        finally:
            for h in handles:
                h.remove()
        torch.testing.assert_close(method.text_features(vit_backbone), text, atol=1e-5, rtol=0)
        torch.testing.assert_close(method.image_features(vit_backbone, Batch(pixels=pixels)), image, atol=1e-5, rtol=0)
        assert (image - vit_backbone.encode_image(pixels)).abs().max() > 1e-3  # the adapters matter here
        expected = vit_backbone.logit_scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
        torch.testing.assert_close(method(vit_backbone, Batch(pixels=pixels)), expected, atol=1e-4, rtol=0)


def test_mma_gradient_scaling_is_the_releases(vit_backbone, pixels):
    """GSL: the adapters get 1/α times their true gradient, the input its exact one (clip/gsl.py)."""
    grads = {}
    for scaled in (True, False):
        method = mma(vit_backbone, gradient_scaling=scaled).train()
        x = pixels.clone().requires_grad_(True)
        batch = Batch(pixels=x, targets=torch.tensor([0, 1, 2]))
        method.loss(vit_backbone, batch, method(vit_backbone, batch)).backward()
        grads[scaled] = {k: p.grad.clone() for k, p in method.named_parameters()} | {"pixels": x.grad.clone()}
    torch.testing.assert_close(grads[True].pop("pixels"), grads[False].pop("pixels"), atol=1e-6, rtol=1e-4)
    for name, grad in grads[True].items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, grads[False][name] / 0.5, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"end": 3}, "block residuals up to block 3 asked of towers with 2 blocks"),
        ({"start": 2, "end": 1}, "start \\(2\\) must not exceed end \\(1\\)"),
        ({"start": 0}, "mma option start must be >= 1"),
        ({"template": "a photo"}, "has no '{}'"),
    ],
)
def test_mma_refuses_bad_options(vit_backbone, options, message):
    with pytest.raises(ValueError, match=message):
        build_method("mma", vit_backbone, CLASSES, {"start": 1, "end": 2, **options})


def test_mma_needs_a_vit_image_tower(resnet_backbone):
    from vlprompt.backbones import BackboneError

    with pytest.raises(BackboneError, match="block residuals need a ViT image tower"):
        build_method("mma", resnet_backbone, CLASSES, {"start": 1, "end": 2})
