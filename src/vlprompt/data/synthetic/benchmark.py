"""The benchmark domain's collection in memory: each pair's images, their train/val/test slices, the views
and the compositional split of the pairs.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ...errors import OptionError
from .render import COLOURS, SHAPES, render_array

VIEWS: tuple[str, ...] = ("pairs", "colours", "shapes")
IMAGES_PER_PAIR = 64
_SLICES = {"train": range(0, 32), "val": range(32, 40), "test": range(40, 64)}
_SEEN_FRACTION = 0.6


def pair_dirname(colour: str, shape: str) -> str:
    """Folder of a pair's images, relative to the image root."""
    return f"{colour}_{shape}"


def _pair_rng(seed: int, colour: str, shape: str) -> np.random.Generator:
    index = list(COLOURS).index(colour) * len(SHAPES) + SHAPES.index(shape)
    return np.random.default_rng(np.random.SeedSequence([seed, 9001, index]))


def benchmark_images(seed: int, split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The benchmark images of one split of the classification views, rendered in memory.

    These are exactly the images :func:`~vlprompt.data.synthetic.build_benchmark` writes for that split.

    Returns:
        ``(images uint8 [N, H, W, 3], colour indices [N], shape indices [N])`` in pair order.
    """
    if split not in _SLICES:
        raise OptionError(f"split must be one of {list(_SLICES)}, not {split!r}")
    wanted = _SLICES[split]
    images, colours, shapes = [], [], []
    for ci, colour in enumerate(COLOURS):
        for si, shape in enumerate(SHAPES):
            for index, image in enumerate(_render_pair(seed, colour, shape, count=wanted.stop)):
                if index in wanted:
                    images.append(image)
                    colours.append(ci)
                    shapes.append(si)
    return np.stack(images), np.asarray(colours, np.int64), np.asarray(shapes, np.int64)


def _render_pair(seed: int, colour: str, shape: str, count: int = IMAGES_PER_PAIR) -> Iterable[np.ndarray]:
    """The first ``count`` of a pair's benchmark images (image ``i`` never depends on ``count``)."""
    rng = _pair_rng(seed, colour, shape)
    for _ in range(count):
        yield render_array(colour, shape, "benchmark", rng)


def czsl_pair_split(seed: int) -> dict[str, list[tuple[str, str]]]:
    """Seen (train), validation-unseen and test-unseen pairs of the compositional split.

    60% of the pairs are seen, the rest is halved between validation and test; every colour and every
    shape occurs in at least two seen pairs.
    """
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 5003]))
    n_seen = round(_SEEN_FRACTION * len(pairs))
    n_val = (len(pairs) - n_seen) // 2
    for _ in range(1000):
        order = rng.permutation(len(pairs))
        seen = [pairs[i] for i in sorted(order[:n_seen])]
        if all(sum(c == colour for c, _ in seen) >= 2 for colour in COLOURS) and all(
            sum(s == shape for _, s in seen) >= 2 for shape in SHAPES
        ):
            break
    else:  # pragma: no cover - practically unreachable with 60 of 100 pairs
        raise RuntimeError("could not draw a compositional split covering every primitive")
    return {
        "train": seen,
        "val": [pairs[i] for i in sorted(order[n_seen : n_seen + n_val])],
        "test": [pairs[i] for i in sorted(order[n_seen + n_val :])],
    }
