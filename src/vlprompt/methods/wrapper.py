"""A method that adds to any other registered method (as DePT adds to CoOp, KgCoOp, MaPLe or PromptSRC).

A wrapper holds the wrapped method as ``self.inner`` (built from its options ``{method, options}``, saved
in the same prompt file under ``inner.``) and delegates everything to it by default; a subclass adds its
own tensors and changes what it needs (logits, loss). Its capabilities are derived from the wrapped
method's with these options (:meth:`MethodWrapper.capabilities`), and without a recipe of its own it
trains with the wrapped method's (:meth:`MethodWrapper.default_preset`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..backbones import Backbone
from .base import Batch, MethodConfig, MethodOptionError, PromptMethod, option

#: Capabilities a wrapper has when the wrapped method or the wrapper itself has them (``transfers`` and
#: ``learns_without_labels`` need both; ``scores_with_text`` and ``has_context`` are the wrapped method's).
_EITHER = ("changes_image_tower", "conditions_on_image", "learns", "changes_backbone", "sets_up", "adapts_at_test_time")


@dataclass
class WrapperConfig(MethodConfig):
    """Attributes:
    method: the wrapped registered method (of the same label space).
    options: the wrapped method's options.
    """

    method: str = option("coop")
    options: dict[str, Any] = field(default_factory=dict)


class MethodWrapper(PromptMethod):
    """Base of the wrappers: the wrapped method is ``inner``; every hook delegates to it unless overridden."""

    Config = WrapperConfig
    config: WrapperConfig
    inner: PromptMethod

    def __init__(self, backbone: Backbone, labels: Any, config: WrapperConfig | None = None):
        super().__init__(backbone, labels, config)
        inner_cls, inner_config = self.wrapped(self.config)
        self.inner = inner_cls(backbone, self.labels, inner_config)
        for flag, value in self.capabilities(self.config).items():
            setattr(self, flag, value)  # this instance's flags: the wrapped method's, combined with its own

    @classmethod
    def wrapped(cls, config: WrapperConfig) -> tuple[type[PromptMethod], MethodConfig]:
        """The wrapped method's class and config."""
        from . import method_class  # the registry imports the wrappers

        inner = method_class(config.method, cls.label_kind)
        if issubclass(inner, MethodWrapper):
            raise MethodOptionError(f"{cls.name} option method {config.method!r} is a wrapper itself")
        return inner, inner.Config.from_dict(config.options, inner.name, f"{cls.name} option options")

    @classmethod
    def capabilities(cls, config: MethodConfig | None = None) -> dict[str, bool]:
        config = config if config is not None else cls.Config()
        inner_cls, inner_config = cls.wrapped(config)  # type: ignore[arg-type]
        flags = inner_cls.capabilities(inner_config)
        for flag in _EITHER:
            flags[flag] = flags[flag] or bool(getattr(cls, flag))
        flags["transfers"] = flags["transfers"] and cls.transfers
        flags["learns_without_labels"] = flags["learns_without_labels"] and cls.learns_without_labels
        return flags

    @classmethod
    def transfers_with(cls, config: MethodConfig) -> bool:
        return cls.capabilities(config)["transfers"]

    @classmethod
    def default_preset(cls, options: Mapping[str, Any]) -> str | None:
        if "default" in cls.recipes:
            return cls.name
        from . import method_class

        inner = method_class(str(options.get("method", cls.Config().method)))
        return inner.default_preset(options.get("options", {}))

    # ---------------------------------------------------------------- delegated
    def _labels_changed(self, backbone: Backbone) -> None:
        if self.inner.labels != self.labels:
            self.inner.set_classes(backbone, self.labels)

    def image_features(self, backbone: Backbone, batch: Batch) -> Tensor:
        return self.inner.image_features(backbone, batch)

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        return self.inner.text_features(backbone, image_features)

    def reusable_text_features(self, backbone: Backbone) -> Tensor | None:
        return None if self.adapts_at_test_time else self.inner.reusable_text_features(backbone)

    def logits(self, backbone: Backbone, batch: Batch, text: Tensor | None = None) -> Tensor:
        return self.inner.logits(backbone, batch, text)

    def loss(self, backbone: Backbone, batch: Batch, logits: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return self.inner.loss(backbone, batch, logits, label_smoothing)

    def predicted_labels(self, batch: Batch, logits: Tensor) -> Tensor:
        return self.inner.predicted_labels(batch, logits)

    def param_groups(self) -> list[dict[str, Any]]:
        inner = {id(p) for p in self.inner.parameters()}
        own = [p for p in self.parameters() if p.requires_grad and id(p) not in inner]
        return self.inner.param_groups() + ([{"params": own}] if own else [])

    def setup(self, backbone, train_set, cache) -> None:
        self.inner.setup(backbone, train_set, cache)

    def tune(self, backbone, val_set, cache) -> None:
        self.inner.tune(backbone, val_set, cache)

    def end_epoch(self, epoch: int, epochs: int) -> None:
        self.inner.end_epoch(epoch, epochs)

    @contextmanager
    def adapted(self, backbone: Backbone, batch: Batch) -> Iterator[None]:
        with self.inner.adapted(backbone, batch):
            yield

    def cache_key(self) -> str:
        return self.inner.cache_key()

    def nearest_words(self, backbone: Backbone, k: int = 3):
        return self.inner.nearest_words(backbone, k)  # type: ignore[operator]
