"""The releases' augmentations by name (Dassl's RandAugment for CoPrompt, CSP's), and the second view a method
can ask for (CoPrompt's K_TRANSFORMS 2): drawn from torch's RNG, so cached like the first."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from vlprompt.data import image_folder
from vlprompt.data.augment import RANDAUGMENT_OPS, RandAugment, train_transform
from vlprompt.data.images import SeededViews
from vlprompt.engine import TrainConfig, fit
from vlprompt.errors import OptionError
from vlprompt.features import FeatureCache
from vlprompt.feed import Feed
from vlprompt.labels import ClassNames
from vlprompt.methods import Batch, CoOp, CoOpConfig, build_method
from vlprompt.methods.base import MethodInputError

CLASSES = ("blue_square", "gold", "green_square", "red_square")
SENTENCES = {c: [f"a picture of {c}."] for c in CLASSES}


def ramp(size: int = 16) -> Image.Image:
    """Every 8-bit level somewhere: red 0..255 along the rows, green a fixed 100, blue 240."""
    red = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.stack([red, np.full_like(red, 100), np.full_like(red, 240)], axis=-1)
    return Image.fromarray(rgb).resize((size, size), Image.Resampling.NEAREST)


def op(name: str):
    return next((f, low, high) for n, f, low, high in RANDAUGMENT_OPS if n == name)


def at_magnitude_10(name: str, image: Image.Image) -> np.ndarray:
    operation, low, high = op(name)
    return np.asarray(operation(image, 10 / 30 * (high - low) + low)).astype(int)


def test_randaugment_ops_at_magnitude_10_by_hand():
    """Dassl's values at m = 10: posterize to 5 bits, solarize from 85.33, solarize-add 36.67 then 128, enhance 0.7."""
    image = ramp()
    pixels = np.asarray(image).astype(int)
    assert np.array_equal(at_magnitude_10("posterize", image), pixels & 0b11111000)
    assert np.array_equal(at_magnitude_10("solarize", image), np.where(pixels < 85.34, pixels, 255 - pixels))
    added = np.clip(pixels + 110 / 3, 0, 255).astype(np.uint8).astype(int)  # truncated to 8 bits, as Dassl's
    assert np.array_equal(at_magnitude_10("solarize_add", image), np.where(added < 128, added, 255 - added))
    grey = np.asarray(image.convert("L")).astype(float)  # ImageEnhance.Color blends with the greyscale image
    expected = np.clip(np.round(grey[..., None] + 0.7 * (pixels - grey[..., None])), 0, 255)
    assert np.abs(at_magnitude_10("color", image) - expected).max() <= 1
    assert np.array_equal(at_magnitude_10("invert", image), 255 - pixels)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        moved = at_magnitude_10("translate_x", ramp(160))  # 33.3 pixels, either way, black where it leaves
    shift = 33 if moved[0, -1].sum() == 0 else -33
    assert np.array_equal(moved[:, 40:120], np.asarray(ramp(160)).astype(int)[:, 40 + shift : 120 + shift])


def test_cutout_is_a_grey_square_of_13_pixels_cut_at_the_far_edges():
    """Dassl's CutoutAbs at m = 10: a 40/3-pixel square from a corner drawn in (1, 64] less half a side."""
    corners = set()
    for seed in range(12):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            grey = (at_magnitude_10("cutout", Image.new("RGB", (64, 64))) == (125, 123, 114)).all(-1)
        rows, cols = np.nonzero(grey)
        top, left = rows.min(), cols.min()
        assert top <= 57 and left <= 57  # int(max(0, 64 - 6.67))
        height, width = min(14, 64 - top), min(14, 64 - left)  # PIL's rectangle holds both ends
        assert grey.sum() == height * width and grey[top : top + height, left : left + width].all()
        corners.add((top, left))
    assert len(corners) == 12


