"""MAE-VQGAN, the reference's inpainter: the MAE decoder predicts VQGAN codes, a VQGAN decodes them.

The decoder predicts, for every patch, logits over a VQGAN codebook (1024 codes of
taming-transformers' ``vqgan_imagenet_f16_1024`` in the paper); the argmax codes are decoded by the
VQGAN decoder. The VQGAN is diffusers' ``VQModel`` (the ``incontext`` extra), filled from taming-layout
weights by :func:`taming_to_diffusers`. Ensembling averages the code probabilities.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..canvas import normalize
from .inpainter import InpainterCheckpointError, _as_batch_mask
from .mae import MAEConfig, MaskedAutoencoder

__all__ = ["MAEVQGAN", "VQGANConfig", "build_vqgan", "taming_to_diffusers"]


@dataclass(frozen=True)
class VQGANConfig:
    """A taming-transformers VQGAN (defaults: ``vqgan_imagenet_f16_1024``, the reference's tokenizer).

    Attributes:
        block_out_channels: channels of each resolution level (taming's ``ch * ch_mult``).
        layers_per_block: residual blocks per level (taming's ``num_res_blocks``).
        attention_levels: levels with self-attention after every residual block (taming's
            ``attn_resolutions``: 16 of 256 pixels is level 4).
        latent_channels: taming's ``z_channels``.
        num_vq_embeddings, vq_embed_dim: codebook size and code width (taming's ``n_embed``, ``embed_dim``).
        norm_num_groups: GroupNorm groups.
    """

    block_out_channels: tuple[int, ...] = (128, 128, 256, 256, 512)
    layers_per_block: int = 2
    attention_levels: tuple[int, ...] = (4,)
    latent_channels: int = 256
    num_vq_embeddings: int = 1024
    vq_embed_dim: int = 256
    norm_num_groups: int = 32

    @property
    def factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


def build_vqgan(config: VQGANConfig) -> nn.Module:
    """diffusers' ``VQModel`` laid out like the taming VQGAN of ``config``."""
    try:
        from diffusers import VQModel
    except ImportError as err:  # pragma: no cover - the extra is in the dev install
        raise ImportError(
            "MAE-VQGAN decodes with diffusers' VQModel: pip install 'vlprompt[incontext]' (or diffusers)"
        ) from err
    levels = len(config.block_out_channels)
    # a torch Module (diffusers' ModelMixin), which mypy does not see through diffusers' lazy torch import
    return VQModel(  # type: ignore[return-value]
        in_channels=3,
        out_channels=3,
        down_block_types=tuple(
            "AttnDownEncoderBlock2D" if i in config.attention_levels else "DownEncoderBlock2D" for i in range(levels)
        ),
        up_block_types=tuple(
            "AttnUpDecoderBlock2D" if levels - 1 - k in config.attention_levels else "UpDecoderBlock2D"
            for k in range(levels)
        ),
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels,
        num_vq_embeddings=config.num_vq_embeddings,
        vq_embed_dim=config.vq_embed_dim,
        norm_num_groups=config.norm_num_groups,
    )


class MAEVQGAN(MaskedAutoencoder):
    """The reference's MAE-VQGAN: the decoder predicts VQGAN codes of every patch, the VQGAN decodes them."""

    vae: Any  # diffusers' VQModel (see build_vqgan)

    def __init__(self, config: MAEConfig, vqgan: VQGANConfig | None = None) -> None:
        vqgan = vqgan or VQGANConfig()
        if config.head != "vqgan":
            raise InpainterCheckpointError(f"MAEVQGAN needs head='vqgan', got {config.head!r}")
        if vqgan.num_vq_embeddings != config.vocab_size:
            raise InpainterCheckpointError(
                f"the MAE predicts {config.vocab_size} codes but the VQGAN has {vqgan.num_vq_embeddings}"
            )
        if vqgan.factor != config.patch_size:
            raise InpainterCheckpointError(
                f"the VQGAN turns a code into {vqgan.factor}x{vqgan.factor} pixels but the MAE's patches are "
                f"{config.patch_size} pixels: they must match (one code per patch)"
            )
        super().__init__(config)
        self.vqgan_config = vqgan
        self.vae = build_vqgan(vqgan).eval().requires_grad_(False)

    def predict(self, canvases: Tensor, mask: Tensor) -> Tensor:
        return self(canvases, mask).softmax(dim=-1)

    def render(self, prediction: Tensor) -> Tensor:
        grid, batch = self.layout.grid, prediction.shape[0]
        codes = prediction.argmax(dim=-1).reshape(-1)
        quant = self.vae.quantize.get_codebook_entry(codes, (batch, grid, grid, self.vqgan_config.vq_embed_dim))
        pixels = self.vae.decode(quant, force_not_quantize=True).sample
        pixels = ((pixels.clamp(-1, 1) + 1) / 2).float()
        if pixels.shape[-1] != self.layout.size:
            pixels = F.interpolate(pixels, size=(self.layout.size,) * 2, mode="bilinear")
        return pixels.clamp(0, 1)

    @torch.no_grad()
    def codebook_indices(self, canvases: Tensor) -> Tensor:
        """The VQGAN codes [B, L] of pixel-space canvases [B, 3, S, S] (the training targets)."""
        h = self.vae.encode(2 * canvases - 1).latents
        return self.vae.quantize(h)[2][2].reshape(canvases.shape[0], -1)

    def loss(self, canvases: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        """Cross-entropy of the predicted codes of masked patches against the VQGAN codes of ``targets``."""
        logits = self(normalize(canvases), mask)
        codes = self.codebook_indices(targets).to(logits.device)
        ce = F.cross_entropy(logits.transpose(1, 2), codes, reduction="none")
        weight = _as_batch_mask(mask.to(ce.device), ce.shape[0], ce.shape[1]).float()
        return (ce * weight).sum() / weight.sum()


# ------------------------------------------------------------------------------ taming -> diffusers
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_MID = {"block_1": "resnets.0", "attn_1": "attentions.0", "block_2": "resnets.1"}


def _rename_taming(key: str, up_levels: int) -> str:
    key = key.replace(".nin_shortcut.", ".conv_shortcut.")
    key = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", key)
    m = re.match(r"(encoder|decoder)\.mid\.(block_1|attn_1|block_2)\.(.*)", key)
    if m:
        part, block, rest = m.groups()
        key = f"{part}.mid_block.{_MID[block]}.{rest}"
    m = re.match(r"encoder\.down\.(\d+)\.(block|attn|downsample)\.(.*)", key)
    if m:
        level, kind, rest = m.groups()
        kind = {"block": "resnets", "attn": "attentions", "downsample": "downsamplers.0"}[kind]
        key = f"encoder.down_blocks.{level}.{kind}.{rest}"
    m = re.match(r"decoder\.up\.(\d+)\.(block|attn|upsample)\.(.*)", key)
    if m:
        level, kind, rest = m.groups()
        kind = {"block": "resnets", "attn": "attentions", "upsample": "upsamplers.0"}[kind]
        key = f"decoder.up_blocks.{up_levels - 1 - int(level)}.{kind}.{rest}"
    m = re.match(r"(.*\.attentions\.\d+)\.(norm|q|k|v|proj_out)\.(weight|bias)$", key)
    if m:
        head, name, what = m.groups()
        key = f"{head}.{_ATTN[name]}.{what}"
    return key


def taming_to_diffusers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A taming-transformers VQGAN state dict (``encoder.down.0.block.0...``) in diffusers' VQModel names.

    Up levels are renumbered (taming counts them from the highest resolution, diffusers from the
    lowest), ``nin_shortcut`` becomes ``conv_shortcut``, and the 1×1 attention convolutions become the
    linear layers of diffusers' attention. The loss (discriminator, LPIPS) weights are dropped.
    """
    ups = {int(m.group(1)) for k in state if (m := re.match(r"decoder\.up\.(\d+)\.", k))}
    up_levels = max(ups) + 1 if ups else 0
    out = {}
    for key, value in state.items():
        if key.startswith("loss."):
            continue
        new = _rename_taming(key, up_levels)
        if re.search(r"\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$", new) and value.ndim == 4:
            value = value[:, :, 0, 0]
        out[new] = value
    return out
