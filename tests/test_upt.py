"""UPT against its block written out by hand: the paper's attention across tokens, and the release's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from test_prompt_hooks import _image_reference

from vlprompt.methods import UPT, Batch, UPTConfig

NAMES = ["red square", "green circle", "blue star"]


def hand_block(upt: UPT, isolated: bool) -> torch.Tensor:
    """One head of attention (softmax(q kᵀ / √d) v, or v alone when a token sees only itself), then the MLP."""
    x, d = upt.shared, upt.shared.shape[-1]
    w_q, w_k, w_v = upt.attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = upt.attention.in_proj_bias.chunk(3)
    q, k, v = x @ w_q.t() + b_q, x @ w_k.t() + b_k, x @ w_v.t() + b_v
    mixed = v if isolated else torch.softmax(q @ k.t() / d**0.5, dim=-1) @ v
    x = upt.norm1(x + upt.attention.out_proj(mixed))
    return x + upt.linear2(F.relu(upt.linear1(upt.norm2(x))))


def test_upt_generator_both_attention_modes(vit_backbone):
    bb = vit_backbone
    for isolated in (False, True):
        torch.manual_seed(0)
        upt = UPT(bb, NAMES, UPTConfig(n_ctx=2, isolate_tokens_in_attention=isolated)).eval()
        with torch.no_grad():
            torch.testing.assert_close(upt.generate(), hand_block(upt, isolated), atol=1e-5, rtol=0)
    torch.manual_seed(0)
    paper = UPT(bb, NAMES, UPTConfig(n_ctx=2)).eval()
    torch.manual_seed(0)
    release = UPT(bb, NAMES, UPTConfig(n_ctx=2, isolate_tokens_in_attention=True)).eval()
    with torch.no_grad():
        assert (paper.generate() - release.generate()).abs().max() > 1e-3  # the tokens do attend to each other


def test_upt_logits_equal_the_hand_computation(vit_backbone):
    bb = vit_backbone
    torch.manual_seed(1)
    upt = UPT(bb, NAMES, UPTConfig(n_ctx=2)).eval()
    with torch.no_grad():
        for p in upt.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        x = torch.randn(2, 3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(2))
        out = hand_block(upt, isolated=False)
        ids = bb.tokenize([f"X X {name}." for name in NAMES])
        embeds = bb.model.token_embedding(ids).clone()
        embeds[:, 1:3] = out[:2]
        text = bb.model.transformer(embeds + bb.model.positional_embedding, attn_mask=bb.model.attn_mask)
        text = bb.model.ln_final(text)[torch.arange(3), ids.argmax(-1)] @ bb.model.text_projection
        image = _image_reference(bb, x, upt.to_vision(out[2:]), [], append=False)
        expected = 100 * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
        torch.testing.assert_close(upt(bb, Batch(pixels=x)), expected, atol=1e-4, rtol=0)