def test_randaugment_draws_n_ops_with_replacement_from_torch(monkeypatch):
    seen = []
    monkeypatch.setattr(
        "vlprompt.data.augment.RANDAUGMENT_OPS",
        tuple((n, lambda im, v, n=n: seen.append((n, v)) or im, low, high) for n, _, low, high in RANDAUGMENT_OPS),
    )
    torch.manual_seed(0)
    for _ in range(200):
        RandAugment(2, 10)(ramp())
    assert len(seen) == 400 and len({n for n, _ in seen}) == 16
    assert dict(seen)["rotate"] == pytest.approx(10.0) and dict(seen)["brightness"] == pytest.approx(0.7)
    with pytest.raises(OptionError, match="magnitude must be in 0..30, not 31"):
        RandAugment(2, 31)
    monkeypatch.undo()
    drawn = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        drawn.append(np.asarray(RandAugment(2, 10)(ramp())))
    assert np.array_equal(drawn[0], drawn[1]) and not np.array_equal(drawn[0], drawn[2])  # torch's RNG decides


def test_the_pipelines_are_the_releases(vit_backbone):
    size = vit_backbone.preprocess_cfg["size"]
    crop_flip = vit_backbone.image_transform(train=True).transforms
    assert [type(t) for t in crop_flip] == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    coprompt = vit_backbone.image_transform(train=True, augmentation="randaugment").transforms
    assert [type(t) for t in coprompt] == [T.Resize, RandAugment, T.ToTensor, T.Normalize]
    assert coprompt[0].size == (size, size) and (coprompt[1].n, coprompt[1].m) == (2, 10)
    csp = vit_backbone.image_transform(train=True, augmentation="csp").transforms
    kinds = [T.Resize, T.CenterCrop, T.RandomHorizontalFlip, T.RandomPerspective, T.RandomRotation]
    assert [type(t) for t in csp] == [*kinds, T.ToTensor, T.Normalize]
    assert (csp[3].distortion_scale, csp[3].p, csp[4].degrees) == (0.5, 0.5, [-5.0, 5.0])
    wide = Image.new("RGB", (3 * size, size))  # a square resize for RandAugment, a centre crop for CSP
    assert T.Compose(coprompt)(wide).shape == T.Compose(csp)(wide).shape == (3, size, size)
    with pytest.raises(OptionError, match="--train.augmentation must be one of crop-flip, randaugment, csp, not 'x'"):
        train_transform("x", size, (0, 0, 0), (1, 1, 1))
    with pytest.raises(OptionError, match="--train.augmentation must be one of crop-flip, randaugment, csp"):
        TrainConfig(augmentation="autoaugment")


def test_a_second_view_is_another_draw_of_the_same_seed_epoch_and_image(image_root, vit_backbone):
    data = image_folder(image_root, None)
    transform = vit_backbone.image_transform(train=True, augmentation="randaugment")
    first, second = SeededViews(transform, 1, 0), SeededViews(transform, 1, 0, view=1)
    assert torch.equal(data.with_transform(second)[2][0], data.with_transform(second)[2][0])
    firsts, seconds = data.with_transform(first), data.with_transform(second)
    differ = [not torch.equal(firsts[i][0], seconds[i][0]) for i in range(len(data))]
    assert sum(differ) > len(data) // 2  # two ops can leave an image as another pair does: most views differ
    assert "view=1" in repr(second) and "view" not in repr(first)  # view 0 keeps its cache key


def coprompt(backbone, **options):
    return build_method("coprompt", backbone, ClassNames(CLASSES), {"depth": 2, "sentences": SENTENCES, **options})


