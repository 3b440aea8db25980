"""Where an inpainter comes from: the bundled tiny model, a saved folder, the authors' checkpoint, or tiny random ones.

A saved inpainter is a folder: ``manifest.json`` (format, kind, architecture, provenance) and float16
``weights.safetensors`` (:func:`save_inpainter`, :func:`load_inpainter`). The authors' MAE-VQGAN
``.pth`` loads with :func:`load_mae_vqgan`, never unpickling arbitrary objects; every load checks each
key and shape against the architecture (:func:`load_checked`). vlprompt never downloads weights.
"""

from __future__ import annotations

import argparse
import json
import pickle
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ...io import atomic_write, atomic_write_text, file_sha256
from ...schema import dataclass_from_dict, expect, field, inside_folder, read_json_file
from .inpainter import Inpainter, InpainterCheckpointError
from .mae import REFERENCE_ARCHS, MAEConfig, MaskedAutoencoder, PixelMAE
from .vqgan import MAEVQGAN, VQGANConfig, taming_to_diffusers

__all__ = [
    "BUNDLED_INPAINTER",
    "TINY_VQGAN",
    "load_checked",
    "load_inpainter",
    "load_mae_vqgan",
    "read_manifest",
    "save_inpainter",
    "tiny_mae_vqgan",
    "tiny_pixel_mae",
]

_HERE = Path(__file__).resolve().parent.parent  # vlprompt/incontext, which holds tiny_canvas/
BUNDLED_INPAINTER = "vlprompt/tiny-canvas"
_BUNDLED = {BUNDLED_INPAINTER: _HERE / "tiny_canvas"}
FORMAT = "vlprompt-inpainter"


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
    manifest = read_json_file(path, "inpainter manifest", InpainterCheckpointError, 1 << 20)
    expect(manifest, dict, str(path), InpainterCheckpointError)
    if manifest.get("format") != FORMAT or manifest.get("kind") not in ("pixel-mae", "mae-vqgan"):
        raise InpainterCheckpointError(f"{path}: not a vlprompt inpainter manifest (format/kind)")
    field(manifest, "config", dict, str(path), InpainterCheckpointError)
    field(manifest, "vqgan", dict, str(path), InpainterCheckpointError, default=None)
    weights = field(manifest, "weights", str, str(path), InpainterCheckpointError)
    inside_folder(folder, weights, f"{path}: field 'weights'", InpainterCheckpointError)
    field(manifest, "sha256", str, str(path), InpainterCheckpointError, default=None)
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
    vqgan = dataclass_from_dict(VQGANConfig, manifest.get("vqgan", {}), f"{source_name}: VQGAN config",
                                InpainterCheckpointError)  # fmt: skip
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
