"""Inpainting models behind one interface: given canvases and a patch mask, fill the masked patches.

:class:`MaskedAutoencoder` is the reference's ViT masked autoencoder (amirbar/visual_prompting,
``models_mae.py``; He et al.'s MAE): timm's ``PatchEmbed`` and ``Block`` (so parameter names match the
released checkpoints), a class token, fixed 2-D sin-cos position embeddings, an encoder that sees only
the visible patches, and a decoder that sees every position (mask tokens at the masked ones). Two heads:

- :class:`MAEVQGAN`: the decoder predicts, for every patch, logits over a VQGAN codebook (1024 codes
  of taming-transformers' ``vqgan_imagenet_f16_1024`` in the paper); the argmax codes are decoded by
  the VQGAN decoder. The VQGAN is diffusers' ``VQModel`` (the ``incontext`` extra), filled from
  taming-layout weights by :func:`taming_to_diffusers`.
- :class:`PixelMAE`: the decoder regresses the ImageNet-normalised pixels of every patch (MSE on the
  masked patches); the bundled ``vlprompt/tiny-canvas`` is one.

Masking follows the reference's evaluation (``generate_mask_for_evaluation``): the encoder keeps the
visible patches in row-major order, the decoder puts them back at their positions. Where vlprompt
differs: one boolean mask ``[L]`` (or ``[B, L]`` with equal counts) instead of ``ids_shuffle`` and
``len_keep``; ``fill`` takes pixel-space canvases and normalises them itself; several canvases can be
ensembled by averaging their per-patch predictions (code probabilities, or pixels).
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.pos_embed import get_2d_sincos_pos_embed
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import Block, PatchEmbed
from torch import Tensor, nn

from ..errors import BackboneError
from ..io import atomic_write, atomic_write_text, file_sha256
from .canvas import CanvasLayout, denormalize, normalize

__all__ = [
    "BUNDLED_INPAINTER",
    "REFERENCE_ARCHS",
    "Inpainter",
    "InpainterCheckpointError",
    "MAEConfig",
    "MAEVQGAN",
    "MaskedAutoencoder",
    "PixelMAE",
    "VQGANConfig",
    "load_inpainter",
    "load_mae_vqgan",
    "save_inpainter",
    "taming_to_diffusers",
    "tiny_mae_vqgan",
    "tiny_pixel_mae",
]

_HERE = Path(__file__).resolve().parent
BUNDLED_INPAINTER = "vlprompt/tiny-canvas"
_BUNDLED = {BUNDLED_INPAINTER: _HERE / "tiny_canvas"}
FORMAT = "vlprompt-inpainter"


class InpainterCheckpointError(BackboneError):
    """A weight file is missing, unreadable, or does not fit the model's architecture."""


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
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InpainterCheckpointError(f"{source}: unknown MAE config keys {unknown}; known: {sorted(known)}")
        return cls(**values)


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
    return nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth))


def _as_batch_mask(mask: Tensor, batch: int, length: int) -> Tensor:
    mask = mask.to(torch.bool)
    if mask.ndim == 1:
        mask = mask.unsqueeze(0).expand(batch, -1)
    if mask.shape != (batch, length):
        raise ValueError(f"mask must be [{length}] or [{batch}, {length}] patches, got {tuple(mask.shape)}")
    counts = mask.sum(dim=1)
    if (counts != counts[0]).any():
        raise ValueError("every canvas of a batch must mask the same number of patches")
    if counts[0] == length:
        raise ValueError("the mask hides every patch: nothing is left for the encoder to see")
    return mask


