"""The papers' training recipes as named presets of :class:`TrainConfig`, read from the method registry.

Each method owns its recipes (``PromptMethod.recipes``, with their sources); a recipe ``"default"`` of
method ``m`` is the preset ``m``, any other recipe ``k`` the preset ``m-k`` (``coop-imagenet``).
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import OptionError
from ..methods import METHODS, Recipe
from .trainer import TrainConfig

DEFAULT_RECIPE = "default"


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
    recipes = presets()
    if name not in recipes:
        raise OptionError(f"unknown preset {name!r}; available: {', '.join(sorted(recipes))}")
    return recipes[name]


def preset(name: str, shots: int = 16, **overrides) -> TrainConfig:
    """The named recipe for ``shots``-shot training, with field overrides."""
    return recipe_config(preset_recipe(name), shots, **overrides)
