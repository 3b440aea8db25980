"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): CLIP's zero-shot logits plus a cache of few-shot features.

For an L2-normalised image feature f, logits = 100 · f·W + alpha · exp(-beta (1 - f·K)) · V, with W the
hand-template classifier, K the keys (the few-shot training features, each averaged over ``augment_epoch``
augmented views and then normalised) and V their one-hot labels (Tip-Adapter@d0e2d6f:utils.py:18-62,
main.py:26-42). Setup builds the cache; (beta, alpha) are then chosen by the authors' grid search
(utils.py:99-129) on the held-out validation split (:meth:`TipAdapter.tune`; the release's ImageNet script
searches test). Tip-Adapter-F trains the keys (initialised from a copy of K; the release shares their storage)
with beta and alpha held at their initial values, then searches again with the trained keys.

The values are ``F.one_hot(labels, num_classes)``; the release omits ``num_classes`` (width: the largest label
+ 1), which is the same whenever every class has a shot, and setup refuses a class without one. Everything is
fp32 (the release is fp16 end to end).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import transforms as T

from ..backbones import Backbone
from ..errors import DataError
from ..labels import ClassNames
from .base import Batch, BuiltinRow, MethodConfig, MethodInputError, MethodOptionError, PromptMethod, Recipe, option
from .zeroshot import COOP_ENSEMBLE_TEMPLATES, ensemble_text_features

if TYPE_CHECKING:
    from ..data.images import LabeledImages
    from ..features import FeatureCache

TIP_ADAPTER_REPO = "gaopengcuhk/Tip-Adapter@d0e2d6f8c5feb8b6ce937b757810761f7155d4d5"
#: The release's fixed logit scale of CLIP's term (main.py:32; not the model's own scale).
CLIP_SCALE = 100.0
#: Per dataset (vlprompt's names): the release's config file, init_alpha and search_scale [beta, alpha]
#: (configs/<file>.yaml; init_beta 1, search_step [200, 20], augment_epoch 10 everywhere).
DATASET_CONFIGS: dict[str, tuple[str, float, tuple[float, float]]] = {
    "imagenet": ("imagenet", 1.17, (7, 3)),
    "caltech101": ("caltech101", 3, (12, 5)),
    "dtd": ("dtd", 2, (13, 13)),
    "eurosat": ("eurosat", 2, (12, 10)),
    "fgvc_aircraft": ("fgvc", 5, (30, 30)),
    "food101": ("food101", 1.17, (10, 10)),
    "oxford_flowers": ("oxford_flowers", 10, (50, 50)),
    "oxford_pets": ("oxford_pets", 1.17, (7, 3)),
    "stanford_cars": ("stanford_cars", 3, (20, 10)),
    "sun397": ("sun397", 1.17, (12, 10)),
    "ucf101": ("ucf101", 3, (7, 3)),
}
_CPU = "vlprompt's CPU recipe for the built-in benchmark: the release's options and search"


@dataclass
class TipAdapterConfig(MethodConfig):
    """Tip-Adapter's options (defaults: the release's ImageNet config, configs/imagenet.yaml).

    Attributes:
        templates: hand templates of the classifier W, with ``{}`` for the class name (each encoded and
            normalised, averaged, normalised again; ImageNet's recipe uses CoOp's 7 templates).
        init_beta: beta (the affinity's sharpness) before the search, and while Tip-Adapter-F trains.
        init_alpha: alpha (the cache's weight) likewise.
        search: choose (beta, alpha) on the validation split after setup or training (the release's search_hp).
        search_scale: the grid's upper ends [beta, alpha] (never reached: see :func:`search_grid`).
        search_step: the grid's sizes [beta, alpha].
        augment_epoch: augmented views of each training image averaged into its key.
        augment_seed: seeds the views' random crops and flips (the release seeds torch with 1, main.py:165).
    """

    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    init_beta: float = option(1.0, low=0.0)
    init_alpha: float = option(1.17, low=0.0)
    search: bool = True
    search_scale: list[float] = field(default_factory=lambda: [7.0, 3.0])
    search_step: list[int] = field(default_factory=lambda: [200, 20])
    augment_epoch: int = option(10, low=1)
    augment_seed: int = 1


