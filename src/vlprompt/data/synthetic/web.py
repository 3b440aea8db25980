"""The web domain's pretraining collection: images of every colour-shape pair, with captions and labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .captions import caption
from .render import COLOURS, IMAGE_SIZE, SHAPES, TEXTURES, render_array


@dataclass
class WebData:
    """Pretraining images of the web domain with their captions and labels."""

    images: np.ndarray  # uint8 [N, H, W, 3]
    captions: list[str]
    mentions: np.ndarray  # bool [N, 3]: does the caption name the colour, the shape, the texture
    colours: np.ndarray  # int64 [N], index into COLOURS
    shapes: np.ndarray  # int64 [N], index into SHAPES
    textures: np.ndarray  # int64 [N], index into TEXTURES


def web_dataset(n: int, seed: int, with_captions: bool = True) -> WebData:
    """``n`` web-domain images covering all colour-shape pairs uniformly, with one caption each.

    Args:
        n: number of images.
        seed: everything (pairs, rendering, captions) is a pure function of it.
        with_captions: draw captions (leave empty when only images and labels are needed).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7001]))
    colour_names = list(COLOURS)
    pair_ids = rng.permutation(np.arange(n) % (len(colour_names) * len(SHAPES)))
    colours, shapes = pair_ids // len(SHAPES), pair_ids % len(SHAPES)
    textures = rng.integers(len(TEXTURES), size=n)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    captions: list[str] = []
    mentions = np.zeros((n if with_captions else 0, 3), bool)
    for i in range(n):
        colour, shape, texture = colour_names[colours[i]], SHAPES[shapes[i]], TEXTURES[textures[i]]
        images[i] = render_array(colour, shape, "web", rng, texture)
        if with_captions:
            described = caption(colour, shape, texture, rng)
            captions.append(described.text)
            mentions[i] = described.colour, described.shape, described.texture
    return WebData(
        images, captions, mentions, colours.astype(np.int64), shapes.astype(np.int64), textures.astype(np.int64)
    )
