"""The engine: one training loop for all methods, schedules and the papers' recipes."""

from ..features import FeatureCache
from .presets import preset, presets, recipe_config
from .trainer import FitResult, TrainConfig, fit

__all__ = ["FeatureCache", "FitResult", "TrainConfig", "fit", "preset", "presets", "recipe_config"]
