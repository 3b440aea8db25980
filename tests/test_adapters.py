"""CLIP-Adapter, Tip-Adapter and Tip-Adapter-F against their equations on hand-computed cases, their cache in the
prompt file, their bad inputs, and a run through ``vlprompt train`` / ``eval`` on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from vlprompt.cli import main
from vlprompt.data import image_folder, split_json
from vlprompt.engine import FeatureCache, TrainConfig, fit
from vlprompt.engine.trainer import _make_optimizer
from vlprompt.errors import DataError, OptionError, PromptFileError
from vlprompt.labels import ClassNames
from vlprompt.methods import Batch, CLIPAdapter, TipAdapter, TipAdapterF, build_method
from vlprompt.methods.base import MethodInputError
from vlprompt.methods.tip_adapter import augmented_features, search_beta_alpha, search_grid
from vlprompt.prompts import load_prompt, save_pretrained

CLASSES = ClassNames(("blue_square", "gold", "green_square", "red_square"))
TINY = {"augment_epoch": 2, "search_step": [20, 5]}


@pytest.fixture()
def data(image_root, vit_backbone):
    return image_folder(image_root, vit_backbone.image_transform())


def tip(backbone, data, cls=TipAdapter, **options):
    method = cls(backbone, CLASSES, cls.Config(**{**TINY, **options}))
    method.setup(backbone, data, FeatureCache())
    return method


# ------------------------------------------------------------------------------------------- the search
def test_the_search_grid_is_the_releases():
    assert search_grid(3, 4) == pytest.approx([0.1, 0.825, 1.55, 2.275])  # i * 2.9 / 4 + 0.1: 3 is never tried
    grid = search_grid(7, 200)
    assert len(grid) == 200 and grid[0] == pytest.approx(0.1) and grid[-1] == pytest.approx(0.1 + 199 * 6.9 / 200)


def test_the_search_keeps_the_first_strictly_better_point():
    # two images, classes 0 and 1; CLIP says class 0 for both; key 0 is class 0's, key 1 class 1's
    clip = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    affinity = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # image 0 is key 0, image 1 is key 1
    values, labels = torch.eye(2), torch.tensor([0, 1])
    # image 0 is always right; image 1 (class 1: alpha against 1 + alpha·exp(-beta)) when alpha (1 - e^-beta) > 1.
    # On the grids [0.1, 0.825, 1.55, 2.275]: beta 0.1 never (alpha > 10.5); beta 0.825 from alpha 1.78 on, so
    # alpha 2.275 first gets both; beta 1.55 (alpha > 1.27) and 2.275 tie at 2 from alpha 1.55 on: a tie never
    # replaces the best (">=" would end at (2.275, 1.55)).
    beta, alpha, correct = search_beta_alpha(clip, affinity, values, labels, [3, 3], [4, 4])
    assert (beta, alpha, correct) == (pytest.approx(0.825), pytest.approx(2.275), 2)
    wrong = torch.tensor([[10.0, 0.0], [0.0, 10.0]])  # CLIP and the cache agree, against both labels
    assert search_beta_alpha(wrong, affinity, values, torch.tensor([1, 0]), [0.2, 0.2], [1, 1]) == (0.0, 0.0, 0)


# ------------------------------------------------------------------------------------------- the cache
def test_cache_logits_are_clip_plus_alpha_times_the_affinity_kernel(vit_backbone, data):
    method = tip(vit_backbone, data)
    d = vit_backbone.embed_dim
    keys = torch.zeros(2, d)
    keys[0, 0], keys[1, 1] = 1.0, 1.0
    method.cache_keys, method.cache_values = keys, F.one_hot(torch.tensor([2, 3]), 4).float()
    method.beta.fill_(2.0)
    method.alpha.fill_(0.5)
    f = torch.zeros(1, d)
    f[0, 0], f[0, 1] = 3.0, 4.0  # normalised: (0.6, 0.8): affinities 0.6 and 0.8
    clip = 100 * F.normalize(f, dim=-1) @ method.clip_weights.t()
    cache = torch.tensor([[0.0, 0.0, math.exp(-2 * 0.4), math.exp(-2 * 0.2)]])
    torch.testing.assert_close(method.logits(vit_backbone, Batch(features=f)), clip + 0.5 * cache)


def test_the_classifier_averages_normalised_template_features(vit_backbone, data):
    templates = ["a photo of a {}.", "{} texture."]
    method = tip(vit_backbone, data, templates=templates)
    per = [F.normalize(vit_backbone.encode_text([t.format(n.replace("_", " ")) for n in CLASSES.names]), dim=-1)
           for t in templates]  # fmt: skip
    torch.testing.assert_close(method.clip_weights, F.normalize((per[0] + per[1]) / 2, dim=-1))


def test_keys_are_averaged_views_then_normalised_and_deterministic(vit_backbone, data):
    method = tip(vit_backbone, data, augment_epoch=3, augment_seed=5)
    views = augmented_features(vit_backbone, data, 3, 5)
    assert views.shape == (3, len(data), vit_backbone.embed_dim) and not torch.equal(views[0], views[1])
    torch.testing.assert_close(method.cache_keys, F.normalize(views.mean(0), dim=-1))
    normalised_first = F.normalize(F.normalize(views, dim=-1).mean(0), dim=-1)
    assert (method.cache_keys - normalised_first).abs().max() > 1e-4  # the order matters, and is the release's
    assert torch.equal(method.cache_values, F.one_hot(torch.tensor(data.labels), 4).float())
    assert torch.equal(tip(vit_backbone, data, augment_epoch=3, augment_seed=5).cache_keys, method.cache_keys)
    assert not torch.equal(tip(vit_backbone, data, augment_epoch=3, augment_seed=6).cache_keys, method.cache_keys)


def test_tip_f_starts_as_tip_with_cloned_keys_and_trains_only_them(vit_backbone, data):
    plain, fine = tip(vit_backbone, data), tip(vit_backbone, data, TipAdapterF)
    features = FeatureCache().features(vit_backbone, data, progress=False)
    fine.eval()
    with torch.no_grad():
        torch.testing.assert_close(fine.logits(vit_backbone, Batch(features=features)),
                                   plain.logits(vit_backbone, Batch(features=features)))  # fmt: skip
    assert torch.equal(fine.adapter_keys, fine.cache_keys)
    assert fine.adapter_keys.data_ptr() != fine.cache_keys.data_ptr()  # a copy (the release shares the storage)
    keys = fine.cache_keys.clone()
    config = TrainConfig(epochs=2, batch_size=8, optimizer="adamw", lr=1e-2, adam_eps=1e-4, schedule="cosine",
                         warmup_epochs=0, weight_decay=0.01)  # fmt: skip
    fit(fine, vit_backbone, data, config, cache=FeatureCache(), progress=False)
    assert torch.equal(fine.cache_keys, keys) and not torch.equal(fine.adapter_keys, keys)
    assert fine.beta.item() == 1.0 and fine.alpha.item() == pytest.approx(1.17)  # held at init while training
    assert fine._epoch == 2  # epoch e trained on the cache's view e mod augment_epoch


def test_tip_f_trains_on_the_cache_views(vit_backbone, data):
    fine = tip(vit_backbone, data, TipAdapterF)
    views = F.normalize(augmented_features(vit_backbone, data, 2, 1), dim=-1)
    batch = Batch(features=torch.zeros(3, vit_backbone.embed_dim), index=torch.tensor([4, 0, 7]))
    fine.train()
    fine.end_epoch(2, 20)  # the next epoch is 3: view 3 mod 2
    torch.testing.assert_close(fine.image_features(vit_backbone, batch), views[1][[4, 0, 7]])
    fine.eval()
    assert torch.equal(fine.image_features(vit_backbone, batch), batch.features)  # scoring: the frozen features


def test_tip_f_paper_preset_trains_on_fresh_engine_views(vit_backbone, data):
    """The paper preset (train_views "engine", augment, crop scale 0.5) trains on each epoch's fresh crops, cached
    once per epoch: the same losses and keys as those crops' pixels through the frozen tower every step."""
    from dataclasses import replace

    from vlprompt.engine import preset

    config = replace(preset("tip-adapter-f", shots=16), epochs=2, batch_size=10, precision="fp32", select="last")
    assert config.augment and config.crop_scale == 0.5 and not config.drop_last
    cached, through = (tip(vit_backbone, data, TipAdapterF, train_views="engine") for _ in range(2))
    views = fit(cached, vit_backbone, data, config, cache=FeatureCache(), progress=False)
    pixels = fit(through, vit_backbone, data, replace(config, cache_features=False), progress=False)
    assert views.feature_cache and not pixels.feature_cache
    assert [r["loss"] for r in views.history] == pytest.approx([r["loss"] for r in pixels.history], abs=1e-5)
    torch.testing.assert_close(cached.adapter_keys, through.adapter_keys, rtol=0, atol=1e-5)
    assert not torch.equal(cached.adapter_keys, cached.cache_keys)