def search_grid(scale: float, steps: int) -> list[float]:
    """The release's grid: i · (scale - 0.1) / steps + 0.1 for i < steps (so ``scale`` itself is never tried)."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


def cache_logits(affinity: Tensor, values: Tensor, beta: Tensor | float) -> Tensor:
    """exp(-beta (1 - affinity)) · values, written as the release computes it (main.py:36)."""
    return ((-1) * (beta - beta * affinity)).exp() @ values


def search_beta_alpha(
    clip_logits: Tensor, affinity: Tensor, values: Tensor, labels: Tensor, scale: Sequence[float], steps: Sequence[int]
) -> tuple[float, float, int]:
    """(beta, alpha, correct): the release's search (utils.py:99-129): beta outer, alpha inner, and only a strictly
    higher accuracy replaces the best, so the first best grid point wins; (0, 0) when none is above 0 correct."""
    best = (0.0, 0.0, 0)
    for beta in search_grid(scale[0], steps[0]):
        cache = cache_logits(affinity, values, beta)
        for alpha in search_grid(scale[1], steps[1]):
            correct = int(((clip_logits + cache * alpha).argmax(-1) == labels).sum())
            if correct > best[2]:
                best = (beta, alpha, correct)
    return best


def augmented_features(backbone: Backbone, data: LabeledImages, views: int, seed: int, batch_size: int = 256) -> Tensor:
    """[views, N, D] raw image features of ``views`` passes of RandomResizedCrop (scale 0.5-1, bicubic) and a
    horizontal flip over ``data`` (main.py:173-181), drawn from torch's RNG seeded with ``seed`` (restored after)."""
    cfg = backbone.preprocess_cfg
    augment = T.Compose([
        T.RandomResizedCrop(cfg["size"], scale=(0.5, 1), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=0.5),
        T.ToTensor(),
        T.Normalize(tuple(cfg["mean"]), tuple(cfg["std"])),
    ])  # fmt: skip
    images = data.with_transform(augment)
    passes = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for _ in range(views):
            chunks = []
            for start in range(0, len(images), batch_size):
                pixels = torch.stack([images[i][0] for i in range(start, min(start + batch_size, len(images)))])
                chunks.append(backbone.encode_image(pixels.to(backbone.device)).float())
            passes.append(torch.cat(chunks))
    return torch.stack(passes)