class Inpainter(nn.Module, ABC):
    """Given canvases and a patch mask, fill the masked patches.

    Subclasses give soft per-patch predictions (:meth:`predict`, averageable across canvases) and
    turn them into pixels (:meth:`render`).
    """

    layout: CanvasLayout

    @abstractmethod
    def predict(self, canvases: Tensor, mask: Tensor) -> Tensor:
        """Per-patch predictions [B, L, P] for normalised canvases [B, 3, S, S] and mask [L] or [B, L]."""

    @abstractmethod
    def render(self, prediction: Tensor) -> Tensor:
        """Pixel-space canvases [B, 3, S, S] in [0, 1] from per-patch predictions [B, L, P]."""

    @torch.no_grad()
    def fill(self, canvases: Tensor, mask: Tensor | None = None, ensemble: bool = False) -> Tensor:
        """Fill the masked patches of pixel-space canvases.

        Args:
            canvases: float [B, 3, S, S] in [0, 1] (normalised here, after building, as in the reference).
            mask: bool [L] or [B, L], True for the patches to fill (default: the answer quarter).
            ensemble: average the predictions of the B canvases (one per example) into one canvas.

        Returns:
            float [B, 3, S, S] (or [1, 3, S, S] with ``ensemble``): visible patches as given, masked ones filled.
        """
        size = self.layout.size
        if canvases.ndim != 4 or tuple(canvases.shape[1:]) != (3, size, size):
            raise ValueError(f"this model fills canvases of [B, 3, {size}, {size}], got {tuple(canvases.shape)}")
        mask = self.layout.answer_mask() if mask is None else mask
        device = next(self.parameters()).device
        prediction = self.predict(normalize(canvases.to(device)), mask.to(device))
        if ensemble:
            prediction, canvases = prediction.mean(dim=0, keepdim=True), canvases[:1]
        pixels = self.render(prediction).cpu()
        keep = _as_batch_mask(mask, canvases.shape[0], self.layout.num_patches).cpu()
        patch = self.layout.patch_size
        grid = self.layout.grid
        where = keep.view(-1, 1, grid, 1, grid, 1).expand(-1, 1, -1, patch, -1, patch).reshape(-1, 1, size, size)
        return torch.where(where, pixels, canvases.cpu())