def test_tune_searches_the_validation_images(vit_backbone, data, image_root, split_file):
    val = split_json(split_file, image_root, "val", vit_backbone.image_transform())
    method = tip(vit_backbone, data, search_step=[8, 4], search_scale=[5.0, 4.0])
    method.tune(vit_backbone, val, FeatureCache())
    features = F.normalize(FeatureCache().features(vit_backbone, val, progress=False), dim=-1)
    expected = search_beta_alpha(100 * features @ method.clip_weights.t(), features @ method.cache_keys.t(),
                                 method.cache_values, torch.tensor(val.labels), [5.0, 4.0], [8, 4])  # fmt: skip
    assert (method.beta.item(), method.alpha.item()) == (pytest.approx(expected[0]), pytest.approx(expected[1]))


# ------------------------------------------------------------------------------------------- CLIP-Adapter
def test_clip_adapter_blends_before_normalising(vit_backbone):
    method = CLIPAdapter(vit_backbone, CLASSES, CLIPAdapter.Config(alpha=0.25))
    f = torch.randn(5, vit_backbone.embed_dim)
    w1, w2 = method.image_adapter[0].weight, method.image_adapter[2].weight
    assert w1.shape == (vit_backbone.embed_dim // 4, vit_backbone.embed_dim) and w2.shape == w1.t().shape
    x = torch.relu(f @ w1.t()) @ w2.t()  # the paper's A(f): no final ReLU
    assert (x < 0).any()
    v = 0.25 * x + 0.75 * f
    hand = vit_backbone.encode_text([f"a photo of a {n.replace('_', ' ')}." for n in CLASSES.names])
    expected = vit_backbone.logit_scale * F.normalize(v, dim=-1) @ F.normalize(hand, dim=-1).t()
    with torch.no_grad():
        torch.testing.assert_close(method.logits(vit_backbone, Batch(features=f)), expected)
        zero_shot = vit_backbone.logit_scale * F.normalize(f, dim=-1) @ F.normalize(hand, dim=-1).t()
        assert (method.logits(vit_backbone, Batch(features=f)) - zero_shot).abs().max() > 1e-3  # no zero init
        method.image_adapter[0].weight.zero_()  # x = 0: v = 0.75 f scores as zero-shot CLIP
        torch.testing.assert_close(method.logits(vit_backbone, Batch(features=f)), zero_shot)
    release = CLIPAdapter(vit_backbone, CLASSES, CLIPAdapter.Config(final_relu=True))
    with torch.no_grad():
        assert (release.image_adapter(f) >= 0).all()


def test_clip_adapters_text_side(vit_backbone):
    method = CLIPAdapter(vit_backbone, CLASSES, CLIPAdapter.Config(side="text", text_alpha=0.5))
    assert not hasattr(method, "image_adapter")
    t = method.hand
    w1, w2 = method.text_adapter[0].weight, method.text_adapter[2].weight
    with torch.no_grad():
        torch.testing.assert_close(method.text_features(vit_backbone), 0.5 * torch.relu(t @ w1.t()) @ w2.t() + 0.5 * t)
    assert {n for n, _ in method.named_parameters()} == {"text_adapter.0.weight", "text_adapter.2.weight"}


# ------------------------------------------------------------------------------------------- files and bad input
@pytest.mark.parametrize("cls", [TipAdapter, TipAdapterF])
def test_the_cache_round_trips_through_the_prompt_file(cls, vit_backbone, data, tmp_path):
    method = tip(vit_backbone, data, cls)
    method.beta.fill_(3.5)
    method.alpha.fill_(0.75)
    if cls is TipAdapterF:
        with torch.no_grad():
            method.adapter_keys.add_(0.01)
    method.eval()
    features = FeatureCache().features(vit_backbone, data, progress=False)
    with torch.no_grad():
        logits = method.logits(vit_backbone, Batch(features=features))
    save_pretrained(method, vit_backbone, tmp_path / "prompt")
    loaded = load_prompt(tmp_path / "prompt", vit_backbone)  # no setup: it predicts from the file
    for name in ("cache_keys", "cache_values", "beta", "alpha", *(["adapter_keys"] if cls is TipAdapterF else [])):
        assert torch.equal(getattr(loaded, name), getattr(method, name)), name
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(vit_backbone, Batch(features=features)), logits)
    from vlprompt.backbones import load_backbone

    with pytest.raises(PromptFileError, match="trained on a backbone with text_width=32, this backbone has 128"):
        load_prompt(tmp_path / "prompt", load_backbone("vlprompt/tiny-shapes"))