class TipAdapter(PromptMethod):
    """Training-free: the cache is built at setup and (beta, alpha) searched on validation; nothing is trained."""

    name = "tip-adapter"
    Config = TipAdapterConfig
    config: TipAdapterConfig
    labels: ClassNames
    learns = False
    sets_up = True
    transfers = False  # one cache value per training class
    recipes = {
        "default": Recipe(source=f"{TIP_ADAPTER_REPO}:configs/imagenet.yaml, main.py, utils.py"),
        **{
            dataset: Recipe(
                options={
                    "init_alpha": float(alpha),
                    "search_scale": [float(s) for s in scale],
                    **({"templates": list(COOP_ENSEMBLE_TEMPLATES)} if dataset == "imagenet" else {}),
                },
                source=f"{TIP_ADAPTER_REPO}:configs/{file}.yaml"
                + (", datasets/imagenet.py:177-183 (CoOp's 7 templates)" if dataset == "imagenet" else ""),
            )
            for dataset, (file, alpha, scale) in DATASET_CONFIGS.items()
        },
    }
    builtin_rows = (BuiltinRow("tip-adapter", Recipe(source=_CPU), default=False),)
    tiny = Recipe(options={"augment_epoch": 2, "search_step": [20, 5]})
    template_option = "templates"
    cache_keys: Tensor
    cache_values: Tensor
    beta: Tensor
    alpha: Tensor
    clip_weights: Tensor

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: TipAdapterConfig | None = None):
        super().__init__(backbone, classes, config)
        cfg, device = self.config, backbone.device
        for name, low in (("search_scale", 0.0), ("search_step", 1)):
            values = getattr(cfg, name)
            if len(values) != 2 or min(values) < low:
                raise MethodOptionError(f"{self.name} option {name} must be [beta, alpha], each >= {low}, not {values}")
        if not cfg.templates or any("{}" not in t for t in cfg.templates):
            raise MethodOptionError(f"{self.name} option templates must be templates with '{{}}', not {cfg.templates}")
        # the cache (setup state: saved in the prompt file; empty until setup)
        self.register_setup_state("cache_keys", torch.empty(0, backbone.embed_dim, device=device))
        self.register_setup_state("cache_values", torch.empty(0, len(self.labels), device=device))
        self.register_setup_state("beta", torch.tensor(cfg.init_beta, device=device))
        self.register_setup_state("alpha", torch.tensor(cfg.init_alpha, device=device))
        self._labels_changed(backbone)

    def _labels_changed(self, backbone: Backbone) -> None:
        with torch.no_grad():
            weights = ensemble_text_features(backbone, self.labels.names, self.config.templates)
        self.register_buffer("clip_weights", weights.float(), persistent=False)

    # ---------------------------------------------------------------- the cache
    def setup(self, backbone: Backbone, train_set: LabeledImages, cache: FeatureCache) -> None:
        """Build the keys and values from the few-shot training images (every class needs at least one)."""
        counts = torch.bincount(torch.tensor(train_set.labels, dtype=torch.long), minlength=self.num_classes)
        if not len(train_set) or bool((counts == 0).any()):
            empty = [self.labels.names[i] for i in (counts == 0).nonzero().flatten().tolist()][:5]
            raise DataError(
                f"{self.name} builds its cache from K training images a class; class(es) {empty} have none "
                "(zero shots): give --data.shots >= 1 and a training split with every class"
            )
        views = augmented_features(backbone, train_set, self.config.augment_epoch, self.config.augment_seed)
        self.register_setup_state("cache_keys", F.normalize(views.mean(0), dim=-1))  # averaged, then normalised
        labels = torch.tensor(train_set.labels, device=views.device)
        self.register_setup_state("cache_values", F.one_hot(labels, self.num_classes).float())
        self._views_built(views)

    def _views_built(self, views: Tensor) -> None:
        """What a subclass keeps of the augmented views (Tip-Adapter-F trains on them)."""

    def tune(self, backbone: Backbone, val_set: LabeledImages, cache: FeatureCache) -> None:
        """The (beta, alpha) search on the validation images (the model's preprocessing, as the release's)."""
        if not self.config.search:
            return
        self._check_cache()
        data = val_set.with_transform(backbone.image_transform())
        with torch.no_grad():
            features = F.normalize(cache.features(backbone, data, progress=False).float(), dim=-1)
            labels = torch.tensor(data.labels, device=features.device)
            clip = CLIP_SCALE * features @ self.clip_weights.t()
            beta, alpha, _ = search_beta_alpha(
                clip, self.affinity(features), self.cache_values, labels, self.config.search_scale,
                self.config.search_step,
            )  # fmt: skip
        self.beta.fill_(beta)
        self.alpha.fill_(alpha)

    def _check_cache(self) -> None:
        if not len(self.cache_keys):
            raise MethodInputError(f"{self.name} has no cache: its setup (which the run loop calls) builds it first")

    # ---------------------------------------------------------------- scoring
    def affinity(self, features: Tensor) -> Tensor:
        """[B, NK] f·K of normalised features with the keys."""
        return features @ self.cache_keys.t()

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        return self.clip_weights

    def logits(self, backbone: Backbone, batch: Batch, text: Tensor | None = None) -> Tensor:
        self._check_cache()
        image = self.image_features(backbone, batch)
        with torch.autocast(image.device.type, enabled=False):  # fp32 (the release is fp16)
            features = F.normalize(image.float(), dim=-1)
            clip = CLIP_SCALE * features @ (self.clip_weights if text is None else text).float().t()
            return clip + cache_logits(self.affinity(features), self.cache_values, self.beta) * self.alpha


@dataclass
class TipAdapterFConfig(TipAdapterConfig):
    """Tip-Adapter-F's options: Tip-Adapter's, and what the keys train on.

    Attributes:
        train_views: "cache": training epoch e sees view (e mod augment_epoch) of the cache's augmented views of
            each image (its 20 epochs reuse the 10 views: cheaper); "engine": the engine's batches (frozen
            un-augmented features, or with --train.augment its own crops, fresh each epoch as the release draws
            them, main.py:85-106: the paper presets, with --train.crop_scale 0.5).
    """

    train_views: Literal["cache", "engine"] = "cache"


