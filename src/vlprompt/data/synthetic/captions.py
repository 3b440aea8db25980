"""Captions of web-domain images: synonyms, texture words, sometimes only the colour or only the shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

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