def test_a_cache_needs_a_shot_of_every_class(vit_backbone, data):
    method = TipAdapter(vit_backbone, CLASSES, TipAdapter.Config(**TINY))
    with pytest.raises(MethodInputError, match="tip-adapter has no cache"):
        method.logits(vit_backbone, Batch(features=torch.zeros(1, vit_backbone.embed_dim)))
    no_gold = data.subset([i for i, label in enumerate(data.labels) if label != 1])
    with pytest.raises(DataError, match=r"class\(es\) \['gold'\] have none \(zero shots\)"):
        method.setup(vit_backbone, no_gold, FeatureCache())
    with pytest.raises(DataError, match="zero shots"):
        method.setup(vit_backbone, data.subset([]), FeatureCache())
    with pytest.raises(ValueError, match="cannot score other classes"):
        method.set_classes(vit_backbone, ["purple_square"])


def test_bad_options_and_adam_eps(vit_backbone):
    with pytest.raises(OptionError, match=r"search_scale must be \[beta, alpha\]"):
        build_method("tip-adapter", vit_backbone, CLASSES, {"search_scale": [7.0]})
    with pytest.raises(OptionError, match="reduction must be <= the width 32, not 64"):
        build_method("clip-adapter", vit_backbone, CLASSES, {"reduction": 64})
    with pytest.raises(OptionError, match="--train.adam_eps must be > 0, not 0"):
        TrainConfig(adam_eps=0)

    def groups():
        return [{"params": [torch.nn.Parameter(torch.zeros(1))]}]

    optimizer = _make_optimizer(groups(), TrainConfig(optimizer="adamw", adam_eps=1e-4, weight_decay=0.01))
    assert optimizer.param_groups[0]["eps"] == 1e-4 and optimizer.param_groups[0]["weight_decay"] == 0.01
    assert _make_optimizer(groups(), TrainConfig(optimizer="adam")).param_groups[0]["eps"] == 1e-8  # as before


