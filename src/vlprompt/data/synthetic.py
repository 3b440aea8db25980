"""A deterministic synthetic world of coloured shapes, and the built-in benchmark made from it.

Every image shows one shape (the *object*) in one colour (the *attribute*), with a texture (solid,
striped, dotted), a size, a position, a rotation, a background and pixel noise. Images come from two
domains that differ systematically, the way benchmark photographs differ from CLIP's web data:

- ``"web"``: the pretraining domain of the bundled tiny CLIP (:func:`web_dataset`, with captions);
  neutral light, plain or graded backgrounds, large shapes.
- ``"benchmark"``: the evaluation domain (:func:`build_benchmark`): cluttered backgrounds, smaller
  shapes, more sensor noise and one fixed warm camera illuminant (:data:`BENCHMARK_ILLUMINANT`) for
  the whole benchmark, so zero-shot transfer drops and prompts learned on a few labelled images pay.

Some colours are deliberately close (red/orange/brown/pink, cyan/blue/purple, gray), and the warm
cast moves them further towards each other. Everything is a pure function of the seed.

The benchmark is written to a cache directory as a compositional zero-shot split in the standard
on-disk format, and as few-shot classification views in CoOp's split-JSON format. Images are shared
by all views: each pair has :data:`IMAGES_PER_PAIR` images, indices ``[0, 32)`` for training,
``[32, 40)`` for validation and ``[40, 64)`` for testing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from ..errors import OptionError
from ..io import atomic_directory
from .czsl import write_czsl
from .images import write_split_json

__all__ = [
    "BENCHMARK_ILLUMINANT",
    "COLOURS",
    "DOMAINS",
    "IMAGE_SIZE",
    "IMAGES_PER_PAIR",
    "SHAPES",
    "TEXTURES",
    "VERSION",
    "MULTITASK",
    "VIEWS",
    "BenchmarkPaths",
    "TaskSplit",
    "Caption",
    "WebData",
    "benchmark_images",
    "build_benchmark",
    "build_multitask_collection",
    "caption",
    "czsl_pair_split",
    "default_cache_dir",
    "pair_dirname",
    "render_array",
    "render_image",
    "render_scene",
    "web_dataset",
]

VERSION = "v2"
"""Changes whenever the images or splits change; part of the cache directory name."""

IMAGE_SIZE = 48
"""Side of every image, in pixels."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 35),
    "orange": (240, 125, 20),
    "brown": (125, 72, 35),
    "pink": (240, 125, 175),
    "yellow": (235, 215, 40),
    "green": (40, 160, 55),
    "cyan": (40, 200, 215),
    "blue": (40, 75, 215),
    "purple": (135, 55, 185),
    "gray": (128, 128, 128),
}
"""Attribute names and their reference RGB colours (images jitter around them)."""

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "heart",
    "cross",
    "pentagon",
    "hexagon",
    "diamond",
    "crescent",
)
"""Object names."""

TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted")
DOMAINS: tuple[str, ...] = ("web", "benchmark")
VIEWS: tuple[str, ...] = ("pairs", "colours", "shapes")

BENCHMARK_ILLUMINANT: tuple[float, float, float] = (1.15, 1.05, 0.75)
"""RGB gains of the one warm camera illuminant shared by every benchmark image."""

IMAGES_PER_PAIR = 64
_SLICES = {"train": range(0, 32), "val": range(32, 40), "test": range(40, 64)}
_SEEN_FRACTION = 0.6
_SPLIT_DIR = "compositional-split-natural"
_COMPLETE_MARKER = "COMPLETE"
_SUPERSAMPLE = 2


# ---------------------------------------------------------------------------------------- geometry
def _regular(n: int, phase: float = -math.pi / 2, radius: float = 1.0) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    points = _regular(10)
    points[1::2] *= 0.42
    return points


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    points = np.stack([x, y + 2.5], axis=1)
    return points / np.abs(points).max()


def _cross(arm: float = 0.34) -> np.ndarray:
    a = arm
    return np.array(
        [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]
    )


