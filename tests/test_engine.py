"""The training engine: schedules, accumulation, resume, feature cache, model selection."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from vlprompt.backbones import tiny_random_backbone
from vlprompt.data import image_folder
from vlprompt.engine import FeatureCache, TrainConfig, fit, preset
from vlprompt.engine.schedules import SCHEDULE_ALIASES, lr_factor
from vlprompt.engine.trainer import CHECKPOINT, METRICS
from vlprompt.errors import OptionError
from vlprompt.methods import CoOp, CoOpConfig

FAST = {"batch_size": 8, "weight_decay": 5e-4, "momentum": 0.9}


@pytest.fixture(scope="module")
def data(image_root, vit_backbone):
    return image_folder(image_root, vit_backbone.image_transform())


@pytest.fixture(scope="module")
def cache():
    return FeatureCache()


def make_coop(backbone, classes, seed: int = 0) -> CoOp:
    torch.manual_seed(seed)
    return CoOp(backbone, classes, CoOpConfig(n_ctx=4))


class Interrupt(Exception):
    pass


# --------------------------------------------------------------------------------------- schedules
def test_dassl_cosine_schedule_by_hand():
    base, epochs = 0.002, 6
    f = lr_factor("dassl-cosine", epochs, warmup=1, base_lr=base, warmup_lr=1e-5)
    lrs = [base * f(t) for t in range(epochs)]
    expected = [1e-5] + [base * 0.5 * (1 + math.cos(math.pi * (t - 1) / epochs)) for t in range(1, epochs)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[1] == pytest.approx(base) and lrs[-1] > 0.05 * base  # never reaches 0 inside the budget


def test_cosine_and_constant_schedules():
    f = lr_factor("cosine", total=10, warmup=2)
    assert [f(0), f(1)] == pytest.approx([0.5, 1.0])  # linear warmup
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.5)  # half way through the cosine part (8 ticks)
    values = [f(t) for t in range(2, 11)]
    assert all(a > b for a, b in zip(values, values[1:])) and f(10) == pytest.approx(0.0, abs=1e-12)
    g = lr_factor("constant", total=10, warmup=4)
    assert [g(t) for t in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_factor("step", 10)


def test_old_schedule_name_is_the_same_schedule():
    """The old name "coop" is still accepted, kept as written, and gives the same factors at every tick."""
    assert SCHEDULE_ALIASES == {"coop": "dassl-cosine"}
    for total, warmup in ((6, 1), (10, 0), (200, 3)):
        old = lr_factor("coop", total, warmup, base_lr=0.002, warmup_lr=1e-5)
        new = lr_factor("dassl-cosine", total, warmup, base_lr=0.002, warmup_lr=1e-5)
        assert [old(t) for t in range(total + 2)] == [new(t) for t in range(total + 2)]
    assert TrainConfig(schedule="coop").schedule == "coop"  # what config.yaml records is what was given
    assert TrainConfig().schedule == "dassl-cosine"
    with pytest.raises(ValueError, match=r"--train.schedule must be one of constant, cosine, dassl-cosine, not 'cop'"):
        TrainConfig(schedule="cop")


def test_fit_uses_dassl_cosine_schedule_per_epoch(vit_backbone, data, cache):
    method = make_coop(vit_backbone, data.classnames)
    result = fit(method, vit_backbone, data, TrainConfig(epochs=5, lr=0.002, **FAST), cache=cache, progress=False)
    expected = [1e-5] + [0.002 * 0.5 * (1 + math.cos(math.pi * (e - 1) / 5)) for e in range(1, 5)]
    assert [r["lr"] for r in result.history] == pytest.approx(expected, rel=1e-9)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in result.history] == [3, 6, 9, 12, 15]  # 24 images / batch 8
    # The old name steps the same schedule per epoch: the same lr sequence and the same run, exactly.
    method = make_coop(vit_backbone, data.classnames)
    old = fit(
        method,
        vit_backbone,
        data,
        TrainConfig(epochs=5, lr=0.002, schedule="coop", **FAST),
        cache=cache,
        progress=False,
    )
    assert [r["lr"] for r in old.history] == [r["lr"] for r in result.history]
    assert [r["loss"] for r in old.history] == [r["loss"] for r in result.history]


def test_fit_anneals_to_min_lr(vit_backbone, data, cache):
    """--train.min_lr (PyTorch's eta_min, CLIP-LoRA's 1e-6) reaches the engine's schedule."""
    method = make_coop(vit_backbone, data.classnames)
    config = TrainConfig(epochs=5, lr=0.002, min_lr=1e-3, **FAST)
    result = fit(method, vit_backbone, data, config, cache=cache, progress=False)
    expected = [1e-5] + [1e-3 + (0.002 - 1e-3) * 0.5 * (1 + math.cos(math.pi * (e - 1) / 5)) for e in range(1, 5)]
    assert [r["lr"] for r in result.history] == pytest.approx(expected, rel=1e-9)


