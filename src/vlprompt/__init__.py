"""vlprompt: prompt learning for CLIP-style vision-language models."""

from .errors import BackboneError, DataError, OptionError, PromptFileError, RunDirError, VlpromptError

__version__ = "0.1.0"

__all__ = [
    "BackboneError",
    "DataError",
    "OptionError",
    "Prediction",
    "Predictor",
    "PromptFileError",
    "RunDirError",
    "VlpromptError",
    "__version__",
]


def __getattr__(name: str):
    if name in ("Predictor", "Prediction"):  # imported on first use: `import vlprompt` stays cheap
        from . import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'vlprompt' has no attribute {name!r}")