class MaskedAutoencoder(Inpainter):
    """The reference's ViT MAE trunk (encoder on visible patches, decoder on all positions) with a head."""

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
    return VQModel(
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


# ----------------------------------------------------------------------------------------- loading
def load_checked(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` into ``module`` strictly, or raise naming the first key or shape that does not fit."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    for key, value in state.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            raise InpainterCheckpointError(
                f"{source}: architecture mismatch: {key!r} has shape {tuple(value.shape)} in the file, "
                f"the model expects {tuple(expected[key].shape)} (check the architecture / config you chose)"
            )
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} key(s) the model needs are missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} key(s) in the file have no place in the model (e.g. {unexpected[:3]})")
        raise InpainterCheckpointError(f"{source}: architecture mismatch: " + "; ".join(parts))
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def _missing(path: Path, what: str) -> InpainterCheckpointError:
    return InpainterCheckpointError(f"{path}: no such file. {what}")


_MAE_VQGAN_HELP = (
    "Download the MAE-VQGAN checkpoint the authors release (amirbar/visual_prompting, README: "
    "'checkpoint-1000.pth', ViT-L trained on the CVF figures dataset) and give its local path; "
    "vlprompt never downloads weights."
)


def _torch_load(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``; MAE checkpoints also hold their ``argparse.Namespace`` of options."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise InpainterCheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({str(err).splitlines()[0]}); "
            "vlprompt never unpickles arbitrary objects: re-save only its state dict from a source you trust"
        ) from err
    if not isinstance(state, dict):
        raise InpainterCheckpointError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), dict):
            state = state[key]
    return state


def load_mae_vqgan(
    checkpoint: str | Path,
    arch: str | MAEConfig = "mae_vit_large_patch16",
    vqgan_checkpoint: str | Path | None = None,
    vqgan: VQGANConfig | None = None,
) -> MAEVQGAN:
    """The reference's MAE-VQGAN from the authors' checkpoint file (no download).

    Args:
        checkpoint: the MAE-VQGAN ``.pth`` (``{"model": state_dict, ...}``; its ``vae.*`` keys hold the VQGAN).
        arch: one of :data:`REFERENCE_ARCHS` (the reference's ``--model``), or an explicit config.
        vqgan_checkpoint: taming's ``vqgan_imagenet_f16_1024`` ``last.ckpt``, when the MAE file lacks ``vae.*``.
        vqgan: the VQGAN's architecture (default: imagenet_f16_1024).
    """
    if isinstance(arch, str) and arch not in REFERENCE_ARCHS:
        raise InpainterCheckpointError(f"unknown MAE architecture {arch!r}; choose from {sorted(REFERENCE_ARCHS)}")
    config = REFERENCE_ARCHS[arch] if isinstance(arch, str) else arch
    name = arch if isinstance(arch, str) else "the given MAEConfig"
    path = Path(checkpoint)
    if not path.is_file():
        raise _missing(path, _MAE_VQGAN_HELP)
    state = _torch_load(path)
    vae = {k[len("vae.") :]: v for k, v in state.items() if k.startswith("vae.")}
    mae = {k: v for k, v in state.items() if not k.startswith("vae.")}
    if vqgan_checkpoint is not None:
        vq_path = Path(vqgan_checkpoint)
        if not vq_path.is_file():
            raise _missing(vq_path, "Give the taming-transformers vqgan_imagenet_f16_1024 'last.ckpt'.")
        vae = {k.removeprefix("vae."): v for k, v in _torch_load(vq_path).items()}
    if not vae:
        raise InpainterCheckpointError(
            f"{path}: holds no VQGAN weights (no 'vae.*' keys); pass vqgan_checkpoint= taming-transformers' "
            "vqgan_imagenet_f16_1024 'last.ckpt'"
        )
    model = MAEVQGAN(config, vqgan)
    converted = {**mae, **{f"vae.{k}": v for k, v in taming_to_diffusers(vae).items()}}
    load_checked(model, converted, f"{path} (as {name})")
    return model.eval()


def _build(kind: str, config: MAEConfig, vqgan: VQGANConfig | None) -> MaskedAutoencoder:
    return PixelMAE(config) if kind == "pixel-mae" else MAEVQGAN(config, vqgan)


def save_inpainter(model: MaskedAutoencoder, out: str | Path, **extra: Any) -> Path:
    """Write a model as a folder: ``manifest.json`` (architecture, ``extra`` provenance) and float16 safetensors."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "weights.safetensors"
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, str(tmp)))
    kind = "pixel-mae" if isinstance(model, PixelMAE) else "mae-vqgan"
    manifest: dict[str, Any] = {"format": FORMAT, "kind": kind, "config": asdict(model.config)}
    if isinstance(model, MAEVQGAN):
        manifest["vqgan"] = asdict(model.vqgan_config)
    manifest.update(weights=weights.name, sha256=file_sha256(weights), **extra)
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return out


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.is_file():
        raise _missing(path, "An inpainter folder holds manifest.json and weights.safetensors (see save_inpainter).")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InpainterCheckpointError(f"{path}: not valid JSON ({err})") from err
    if manifest.get("format") != FORMAT or manifest.get("kind") not in ("pixel-mae", "mae-vqgan"):
        raise InpainterCheckpointError(f"{path}: not a vlprompt inpainter manifest (format/kind)")
    return manifest


def load_inpainter(source: str | Path | None = None, arch: str = "mae_vit_large_patch16") -> Inpainter:
    """An inpainter from the bundled name (default), a saved folder, or the authors' MAE-VQGAN ``.pth``."""
    if source is None or str(source) in _BUNDLED:
        folder = _BUNDLED[BUNDLED_INPAINTER if source is None else str(source)]
    else:
        folder = Path(source)
        if folder.is_file():
            return load_mae_vqgan(folder, arch)
        if not folder.exists():
            raise _missing(folder, f"Give {BUNDLED_INPAINTER!r}, a folder written by save_inpainter, or a .pth file.")
    manifest = read_manifest(folder)
    source_name = str(folder / manifest["weights"])
    config = MAEConfig.from_dict(manifest["config"], source_name)
    vqgan = VQGANConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in manifest.get("vqgan", {}).items()})
    model = _build(manifest["kind"], config, vqgan if manifest["kind"] == "mae-vqgan" else None)
    weights = folder / manifest["weights"]
    if not weights.is_file():
        raise _missing(weights, "The inpainter folder is incomplete; rebuild it (scripts/pretrain_tiny_inpainter.py).")
    load_checked(model, load_file(str(weights)), source_name)
    return model.eval()


# ------------------------------------------------------------------------------- tiny test models
TINY_VQGAN = VQGANConfig(
    block_out_channels=(8, 8, 16, 16),
    layers_per_block=1,
    attention_levels=(3,),
    latent_channels=8,
    num_vq_embeddings=16,
    vq_embed_dim=4,
    norm_num_groups=4,
)


def _tiny_config(head: str, **overrides: Any) -> MAEConfig:
    values: dict[str, Any] = dict(
        image_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        head=head,
        vocab_size=TINY_VQGAN.num_vq_embeddings,
    )
    values.update(overrides)
    return MAEConfig(**values)


def tiny_mae_vqgan(seed: int = 0, **overrides: Any) -> MAEVQGAN:
    """A randomly initialised MAE-VQGAN small enough for tests (32-px canvas, 4×4 patches, 16 codes)."""
    torch.manual_seed(seed)
    return MAEVQGAN(_tiny_config("vqgan", **overrides), TINY_VQGAN).eval()


def tiny_pixel_mae(seed: int = 0, **overrides: Any) -> PixelMAE:
    """A randomly initialised pixel MAE small enough for tests."""
    torch.manual_seed(seed)
    return PixelMAE(_tiny_config("pixels", **overrides)).eval()
