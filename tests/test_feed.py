"""The one batch iterator: features or pixels decided once, images read and encoded once for every method."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlprompt.data import image_folder
from vlprompt.errors import OptionError
from vlprompt.evaluation import predict_logits
from vlprompt.features import FeatureCache
from vlprompt.feed import FEATURES, PIXELS, VIEWS, Feed, image_input, sees_pixels
from vlprompt.methods import VP, CoOp, CoOpConfig, VPConfig, ZeroShot
from vlprompt.methods.base import MethodInputError
from vlprompt.predict import ImageList, probabilities


@pytest.fixture(scope="module")
def data(image_root, vit_backbone):
    return image_folder(image_root, vit_backbone.image_transform())


@pytest.fixture(scope="module")
def methods(vit_backbone, data):
    torch.manual_seed(0)
    coop = CoOp(vit_backbone, data.classnames, CoOpConfig(n_ctx=4))
    vp = VP(vit_backbone, data.classnames, VPConfig(prompt_size=2))
    return coop.eval(), vp.eval()


class CountingEncoder:
    """Counts the images the backbone's image tower sees (the frozen tower only: no prompts)."""

    def __init__(self, backbone, monkeypatch):
        self.images, encode = 0, backbone.encode_image

        def counted(pixels, **prompts):
            if not prompts:
                self.images += len(pixels)
            return encode(pixels, **prompts)

        monkeypatch.setattr(backbone, "encode_image", counted)


def test_the_one_decision(methods):
    coop, vp = methods
    assert (image_input(coop), image_input(vp)) == (FEATURES, PIXELS)
    assert image_input(coop, augment=True) == VIEWS  # cached features of each epoch's augmented views
    assert image_input(coop, augment=True, cache_features=False) == PIXELS  # views through the frozen tower
    assert image_input(coop, augment=True, cache_features=True) == FEATURES  # of the un-augmented images
    assert image_input(vp, augment=True) == PIXELS
    assert sees_pixels(vp) and not sees_pixels(coop, augment=True)
    with pytest.raises(OptionError, match="vp changes the image tower"):
        image_input(vp, cache_features=True)


def test_files_one_table_for_the_frozen_methods_pixels_for_the_prompted(vit_backbone, data, methods, monkeypatch):
    coop, vp = methods
    zeroshot = ZeroShot(vit_backbone, data.classnames)
    counter = CountingEncoder(vit_backbone, monkeypatch)
    feed = Feed(vit_backbone, data, [coop, vp, zeroshot], FeatureCache(), targets=True)
    assert counter.images == len(data)  # each file encoded once for both frozen methods
    assert not feed.uses_cached_features  # vp reads the images
    index = torch.tensor([5, 0, 3])
    (for_coop, for_vp, for_zeroshot) = next(feed.batches([index]))
    pixels = torch.stack([data[i][0] for i in index.tolist()])
    with torch.no_grad():
        expected = vit_backbone.encode_image(pixels)
    torch.testing.assert_close(for_coop.features, expected, rtol=0, atol=1e-6)
    assert for_zeroshot.features is for_coop.features
    torch.testing.assert_close(for_vp.pixels, pixels, rtol=0, atol=0)
    assert for_vp.features is None and for_coop.pixels is None
    assert for_coop.targets.tolist() == [data.labels[i] for i in index.tolist()]
    assert counter.images == len(data) + 3  # only the expected features above ran the tower again


def test_frozen_methods_read_no_image_while_iterating(vit_backbone, data, methods, monkeypatch):
    coop, _ = methods
    feed = Feed(vit_backbone, data, coop, FeatureCache())
    assert feed.uses_cached_features
    monkeypatch.setattr(type(data), "__getitem__", lambda *a: pytest.fail("an image was read"))
    batches = list(feed.in_order(5))
    assert [len(b) for (b,) in batches] == [5, 5, 5, 5, 4]
    assert batches[0][0].targets is None  # evaluation batches carry no labels


def test_in_memory_images_encoded_once_per_batch_for_all_frozen_methods(vit_backbone, data, methods, monkeypatch):
    coop, vp = methods
    zeroshot = ZeroShot(vit_backbone, data.classnames)
    images = [Image.open(s.path) for s in data.samples[:7]]
    counter = CountingEncoder(vit_backbone, monkeypatch)
    coop_probs, vp_probs, zs_probs = probabilities([coop, vp, zeroshot], vit_backbone, images, batch_size=3)
    assert counter.images == 7  # not 14: coop and zero-shot share one encoding
    files = data.subset(range(7))
    for method, probs in ((coop, coop_probs), (vp, vp_probs), (zeroshot, zs_probs)):
        expected = predict_logits(method, vit_backbone, files, FeatureCache()).softmax(-1).cpu()
        torch.testing.assert_close(probs, expected, rtol=0, atol=1e-5)  # batches of 3 vs 256: float sums
    assert len(ImageList(images, vit_backbone.image_transform())) == 7


def test_a_prompted_image_tower_refuses_cached_features(vit_backbone, data, methods):
    coop, vp = methods
    (batch,) = next(Feed(vit_backbone, data, coop, FeatureCache()).in_order(4))
    with pytest.raises(MethodInputError, match="vp changes the image tower: it must see pixels"):
        vp.score(vit_backbone, batch)
