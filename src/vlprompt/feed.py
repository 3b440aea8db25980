"""Batches of images for methods: the one place that decides what a method sees of each image, and the one
iterator training, evaluation, predict, CZSL and bench draw batches from.

A method sees one of three inputs (:func:`image_input`):

- ``pixels``: preprocessed images, for a method that changes the image tower (or when asked);
- ``features``: frozen image features of the un-augmented images, read from a
  :class:`~vlprompt.features.FeatureCache` when the images are files (each image encoded once, whatever the
  number of methods, seeds and runs), or encoded once per batch for in-memory images;
- ``views``: frozen features of augmented training views. A view is a pure function of (seed, epoch, image)
  (:class:`~vlprompt.data.images.SeededViews`), so each epoch's views are encoded once, in large no-grad
  batches, and reused by every method and run that draws them; the image tower never runs under autograd.

A method that asks for it (:meth:`~vlprompt.methods.PromptMethod.needs_second_view`, CoPrompt) also gets, in
training, the frozen features of a second, independent view of each image (``Batch.second_view``: the view
index 1 of the same seed, epoch and image; the image itself without ``augment``), cached as the views are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from . import distributed as dist
from .backbones import Backbone
from .data.images import LabeledImages, SeededViews
from .errors import OptionError
from .features import FeatureCache
from .methods import Batch, PromptMethod

PIXELS, FEATURES, VIEWS = "pixels", "features", "views"
#: The cache key of the second views' frozen features: the frozen tower's, whatever a method's delta.
SECOND = ""
#: Views by (cache key, view index): [N, D] frozen features by dataset index.
Views = dict[tuple[str, int], Tensor]


def image_input(
    method: PromptMethod, augment: bool = False, cache_features: bool | None = None, scoring: bool = False
) -> str:
    """What ``method`` sees of each image: :data:`PIXELS`, :data:`FEATURES` or :data:`VIEWS` (see the module).

    Args:
        augment: the batches are augmented training views.
        cache_features: for a method that leaves the image tower untouched: None (automatic: cached features of
            the images, or of their augmented views with ``augment``), True (cached features of the un-augmented
            images, even with ``augment``) or False (pixels through the frozen tower).
        scoring: the batches are scored (evaluation, predict): a method that adapts at test time sees pixels.
    """
    if method.changes_image_tower or (scoring and method.adapts_at_test_time):
        if cache_features:
            why = "changes the image tower" if method.changes_image_tower else "adapts to each test image"
            raise OptionError(f"{method.name} {why}: its image features cannot be cached")
        return PIXELS
    if cache_features is False:
        return PIXELS
    return VIEWS if augment and cache_features is None else FEATURES


def sees_pixels(method: PromptMethod, augment: bool = False, cache_features: bool | None = None) -> bool:
    """Whether ``method`` is fed pixels (see :func:`image_input`)."""
    return image_input(method, augment, cache_features) == PIXELS


class Feed:
    """A dataset as :class:`~vlprompt.methods.Batch` es for one or more methods, their inputs decided once.

    Each index batch yields one ``Batch`` per method: pixels are read and preprocessed once for all methods, and
    frozen features are computed once for all the methods that leave the image tower untouched (cached tables
    are kept apart per backbone delta, :meth:`~vlprompt.methods.PromptMethod.cache_key`, read once here).

    Args:
        backbone: the frozen backbone.
        dataset: a :class:`~vlprompt.data.images.LabeledImages` (files: frozen features come from ``cache``), or
            any dataset of ``(pixels, label)`` items already preprocessed (in-memory images: frozen features are
            encoded per batch).
        methods: the methods fed.
        cache: where frozen features of files come from (a private in-memory one by default).
        augment: training views (``augmentation``, seeded per ``view_seed``, epoch and image) instead of the
            evaluation transform.
            Without ``augment`` and ``targets`` the batches are scored: a method that adapts at test time is fed
            pixels, read with its own :meth:`~vlprompt.methods.PromptMethod.test_views` where it has them (such a
            method is then the only one of the feed fed pixels).
        crop_scale: the augmented crops' smallest area, a fraction of the image's (0.08: Dassl's).
        augmentation: which augmentation, a name of :data:`~vlprompt.data.augment.AUGMENTATIONS`.
        cache_features: see :func:`image_input`.
        view_seed: the seed of the augmented views (a run's seed).
        targets: put the dataset's labels (and task ids) into the batches (training); evaluation leaves them out.
        num_workers: DataLoader workers for image loading.
        progress: show progress while frozen features are computed.
    """

    #: a LabeledImages, or a dataset of preprocessed (pixels, label) items with ``labels`` (and ``tasks``)
    dataset: Any

    def __init__(
        self,
        backbone: Backbone,
        dataset: Dataset,
        methods: PromptMethod | Sequence[PromptMethod],
        cache: FeatureCache | None = None,
        *,
        augment: bool = False,
        crop_scale: float = 0.08,
        augmentation: str = "crop-flip",
        cache_features: bool | None = None,
        view_seed: int = 0,
        targets: bool = False,
        num_workers: int = 0,
        progress: bool = False,
    ):
        self.backbone, self.dataset, self.augment, self.view_seed = backbone, dataset, augment, view_seed
        self.crop_scale, self.augmentation = crop_scale, augmentation
        self.methods = [methods] if isinstance(methods, PromptMethod) else list(methods)
        scoring = not augment and not targets
        self.inputs = [image_input(m, augment, cache_features, scoring) for m in self.methods]
        self.files = isinstance(dataset, LabeledImages)
        self.test_views = self._test_views(scoring)
        if augment and not self.files:
            raise OptionError("augmented views need image files (a LabeledImages dataset)")
        self.cache = cache or FeatureCache()
        self.progress = progress
        self.keys = [None if i == PIXELS else m.cache_key() for m, i in zip(self.methods, self.inputs)]
        self.second_view = [targets and m.needs_second_view() for m in self.methods]
        self.gives_second_view = any(self.second_view)
        self.tables: dict[str, Tensor] = {}  # cached frozen features (un-augmented) by backbone delta
        if self.files:
            frozen = self.dataset.with_transform(backbone.image_transform())
            table_keys = [k for k, i in zip(self.keys, self.inputs) if i == FEATURES]
            table_keys += [SECOND] if self.gives_second_view and not augment else []  # the image itself
            for key in dict.fromkeys(table_keys):  # no None (PIXELS)
                self.tables[key] = self.cache.features(backbone, frozen, progress, key_extra=key)  # type: ignore[index,arg-type]
        self.reads_images = PIXELS in self.inputs or not self.files
        self.targets = torch.tensor(self.dataset.labels, device=backbone.device) if targets else None
        tasks = self.dataset.tasks if targets else None
        self.tasks = torch.tensor(tasks, device=backbone.device) if tasks is not None else None
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def uses_cached_features(self) -> bool:
        """Whether every method is fed cached features (no image is read while iterating)."""
        return not self.reads_images

    def _test_views(self, scoring: bool):
        """The one test-time transform of the pixel-fed methods, if one reads its own test views."""
        pixel_fed = [m for m, i in zip(self.methods, self.inputs) if i == PIXELS]
        own = [m for m in pixel_fed if scoring and m.test_views(self.backbone) is not None]
        if own and len(pixel_fed) > 1:
            raise OptionError(f"{own[0].name} reads its own test views: score it on its own, not with other methods")
        return own[0].test_views(self.backbone) if own else None

    def _views(self, epoch: int, view: int = 0) -> SeededViews:
        transform = self.backbone.image_transform(True, self.crop_scale, self.augmentation)
        return SeededViews(transform, self.view_seed, epoch, view)

    def batches(
        self, index_batches: Iterable[Tensor], seed: int = 0, epoch: int = 0, views_of: Tensor | None = None
    ) -> Iterator[list[Batch]]:
        """One list of ``Batch`` (one per method) per index batch, in order; augmented views are ``epoch``'s.

        The DataLoader draws its worker seeds from a generator seeded with ``seed``, not from the global RNG, so
        starting it mid-epoch (a resumed run) leaves the global RNG as an uninterrupted run has it.

        Args:
            views_of: the images whose augmented views are encoded, at least those of ``index_batches`` (the
                default): a distributed run passes every rank's, the same on all ranks, as the ranks encode them
                together, and a resumed epoch the whole epoch's, so that its encoder batches are the same.
        """
        index_batches = [torch.as_tensor(idx) for idx in index_batches]
        encodes_views = VIEWS in self.inputs or (self.augment and self.gives_second_view)
        views = self._epoch_views(index_batches, epoch, views_of) if encodes_views else {}
        if not self.reads_images:
            for idx in index_batches:
                yield self._batches(idx, None, views)
            return
        if self.files:
            transform = self._views(epoch) if self.augment else self.test_views or self.backbone.image_transform()
            images = self.dataset.with_transform(transform)
        else:
            images = self.dataset
        loader = DataLoader(
            images,
            batch_sampler=[idx.tolist() for idx in index_batches],
            num_workers=self.num_workers,
            pin_memory=self.backbone.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed),
        )
        for (pixels, _), idx in zip(loader, index_batches):
            yield self._batches(idx, pixels, views)

    def _epoch_views(self, index_batches: list[Tensor], epoch: int, views_of: Tensor | None) -> Views:
        """Frozen features of ``epoch``'s views of the images drawn (see :meth:`batches`), encoded once, no grad,
        per backbone delta and view index: [N, D] rows by dataset index (NaN for an image not drawn)."""
        drawn = torch.cat(index_batches).unique() if index_batches else torch.zeros(0, dtype=torch.long)
        if views_of is not None:
            missing = drawn[~torch.isin(drawn, views_of)]
            if len(missing):
                raise ValueError(f"views_of leaves out images {missing[:10].tolist()} that the index batches draw")
            drawn = views_of.unique()
        if not len(drawn):
            return {}
        keys = [(k, 0) for k, i in zip(self.keys, self.inputs) if i == VIEWS and k is not None]
        keys += [(SECOND, 1)] if self.gives_second_view else []
        views: Views = {}
        for key, view in dict.fromkeys(keys):
            epoch_views = self.dataset.subset(drawn.tolist()).with_transform(self._views(epoch, view))
            encoded = self.cache.features(self.backbone, epoch_views, self.progress, key_extra=key, keep=False)
            views[key, view] = encoded.new_full((len(self.dataset), encoded.shape[-1]), float("nan"))
            views[key, view][drawn.to(encoded.device)] = encoded
        return views

    def in_order(self, batch_size: int, shard: bool = False) -> Iterator[list[Batch]]:
        """The whole dataset in order, ``batch_size`` at a time (``shard``: this rank's share only)."""
        indices = dist.shard(list(range(len(self)))) if shard else list(range(len(self)))
        yield from self.batches(torch.tensor(indices, dtype=torch.long).split(batch_size))

    def _batches(self, idx: Tensor, pixels: Tensor | None, views: Views) -> list[Batch]:
        device_idx = idx.to(self.backbone.device)
        extra: dict[str, Tensor | None] = {"index": device_idx}
        if self.targets is not None:
            extra["targets"] = self.targets[device_idx]
            extra["task"] = self.tasks[device_idx] if self.tasks is not None else None
        features: dict[tuple[str, str | None], Tensor] = {}  # per (input, backbone delta), shared by the methods
        second = None
        if self.gives_second_view and self.augment:
            second = views[SECOND, 1][device_idx]
        elif self.gives_second_view:  # the image itself: the frozen tower's features, shared with other methods
            second = features[FEATURES, SECOND] = self._frozen_features(FEATURES, SECOND, device_idx, pixels, views, {})
        out = []
        for key, kind, wants_second in zip(self.keys, self.inputs, self.second_view):
            extra["second_view"] = second if wants_second else None
            if kind == PIXELS:
                out.append(Batch(pixels=pixels, **extra))
                continue
            if (kind, key) not in features:
                features[kind, key] = self._frozen_features(kind, key, device_idx, pixels, views, features)
            out.append(Batch(features=features[kind, key], **extra))
        return out

    def _frozen_features(self, kind, key, idx, pixels, views, done) -> Tensor:
        if kind == VIEWS:
            return views[key, 0][idx]
        if self.files:
            return self.tables[key][idx]
        if done:  # in-memory images: the frozen tower's features do not depend on a method's delta
            return next(iter(done.values()))
        with torch.no_grad():
            return self.backbone.encode_image(pixels)
