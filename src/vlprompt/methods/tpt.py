"""TPT, test-time prompt tuning (Shu et al., NeurIPS 2022), and C-TPT's calibration term (Yoon et al., ICLR 2024).

A :class:`~vlprompt.methods.wrapper.MethodWrapper` around any registered method with a text context ``ctx``
(default: CoOp's 4-token context initialised from "a photo of a", untrained: the paper's TPT). Scoring each test
image: build ``views`` views (view 0 the evaluation transform's image; the others RandomResizedCrop, bilinear,
scale 0.08-1, plus a flip, with AugMix for the fine-grained sets: TPT@63ecbac:data/datautils.py:60-100), encode
them once through the frozen image tower, keep the int(views · select) views of lowest entropy, and take
``steps`` AdamW steps (torch's defaults, weight decay 0.01, lr 5e-3) on the entropy of their averaged prediction
(:func:`avg_entropy`, tpt_classification.py:41-51; later steps reuse step 1's views); then predict view 0 and
restore the context (the optimizer is new for each image: its state is empty). Each step runs only the text
tower (a method that changes the image tower runs it too, on every step). C-TPT subtracts
``calibration_weight`` · the class text features' dispersion (:func:`text_dispersion`,
C-TPT@085e6c2:clip/custom_clip.py:319-330, tpt_classification.py:155-160).

How it runs: ``vlprompt train --method tpt --method_options '{options: {...}, train: true}'`` trains the wrapped
method first (TPT+CoOp), then every evaluation tunes per test image; without ``train`` nothing is trained.
``vlprompt eval --tpt true`` wraps a saved prompt (:meth:`TPT.wrapping`). The views of an image file are drawn by
the feed under a torch RNG seeded from (``seed``, the file's path) (:meth:`TPT.test_views`), so they do not depend
on batching or ranks; in-memory images are augmented from their preprocessed pixels (seeded per (seed, index)).

Precision: ``precision="fp16"`` (every recipe, as the releases run) encodes the views, takes the steps and predicts
under fp16 autocast, the loss scaled by one GradScaler (init_scale 1000) that the method keeps over every image it
scores (the release: one for the whole run, tpt_classification.py:62, 149, 290); an overflowing step is skipped
and the scale halved, as there. The scale moves by powers of two, which leave fp16 rounding unchanged, so a result
depends on the images scored before it (their order, the process's shard) only through such skips and the
underflow of the smallest gradients. The context stays fp32. ``"fp32"`` (the built-in CPU row): fp32 throughout;
``"auto"`` (the option's default): fp16 on CUDA, fp32 elsewhere.

Deliberate differences: ties in the entropy ranking keep the earlier view (a stable sort); N·select < 1 is an
error (the release's NaN); the release shuffles the test set (so its scaler meets the images in a random order),
vlprompt keeps the data's order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor
from torchvision import transforms as T

from ..backbones import Backbone
from ..data.images import SeededViews
from .base import Batch, BuiltinRow, MethodInputError, MethodOptionError, Recipe, option
from .coop import CoOp
from .recipes import CPU_SGD
from .wrapper import MethodWrapper, WrapperConfig

TPT_REPO = "azshue/TPT@63ecbace79694205d7884e63fdc3137a200f0b0e"
CTPT_REPO = "hee-suk-yoon/C-TPT@085e6c2e3d2da647ca42dcef163e0cbd4bf30a67"


# ---------------------------------------------------------------------------------------------- the objective
def view_entropy(logits: Tensor) -> Tensor:
    """[V] entropy of each view's prediction, -Σ softmax · log_softmax (tpt_classification.py:41-44)."""
    return -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)


def confident_views(logits: Tensor, fraction: float) -> Tensor:
    """Indices of the int(V · fraction) views of lowest entropy (int() truncates: 64 · 0.1 keeps 6)."""
    keep = int(logits.shape[0] * fraction)
    if keep < 1:
        raise MethodOptionError(f"tpt keeps int({logits.shape[0]} views x {fraction}) = 0 views: raise views or select")
    return torch.argsort(view_entropy(logits), stable=True)[:keep]


def avg_entropy(logits: Tensor) -> Tensor:
    """Entropy of the views' mean softmax, computed in log space as the release's ``avg_entropy`` (:46-51)."""
    log_probs = logits - logits.logsumexp(dim=-1, keepdim=True)
    avg = log_probs.logsumexp(dim=0) - math.log(logits.shape[0])
    avg = torch.clamp(avg, min=torch.finfo(avg.dtype).min)
    return -(avg * torch.exp(avg)).sum(dim=-1)


