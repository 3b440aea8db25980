"""Models shipped inside the package, loaded offline.

A bundled model is a folder holding ``manifest.json`` (architecture, preprocessing, provenance,
metrics), a safetensors weight file and a ``CARD.md``. The weight file stores the text token table
sparsely (``token_embedding.rows`` and ``token_embedding.values``: only the rows the pretraining
captions used; every other row is zero), which keeps the files a few MB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, set_model_preprocess_cfg
from safetensors.torch import load_file

from ..errors import BackboneError
from ..io import file_sha256
from ..schema import expect, read_json_file

__all__ = [
    "BUNDLED",
    "DEFAULT_BACKBONE",
    "BundledModelError",
    "build_clip",
    "dense_state_dict",
    "load_bundled",
    "read_manifest",
    "sparse_state_dict",
]

_HERE = Path(__file__).resolve().parent

DEFAULT_BACKBONE = "vlprompt/tiny-shapes"
"""The backbone every command uses when none is named (bundled, offline)."""

BUNDLED: dict[str, Path] = {DEFAULT_BACKBONE: _HERE / "tiny_shapes"}
"""Bundled model name -> folder holding its manifest, weights and card."""

ROWS_KEY = "token_embedding.rows"
VALUES_KEY = "token_embedding.values"
_TABLE_KEY = "token_embedding.weight"


class BundledModelError(BackboneError):
    """A bundled model is unknown, incomplete or corrupted."""


def build_clip(model_cfg: dict[str, Any]) -> CLIP:
    """A randomly initialised open_clip ``CLIP`` from a manifest's ``model_cfg``.

    Args:
        model_cfg: ``{"embed_dim": int, "vision_cfg": {...}, "text_cfg": {...}, "quick_gelu": bool}``;
            the two dicts hold keyword arguments of open_clip's ``CLIPVisionCfg`` / ``CLIPTextCfg``.
    """
    cfg = dict(model_cfg)
    try:
        vision = CLIPVisionCfg(**cfg.pop("vision_cfg"))
        text = CLIPTextCfg(**cfg.pop("text_cfg"))
        return CLIP(vision_cfg=vision, text_cfg=text, **cfg)
    except (KeyError, TypeError) as err:
        raise BundledModelError(f"invalid model_cfg {model_cfg}: {err}") from err


def sparse_state_dict(state: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Replace the dense token table of a CLIP state dict by its ``rows`` (int64 ids) and their values."""
    out = {k: v for k, v in state.items() if k != _TABLE_KEY}
    rows = rows.to(torch.int64).contiguous()
    out[ROWS_KEY] = rows
    out[VALUES_KEY] = state[_TABLE_KEY][rows].contiguous()
    return out


def dense_state_dict(state: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """Inverse of :func:`sparse_state_dict`: scatter the stored rows into a zero token table."""
    out = {k: v for k, v in state.items() if k not in (ROWS_KEY, VALUES_KEY)}
    rows, values = state[ROWS_KEY], state[VALUES_KEY]
    table = torch.zeros(vocab_size, values.shape[1], dtype=values.dtype)
    table[rows] = values
    out[_TABLE_KEY] = table
    return out


def read_manifest(name: str) -> tuple[Path, dict[str, Any]]:
    """The folder and parsed ``manifest.json`` of a bundled model."""
    if name not in BUNDLED:
        raise BundledModelError(f"unknown bundled model {name!r}; available: {', '.join(sorted(BUNDLED))}")
    folder = BUNDLED[name]
    path = folder / "manifest.json"
    if not path.is_file():
        raise BundledModelError(
            f"bundled model {name!r} is incomplete: {path} is missing; reinstall vlprompt or rebuild it with "
            "scripts/pretrain_tiny_shapes.py"
        )
    manifest = read_json_file(path, "bundled model manifest", BundledModelError, 1 << 20)
    return folder, expect(manifest, dict, str(path), BundledModelError)


def load_bundled(name: str) -> tuple[CLIP, dict[str, Any], dict[str, Any]]:
    """Load a bundled model, offline, after checking its weight file's sha256.

    Args:
        name: a key of :data:`BUNDLED`, e.g. ``"vlprompt/tiny-shapes"``.

    Returns:
        ``(model, preprocess_cfg, identity)``: the float32 open_clip ``CLIP`` in eval mode; its eval
        preprocessing in open_clip's convention (``size``, ``mean``, ``std``, ``interpolation``,
        ``resize_mode``); and ``{"name", "sha256", "seed"}`` identifying the weights.

    Raises:
        BundledModelError: unknown name (the message lists the available ones), missing files, or a
            weight file whose sha256 differs from the manifest's.
    """
    folder, manifest = read_manifest(name)
    weights = folder / manifest["weights"]
    if not weights.is_file():
        raise BundledModelError(f"bundled weight file {weights} is missing; reinstall vlprompt")
    actual = file_sha256(weights)
    if actual != manifest["sha256"]:
        raise BundledModelError(
            f"bundled weight file {weights} is corrupted (sha256 {actual} != {manifest['sha256']}); "
            "reinstall vlprompt or rebuild with scripts/pretrain_tiny_shapes.py"
        )
    model = build_clip(manifest["model_cfg"])
    state = dense_state_dict(load_file(str(weights)), model.vocab_size)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    pre = manifest["preprocess"]
    preprocess = {
        "size": pre["image_size"],
        "mean": tuple(pre["mean"]),
        "std": tuple(pre["std"]),
        "interpolation": pre["interpolation"],
        "resize_mode": pre["resize_mode"],
    }
    set_model_preprocess_cfg(model, preprocess)
    identity = {"name": manifest["name"], "sha256": actual, "seed": manifest.get("seed")}
    return model.eval(), preprocess, identity