# ------------------------------------------------------------------------------------------- through the CLI
@pytest.mark.parametrize("name", ["clip-adapter", "tip-adapter", "tip-adapter-f"])
def test_vlprompt_train_then_eval(name, image_root, split_file, tmp_path, capsys, monkeypatch):
    tuned = []
    original = TipAdapter.tune
    monkeypatch.setattr(TipAdapter, "tune", lambda self, b, val, c: tuned.append(val) or original(self, b, val, c))
    data = ["--data.root", str(image_root), "--data.split_file", str(split_file), "--data.shots", "4"]
    args = ["train", "--backbone.name", "tiny-random-vit", *data, "--method", name, "--seeds", "[1]"]
    options = json.dumps(TINY) if name != "clip-adapter" else "{}"
    out = tmp_path / "run"
    assert main([*args, "--method_options", options, "--train.epochs", "2", "--out", str(out)]) == 0
    trained = json.loads((out / "results.json").read_text())["per_seed"][0]["accuracy"]
    if name != "clip-adapter":  # the search ran on the validation split (image 4 of each class), never on test
        assert [s.path.split("/")[-1] for s in tuned[0].samples] == ["4.png"] * 4
    capsys.readouterr()
    assert main(["eval", "--prompt", str(out / "seed1" / "prompt"), *data]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(trained)