def test_fit_cosine_schedule_ends_near_zero(vit_backbone, data, cache):
    method = make_coop(vit_backbone, data.classnames)
    config = TrainConfig(epochs=4, lr=0.01, schedule="cosine", warmup_epochs=1, **FAST)
    result = fit(method, vit_backbone, data, config, cache=cache, progress=False)
    lrs = [r["lr"] for r in result.history]  # the lr of each epoch's last step (3 steps per epoch)
    f = lr_factor("cosine", total=12, warmup=3)
    assert lrs == pytest.approx([0.01 * f(3 * e + 2) for e in range(4)], rel=1e-9)
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] < 0.04 * 0.01  # warmed up, then annealed to ~0
    assert lrs[1] > lrs[2] > lrs[3]


def test_presets():
    assert preset("coop", shots=1).epochs == 50 and preset("coop", shots=4).epochs == 100
    assert preset("coop", shots=16).epochs == 200 and preset("coop-imagenet", shots=16).epochs == 50
    coop = preset("coop", shots=16, batch_size=4)
    assert (coop.lr, coop.momentum, coop.weight_decay, coop.schedule, coop.warmup_epochs, coop.warmup_lr) == (
        0.002,
        0.9,
        5e-4,
        "dassl-cosine",
        1,
        1e-5,
    )
    assert (coop.augment, coop.cache_features, coop.precision, coop.select) == (True, None, "fp16", "last")
    assert coop.batch_size == 4 and preset("cocoop").epochs == 10
    with pytest.raises(ValueError, match="unknown preset 'nope'; available: .*coop"):
        preset("nope")


# ------------------------------------------------------------------------------------ accumulation
def test_gradient_accumulation_is_equivalent(vit_backbone, data, cache):
    # CoOp's lr; the tiny model's gradients are large (~70), so float32 rounding is what remains
    config = TrainConfig(epochs=3, lr=0.002, schedule="constant", warmup_epochs=0, optimizer="sgd", **FAST)
    plain = make_coop(vit_backbone, data.classnames)
    accum = make_coop(vit_backbone, data.classnames)
    start = plain.ctx.detach().clone()
    fit(plain, vit_backbone, data, config, cache=cache, progress=False)
    fit(accum, vit_backbone, data, TrainConfig(**{**config.__dict__, "grad_accum": 2}), cache=cache, progress=False)
    assert (plain.ctx - start).abs().max() > 1e-2
    torch.testing.assert_close(accum.ctx, plain.ctx, atol=1e-6, rtol=0)
    single_step = make_coop(vit_backbone, data.classnames)  # a different batch size trains differently
    fit(
        single_step,
        vit_backbone,
        data,
        TrainConfig(**{**config.__dict__, "batch_size": 4}),
        cache=cache,
        progress=False,
    )
    assert (single_step.ctx - plain.ctx).abs().max() > 1e-3


def test_batch_must_split_evenly(vit_backbone, data):
    with pytest.raises(ValueError, match="batch_size 6 must split evenly over 1 process.* x 4 accumulation"):
        fit(make_coop(vit_backbone, data.classnames), vit_backbone, data, TrainConfig(batch_size=6, grad_accum=4))
    with pytest.raises(ValueError, match="optimizer must be one of"):
        fit(make_coop(vit_backbone, data.classnames), vit_backbone, data, TrainConfig(optimizer="lion"))


