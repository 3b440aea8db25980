"""TPT and C-TPT: the objective on hand cases, the AdamW step's closed form, the reset, seeds, feeds and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vlprompt.cli import main
from vlprompt.data import image_folder
from vlprompt.evaluation.classification import predict_logits
from vlprompt.feed import PIXELS, Feed
from vlprompt.methods import TPT, Batch, CoOp, build_method, cosine_logits
from vlprompt.methods.base import MethodOptionError
from vlprompt.methods.tpt import TPTViews, avg_entropy, confident_views, text_dispersion, view_entropy

CLASSES = ["blue_square", "gold", "green_square", "red_square"]
TINY = ["--backbone.name", "tiny-random-vit"]


def tpt(backbone, **options) -> TPT:
    return build_method("tpt", backbone, CLASSES, {"views": 8, "select": 0.25, **options})


@pytest.fixture()
def images(image_root, vit_backbone):
    return image_folder(image_root, vit_backbone.image_transform())


def test_avg_entropy_is_the_entropy_of_the_mean_softmax():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # softmax (1/2, 1/2) and (3/4, 1/4)
    p = (0.625, 0.375)
    assert float(avg_entropy(logits)) == pytest.approx(-sum(q * math.log(q) for q in p), abs=1e-6)
    second = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert torch.allclose(view_entropy(logits), torch.tensor([math.log(2), second]))
    # a class no view gives any mass: its log-mean is clamped (finfo.min), 0 · min, no NaN
    assert float(avg_entropy(torch.tensor([[0.0, -math.inf]]))) == 0.0


def test_confident_views_keep_the_truncated_fraction_of_lowest_entropy():
    sharp = torch.tensor([[9.0, 0.0], [0.0, 0.0], [5.0, 0.0], [1.0, 0.0], [0.0, 7.0]])  # entropies: 0 < 4 < 2 < 3 < 1
    assert confident_views(sharp, 0.5).tolist() == [0, 4]  # int(5 · 0.5) = 2
    assert confident_views(sharp, 0.79).tolist() == [0, 4, 2]  # int(3.95) = 3
    assert len(confident_views(torch.zeros(100, 3), 0.29)) == 28  # int(100 · 0.29) = int(28.999...) = 28
    assert confident_views(torch.zeros(4, 3), 1.0).tolist() == [0, 1, 2, 3]  # ties keep the earlier view
    with pytest.raises(MethodOptionError, match="0 views"):
        confident_views(sharp, 0.1)


def test_text_dispersion_hand_case():
    text = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, 1.0]])  # normalised: e1, e2, e2; mean (1/3, 2/3)
    expected = (math.sqrt((2 / 3) ** 2 + (2 / 3) ** 2) + 2 * math.sqrt((1 / 3) ** 2 + (1 / 3) ** 2)) / 3
    assert float(text_dispersion(text)) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("weight", [0.0, 50.0])
def test_one_adamw_step_is_the_closed_form(weight, vit_backbone, images):
    """ctx₁ = ctx₀ (1 − lr · 0.01) − lr · g / (|g| + eps), g the gradient of H(kept views) − λ · ATFD."""
    method = tpt(vit_backbone, calibration_weight=weight)
    pixels = images[0][0][None]
    batch = Batch(pixels=pixels, index=torch.tensor([0]))
    ctx0 = method.inner.ctx.detach().clone()
    views = method._image_views(batch, 0)
    with torch.no_grad():
        features = vit_backbone.encode_image(views)
    ctx = ctx0.clone().requires_grad_()
    text = method.inner.layout.encode(vit_backbone, ctx)
    logits = cosine_logits(features, text, vit_backbone.logit_scale)
    keep = confident_views(logits, 0.25)
    assert len(keep) == 2
    (grad,) = torch.autograd.grad(avg_entropy(logits[keep]) - weight * text_dispersion(text), ctx)
    expected = ctx0 * (1 - 5e-3 * 0.01) - 5e-3 * grad / (grad.abs() + 1e-8)
    with method.adapted(vit_backbone, batch):
        torch.testing.assert_close(method.inner.ctx.detach(), expected, atol=2e-6, rtol=0)
    assert torch.equal(method.inner.ctx, ctx0) and method.inner.ctx.grad is None  # restored on exit
    assert not method.inner.ctx.requires_grad


def test_each_image_starts_from_the_initial_context(vit_backbone, images):
    """Scoring A then B gives B what scoring B alone gives (context and optimizer state reset per image)."""
    method = tpt(vit_backbone, steps=2)
    both = predict_logits(method, vit_backbone, images.subset([3, 17]))
    alone = predict_logits(method, vit_backbone, images.subset([17]))
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=0)
    untuned = tpt(vit_backbone, steps=0)
    assert not torch.allclose(both[1:], predict_logits(untuned, vit_backbone, images.subset([17])), atol=1e-4)


def test_the_temperature_scaling_baseline_divides_the_tuned_logits(vit_backbone, images):
    """C-TPT's run_type tpt_ts: the same tuning, the final logits over 1.16 (accuracy kept, calibration changed)."""
    torch.manual_seed(0)
    plain = predict_logits(tpt(vit_backbone), vit_backbone, images.subset([3, 17]))
    torch.manual_seed(0)
    scaled = predict_logits(tpt(vit_backbone, temperature=1.16), vit_backbone, images.subset([3, 17]))
    torch.testing.assert_close(scaled, plain / 1.16, atol=1e-5, rtol=1e-5)
    with pytest.raises(MethodOptionError, match="temperature"):
        tpt(vit_backbone, temperature=0.0)