def _crescent(offset: float = 0.5, inner: float = 0.85) -> np.ndarray:
    # Outer unit circle minus a circle of radius `inner` centred at (offset, 0).
    x = (1 + offset**2 - inner**2) / (2 * offset)
    y = math.sqrt(1 - x * x)
    outer_start = math.atan2(y, x)
    outer = np.linspace(outer_start, 2 * math.pi - outer_start, 28)
    inner_start = math.atan2(-y, x - offset) % (2 * math.pi)
    inner_angles = np.linspace(inner_start, 2 * math.pi - inner_start, 22)
    outer_pts = np.stack([np.cos(outer), np.sin(outer)], axis=1)
    inner_pts = np.stack([offset + inner * np.cos(inner_angles), inner * np.sin(inner_angles)], axis=1)
    points = np.concatenate([outer_pts, inner_pts])
    return points - [points[:, 0].mean() * 0.5, 0]


_UNIT_SHAPES: dict[str, np.ndarray] = {
    "circle": _regular(36),
    "square": _regular(4, phase=math.pi / 4) * 0.95,
    "triangle": _regular(3) * 1.1 + [0, 0.15],
    "star": _star() * 1.1,
    "heart": _heart(),
    "cross": _cross(),
    "pentagon": _regular(5),
    "hexagon": _regular(6, phase=0.0),
    "diamond": np.array([(0, -1.1), (0.62, 0), (0, 1.1), (-0.62, 0)]),
    "crescent": _crescent() * 1.05,
}
assert set(_UNIT_SHAPES) == set(SHAPES)


# ------------------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class _DomainStyle:
    radius: tuple[float, float]  # shape radius as a fraction of the image side
    noise: tuple[float, float]  # pixel noise sigma range
    clutter: tuple[int, int]  # number of distractor strokes
    rotation: float  # largest rotation of the shape, in radians
    illuminant: tuple[float, float, float] | None


_STYLES = {
    "web": _DomainStyle(radius=(0.3, 0.45), noise=(0.0, 5.0), clutter=(0, 0), rotation=0.3, illuminant=None),
    # Shapes a little smaller than on the web (mean radius 0.33 vs 0.375): the tiny model still sees
    # them, while the warm illuminant is the shift that prompts must undo. Much smaller shapes (0.22 to
    # 0.32) left its object accuracy near 40%, a ceiling no prompt can lift.
    "benchmark": _DomainStyle(
        radius=(0.26, 0.4), noise=(3.0, 9.0), clutter=(4, 10), rotation=0.3, illuminant=BENCHMARK_ILLUMINANT
    ),
}

_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A plain or graded low-saturation background, float32 [H, W, 3]."""
    kind = rng.random()
    if kind < 0.4:
        base = rng.uniform(195, 250)
    elif kind < 0.7:
        base = rng.uniform(10, 70)
    else:
        base = rng.uniform(70, 195)
    tint = rng.normal(0, 8, size=3)
    top = np.clip(base + tint, 0, 255)
    bottom = np.clip(top + rng.normal(0, 25), 0, 255) if rng.random() < 0.5 else top
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (_XX * math.cos(angle) + _YY * math.sin(angle)) / IMAGE_SIZE * 0.7 + 0.5
    ramp = np.clip(ramp, 0, 1)[..., None]
    return (top * (1 - ramp) + bottom * ramp).astype(np.float32)


def _add_clutter(background: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    image = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    mean = background.mean()
    for _ in range(count):
        shade = np.clip(mean + rng.normal(0, 45) + rng.normal(0, 20, size=3), 0, 255).astype(int)
        x0, y0 = rng.uniform(0, IMAGE_SIZE, size=2)
        if rng.random() < 0.6:
            length, angle = rng.uniform(5, 20), rng.uniform(0, 2 * math.pi)
            end = (x0 + length * math.cos(angle), y0 + length * math.sin(angle))
            draw.line([(x0, y0), end], fill=tuple(shade), width=int(rng.integers(1, 3)))
        else:
            r = rng.uniform(1, 3)
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=tuple(shade))
    return np.asarray(image, dtype=np.float32)


def _shape_mask(shape: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Anti-aliased coverage of the shape, float32 [H, W] in [0, 1]."""
    c, s = math.cos(angle), math.sin(angle)
    points = _UNIT_SHAPES[shape] @ np.array([[c, s], [-s, c]], dtype=np.float64)
    points = (points * radius + [cx, cy]) * _SUPERSAMPLE
    size = IMAGE_SIZE * _SUPERSAMPLE
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=255)
    canvas = canvas.reduce(_SUPERSAMPLE)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _texture(texture: str, rng: np.random.Generator) -> np.ndarray:
    """Where the texture's second colour shows, float32 [H, W] in [0, 1]."""
    if texture == "solid":
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    period = rng.uniform(4.0, 6.5)
    if texture == "striped":
        angle = rng.uniform(0, math.pi)
        phase = (_XX * math.cos(angle) + _YY * math.sin(angle)) / period + rng.random()
        return (np.abs((phase % 1.0) - 0.5) < 0.2).astype(np.float32)
    ox, oy = rng.uniform(0, period, size=2)
    dx = ((_XX + ox) % period) - period / 2
    dy = ((_YY + oy) % period) - period / 2
    return np.clip(1.6 - np.sqrt(dx * dx + dy * dy), 0, 1)


