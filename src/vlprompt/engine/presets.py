"""The papers' training recipes as named presets of :class:`TrainConfig`, read from the method registry.

Each method owns its recipes (``PromptMethod.recipes``, with their sources); a recipe ``"default"`` of
method ``m`` is the preset ``m``, any other recipe ``k`` the preset ``m-k`` (``coop-imagenet``).

``python -m vlprompt.engine.recipe_table`` prints docs/reproduction.md, the table of them all.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import OptionError
from ..methods import METHODS, Recipe
from .trainer import TrainConfig

DEFAULT_RECIPE = "default"
#: The preset that sets nothing: :class:`TrainConfig`'s defaults and the method's own option defaults (a built-in
#: benchmark row runs with it, its recipe given in full as overrides).
NO_PRESET = "none"


def preset_name(method: str, recipe: str) -> str:
    return method if recipe == DEFAULT_RECIPE else f"{method}-{recipe}"


def presets() -> dict[str, Recipe]:
    """Every registered method's recipes by preset name."""
    return {preset_name(m, k): r for m, cls in METHODS.items() for k, r in cls.recipes.items()}


def recipe_config(recipe: Recipe, shots: int = 16, **overrides) -> TrainConfig:
    """The :class:`TrainConfig` of ``recipe`` for ``shots``-shot training, with field overrides."""
    return replace(TrainConfig(**recipe.train_fields(shots)), **overrides)


def preset_recipe(name: str) -> Recipe:
    """The recipe of the preset ``name`` (an :class:`OptionError` listing the presets when there is none)."""
    if name == NO_PRESET:
        return Recipe()
    recipes = presets()
    if name not in recipes:
        raise OptionError(f"unknown preset {name!r}; available: {', '.join(sorted(recipes))}, {NO_PRESET}")
    return recipes[name]


def preset(name: str, shots: int = 16, **overrides) -> TrainConfig:
    """The named recipe for ``shots``-shot training, with field overrides."""
    return recipe_config(preset_recipe(name), shots, **overrides)


def protocol_preset(method: str, protocol: str, dataset: str | None = None) -> str | None:
    """The preset of ``method``'s authors for ``protocol`` on ``dataset``: the recipe naming the dataset first,
    then one for any dataset (None when the authors released none for it: :func:`protocol_presets` lists them)."""
    recipes = METHODS[method].recipes if method in METHODS else {}
    covering = [(k, r) for k, r in recipes.items() if r.covers(protocol, dataset)]
    named = [k for k, r in covering if dataset in r.datasets] + [k for k, r in covering if not r.datasets]
    key = next(iter(named or [k for k, _ in covering]), None)
    return preset_name(method, key) if key is not None else None


def protocol_presets(method: str) -> dict[str, list[str]]:
    """Every protocol ``method``'s authors released a recipe for, with the presets that cover it."""
    out: dict[str, list[str]] = {}
    for key, recipe in (METHODS[method].recipes if method in METHODS else {}).items():
        for protocol in recipe.protocols:
            out.setdefault(protocol, []).append(preset_name(method, key))
    return out