def _f_recipe(dataset: str | None, as_released: bool = True) -> Recipe:
    """Tip-Adapter-F's release recipe (main.py:69-141, main_imagenet.py:46-106 on ImageNet, configs/<dataset>.yaml):
    AdamW lr 1e-3, eps 1e-4, torch's weight decay 0.01, cosine stepped per iteration, batch 256 with the last
    partial batch kept (datasets/utils.py:373; ImageNet's plain DataLoader keeps it too), 20 epochs (EuroSAT 100),
    a fresh random-resized crop (scale 0.5-1) and flip of every image each epoch (main.py:85-88 with the transform
    of main.py:173-181: ``train_views`` "engine" on augmented views), fp16 (the keys in CLIP's fp16 dtype,
    main.py:69; here fp16 autocast with fp32 master keys, as the spec keeps them), the epoch of best validation
    accuracy (the release picks it on test, main.py:114-141).

    ``as_released`` False: the CPU row's recipe as it was before the loader, views and precision were set (the
    cache's views, last partial batch dropped, fp32 on the CPU), so that its numbers stay as measured.
    """
    train = {"epochs": 100 if dataset == "eurosat" else 20, "batch_size": 256, "optimizer": "adamw", "lr": 1e-3}
    train |= {"adam_eps": 1e-4, "weight_decay": 0.01, "schedule": "cosine", "warmup_epochs": 0}
    train |= {"select": "best", "eval_every": 1}
    base = TipAdapter.recipes[dataset or "default"]
    if not as_released:
        return Recipe(train=train, options=base.options, source=f"{base.source}; main.py:69-141")
    train |= {"drop_last": False, "precision": "fp16", "augment": True, "crop_scale": 0.5}
    loop = "main_imagenet.py:46-106" if dataset == "imagenet" else "main.py:69-141, 173-181"
    source = f"{base.source}; {loop}, datasets/utils.py:373"
    return Recipe(train=train, options={**base.options, "train_views": "engine"}, source=source)


class TipAdapterF(TipAdapter):
    """The keys are learnable (an [NK, D] weight initialised from a copy of the cache's keys, never re-normalised);
    W, V, beta and alpha stay fixed while they train; (beta, alpha) are searched afterwards with the trained keys."""

    name = "tip-adapter-f"
    Config = TipAdapterFConfig
    config: TipAdapterFConfig
    learns = True
    sets_up = True
    transfers = False
    recipes = {"default": _f_recipe(None), **{d: _f_recipe(d) for d in DATASET_CONFIGS}}
    builtin_rows = (BuiltinRow("tip-adapter-f", _f_recipe(None, as_released=False).but(_CPU), default=False),)
    tiny = Recipe(options={"augment_epoch": 2, "search_step": [20, 5]})
    template_option = "templates"

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: TipAdapterFConfig | None = None):
        super().__init__(backbone, classes, config)
        self.adapter_keys = nn.Parameter(torch.empty(0, backbone.embed_dim, device=backbone.device))
        self._views: Tensor | None = None  # [views, N, D] normalised training views (not saved)
        self._epoch = 0

    def _views_built(self, views: Tensor) -> None:
        self.adapter_keys = nn.Parameter(self.cache_keys.clone())  # a copy: training leaves the cache as built
        self._views = F.normalize(views, dim=-1)

    def expect_setup_state(self, tensors: Mapping[str, Tensor]) -> None:
        super().expect_setup_state(tensors)
        saved = tensors.get("adapter_keys")
        if saved is not None and saved.shape != self.adapter_keys.shape:
            self.adapter_keys = nn.Parameter(torch.empty_like(saved, device=self.adapter_keys.device))

    def affinity(self, features: Tensor) -> Tensor:
        return features @ self.adapter_keys.t()

    def image_features(self, backbone: Backbone, batch: Batch) -> Tensor:
        if self.training and self.config.train_views == "cache" and self._views is not None:
            if batch.index is None or int(batch.index.max()) >= self._views.shape[1]:
                raise MethodInputError(f"{self.name} trains on the images its setup saw: batch indices out of range")
            view = self._views[self._epoch % len(self._views)]
            return view[batch.index.to(view.device)]
        return super().image_features(backbone, batch)

    def end_epoch(self, epoch: int, epochs: int) -> None:
        self._epoch = epoch + 1  # the next epoch's view

    def get_extra_state(self) -> Tensor:
        return torch.tensor(self._epoch)  # the epochs seen: checkpoints carry it, so a resumed run sees the same views

    def set_extra_state(self, state: Tensor) -> None:
        self._epoch = int(state)
