"""The reference's ViT masked autoencoder (amirbar/visual_prompting, ``models_mae.py``; He et al.'s MAE).

:class:`MaskedAutoencoder` is timm's ``PatchEmbed`` and ``Block`` (so parameter names match the
released checkpoints), a class token, fixed 2-D sin-cos position embeddings, an encoder that sees only
the visible patches, and a decoder that sees every position (mask tokens at the masked ones). Its
heads: :class:`PixelMAE` here (the decoder regresses the ImageNet-normalised pixels of every patch, MSE
on the masked patches; the bundled ``vlprompt/tiny-canvas`` is one), and
:class:`~vlprompt.incontext.models.vqgan.MAEVQGAN` (codes of a VQGAN).

The encoder keeps the visible patches in row-major order, the decoder puts them back at their
positions (the reference's evaluation masking). Where vlprompt differs: one boolean mask instead of
``ids_shuffle`` and ``len_keep``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from open_clip.pos_embed import get_2d_sincos_pos_embed
from timm.models.vision_transformer import Block, PatchEmbed
from torch import Tensor, nn

from ..canvas import CanvasLayout, denormalize, normalize
from .inpainter import Inpainter, InpainterCheckpointError, _as_batch_mask

__all__ = ["REFERENCE_ARCHS", "MAEConfig", "MaskedAutoencoder", "PixelMAE"]


@dataclass(frozen=True)
class MAEConfig:
    """Architecture of a ViT masked autoencoder (defaults: the reference's ``mae_vit_large_patch16``).

    Attributes:
        image_size: canvas side in pixels.
        patch_size: patch side in pixels.
        embed_dim, depth, num_heads: the encoder.
        decoder_embed_dim, decoder_depth, decoder_num_heads: the decoder.
        mlp_ratio: hidden width of every MLP, relative to its block's width.
        head: ``"vqgan"`` (logits over ``vocab_size`` codes) or ``"pixels"`` (patch pixels).
        vocab_size: the VQGAN codebook size (head ``"vqgan"``).
    """

    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    head: str = "vqgan"
    vocab_size: int = 1024

    def __post_init__(self) -> None:
        if self.head not in ("vqgan", "pixels"):
            raise InpainterCheckpointError(f"MAEConfig.head must be 'vqgan' or 'pixels', not {self.head!r}")

    @property
    def layout(self) -> CanvasLayout:
        return CanvasLayout(self.image_size, self.patch_size)

    @property
    def out_dim(self) -> int:
        return self.vocab_size if self.head == "vqgan" else self.patch_size**2 * 3

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> MAEConfig:
        from ...schema import dataclass_from_dict

        return dataclass_from_dict(cls, values, f"{source}: MAE config", InpainterCheckpointError)


REFERENCE_ARCHS: dict[str, MAEConfig] = {
    "mae_vit_small_patch16": MAEConfig(embed_dim=384, depth=12, num_heads=12),
    "mae_vit_base_patch16": MAEConfig(embed_dim=768, depth=12, num_heads=12),
    "mae_vit_large_patch16": MAEConfig(),
    "mae_vit_huge_patch14": MAEConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
}
"""The reference's architectures (``models_mae.py``), by the names its ``--model`` option takes."""


def _sincos(dim: int, grid: int) -> Tensor:
    return torch.from_numpy(get_2d_sincos_pos_embed(dim, grid, cls_token=True)).float().unsqueeze(0)


def _blocks(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.ModuleList:
    norm = partial(nn.LayerNorm, eps=1e-6)
    # timm annotates norm_layer as a class; the reference passes this partial
    return nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth))  # type: ignore[arg-type]


class MaskedAutoencoder(Inpainter):
    """The reference's ViT MAE trunk (encoder on visible patches, decoder on all positions) with a head."""

    pos_embed: Tensor
    decoder_pos_embed: Tensor

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        self.layout = config.layout
        c = config
        self.patch_embed = PatchEmbed(c.image_size, c.patch_size, 3, c.embed_dim)
        grid = self.layout.grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.register_buffer("pos_embed", _sincos(c.embed_dim, grid))  # fixed; in the reference's state dicts
        self.blocks = _blocks(c.embed_dim, c.depth, c.num_heads, c.mlp_ratio)
        self.norm = nn.LayerNorm(c.embed_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", _sincos(c.decoder_embed_dim, grid))
        self.decoder_blocks = _blocks(c.decoder_embed_dim, c.decoder_depth, c.decoder_num_heads, c.mlp_ratio)
        self.decoder_norm = nn.LayerNorm(c.decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, c.out_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def encode(self, canvases: Tensor, mask: Tensor) -> Tensor:
        """Encoder tokens [B, 1 + visible, D]: the class token, then the visible patches in row-major order."""
        x = self.patch_embed(canvases) + self.pos_embed[:, 1:]
        batch, length, dim = x.shape
        keep = ~_as_batch_mask(mask.to(x.device), batch, length)
        x = x[keep].view(batch, -1, dim)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def decode(self, latent: Tensor, mask: Tensor) -> Tensor:
        """Head outputs [B, L, out_dim] for every patch from encoder tokens and the mask."""
        x = self.decoder_embed(latent)
        batch, length = x.shape[0], self.layout.num_patches
        keep = ~_as_batch_mask(mask.to(x.device), batch, length)
        full = self.mask_token.to(x.dtype).expand(batch, length, -1).clone()
        full[keep] = x[:, 1:].reshape(-1, x.shape[-1])
        x = torch.cat([x[:, :1], full], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(self, canvases: Tensor, mask: Tensor) -> Tensor:
        return self.decode(self.encode(canvases, mask), mask)

    def patchify(self, images: Tensor) -> Tensor:
        """[B, 3, S, S] -> [B, L, p*p*3] (the reference's layout: row, column, channel within a patch)."""
        p, g = self.layout.patch_size, self.layout.grid
        x = images.reshape(images.shape[0], 3, g, p, g, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(images.shape[0], g * g, p * p * 3)

    def unpatchify(self, patches: Tensor) -> Tensor:
        p, g = self.layout.patch_size, self.layout.grid
        x = patches.reshape(patches.shape[0], g, g, p, p, 3)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(patches.shape[0], 3, g * p, g * p)


class PixelMAE(MaskedAutoencoder):
    """An MAE whose decoder regresses the normalised pixels of each patch (trained with MSE on masked ones)."""

    def __init__(self, config: MAEConfig) -> None:
        if config.head != "pixels":
            raise InpainterCheckpointError(f"PixelMAE needs head='pixels', got {config.head!r}")
        super().__init__(config)

    def predict(self, canvases: Tensor, mask: Tensor) -> Tensor:
        return self(canvases, mask)

    def render(self, prediction: Tensor) -> Tensor:
        return denormalize(self.unpatchify(prediction)).clamp(0, 1)

    def loss(self, canvases: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error over the masked patches; ``canvases`` and ``targets`` in pixel space [0, 1]."""
        pred = self(normalize(canvases), mask)
        err = ((pred - self.patchify(normalize(targets))) ** 2).mean(dim=-1)
        weight = _as_batch_mask(mask.to(err.device), err.shape[0], err.shape[1]).float()
        return (err * weight).sum() / weight.sum()