def test_the_releases_mixed_precision(vit_backbone, images, monkeypatch):
    """precision fp16: views encoded, steps taken and view 0 predicted under fp16 autocast (close to fp32, not
    equal); one GradScaler at 1000 for the whole test set; an overflowing step is skipped and the scale halved."""
    import vlprompt.methods.tpt as tpt_module

    subset = images.subset([3, 17])
    full = predict_logits(tpt(vit_backbone), vit_backbone, subset)
    method = tpt(vit_backbone, precision="fp16")
    half = predict_logits(method, vit_backbone, subset)
    assert not torch.equal(half, full)
    torch.testing.assert_close(half, full, atol=0.02 * float(full.abs().max()), rtol=0)
    untuned = predict_logits(tpt(vit_backbone, precision="fp16", steps=0), vit_backbone, subset)
    assert not torch.allclose(half, untuned, atol=1e-3)  # the steps were taken
    scaler = method.scaler
    assert scaler.is_enabled() and scaler.get_scale() == 1000.0  # two good steps: no growth before 2000
    default = tpt(vit_backbone)  # precision "auto": fp16 on CUDA (the releases'), fp32 on this CPU
    assert default.config.precision == "auto" and not default.mixed_precision and not default.scaler.is_enabled()
    monkeypatch.setattr(tpt_module, "avg_entropy", lambda logits: avg_entropy(logits) * math.inf)
    skipped = predict_logits(method, vit_backbone, images.subset([3]))
    torch.testing.assert_close(skipped, untuned[:1], atol=0, rtol=0)  # the overflowing step moved nothing
    assert method.scaler is scaler and scaler.get_scale() == 500.0


def test_expected_calibration_error_by_hand():
    """C-TPT's metric: top-probability bins of width 0.05; here bins (0.9, 0.95], (0.6, 0.65] and (0.5, 0.55]."""
    from vlprompt.evaluation.classification import accuracy, expected_calibration_error

    top = torch.tensor([0.91, 0.91, 0.61, 0.53], dtype=torch.float64)
    logits = torch.stack([top.log(), (1 - top).log()], dim=1)  # class 0 predicted, with probability top
    labels = torch.tensor([0, 1, 0, 0])
    expected = 2 / 4 * abs(0.5 - 0.91) + 1 / 4 * abs(1 - 0.61) + 1 / 4 * abs(1 - 0.53)
    assert expected_calibration_error(logits, labels) == pytest.approx(expected)  # 0.42
    assert accuracy(logits, labels)["ece"] == pytest.approx(0.42)
    assert expected_calibration_error(100 * logits, torch.zeros(4, dtype=torch.long)) < 1e-4  # all right, all sure


def test_views_are_seeded_per_image(vit_backbone, images):
    method = tpt(vit_backbone)
    feed = Feed(vit_backbone, images.subset([0, 1]), method)
    assert feed.inputs == [PIXELS]
    (batch,) = next(feed.in_order(2))
    assert batch.pixels.shape[:2] == (2, 8)
    torch.testing.assert_close(batch.pixels[:, 0], torch.stack([images[0][0], images[1][0]]))  # view 0: the image
    (again,) = next(Feed(vit_backbone, images.subset([0, 1]), tpt(vit_backbone)).in_order(1))
    assert torch.equal(again.pixels[0], batch.pixels[0])
    (other,) = next(Feed(vit_backbone, images.subset([0, 1]), tpt(vit_backbone, seed=1)).in_order(1))
    assert not torch.equal(other.pixels[0, 1:], batch.pixels[0, 1:])
    first = predict_logits(method, vit_backbone, images.subset([0, 1, 2]))
    torch.testing.assert_close(predict_logits(tpt(vit_backbone), vit_backbone, images.subset([0, 1, 2])), first)


