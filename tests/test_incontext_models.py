"""Inpainters: the MAE-VQGAN's shapes and masking, checkpoint loading, the bundled tiny model."""

from __future__ import annotations

import argparse
import re

import pytest
import torch

from vlprompt.incontext import CanvasLayout, InpainterCheckpointError, load_inpainter, load_mae_vqgan
from vlprompt.incontext.models import (
    REFERENCE_ARCHS,
    TINY_VQGAN,
    MAEConfig,
    save_inpainter,
    taming_to_diffusers,
    tiny_mae_vqgan,
    tiny_pixel_mae,
)

pytest.importorskip("diffusers")


def test_reference_architectures():
    large = REFERENCE_ARCHS["mae_vit_large_patch16"]
    assert (large.embed_dim, large.depth, large.num_heads, large.decoder_embed_dim, large.decoder_depth) == (
        1024, 24, 16, 512, 8,
    )  # fmt: skip
    assert large.layout == CanvasLayout(224, 16) and large.out_dim == 1024


def test_mae_vqgan_forward_shapes_and_masking():
    model = tiny_mae_vqgan()  # 32-px canvas, 8-px patches: a 4x4 grid, the answer quarter is 2x2
    mask = model.layout.answer_mask()
    assert mask.view(4, 4)[2:, 2:].all() and mask.sum() == 4
    canvases = torch.randn(3, 3, 32, 32)
    latent = model.encode(canvases, mask)
    assert latent.shape == (3, 1 + 12, 32)  # class token + the 12 visible patches
    logits = model(canvases, mask)
    assert logits.shape == (3, 16, 16)  # every patch, one logit per VQGAN code
    # The encoder keeps the visible patches in row-major order (the reference's ids_shuffle / len_keep).
    tokens = model.patch_embed(canvases) + model.pos_embed[:, 1:]
    x = torch.cat([(model.cls_token + model.pos_embed[:, :1]).expand(3, -1, -1), tokens[:, ~mask]], dim=1)
    for block in model.blocks:
        x = block(x)
    assert torch.allclose(latent, model.norm(x), atol=1e-6)
    # What the masked quarter holds cannot change any prediction; a visible patch does.
    hidden = canvases.clone()
    hidden[:, :, 16:, 16:] = torch.randn(3, 3, 16, 16)
    assert torch.allclose(model(hidden, mask), logits, atol=1e-6)
    visible = canvases.clone()
    visible[:, :, :8, :8] += 1.0
    assert not torch.allclose(model(visible, mask), logits, atol=1e-4)


def test_fill_keeps_visible_pixels_and_ensembles_predictions():
    model = tiny_mae_vqgan()
    canvases = torch.rand(2, 3, 32, 32)
    filled = model.fill(canvases)
    assert filled.shape == canvases.shape and torch.equal(filled[:, :, :16], canvases[:, :, :16])
    assert torch.equal(filled[:, :, 16:, :16], canvases[:, :, 16:, :16])
    assert not torch.equal(filled[:, :, 16:, 16:], canvases[:, :, 16:, 16:])
    from vlprompt.incontext.canvas import normalize

    mean = model.predict(normalize(canvases), model.layout.answer_mask()).mean(dim=0, keepdim=True)
    ensembled = model.fill(canvases, ensemble=True)
    assert ensembled.shape == (1, 3, 32, 32)
    assert torch.allclose(ensembled[:, :, 16:, 16:], model.render(mean)[:, :, 16:, 16:])
    codes = model.codebook_indices(canvases)
    assert codes.shape == (2, 16) and int(codes.max()) < 16
    loss = model.loss(canvases, canvases, model.layout.answer_mask())
    assert loss.item() > 0 and loss.requires_grad


def test_pixel_mae_loss_counts_only_masked_patches():
    model = tiny_pixel_mae()
    canvases = torch.rand(2, 3, 32, 32)
    mask = model.layout.answer_mask()
    targets = canvases.clone()
    base = model.loss(canvases, targets, mask)
    targets[:, :, :16] = 0.0  # visible patches: not in the loss
    assert model.loss(canvases, targets, mask).item() == pytest.approx(base.item())
    targets[:, :, 16:, 16:] = 0.0
    assert model.loss(canvases, targets, mask).item() != pytest.approx(base.item())
    assert torch.equal(model.unpatchify(model.patchify(canvases)), canvases)


