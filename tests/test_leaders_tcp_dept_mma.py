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