def test_in_memory_pixels_are_augmented_from_themselves(vit_backbone, images):
    method = tpt(vit_backbone, augmix=True)
    batch = Batch(pixels=torch.stack([images[0][0], images[1][0]]), index=torch.tensor([5, 6]))
    views = method._image_views(batch, 1)
    assert views.shape == (8, *images[0][0].shape) and torch.equal(views[0], images[1][0])
    assert torch.equal(views, method._image_views(batch, 1))
    assert not torch.equal(views[1:], method._image_views(batch, 0)[1:])
    logits = method.score(vit_backbone, batch)
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()


def test_augmix_views_differ_from_plain_crops(vit_backbone, images):
    from vlprompt.data.images import SeededViews, load_rgb

    image = load_rgb(images.samples[0].path)
    plain = SeededViews(TPTViews(vit_backbone, 4, False), 0, 0)(image, "a")
    mixed = SeededViews(TPTViews(vit_backbone, 4, True), 0, 0)(image, "a")
    assert plain.shape == mixed.shape == (4, 3, 32, 32)
    assert torch.equal(plain[0], mixed[0]) and not torch.equal(plain[1:], mixed[1:])


def test_bad_inputs_are_refused_before_any_work(vit_backbone):
    with pytest.raises(MethodOptionError, match="method 'zeroshot' has none"):
        TPT.Config.from_dict({"method": "zeroshot", "options": {}}, "tpt")
    with pytest.raises(MethodOptionError, match="8 x 0.1 keep int"):
        TPT.Config.from_dict({"views": 8, "select": 0.1}, "tpt")
    with pytest.raises(MethodOptionError, match="calibration_weight needs class features shared"):
        TPT.Config.from_dict({"method": "cocoop", "options": {}, "calibration_weight": 1.0}, "tpt")
    with pytest.raises(MethodOptionError, match="is a wrapper itself"):
        TPT.Config.from_dict({"method": "tpt", "options": {}}, "tpt")
    with pytest.raises(Exception, match="must see pixels"):
        tpt(vit_backbone).score(vit_backbone, Batch(features=torch.zeros(1, vit_backbone.embed_dim)))


def test_wrapping_a_trained_prompt_keeps_its_context(vit_backbone):
    coop = CoOp(vit_backbone, CLASSES, CoOp.Config(n_ctx=4))
    wrapped = TPT.wrapping(coop, vit_backbone, {"views": 8, "select": 0.25})
    assert wrapped.inner is coop and wrapped.config.options["n_ctx"] == 4
    assert not wrapped.learns and wrapped.adapts_at_test_time and wrapped.has_context
    assert TPT.capabilities(TPT.Config(train=True))["learns"]


def _data(image_root, split_file):
    return ["--data.root", str(image_root), "--data.split_file", str(split_file), "--data.shots", "2"]


def test_cli_train_tpt_and_eval_a_coop_prompt_with_tpt(tmp_path, image_root, split_file, capsys):
    out = tmp_path / "tpt"
    options = "{views: 8, select: 0.25}"
    args = ["train", *TINY, *_data(image_root, split_file), "--method", "tpt", "--method_options", options]
    assert main([*args, "--seeds", "[1]", "--out", str(out)]) == 0
    trained = json.loads((out / "results.json").read_text())["per_seed"][0]["accuracy"]
    capsys.readouterr()
    assert main(["eval", "--prompt", str(out / "seed1" / "prompt"), *_data(image_root, split_file)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(trained)
    coop = tmp_path / "coop"
    args = ["train", *TINY, *_data(image_root, split_file), "--method", "coop", "--method_options", "{n_ctx: 4}"]
    assert main([*args, "--train.epochs", "1", "--seeds", "[1]", "--out", str(coop)]) == 0
    capsys.readouterr()
    prompt = str(coop / "seed1" / "prompt")
    assert main(["eval", "--prompt", prompt, *_data(image_root, split_file), "--tpt", "true",
                 "--tpt_options", options]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["tpt"]["views"] == 8 and 0.0 <= summary["accuracy"] <= 1.0
    zeroshot = tmp_path / "zs"
    args = ["train", *TINY, *_data(image_root, split_file), "--method", "zeroshot", "--seeds", "[1]"]
    assert main([*args, "--out", str(zeroshot)]) == 0
    capsys.readouterr()
    assert main(["eval", "--prompt", str(zeroshot / "seed1" / "prompt"), *_data(image_root, split_file), "--tpt",
                 "true", "--data.root", str(tmp_path / "nowhere")]) != 0  # fmt: skip
    assert "method 'zeroshot' has none" in capsys.readouterr().err  # refused before the data is read
