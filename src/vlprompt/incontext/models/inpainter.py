"""The interface every inpainter implements: given canvases and a patch mask, fill the masked patches.

Masking follows the reference's evaluation (amirbar/visual_prompting, ``generate_mask_for_evaluation``):
one boolean mask ``[L]`` (or ``[B, L]`` with equal counts) marks the patches to fill. ``fill`` takes
pixel-space canvases and normalises them itself; several canvases can be ensembled by averaging their
per-patch predictions (code probabilities, or pixels).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from ...errors import BackboneError
from ..canvas import CanvasLayout, normalize

__all__ = ["Inpainter", "InpainterCheckpointError"]


class InpainterCheckpointError(BackboneError):
    """A weight file is missing, unreadable, or does not fit the model's architecture."""


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