_DIFFUSERS_TO_TAMING = [  # independent of the converter: the taming layout written out by hand
    (r"\.mid_block\.resnets\.0\.", ".mid.block_1."),
    (r"\.mid_block\.resnets\.1\.", ".mid.block_2."),
    (r"\.mid_block\.attentions\.0\.", ".mid.attn_1."),
    (r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
    (r"encoder\.down_blocks\.(\d+)\.attentions\.", r"encoder.down.\1.attn."),
    (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
    (r"\.conv_shortcut\.", ".nin_shortcut."),
    (r"\.conv_norm_out\.", ".norm_out."),
    (r"\.group_norm\.", ".norm."),
    (r"\.to_q\.", ".q."),
    (r"\.to_k\.", ".k."),
    (r"\.to_v\.", ".v."),
    (r"\.to_out\.0\.", ".proj_out."),
]


def _as_taming(vae_state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in vae_state.items():
        m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|attentions|upsamplers\.0)\.(.*)", key)
        if m:
            kind = {"resnets": "block", "attentions": "attn", "upsamplers.0": "upsample"}[m.group(2)]
            key = f"decoder.up.{levels - 1 - int(m.group(1))}.{kind}.{m.group(3)}"
        for pattern, repl in _DIFFUSERS_TO_TAMING:
            key = re.sub(pattern, repl, key)
        if re.search(r"\.(q|k|v|proj_out)\.weight$", key):
            value = value[:, :, None, None]  # taming's attention projections are 1x1 convolutions
        out[key] = value
    return out


def _reference_checkpoint(model, path):
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("vae.")}
    vae = {k[4:]: v for k, v in model.state_dict().items() if k.startswith("vae.")}
    taming = _as_taming(vae, len(TINY_VQGAN.block_out_channels))
    state.update({f"vae.{k}": v for k, v in taming.items()})
    torch.save({"model": state, "epoch": 3, "args": argparse.Namespace(model="tiny")}, path)
    return taming


def test_taming_keys_convert_to_diffusers():
    state = {
        "decoder.up.3.attn.1.q.weight": torch.zeros(4, 4, 1, 1),
        "decoder.up.0.block.0.nin_shortcut.weight": torch.zeros(1),
        "decoder.up.2.upsample.conv.bias": torch.zeros(1),
        "encoder.down.1.downsample.conv.weight": torch.zeros(1),
        "encoder.mid.attn_1.proj_out.bias": torch.zeros(1),
        "decoder.norm_out.weight": torch.zeros(1),
        "quantize.embedding.weight": torch.zeros(1),
        "loss.discriminator.main.0.weight": torch.zeros(1),
    }
    converted = taming_to_diffusers(state)
    assert sorted(converted) == sorted(
        [
            "decoder.up_blocks.0.attentions.1.to_q.weight",
            "decoder.up_blocks.3.resnets.0.conv_shortcut.weight",
            "decoder.up_blocks.1.upsamplers.0.conv.bias",
            "encoder.down_blocks.1.downsamplers.0.conv.weight",
            "encoder.mid_block.attentions.0.to_out.0.bias",
            "decoder.conv_norm_out.weight",
            "quantize.embedding.weight",
        ]
    )
    assert converted["decoder.up_blocks.0.attentions.1.to_q.weight"].shape == (4, 4)


def test_reference_checkpoint_round_trip(tmp_path):
    model = tiny_mae_vqgan(seed=3)
    path = tmp_path / "checkpoint-1000.pth"
    _reference_checkpoint(model, path)
    loaded = load_mae_vqgan(path, arch=model.config, vqgan=TINY_VQGAN)
    canvases = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.fill(canvases), model.fill(canvases))


def test_checkpoint_errors_are_clear(tmp_path):
    model = tiny_mae_vqgan()
    path = tmp_path / "ckpt.pth"
    _reference_checkpoint(model, path)
    wider = MAEConfig(**{**model.config.__dict__, "embed_dim": 48})
    with pytest.raises(InpainterCheckpointError, match=r"architecture mismatch: 'cls_token' has shape \(1, 1, 32\)"):
        load_mae_vqgan(path, arch=wider, vqgan=TINY_VQGAN)
    deeper = MAEConfig(**{**model.config.__dict__, "depth": 3})
    with pytest.raises(InpainterCheckpointError, match=r"key\(s\) the model needs are missing \(e.g. \['blocks.2"):
        load_mae_vqgan(path, arch=deeper, vqgan=TINY_VQGAN)
    with pytest.raises(InpainterCheckpointError, match="no such file.*checkpoint-1000.pth"):
        load_mae_vqgan(tmp_path / "absent.pth")
    with pytest.raises(InpainterCheckpointError, match="unknown MAE architecture"):
        load_mae_vqgan(path, arch="mae_vit_giant")
    torch.save({"model": {"x": torch.zeros(1)}, "hook": torch.nn.Identity()}, tmp_path / "pickled.pth")
    with pytest.raises(InpainterCheckpointError, match="weights_only=True"):
        load_mae_vqgan(tmp_path / "pickled.pth", arch=model.config, vqgan=TINY_VQGAN)
    torch.save({"model": {k: v for k, v in model.state_dict().items() if not k.startswith("vae.")}}, path)
    with pytest.raises(InpainterCheckpointError, match="holds no VQGAN weights"):
        load_mae_vqgan(path, arch=model.config, vqgan=TINY_VQGAN)


def test_saved_inpainter_round_trip_and_mismatch(tmp_path):
    model = tiny_pixel_mae(seed=1)
    save_inpainter(model, tmp_path / "m", note="test")
    loaded = load_inpainter(tmp_path / "m")
    canvases = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded.fill(canvases), model.half().float().fill(canvases), atol=1e-6)
    manifest = (tmp_path / "m" / "manifest.json").read_text().replace('"embed_dim": 32', '"embed_dim": 64')
    (tmp_path / "m" / "manifest.json").write_text(manifest)
    with pytest.raises(InpainterCheckpointError, match="architecture mismatch"):
        load_inpainter(tmp_path / "m")
    with pytest.raises(InpainterCheckpointError, match="no such file"):
        load_inpainter(tmp_path / "nothing")


def test_fill_refuses_canvases_of_another_size():
    with pytest.raises(ValueError, match=r"fills canvases of \[B, 3, 32, 32\], got \(1, 3, 48, 48\)"):
        tiny_pixel_mae().fill(torch.rand(1, 3, 48, 48))


def test_vqgan_factor_must_match_the_patch_size():
    with pytest.raises(InpainterCheckpointError, match="turns a code into 8x8 pixels but the MAE's patches are 4"):
        tiny_mae_vqgan(patch_size=4)