@pytest.mark.parametrize("augment", [True, False])
def test_the_feed_gives_the_asking_method_the_frozen_features_of_a_second_view(image_root, vit_backbone, augment):
    data = image_folder(image_root, vit_backbone.image_transform())
    torch.manual_seed(0)
    method, coop = coprompt(vit_backbone), CoOp(vit_backbone, data.classnames, CoOpConfig(n_ctx=4))
    feed = Feed(vit_backbone, data, [method, coop], augment=augment, augmentation="randaugment", targets=True)
    idx = torch.tensor([5, 0, 17])
    (ours, theirs), *_ = feed.batches([idx], epoch=3)
    assert theirs.second_view is None and method.needs_second_view()
    view = SeededViews(vit_backbone.image_transform(train=True, augmentation="randaugment"), 0, 3, view=1)
    images = data.with_transform(view if augment else vit_backbone.image_transform())
    with torch.no_grad():
        expected = vit_backbone.encode_image(torch.stack([images[i][0] for i in idx.tolist()]))
    torch.testing.assert_close(ours.second_view, expected, rtol=0, atol=1e-5)
    if augment:  # not the first view's
        first = data.with_transform(SeededViews(view.transform, 0, 3))
        assert torch.equal(ours.pixels, torch.stack([first[i][0] for i in idx.tolist()]))
    scoring = Feed(vit_backbone, data, method)
    assert next(scoring.in_order(4))[0].second_view is None  # evaluation draws none


def test_coprompt_second_view_is_its_frozen_target(vit_backbone, image_root):
    data = image_folder(image_root, vit_backbone.image_transform())
    pixels = torch.stack([data[i][0] for i in range(0, 24, 3)])
    torch.manual_seed(0)
    method = coprompt(vit_backbone, weight=8.0)
    frozen = torch.randn(8, vit_backbone.embed_dim)
    batch = Batch(pixels=pixels, targets=torch.arange(8) % 4, second_view=frozen)
    same = replace(batch, second_view=None)
    with torch.no_grad():
        image = method.image_features(vit_backbone, batch)  # the adapted, un-normalised image features
    logits = method(vit_backbone, batch)
    torch.manual_seed(7)
    loss = method.loss(vit_backbone, batch, logits)
    method.config.frozen_view = "same"
    logits = method(vit_backbone, same)
    torch.manual_seed(7)
    loss_same = method.loss(vit_backbone, same, logits)
    with torch.no_grad():
        own = vit_backbone.encode_image(pixels)
    image_n = F.normalize(image.float(), dim=-1)
    difference = (image_n * F.normalize(own, dim=-1)).sum(-1).mean() - (image_n * F.normalize(frozen, dim=-1)).sum(-1)
    torch.testing.assert_close(loss - loss_same, 8.0 * difference.mean(), atol=1e-5, rtol=1e-5)
    method.config.frozen_view = "second"
    logits = method(vit_backbone, same)
    with pytest.raises(MethodInputError, match="frozen_view second needs training batches with a second view"):
        method.loss(vit_backbone, same, logits)


def test_a_coprompt_run_on_randaugment_views_encodes_each_second_view_once(monkeypatch, tmp_path, image_root):
    """The release's recipe (two RandAugment views): the second views' frozen features are cached per epoch."""
    from vlprompt.backbones import tiny_random_backbone

    bb = tiny_random_backbone("vit")
    data = image_folder(image_root, bb.image_transform())
    frozen_images = [0]
    encode = bb.encode_image

    def counting(pixels, *args, **kwargs):
        if not args and not any(v is not None for v in kwargs.values()):
            frozen_images[0] += len(pixels)
        return encode(pixels, *args, **kwargs)

    monkeypatch.setattr(bb, "encode_image", counting)
    config = TrainConfig(epochs=2, batch_size=8, augment=True, augmentation="randaugment", lr=0.01)
    cache = FeatureCache(tmp_path)
    torch.manual_seed(0)
    first = fit(coprompt(bb), bb, data, config, cache=cache, progress=False)
    assert frozen_images[0] == 2 * 24  # each epoch's 24 second views, once
    torch.manual_seed(0)
    again = fit(coprompt(bb), bb, data, config, cache=cache, progress=False)
    assert frozen_images[0] == 2 * 24  # read back
    assert [r["loss"] for r in again.history] == [r["loss"] for r in first.history]