def test_an_iteration_budget_and_a_kept_last_batch_train_as_clip_loras_loop(tmp_path, vit_backbone, data, cache):
    """``max_steps`` and ``drop_last false`` against CLIP-LoRA's own loop (lora.py): ``while count < total: for
    batch in loader (shuffled, drop_last False): step; CosineAnnealingLR(total, eta_min).step(); stop at total``."""
    from vlprompt.engine.trainer import StepPlan
    from vlprompt.methods import Batch

    config = TrainConfig(epochs=1, max_steps=7, batch_size=10, drop_last=False, optimizer="adamw", lr=0.01,
                         weight_decay=0.01, schedule="cosine", warmup_epochs=0, min_lr=1e-6)  # fmt: skip
    method = make_coop(vit_backbone, data.classnames)
    reference = make_coop(vit_backbone, data.classnames)
    result = fit(method, vit_backbone, data, config, cache=cache, run_dir=tmp_path, progress=False)
    assert [r["step"] for r in result.history] == [3, 6, 7]  # 24 images: 10 + 10 + 4 a pass; 7 steps in all

    images = torch.stack([image for image, _ in data])
    labels = torch.tensor([label for _, label in data])
    with torch.no_grad():
        features = vit_backbone.encode_image(images)
    optimizer = torch.optim.AdamW([reference.ctx], lr=0.01, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 7, eta_min=1e-6)
    plan = StepPlan.build(len(data), config)
    losses, lrs, count, epoch = [], [], 0, 0
    while count < 7:
        order = torch.randperm(24, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        for idx in order.split(10):  # the loader's batches: the last one of 4 images kept
            batch = Batch(features=features[idx], targets=labels[idx])
            loss = reference.loss(vit_backbone, batch, reference(vit_backbone, batch))
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            count += 1
            if count == 7:
                break
        epoch += 1
    assert [len(b) for b in plan.micro_batches(config.seed, 0)] == [10, 10, 4]
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in steps] == pytest.approx(losses, abs=1e-5)
    assert [r["lr"] for r in steps] == pytest.approx(lrs, rel=1e-9)
    torch.testing.assert_close(method.ctx, reference.ctx, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="last batch of 4 of the 24 images, which does not split evenly over 1 .* x 5"):
        fit(make_coop(vit_backbone, data.classnames), vit_backbone, data, replace(config, grad_accum=5))


