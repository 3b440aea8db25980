"""The engine: one training loop for all methods, schedules and the papers' recipes."""

from ..features import FeatureCache
from .presets import PRESETS, preset
from .trainer import FitResult, TrainConfig, fit

__all__ = ["PRESETS", "FeatureCache", "FitResult", "TrainConfig", "fit", "preset"]
