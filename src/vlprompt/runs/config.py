"""The typed configs every run shares: the backbone, the training recipe, seeds and the run directory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, get_type_hints

import torch

from .. import distributed as dist
from ..backbones import DEFAULT_BACKBONE, Backbone, BackboneError, load_backbone
from ..backbones.loading import check_backbone
from ..engine import TrainConfig, recipe_config
from ..engine.presets import preset_recipe
from ..errors import OptionError
from ..methods import METHODS, Recipe
from ..predict import backbone_for_prompt
from ..schema import check_unique


@dataclass
class BackboneConfig:
    """Which frozen model to use.

    Attributes:
        name: bundled name (vlprompt/tiny-shapes, the default), open_clip architecture (ViT-B-32),
            hf-hub:/local-dir: name, or the path of a checkpoint in OpenAI's format. Commands that load a
            saved prompt default to the backbone it was trained on.
        pretrained: pretrained tag (openai, laion2b_s34b_b79k), local open_clip checkpoint file, or "random"
            (random weights, only when asked for) for an open_clip architecture.
        device: "auto" (GPU when available), "cpu", "cuda", "cuda:1".
    """

    name: str | None = None
    pretrained: str | None = None
    device: str = "auto"

    def torch_device(self) -> torch.device:
        """The device asked for, checked to exist here."""
        if self.device == "auto":
            return dist.default_device()
        try:
            device = torch.device(self.device)
        except (RuntimeError, ValueError):
            raise BackboneError(
                f"--backbone.device {self.device!r} is not a device: use auto, cpu, cuda or cuda:N"
            ) from None
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise BackboneError(
                    f"--backbone.device {self.device}: no CUDA GPU is available here (torch.cuda.is_available() is "
                    "False); use --backbone.device auto (a GPU when there is one) or cpu"
                )
            if device.index is not None and device.index >= count:
                raise BackboneError(
                    f"--backbone.device {self.device}: this machine has {count} GPU(s), cuda:0..{count - 1}"
                )
        return device

    def validate(self) -> None:
        """Check the device and the name / pretrained tag without loading anything."""
        self.torch_device()
        if self.name is not None:
            check_backbone(self.name, self.pretrained)

    def load(self, prompt: str | None = None) -> Backbone:
        """The backbone; without a name, the one ``prompt`` was trained on, else the bundled default."""
        if self.name is None and prompt:
            return backbone_for_prompt(prompt, None, None, self.torch_device())
        return load_backbone(self.name or DEFAULT_BACKBONE, self.pretrained, device=self.torch_device())


_hints = get_type_hints(TrainConfig)
#: :class:`TrainConfig` with every field optional: the fields a user sets override the preset's.
TrainOverrides = make_dataclass(
    "TrainOverrides",
    [(f.name, _hints[f.name] | None, field(default=None)) for f in fields(TrainConfig)],
)
TrainOverrides.__doc__ = (
    "Overrides of the training recipe (unset fields keep the preset's).\n"
    + (TrainConfig.__doc__ or "").split("\n", 1)[1]
)


def train_overrides(config: TrainConfig | dict[str, Any] | None = None, **values: Any) -> Any:
    """A :data:`TrainOverrides` setting every field of ``config`` (and ``values``)."""
    base = dataclasses.asdict(config) if isinstance(config, TrainConfig) else dict(config or {})
    return TrainOverrides(**{**base, **values})


#: Options that moved under ``data`` (every command takes its data options as ``--data.*``), by command: a
#: config.yaml written before is read with them moved (:func:`moved_to_data`), so it replays and resumes.
MOVED_TO_DATA = {
    "czsl": ("root", "split_name", "skip_bad_images"),
    "multitask": ("tasks", "collection", "shots"),
    "bench": ("root", "shots"),
    "demo": ("shots", "view"),
    "data": ("root",),
}


def moved_to_data(command: str, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` (a config of ``command``) with the options of :data:`MOVED_TO_DATA` moved under ``data``."""
    moved = {k: record[k] for k in MOVED_TO_DATA.get(command, ()) if k in record}
    if not moved:
        return record
    data = record.get("data")
    data = data if isinstance(data, dict) else {}
    return {**{k: v for k, v in record.items() if k not in moved}, "data": {**moved, **data}}


#: In a method option's text, the seed being trained (e.g. a teacher prompt per seed: ``runs/t/seed{seed}/prompt``).
SEED_FIELD = "{seed}"


def options_for_seed(options: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """``options`` with :data:`SEED_FIELD` in their text replaced by ``seed`` (unchanged when ``seed`` is None)."""

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(SEED_FIELD, str(seed))
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    return options if seed is None else {k: fill(v) for k, v in options.items()}


def check_seeds(seeds: list[int]) -> None:
    """At least one seed, each distinct and within torch's 64-bit seed range (before any work)."""
    if not seeds:
        raise OptionError("--seeds is empty: give at least one seed, e.g. --seeds [1]")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise OptionError(f"--seeds: seed {seed!r} is not an integer in 0..2**64-1")
    check_unique(seeds, "--seeds", OptionError, key=lambda s: s, what="seeds")


@dataclass
class RunConfig:
    """What every protocol's run has: a backbone, a method, a recipe, seeds and a run directory.

    Attributes:
        backbone: the frozen model.
        method: the registered method name.
        method_options: the method's hyperparameters (its config dataclass's fields); ``{seed}`` in an option's text
            is the seed being trained (e.g. a teacher prompt per seed, ``runs/teacher/seed{seed}/prompt``).
        preset: training recipe; default: the protocol's (the method's own where one exists).
        train: overrides of the recipe's fields.
        seeds: one run per seed; the table reports mean ± std over them.
        out: the run directory.
        resume: continue an interrupted run in ``out`` (finished seeds are not retrained).
        overwrite: replace an existing run in ``out``.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    method: str = "coop"
    method_options: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    train: TrainOverrides = field(default_factory=TrainOverrides)  # type: ignore[valid-type]
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    out: str = "runs/train"
    resume: bool = False
    overwrite: bool = False

    def default_preset(self) -> str | None:
        """The recipe used when ``preset`` is not set."""
        cls = METHODS.get(self.method.lower())
        return cls.default_preset(self.method_options) if cls is not None else None

    def recipe(self) -> Recipe:
        """The preset's recipe (an empty one: ``TrainConfig``'s defaults, where there is none)."""
        name = self.preset or self.default_preset()
        return preset_recipe(name) if name else Recipe()

    def train_config(self, shots: int = 0) -> TrainConfig:
        """The resolved recipe: the preset for ``shots`` with the fields set in ``train`` replaced."""
        train: dict[str, Any] = self.train if isinstance(self.train, dict) else dataclasses.asdict(self.train)
        return recipe_config(self.recipe(), shots, **{k: v for k, v in train.items() if v is not None})

    def resolved_options(self) -> dict[str, Any]:
        """The method's options: those the recipe sets, with the user's ``method_options`` on top."""
        return {**self.recipe().options, **self.method_options}