# ------------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize(("checkpoint_every", "crash_after"), [(1, 2), (2, 3)])
def test_interrupted_and_resumed_run_ends_with_the_same_prompt(
    tmp_path, vit_backbone, data, cache, checkpoint_every, crash_after
):
    config = TrainConfig(epochs=4, lr=0.02, checkpoint_every=checkpoint_every, **FAST)
    straight = make_coop(vit_backbone, data.classnames)
    fit(straight, vit_backbone, data, config, cache=cache, run_dir=tmp_path / "straight", progress=False)

    def crash(record):
        if record["epoch"] == crash_after:
            raise Interrupt

    run = tmp_path / "resumed"
    first = make_coop(vit_backbone, data.classnames)
    with pytest.raises(Interrupt):
        fit(first, vit_backbone, data, config, cache=cache, run_dir=run, on_epoch_end=crash, progress=False)
    assert len((run / METRICS).read_text().splitlines()) == crash_after
    saved = torch.load(run / CHECKPOINT, weights_only=True)
    assert saved["epoch"] == (crash_after // checkpoint_every) * checkpoint_every

    resumed = make_coop(vit_backbone, data.classnames, seed=123)  # another init: the checkpoint wins
    result = fit(resumed, vit_backbone, data, config, cache=cache, run_dir=run, resume=True, progress=False)
    assert torch.equal(resumed.ctx, straight.ctx)
    lines = [json.loads(line) for line in (run / METRICS).read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    straight_lines = [json.loads(line) for line in (tmp_path / "straight" / METRICS).read_text().splitlines()]
    assert [r["loss"] for r in lines] == pytest.approx([r["loss"] for r in straight_lines], abs=1e-6)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    final = torch.load(run / CHECKPOINT, weights_only=True)
    assert final["epoch"] == 4 and torch.equal(final["method"]["ctx"], straight.ctx)
    assert not list(run.glob(".*tmp"))  # atomic writes leave no temp files


def test_resume_without_checkpoint_starts_fresh(tmp_path, vit_backbone, data, cache):
    method = make_coop(vit_backbone, data.classnames)
    result = fit(
        method,
        vit_backbone,
        data,
        TrainConfig(epochs=2, **FAST),
        cache=cache,
        run_dir=tmp_path,
        resume=True,
        progress=False,
    )
    assert len(result.history) == 2 and (tmp_path / CHECKPOINT).is_file()


# ----------------------------------------------------------------------------------- feature cache
def _count_image_calls(monkeypatch, backbone) -> list[int]:
    calls = [0]
    original = backbone.encode_image

    def counting(pixels, *args, **kwargs):
        calls[0] += 1
        return original(pixels, *args, **kwargs)

    monkeypatch.setattr(backbone, "encode_image", counting)
    return calls


def test_feature_cache_computes_once(monkeypatch, tmp_path, image_root):
    bb = tiny_random_backbone("vit")
    data = image_folder(image_root, bb.image_transform())
    calls = _count_image_calls(monkeypatch, bb)
    cache = FeatureCache(directory=tmp_path / "features", batch_size=10)
    config = TrainConfig(epochs=3, **FAST)
    result = fit(make_coop(bb, data.classnames), bb, data, config, cache=cache, progress=False)
    assert result.feature_cache and calls[0] == 3  # 24 images in batches of 10, once for 3 epochs
    fit(make_coop(bb, data.classnames), bb, data, config, cache=cache, progress=False)
    assert calls[0] == 3  # a second fit reuses them
    # a new cache object on the same directory reads the stored table
    reloaded = FeatureCache(directory=tmp_path / "features").features(bb, data, progress=False)
    assert calls[0] == 3
    pixels = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        direct = bb.model.encode_image(pixels)
    torch.testing.assert_close(reloaded, direct, atol=1e-5, rtol=0)
    # a subset (few-shot) is served from the same table
    FeatureCache(directory=tmp_path / "features").features(bb, data.subset([0, 5, 7]), progress=False)
    assert calls[0] == 3
    # another backbone identity computes its own features
    other = tiny_random_backbone("vit", seed=1)
    other_calls = _count_image_calls(monkeypatch, other)
    cache.features(other, image_folder(image_root, other.image_transform()), progress=False)
    assert other_calls[0] == 3


def test_without_cache_images_go_through_the_tower(monkeypatch, image_root):
    bb = tiny_random_backbone("vit")
    data = image_folder(image_root, bb.image_transform())
    calls = _count_image_calls(monkeypatch, bb)
    config = TrainConfig(epochs=2, cache_features=False, **FAST)
    result = fit(make_coop(bb, data.classnames), bb, data, config, progress=False)
    assert not result.feature_cache and calls[0] == 2 * 3  # every step of every epoch


def test_augmented_views_are_cached_and_train_as_pixels_do(monkeypatch, image_root):
    """With augment on, a frozen-tower method trains on each epoch's augmented views encoded once in no-grad
    batches: the same losses and prompt as feeding those views' pixels through the tower every step."""
    bb = tiny_random_backbone("vit")
    data = image_folder(image_root, bb.image_transform())
    config = TrainConfig(epochs=2, augment=True, lr=0.1, **FAST)
    cached, pixels = make_coop(bb, data.classnames), make_coop(bb, data.classnames)
    calls = _count_image_calls(monkeypatch, bb)
    cache = FeatureCache(batch_size=256)
    views = fit(cached, bb, data, config, cache=cache, progress=False)
    assert views.feature_cache and calls[0] == 2  # one batch of 24 views per epoch
    through = fit(pixels, bb, data, replace(config, cache_features=False), progress=False)
    assert not through.feature_cache and calls[0] == 2 + 2 * 3  # every step of every epoch
    assert [r["loss"] for r in views.history] == pytest.approx([r["loss"] for r in through.history], abs=1e-5)
    torch.testing.assert_close(cached.ctx, pixels.ctx, rtol=0, atol=1e-5)
    again = make_coop(bb, data.classnames)
    fit(again, bb, data, config, cache=cache, progress=False)  # another run drawing the same views
    assert calls[0] == 2 + 2 * 3 + 2  # their features are not kept in memory (no directory): encoded again
    torch.testing.assert_close(again.ctx, cached.ctx, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("options", "encoded"),
    [({"drop_last": True}, 2 * 20), ({"drop_last": False}, 2 * 24), ({"max_steps": 3}, 20 + 10)],
    ids=["dropped-batch", "kept-batch", "max-steps"],
)
def test_only_the_views_a_run_draws_are_encoded(image_root, options, encoded):
    """An epoch encodes the views of the images its steps draw, not those of a dropped last batch or of the steps
    a ``max_steps`` run never takes; the run equals one that feeds those views' pixels through the tower."""
    bb = tiny_random_backbone("vit")
    data = image_folder(image_root, bb.image_transform())
    config = TrainConfig(epochs=2, augment=True, lr=0.1, **{**FAST, "batch_size": 10, **options})
    cache = FeatureCache()
    cached, pixels = make_coop(bb, data.classnames), make_coop(bb, data.classnames)
    views = fit(cached, bb, data, config, cache=cache, progress=False)
    assert cache.images_encoded == encoded  # 24 images: two steps of 10 (a third of 4 kept or dropped)
    through = fit(pixels, bb, data, replace(config, cache_features=False), progress=False)
    assert [r["loss"] for r in views.history] == pytest.approx([r["loss"] for r in through.history], abs=1e-5)
    torch.testing.assert_close(cached.ctx, pixels.ctx, rtol=0, atol=1e-5)


def test_crop_scale_sets_the_smallest_crop_and_keeps_its_views_apart(monkeypatch, tmp_path, image_root):
    """--train.crop_scale is the random-resized crops' lower scale (MMRL's release: 0.5): other views, cached apart."""
    bb = tiny_random_backbone("vit")
    crop = bb.image_transform(train=True, crop_scale=0.5).transforms[0]
    assert crop.scale == (0.5, 1.0) and bb.image_transform(train=True).transforms[0].scale == (0.08, 1.0)
    data = image_folder(image_root, bb.image_transform())
    cache = FeatureCache(tmp_path)  # views persist: the same views would be read back
    config = TrainConfig(epochs=1, augment=True, **FAST)
    calls = _count_image_calls(monkeypatch, bb)
    dassl, mmrl = make_coop(bb, data.classnames), make_coop(bb, data.classnames)
    fit(dassl, bb, data, config, cache=cache, progress=False)
    fit(mmrl, bb, data, replace(config, crop_scale=0.5), cache=cache, progress=False)
    assert calls[0] == 2  # the same seed and epoch, other views: not read from the first run's table
    fit(make_coop(bb, data.classnames), bb, data, replace(config, crop_scale=0.5), cache=cache, progress=False)
    assert calls[0] == 2  # the same crop scale again: read back
    assert not torch.equal(dassl.ctx, mmrl.ctx)
    for bad, why in ((0.0, "> 0, not 0.0"), (1.5, "<= 1, not 1.5")):
        with pytest.raises(OptionError, match=f"--train.crop_scale must be {why}"):
            TrainConfig(crop_scale=bad)
    assert TrainConfig(crop_scale=1.0).crop_scale == 1.0


def test_augmented_views_persist_and_are_reused_by_the_next_run(monkeypatch, tmp_path, image_root):
    bb = tiny_random_backbone("vit")
    data = image_folder(image_root, bb.image_transform())
    config = TrainConfig(epochs=2, augment=True, **FAST)
    calls = _count_image_calls(monkeypatch, bb)
    fit(make_coop(bb, data.classnames), bb, data, config, cache=FeatureCache(tmp_path), progress=False)
    assert calls[0] == 2
    fit(make_coop(bb, data.classnames, seed=5), bb, data, config, cache=FeatureCache(tmp_path), progress=False)
    assert calls[0] == 2  # same seed, same epochs: the same views, read from disk
    fit(make_coop(bb, data.classnames), bb, data, replace(config, seed=2), cache=FeatureCache(tmp_path), progress=False)
    assert calls[0] == 4  # another seed draws other views


def test_a_view_is_a_pure_function_of_seed_epoch_and_image(image_root, vit_backbone):
    from vlprompt.data.images import SeededViews

    data = image_folder(image_root, None)
    views = SeededViews(vit_backbone.image_transform(train=True), seed=1, epoch=0)
    first = data.with_transform(views)[3][0]
    torch.manual_seed(123)  # the global RNG plays no part, and is left as it was
    state = torch.get_rng_state()
    torch.testing.assert_close(data.with_transform(views)[3][0], first, rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), state)
    other_epoch = data.with_transform(SeededViews(views.transform, seed=1, epoch=1))[3][0]
    other_image = data.with_transform(views)[4][0]
    assert not torch.equal(other_epoch, first) and not torch.equal(other_image, first)
    assert "epoch=0" in repr(views) and "seed=1" in repr(views)  # part of the feature cache's key


# ------------------------------------------------------------------------------------- selection
def test_select_best_keeps_the_best_epoch(vit_backbone, data, cache):
    scores = iter([0.2, 0.9, 0.4, 0.1])
    snapshots = []
    method = make_coop(vit_backbone, data.classnames)

    def scorer(m, backbone):
        assert m is method and not m.training
        return next(scores)

    def snapshot(record):
        snapshots.append(method.ctx.detach().clone())

    config = TrainConfig(epochs=4, lr=0.05, eval_every=1, select="best", **FAST)
    result = fit(method, vit_backbone, data, config, cache=cache, scorer=scorer, on_epoch_end=snapshot, progress=False)
    assert (result.selected_epoch, result.selected_score) == (2, 0.9)
    assert [r["val_score"] for r in result.history] == [0.2, 0.9, 0.4, 0.1]
    assert torch.equal(method.ctx, snapshots[1]) and not torch.equal(method.ctx, snapshots[-1])

    last = make_coop(vit_backbone, data.classnames)
    result = fit(
        last, vit_backbone, data, TrainConfig(epochs=2, **FAST), cache=cache, scorer=lambda m, b: 0.5, progress=False
    )
    assert result.selected_epoch == 2 and [r.get("val_score") for r in result.history] == [None, 0.5]