def text_dispersion(text: Tensor) -> Tensor:
    """C-TPT's ATFD: mean over classes of ‖t_c − t̄‖₂, t_c the L2-normalised class features, t̄ their plain mean."""
    text = F.normalize(text.float(), dim=-1)
    return torch.linalg.norm(text - text.mean(0), dim=-1).mean()


# ---------------------------------------------------------------------------------------------- the views
def _level(severity: float) -> float:
    return float(torch.empty(()).uniform_(0.1, severity))  # augmix_ops.sample_level


def _flip() -> int:
    return -1 if float(torch.rand(())) > 0.5 else 1


def _affine(image: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    # Pillow >= 9 (pyproject) has these constants; its enums (what its types declare) came in 9.1
    return image.transform(image.size, Image.AFFINE, coeffs, resample=Image.BILINEAR)  # type: ignore[attr-defined]


#: AugMix's 9 operations (TPT@63ecbac:data/augmix_ops.py), drawing from torch's RNG instead of numpy's.
AUGMIX_OPS = (
    lambda im, s: ImageOps.autocontrast(im),
    lambda im, s: ImageOps.equalize(im),
    lambda im, s: ImageOps.posterize(im, 4 - int(_level(s) * 4 / 10)),
    lambda im, s: im.rotate(int(_level(s) * 30 / 10) * _flip(), resample=Image.BILINEAR),  # type: ignore[attr-defined]
    lambda im, s: ImageOps.solarize(im, 256 - int(_level(s) * 256 / 10)),
    lambda im, s: _affine(im, (1, _level(s) * 0.3 / 10 * _flip(), 0, 0, 1, 0)),
    lambda im, s: _affine(im, (1, 0, 0, _level(s) * 0.3 / 10 * _flip(), 1, 0)),
    lambda im, s: _affine(im, (1, 0, int(_level(s) * (im.size[0] / 3) / 10) * _flip(), 0, 1, 0)),
    lambda im, s: _affine(im, (1, 0, 0, 0, 1, int(_level(s) * (im.size[1] / 3) / 10) * _flip())),
)


class TPTViews:
    """A PIL image -> [V, 3, H, W]: view 0 through the backbone's evaluation transform (Resize + CenterCrop), the
    others a RandomResizedCrop (bilinear, the release's default) of the whole image and a flip, normalised; with
    ``augmix``, m · view + (1 − m) · Σ w_i · chain_i (w ~ Dir(1,1,1), m ~ Beta(1,1), 3 chains of 1-3 operations
    at severity 1). Random draws come from torch's RNG: wrap it in a seeded transform for determinism."""

    def __init__(self, backbone: Backbone, views: int, augmix: bool, severity: float = 1.0):
        cfg = backbone.preprocess_cfg
        self.first, self.views, self.augmix, self.severity = backbone.image_transform(), views, augmix, severity
        self.crop = T.Compose([T.RandomResizedCrop(cfg["size"]), T.RandomHorizontalFlip()])
        self.mean, self.std = torch.tensor(cfg["mean"]).view(3, 1, 1), torch.tensor(cfg["std"]).view(3, 1, 1)
        self.preprocess = T.Compose([T.ToTensor(), T.Normalize(tuple(cfg["mean"]), tuple(cfg["std"]))])

    def __call__(self, image: Image.Image) -> Tensor:
        return torch.cat([self.first(image)[None], self.augmented(image)])

    def augmented(self, image: Image.Image) -> Tensor:
        """[V - 1, 3, H, W]: the augmented views."""
        views = [self.view(image) for _ in range(self.views - 1)]
        return torch.stack(views) if views else torch.empty(0, *self.first(image).shape)

    def view(self, image: Image.Image) -> Tensor:
        crop = self.crop(image)
        x = self.preprocess(crop)
        if not self.augmix:
            return x
        w = torch.distributions.Dirichlet(torch.ones(3)).sample()
        m = torch.distributions.Beta(1.0, 1.0).sample()
        mix = torch.zeros_like(x)
        for i in range(3):
            chained = crop.copy()
            for _ in range(int(torch.randint(1, 4, ()))):
                chained = AUGMIX_OPS[int(torch.randint(len(AUGMIX_OPS), ()))](chained, self.severity)
            mix += w[i] * self.preprocess(chained)
        return m * x + (1 - m) * mix

    def from_pixels(self, pixels: Tensor, seed: int, key: str) -> Tensor:
        """[V, 3, H, W] from one preprocessed image: view 0 the pixels themselves, the others augmented from them
        (un-normalised to an 8-bit image), seeded per (``seed``, ``key``)."""
        rgb = (pixels.detach().float().cpu() * self.std + self.mean).clamp(0, 1)
        image = T.functional.to_pil_image(rgb)
        others = SeededViews(self.augmented, seed, 0)(image, key)
        return torch.cat([pixels.detach().float().cpu()[None], others])


# ---------------------------------------------------------------------------------------------- the method
@dataclass
class TPTConfig(WrapperConfig):
    """TPT's options (defaults: the release's, scripts/test_tpt.sh).

    Attributes:
        method: the wrapped method; it must have a text context ``ctx`` (coop, kgcoop, cocoop, maple, ivlp, ...).
        options: its options (default: CoOp's 4 tokens initialised from "a photo of a").
        train: train the wrapped method first (TPT+CoOp); default: tune from its initial context, train nothing.
        views: views per test image (the release's -b 64: the image and 63 augmentations).
        select: the fraction of views kept, the most confident (the release's selection_p; int() truncates).
        steps: AdamW steps per image (the release's tta_steps).
        lr: AdamW's learning rate.
        weight_decay: AdamW's decoupled weight decay (torch's default, as the release leaves it).
        augmix: AugMix views (the release's fine-grained sets; C-TPT's --I_augmix for the ImageNet variants).
        calibration_weight: C-TPT's lambda: the loss subtracts lambda x the text features' dispersion (0: TPT).
        temperature: the tuned prediction's logits are divided by it (C-TPT's temperature-scaling baseline,
            run_type tpt_ts: 1.16 on ViTs, 1.15 on ResNets, tpt_classification.py:411-418, 447); 1: none.
        precision: "fp16", the releases' mixed precision (see the module docstring); "fp32"; or "auto" (the
            default): fp16 on a CUDA device, as the releases run, fp32 elsewhere (fp16 matrix products are slow on
            most CPUs).
        seed: seeds every image's views (with its file path).
    """

    options: dict[str, Any] = field(default_factory=lambda: {"n_ctx": 4, "ctx_init": "a photo of a"})
    train: bool = False
    views: int = option(64, low=1)
    select: float = option(0.1, low=0.0, high=1.0)
    steps: int = option(1, low=0)
    lr: float = option(5e-3, low=0.0)
    weight_decay: float = option(0.01, low=0.0)
    augmix: bool = False
    calibration_weight: float = option(0.0, low=0.0)
    temperature: float = option(1.0, low=1e-3)
    precision: str = option("auto", choices=("auto", "fp16", "fp32"))
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        name = self.method_name or "tpt"
        if int(self.views * self.select) < 1:
            raise MethodOptionError(
                f"{name} options views x select = {self.views} x {self.select} keep int() = 0 views: raise either"
            )
        inner, config = TPT.wrapped(self)
        flags = inner.capabilities(config)
        if not flags["has_context"]:
            raise MethodOptionError(f"{name} tunes a text context: method {inner.name!r} has none (use coop, ...)")
        if self.calibration_weight and flags["conditions_on_image"]:
            raise MethodOptionError(
                f"{name} option calibration_weight needs class features shared by all images; {inner.name} conditions "
                "them on each image"
            )


_SCRIPT = f"{TPT_REPO}:scripts/test_tpt.sh, tpt_classification.py:319-336"
_CTPT = f"{CTPT_REPO}:scripts/test_tpt_ctpt_{{}}.sh, tpt_classification.py:155-160"
#: Both releases tune and predict under fp16 autocast with one GradScaler(init_scale=1000) for the test set.
_AMP_SOURCE = (
    f"{TPT_REPO}:tpt_classification.py:62, 290 (autocast), 149 (GradScaler init_scale 1000); "
    f"{CTPT_REPO}:tpt_classification.py:125, 149, 404 (autocast), 241 (the scaler)"
)


def _mixed_precision(recipe: Recipe) -> Recipe:
    """A release's recipe: fp16 autocast and the scaler (``precision="fp16"``), as both releases run."""
    return dataclasses.replace(
        recipe, options={**recipe.options, "precision": "fp16"}, source=f"{recipe.source}; {_AMP_SOURCE}"
    )


#: The releases' recipes (each run under fp16 autocast: :func:`_mixed_precision`).
_RELEASES = {
    "default": Recipe(source=f"{_SCRIPT} (ImageNet and its variants: no AugMix)"),
    "fine-grained": Recipe(
        options={"augmix": True},
        source=f"{_SCRIPT}; tpt_classification.py:171-172 (AugMix for a set name longer than one letter), "
        "data/datautils.py:68-84 (the mixing)",
    ),
    # CoOp's own ImageNet recipe (vit_b16_ep50.yaml: crops, flips, fp16) with TPT's 4 tokens
    "coop": Recipe(
        train=dict(CoOp.recipes["imagenet"].train),
        options={"train": True, "method": "coop", "options": {"n_ctx": 4}},
        source=f"{TPT_REPO}:scripts/test_tpt_coop.sh (CoOp, 16 shots of ImageNet, 4 tokens); "
        f"{CoOp.recipes['imagenet'].source}",
    ),
    "ctpt": Recipe(options={"calibration_weight": 50.0, "augmix": True}, source=_CTPT.format("fg")),
    # the fine-grained script on ImageNet: no --I_augmix, so a one-letter set ('I') gets no AugMix
    "ctpt-imagenet": Recipe(
        options={"calibration_weight": 50.0, "augmix": False},
        source=f"{_CTPT.format('fg')}, 266-271 (augmix = len(set_id) > 1 without --I_augmix)",
    ),
    # C-TPT's TPT baseline on the natural shifts: its scripts pass --I_augmix, unlike TPT's own
    "ctpt-baseline-natural-shift": Recipe(
        options={"augmix": True},
        source=f"{_CTPT.format('ds').replace('test_tpt_ctpt_ds', 'test_tpt_ds')}, 266-268 (--I_augmix)",
    ),
    "ctpt-baseline-ts": Recipe(  # TPT with temperature scaling: in the code (run_type tpt_ts), no script runs it
        options={"temperature": 1.16},
        source=f"{CTPT_REPO}:tpt_classification.py:411-418, 447 (run_type tpt_ts: the final logits over 1.16 on "
        "ViT-B/16; set temperature 1.15 on RN50)",
    ),
    "ctpt-natural-shift": Recipe(
        options={"calibration_weight": 20.0, "augmix": True},
        source=f"{_CTPT.format('ds')}, 266-268 (--I_augmix: AugMix on the ImageNet variants too)",
    ),
}


class TPT(MethodWrapper):
    """Tunes the wrapped method's ``ctx`` on each test image's confident views, predicts it, and restores ``ctx``."""

    name = "tpt"
    Config = TPTConfig
    config: TPTConfig
    adapts_at_test_time = True
    learns = False  # its own tensors: none (the wrapped method's train with ``train``)
    recipes = {name: _mixed_precision(recipe) for name, recipe in _RELEASES.items()}
    builtin_rows = (
        BuiltinRow(
            "tpt", CPU_SGD.with_options(views=8, select=0.25, precision="fp32").but("TPT with 8 views"), default=False
        ),
    )
    tiny = Recipe(options={"views": 8, "select": 0.25})
    template_option = None

    def __init__(self, backbone: Backbone, labels: Any, config: TPTConfig | None = None):
        super().__init__(backbone, labels, config)
        if not self.config.train:
            self.inner.requires_grad_(False)
        self.views = TPTViews(backbone, self.config.views, self.config.augmix)
        self._scaler: torch.amp.GradScaler | None = None  # made on first use, on the wrapped method's device

    @classmethod
    def capabilities(cls, config: TPTConfig | None = None) -> dict[str, bool]:  # type: ignore[override]
        config = config if config is not None else cls.Config()
        flags = super().capabilities(config)
        flags["learns"] = flags["learns"] and config.train
        return flags

    @classmethod
    def wrapping(cls, method, backbone: Backbone, config: TPTConfig | dict[str, Any] | None = None) -> TPT:
        """TPT around an existing (e.g. loaded) method, its tensors kept: ``vlprompt eval --tpt true``."""
        if not isinstance(config, TPTConfig):
            options = {**(config or {}), "method": method.name, "options": method.config.to_dict()}
            config = cast(TPTConfig, cls.Config.from_dict(options, cls.name, "--tpt_options"))
        tpt = cls(backbone, method.labels, config)
        tpt.inner = method.requires_grad_(False)
        return tpt

    def test_views(self, backbone: Backbone) -> SeededViews:
        return SeededViews(self.views, self.config.seed, 0)

    # ---------------------------------------------------------------- scoring
    def score(self, backbone: Backbone, batch: Batch, text: Tensor | None = None) -> Tensor:
        """Each image tuned on its own views, then its view 0 scored; the context is restored after each."""
        rows = []
        for i in range(len(batch)):
            with self._tuned(backbone, self._image_views(batch, i)) as first, torch.no_grad(), self._autocast():
                rows.append(self.inner.logits(backbone, first).float() / self.config.temperature)
        return torch.cat(rows)

    @property
    def mixed_precision(self) -> bool:
        """Whether tuning and prediction run under fp16 autocast (``precision``; "auto": on CUDA)."""
        precision = self.config.precision
        return precision == "fp16" or (precision == "auto" and self.inner_device.type == "cuda")

    def _autocast(self) -> torch.autocast:
        """fp16 autocast where :attr:`mixed_precision` (the releases'), else a no-op."""
        return torch.autocast(self.inner_device.type, dtype=torch.float16, enabled=self.mixed_precision)

    @property
    def scaler(self) -> torch.amp.GradScaler:
        """The releases' one loss scaler for the whole test set (init_scale 1000), made on first use."""
        if self._scaler is None:
            device = self.inner_device.type
            self._scaler = torch.amp.GradScaler(device, init_scale=1000.0, enabled=self.mixed_precision)
        return self._scaler

    @contextmanager
    def adapted(self, backbone: Backbone, batch: Batch) -> Iterator[None]:
        """The contract's hook, for a one-image batch (:meth:`score` calls it per image)."""
        if len(batch) != 1:
            raise MethodInputError(f"{self.name} adapts to one test image at a time, not {len(batch)}")
        with self._tuned(backbone, self._image_views(batch, 0)):
            yield

    def _image_views(self, batch: Batch, i: int) -> Tensor:
        """[V, 3, H, W] views of the batch's image ``i``: the feed's (read from its file), or made from its pixels."""
        if batch.pixels is None:
            raise MethodInputError(f"{self.name} augments each test image: it must see pixels, not cached features")
        pixels = batch.pixels[i]
        if pixels.dim() == 4:
            if len(pixels) != self.config.views:
                raise MethodInputError(f"{self.name} expects {self.config.views} views per image, not {len(pixels)}")
            return pixels.to(self.inner_device)
        index = int(batch.index[i]) if batch.index is not None else i
        return self.views.from_pixels(pixels, self.config.seed, f"#{index}").to(self.inner_device)

    @property
    def inner_device(self) -> torch.device:
        return cast(Tensor, self.inner.ctx).device  # the wrapped method has_context

    @contextmanager
    def _tuned(self, backbone: Backbone, views: Tensor) -> Iterator[Batch]:
        """Tune ``ctx`` on ``views`` (a fresh AdamW: empty state); yield view 0's batch; restore ``ctx``."""
        inner, cfg = self.inner, self.config
        with torch.no_grad(), self._autocast():
            if inner.changes_image_tower:
                inputs = Batch(pixels=views)
            else:
                inputs = Batch(features=inner.image_features(backbone, Batch(pixels=views)))
        first = Batch(features=inputs.features[:1]) if inputs.features is not None else Batch(pixels=views[:1])
        ctx = cast(Tensor, inner.ctx)  # the wrapped method has_context
        saved, requires_grad = ctx.detach().clone(), ctx.requires_grad
        try:
            if cfg.steps:
                ctx.requires_grad_(True)
                optimizer = torch.optim.AdamW([ctx], lr=cfg.lr, weight_decay=cfg.weight_decay)
                with torch.enable_grad():
                    self._steps(backbone, inputs, optimizer)
            yield first
        finally:
            with torch.no_grad():
                ctx.copy_(saved)
            ctx.grad = None
            ctx.requires_grad_(requires_grad)

    def _steps(self, backbone: Backbone, inputs: Batch, optimizer: torch.optim.Optimizer) -> None:
        inner, cfg = self.inner, self.config
        keep = None
        for _ in range(cfg.steps):
            with self._autocast():
                text = None if inner.conditions_on_image else inner.text_features(backbone)
                logits = inner.logits(backbone, inputs, text).float()
            keep = confident_views(logits, cfg.select) if keep is None else keep  # step 1's views, then reused
            loss = avg_entropy(logits[keep])
            if cfg.calibration_weight:
                assert text is not None  # as text_dispersion needs
                loss = loss - cfg.calibration_weight * text_dispersion(text.float())
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