def _object_colour(colour: str, rng: np.random.Generator) -> np.ndarray:
    base = np.asarray(COLOURS[colour], np.float32)
    return np.clip(base * rng.uniform(0.88, 1.1) * rng.normal(1.0, 0.05, size=3), 0, 255)


def render_array(
    colour: str,
    shape: str,
    domain: str,
    rng: np.random.Generator,
    texture: str | None = None,
) -> np.ndarray:
    """Render one image as a uint8 array [H, W, 3] (see :func:`render_image`)."""
    return render_scene(colour, shape, domain, rng, texture)[0]


def render_scene(
    colour: str,
    shape: str,
    domain: str,
    rng: np.random.Generator,
    texture: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render_array` and the shape's anti-aliased coverage (float32 [H, W] in [0, 1]).

    Draws exactly what :func:`render_array` draws from ``rng``, so both give the same image.
    """
    if colour not in COLOURS or shape not in _UNIT_SHAPES or domain not in _STYLES:
        raise OptionError(
            f"unknown colour/shape/domain ({colour!r}, {shape!r}, {domain!r}); expected one of "
            f"{list(COLOURS)}, {list(SHAPES)}, {list(DOMAINS)}"
        )
    style = _STYLES[domain]
    texture = texture or TEXTURES[int(rng.integers(len(TEXTURES)))]
    image = _background(rng)
    clutter = int(rng.integers(style.clutter[0], style.clutter[1] + 1))
    if clutter:
        image = _add_clutter(image, clutter, rng)
    radius = rng.uniform(*style.radius) * IMAGE_SIZE
    margin = radius * 1.1
    cx, cy = rng.uniform(margin, IMAGE_SIZE - margin, size=2)
    mask = _shape_mask(shape, cx, cy, radius, rng.uniform(-style.rotation, style.rotation))[..., None]
    fill = _object_colour(colour, rng)
    second = 0.35 * fill + 0.65 * (235.0 if fill.mean() < 110 else 25.0)
    pattern = _texture(texture, rng)[..., None]
    foreground = fill * (1 - pattern) + second * pattern
    image = image * (1 - mask) + foreground * mask
    if style.illuminant is not None:
        image = image * np.asarray(style.illuminant, np.float32)
    image = image + rng.normal(0, rng.uniform(*style.noise), size=image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), mask[..., 0]


def render_image(
    colour: str,
    shape: str,
    domain: str,
    rng: np.random.Generator,
    texture: str | None = None,
) -> Image.Image:
    """Render one image of a shape in a colour.

    Args:
        colour: a key of :data:`COLOURS`.
        shape: one of :data:`SHAPES`.
        domain: ``"web"`` (pretraining) or ``"benchmark"`` (clutter, smaller shapes, warm light).
        rng: the numpy generator that draws everything else (texture, size, pose, background, noise).
        texture: force a texture from :data:`TEXTURES` (default: drawn from ``rng``).

    Returns:
        An RGB image of :data:`IMAGE_SIZE` pixels square.
    """
    return Image.fromarray(render_array(colour, shape, domain, rng, texture))


# -------------------------------------------------------------------------------------- captions
_COLOUR_WORDS = {
    "red": ("crimson", "scarlet"),
    "orange": ("tangerine",),
    "brown": ("chocolate", "chestnut"),
    "pink": ("rosy", "bubblegum"),
    "yellow": ("golden", "lemon"),
    "green": ("emerald", "grassy"),
    "cyan": ("turquoise", "aqua"),
    "blue": ("azure", "cobalt"),
    "purple": ("violet", "lilac"),
    "gray": ("grey", "silver"),
}
_SHAPE_WORDS = {
    "circle": ("disc", "round dot"),
    "square": ("box",),
    "triangle": ("three-sided shape",),
    "star": ("five-pointed star",),
    "heart": ("love heart",),
    "cross": ("plus sign",),
    "pentagon": ("five-sided polygon",),
    "hexagon": ("six-sided polygon",),
    "diamond": ("rhombus",),
    "crescent": ("crescent moon",),
}
_TEXTURE_WORDS = {
    "solid": ("solid", "plain", "filled"),
    "striped": ("striped", "stripy"),
    "dotted": ("dotted", "spotted", "polka-dot"),
}
_TEXTURE_PHRASES = {
    "solid": ("in one flat colour",),
    "striped": ("with stripes", "with stripes on it"),
    "dotted": ("with dots", "covered in dots"),
}
_BOTH = (
    "{a} {c} {s}",
    "{c} {s}",
    "{a} {t} {c} {s}",
    "{a} {c} {s} {tp}",
    "the {s} is {c}",
    "{a} {s} coloured {c}",
    "{c} {s} on its own",
    "clipart of {a} {c} {s}",
    "a drawing of {a} {c} {s}",
    "this {s} is {c} and {t}",
    "{a} {c} {t} {s}",
)
_COLOUR_ONLY = ("something {c}", "{a} {c} shape", "{c}", "{a} {t} {c} thing", "it is {c}")
_SHAPE_ONLY = ("{a} {s}", "{a} {t} {s}", "{s}", "the shape of {a} {s}", "{a} {s} {tp}")


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


class Caption(NamedTuple):
    """A caption and which primitives it names (anything it does not name, it does not contradict)."""

    text: str
    colour: bool
    shape: bool
    texture: bool


def caption(colour: str, shape: str, texture: str, rng: np.random.Generator) -> Caption:
    """A varied caption of a web image: synonyms, texture words, sometimes only colour or only shape.

    Canonical names (``red``, ``circle``) are used half of the time. No caption contains "a photo of a".
    """
    c = colour if rng.random() < 0.5 else _pick(_COLOUR_WORDS[colour], rng)
    s = shape if rng.random() < 0.5 else _pick(_SHAPE_WORDS[shape], rng)
    which = rng.random()
    templates = _BOTH if which < 0.7 else _COLOUR_ONLY if which < 0.8 else _SHAPE_ONLY
    template = _pick(templates, rng)
    text = template.format(
        a="{a}", c=c, s=s, t=_pick(_TEXTURE_WORDS[texture], rng), tp=_pick(_TEXTURE_PHRASES[texture], rng)
    )
    while "{a}" in text:  # choose each article from the word that follows it
        head, tail = text.split("{a}", 1)
        article = "an" if tail.lstrip()[:1] in tuple("aeiou") else "a"
        text = head + article + tail
    return Caption(text, "{c}" in template, "{s}" in template, "{t}" in template or "{tp}" in template)


# ------------------------------------------------------------------------------------ web domain
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


# ------------------------------------------------------------------------------ benchmark domain
def pair_dirname(colour: str, shape: str) -> str:
    """Folder of a pair's images, relative to the image root."""
    return f"{colour}_{shape}"


def _pair_rng(seed: int, colour: str, shape: str) -> np.random.Generator:
    index = list(COLOURS).index(colour) * len(SHAPES) + SHAPES.index(shape)
    return np.random.default_rng(np.random.SeedSequence([seed, 9001, index]))


def benchmark_images(seed: int, split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The benchmark images of one split of the classification views, rendered in memory.

    These are exactly the images :func:`build_benchmark` writes for that split.

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


@dataclass(frozen=True)
class BenchmarkPaths:
    """Where the built-in benchmark lives.

    Attributes:
        root: the benchmark directory.
        czsl_root: root of the compositional split (``images/``, ``compositional-split-natural/``,
            ``metadata_compositional-split-natural.t7``).
        image_root: the folder the classification views' paths are relative to.
        splits: split-JSON file of each classification view (``pairs``, ``colours``, ``shapes``).
    """

    root: Path
    czsl_root: Path
    image_root: Path
    splits: dict[str, Path] = field(default_factory=dict)


def default_cache_dir(seed: int = 0) -> Path:
    """``$VLPROMPT_CACHE`` or ``~/.cache/vlprompt``, then ``synthetic/<version>-seed<seed>``."""
    base = Path(os.environ.get("VLPROMPT_CACHE", Path.home() / ".cache" / "vlprompt"))
    return base / "synthetic" / f"{VERSION}-seed{seed}"


def _paths(root: Path) -> BenchmarkPaths:
    return BenchmarkPaths(
        root=root,
        czsl_root=root,
        image_root=root / "images",
        splits={view: root / f"split_{view}.json" for view in VIEWS},
    )


def build_benchmark(root: str | Path | None = None, seed: int = 0) -> BenchmarkPaths:
    """Write the benchmark (or reuse a complete copy already there) and return its paths.

    The directory is built in a temporary sibling and renamed into place (:func:`vlprompt.io.atomic_directory`),
    so a crash never leaves a half-written benchmark behind. It holds 6,400 images of 48 px (64 per
    pair), shared by the views:

    - the compositional split in the standard CZSL format: ``images/<colour>_<shape>/<i>.png``,
      ``compositional-split-natural/{train,val,test}_pairs.txt`` and
      ``metadata_compositional-split-natural.t7`` (a list of ``{image, attr, obj, set}`` dicts);
      train holds images 0-31 of the seen pairs, val and test hold images 32-39 and 40-63 of the seen
      pairs and images 32-63 of their unseen pairs;
    - classification views in CoOp's split-JSON format (``split_pairs.json``, ``split_colours.json``,
      ``split_shapes.json``): ``{"train"|"val"|"test": [[relpath, label, classname], ...]}`` with
      images 0-31 / 32-39 / 40-63 of every pair, labels in sorted class-name order.

    Args:
        root: target directory (default: :func:`default_cache_dir`).
        seed: seed of the images and of the compositional split.
    """
    root = Path(root) if root is not None else default_cache_dir(seed)
    if (root / _COMPLETE_MARKER).is_file():
        return _paths(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists but holds no complete benchmark; remove it and build again")
    with atomic_directory(root, complete=lambda built: (built / _COMPLETE_MARKER).is_file()) as tmp:
        _write_benchmark(tmp, seed)
        (tmp / _COMPLETE_MARKER).write_text(f"{VERSION} seed={seed}\n")
    return _paths(root)


def _write_benchmark(root: Path, seed: int) -> None:
    paths = _paths(root)
    relpaths: dict[tuple[str, str], list[str]] = {}
    for colour in COLOURS:
        for shape in SHAPES:
            folder = paths.image_root / pair_dirname(colour, shape)
            folder.mkdir(parents=True)
            names = []
            for index, image in enumerate(_render_pair(seed, colour, shape)):
                name = f"{pair_dirname(colour, shape)}/{index:03d}.png"
                Image.fromarray(image).save(paths.image_root / name, compress_level=1)
                names.append(name)
            relpaths[(colour, shape)] = names
    _write_czsl_views(root, czsl_pair_split(seed), relpaths)
    for view in VIEWS:
        _write_split_json(paths.splits[view], view, relpaths)


def _write_czsl_views(
    root: Path, split: dict[str, list[tuple[str, str]]], relpaths: dict[tuple[str, str], list[str]]
) -> None:
    samples: list[dict[str, str]] = []
    for colour, shape in split["train"]:
        names = relpaths[(colour, shape)]
        for subset in ("train", "val", "test"):
            samples += [{"image": names[i], "attr": colour, "obj": shape, "set": subset} for i in _SLICES[subset]]
    for subset in ("val", "test"):
        for colour, shape in split[subset]:
            names = relpaths[(colour, shape)][_SLICES["val"].start :]
            samples += [{"image": name, "attr": colour, "obj": shape, "set": subset} for name in names]
    seen = split["train"]
    pairs = {subset: sorted(seen if subset == "train" else seen + split[subset]) for subset in ("train", "val", "test")}
    write_czsl(root, pairs["train"], pairs["val"], pairs["test"], samples, split=_SPLIT_DIR)


def _write_split_json(path: Path, view: str, relpaths: dict[tuple[str, str], list[str]]) -> None:
    def classname(colour: str, shape: str) -> str:
        return {"pairs": f"{colour} {shape}", "colours": colour, "shapes": shape}[view]

    classnames = sorted({classname(c, s) for c, s in relpaths})
    labels = {name: i for i, name in enumerate(classnames)}
    split: dict[str, list[list[object]]] = {}
    for subset, indices in _SLICES.items():
        split[subset] = [
            [names[i], labels[classname(c, s)], classname(c, s)] for (c, s), names in relpaths.items() for i in indices
        ]
    write_split_json(path, split)


# ---------------------------------------------------------------------------------------- multi-task collection
#: The built-in multi-task collection's tasks (names as prompts read them).
MULTITASK: tuple[str, ...] = ("colour", "shape", "texture", "coloured shape")
_TEXTURE_IMAGES = 64  # per texture, sliced like a pair's images (32 train, 8 val, 24 test)
_MULTITASK_PAIRS = 20  # pairs of the coloured-shape task


@dataclass(frozen=True)
class TaskSplit:
    """Where one task of the built-in collection is: an image root and a CoOp split file."""

    name: str
    root: Path
    split_file: Path


def build_multitask_collection(root: str | Path | None = None, seed: int = 0) -> list[TaskSplit]:
    """The built-in multi-task collection: colour, shape, texture and coloured-shape recognition.

    Colour and shape label the benchmark's images (:func:`build_benchmark`) by their colour (10 classes) or
    shape (10); coloured shape labels the images of 20 of its pairs (drawn with the seed) by pair; texture
    has its own 192 benchmark-domain images of random colours and shapes, labelled solid, striped or dotted.
    Each task is a split file in CoOp's format; the extra files sit beside the benchmark, built once.
    """
    paths = build_benchmark(root, seed)
    extra = paths.root.parent / f"{paths.root.name}-multitask"
    if not (extra / _COMPLETE_MARKER).is_file():
        with atomic_directory(extra, complete=lambda built: (built / _COMPLETE_MARKER).is_file()) as tmp:
            _write_texture_task(tmp, seed)
            _write_pair_task(tmp / "split_coloured_shapes.json", paths.splits["pairs"], seed)
            (tmp / _COMPLETE_MARKER).write_text(f"{VERSION} seed={seed}\n")
    return [
        TaskSplit("colour", paths.image_root, paths.splits["colours"]),
        TaskSplit("shape", paths.image_root, paths.splits["shapes"]),
        TaskSplit("texture", extra / "images", extra / "split_textures.json"),
        TaskSplit("coloured shape", paths.image_root, extra / "split_coloured_shapes.json"),
    ]


def _write_texture_task(root: Path, seed: int) -> None:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 9002]))
    split: dict[str, list[list[object]]] = {s: [] for s in _SLICES}
    for label, texture in enumerate(TEXTURES):
        (root / "images" / texture).mkdir(parents=True)
        for index in range(_TEXTURE_IMAGES):
            colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            name = f"{texture}/{index:03d}.png"
            image = render_array(colour, shape, "benchmark", rng, texture)
            Image.fromarray(image).save(root / "images" / name, compress_level=1)
            subset = next(s for s, r in _SLICES.items() if index in r)
            split[subset].append([name, label, texture])
    write_split_json(root / "split_textures.json", split)


def _write_pair_task(path: Path, pairs_split: Path, seed: int) -> None:
    """The pairs view restricted to :data:`_MULTITASK_PAIRS` pairs drawn with the seed, relabelled in order."""
    full = json.loads(pairs_split.read_text())
    names = sorted({row[2] for row in full["train"]})
    rng = np.random.default_rng(np.random.SeedSequence([seed, 9003]))
    kept = sorted(names[i] for i in rng.choice(len(names), _MULTITASK_PAIRS, replace=False))
    label = {n: i for i, n in enumerate(kept)}
    write_split_json(path, {s: [[p, label[n], n] for p, _, n in rows if n in label] for s, rows in full.items()})
