"""Inpainting models behind one interface: given canvases and a patch mask, fill the masked patches.

- :mod:`.inpainter`: the :class:`Inpainter` interface (``fill(canvases, mask, ensemble)``) and the
  reference's evaluation masking.
- :mod:`.mae`: the reference's ViT masked autoencoder (:class:`MaskedAutoencoder`, amirbar/visual_prompting
  ``models_mae.py``) and :class:`PixelMAE`, whose decoder regresses pixels (the bundled
  ``vlprompt/tiny-canvas`` is one).
- :mod:`.vqgan`: :class:`MAEVQGAN`, the paper's model: the decoder predicts VQGAN codes that diffusers'
  ``VQModel`` decodes, with the taming-transformers weight conversion.
- :mod:`.loading`: the bundled model, saved folders, the authors' checkpoints, tiny test models.
"""

from .inpainter import Inpainter, InpainterCheckpointError
from .loading import (
    BUNDLED_INPAINTER,
    FORMAT,
    TINY_VQGAN,
    load_checked,
    load_inpainter,
    load_mae_vqgan,
    read_manifest,
    save_inpainter,
    tiny_mae_vqgan,
    tiny_pixel_mae,
)
from .mae import REFERENCE_ARCHS, MAEConfig, MaskedAutoencoder, PixelMAE
from .vqgan import MAEVQGAN, VQGANConfig, build_vqgan, taming_to_diffusers

__all__ = [
    "BUNDLED_INPAINTER",
    "FORMAT",
    "REFERENCE_ARCHS",
    "TINY_VQGAN",
    "Inpainter",
    "InpainterCheckpointError",
    "MAEConfig",
    "MAEVQGAN",
    "MaskedAutoencoder",
    "PixelMAE",
    "VQGANConfig",
    "build_vqgan",
    "load_checked",
    "load_inpainter",
    "load_mae_vqgan",
    "read_manifest",
    "save_inpainter",
    "taming_to_diffusers",
    "tiny_mae_vqgan",
    "tiny_pixel_mae",
]
