"""KgCoOp and PromptSRC: their losses against hand-computed cases, Gaussian prompt aggregation, resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vlprompt.data import image_folder
from vlprompt.engine import TrainConfig, fit
from vlprompt.labels import ClassNames
from vlprompt.methods import Batch, KgCoOp, PromptSRC, build_method
from vlprompt.methods.kgcoop import knowledge_distance
from vlprompt.methods.promptsrc import gaussian_epoch_weights, self_regulating_losses
from vlprompt.methods.zeroshot import CLIP_IMAGENET_TEMPLATES, COOP_IMAGENET_TEMPLATES
from vlprompt.prompts import TENSORS_FILE, load_prompt, save_pretrained

CLASSES = ("blue_square", "gold", "green_square", "red_square")
TINY = {"depth_text": 2, "depth_vision": 2}


# ---------------------------------------------------------------- KgCoOp
def test_knowledge_distance_by_hand():
    learned = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    hand = torch.tensor([[4.0, 3.0], [0.0, 2.0]])
    # cos = 24/25 and 0: 1 - (0.96 + 0) / 2
    assert float(knowledge_distance(learned, hand)) == pytest.approx(0.52, abs=1e-7)


def test_kgcoop_loss_is_cross_entropy_plus_w_times_the_distance(vit_backbone):
    torch.manual_seed(0)
    method = build_method("kgcoop", vit_backbone, CLASSES, {"weight": 8.0, "template": "a photo of a {}, a shape."})
    with torch.no_grad():
        method.ctx.add_(torch.randn_like(method.ctx) * 0.3)
    features = torch.randn(5, vit_backbone.embed_dim)
    batch = Batch(features=features, targets=torch.tensor([0, 1, 2, 3, 0]))
    method.train()
    loss = method.loss(vit_backbone, batch, logits := method(vit_backbone, batch))
    names = [c.replace("_", " ") for c in CLASSES]
    hand = F.normalize(vit_backbone.encode_text([f"a photo of a {n}, a shape." for n in names]), dim=-1)
    learned = F.normalize(method.text_features(vit_backbone).detach(), dim=-1)
    distance = 1 - (learned * hand).sum(-1).mean()
    expected = F.cross_entropy(logits.detach(), batch.targets) + 8.0 * distance
    assert float(distance) > 1e-3  # the regulariser is not trivially zero here
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=0)


def test_kgcoop_starts_on_its_hand_crafted_prompt(vit_backbone):
    """ctx "a photo of a" before the class is the template "a photo of a {}.": the distance starts at 0."""
    method = KgCoOp(vit_backbone, CLASSES)
    with torch.no_grad():
        assert float(knowledge_distance(method.text_features(vit_backbone), method.hand_features)) < 1e-6


def test_kgcoop_frozen_features_follow_the_label_space(vit_backbone):
    method = KgCoOp(vit_backbone, CLASSES)
    method.set_classes(vit_backbone, ["purple_square", "orange"])
    expected = F.normalize(vit_backbone.encode_text(["a photo of a purple square.", "a photo of a orange."]), dim=-1)
    torch.testing.assert_close(method.hand_features, expected, atol=1e-6, rtol=0)
    assert "hand_features" not in method.state_dict()  # a non-persistent buffer


def test_kgcoop_template_without_placeholder_is_refused(vit_backbone):
    with pytest.raises(ValueError, match="has no '{}'"):
        build_method("kgcoop", vit_backbone, CLASSES, {"template": "a photo"})


# ---------------------------------------------------------------- PromptSRC
def test_self_regulating_losses_by_hand():
    text = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised: e1, e2
    teacher = torch.tensor([[1.0, 1.0], [0.0, 5.0]])  # normalised: (r, r), e2 with r = 1/sqrt(2)
    image = torch.tensor([[1.0, 0.0]])
    frozen_image = torch.tensor([[0.0, 2.0]])
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    terms = self_regulating_losses(text, teacher, image, frozen_image, logits, scale=2.0)
    r = 1 / math.sqrt(2)
    assert float(terms["text_l1"]) == pytest.approx((1 - r + r + 0 + 0) / 4, abs=1e-6)
    assert float(terms["image_l1"]) == pytest.approx((1 + 1) / 2, abs=1e-6)
    z0 = [2.0 * r, 2.0 * 1.0]  # frozen logits: scale · (0, 1) · teacherᵀ
    q = [math.exp(z) / sum(math.exp(v) for v in z0) for z in z0]
    p = [0.25, 0.75]
    kl = sum(qi * math.log(qi / pi) for qi, pi in zip(q, p))  # KL(frozen ‖ prompted)
    assert float(terms["logits_kl"]) == pytest.approx(kl / 2, abs=1e-6)  # summed, divided by B · C = 2


def test_promptsrc_loss_against_the_frozen_model(vit_backbone, image_root):
    torch.manual_seed(0)
    method = build_method("promptsrc", vit_backbone, CLASSES, TINY)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    data = image_folder(image_root, vit_backbone.image_transform())
    pixels = torch.stack([data[i][0] for i in range(4)])
    batch = Batch(pixels=pixels, targets=torch.tensor([0, 0, 1, 1]))
    method.train()
    logits = method(vit_backbone, batch)
    loss = method.loss(vit_backbone, batch, logits)
    with torch.no_grad():
        names = [c.replace("_", " ") for c in CLASSES]
        raw = torch.stack([vit_backbone.encode_text([t.format(n) for n in names]) for t in COOP_IMAGENET_TEMPLATES])
        teacher = F.normalize(raw.mean(0), dim=-1)  # mean of raw features, then normalised
        frozen = F.normalize(vit_backbone.encode_image(pixels), dim=-1)
        text = F.normalize(method.text_features(vit_backbone), dim=-1)
        image = F.normalize(method.image_features(vit_backbone, batch), dim=-1)
        z0 = vit_backbone.logit_scale * frozen @ teacher.t()
        p_log, q = F.log_softmax(logits, 1), F.softmax(z0, 1)
        kl = (q * (q.log() - p_log)).sum() / logits.numel()
        expected = (
            F.cross_entropy(logits, batch.targets)
            + 25 * (text - teacher).abs().mean()
            + 10 * (image - frozen).abs().mean()
            + kl
        )
    assert float(kl) > 1e-4 and float((image - frozen).abs().mean()) > 1e-4
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=0)


def test_coop_imagenet_templates_are_clips_first_sixty():
    assert len(COOP_IMAGENET_TEMPLATES) == 60 == len(set(COOP_IMAGENET_TEMPLATES))
    assert COOP_IMAGENET_TEMPLATES[:2] == ("a photo of a {}.", "a bad photo of a {}.")
    assert COOP_IMAGENET_TEMPLATES[-1] == "itap of the {}."
    assert set(COOP_IMAGENET_TEMPLATES) == set(CLIP_IMAGENET_TEMPLATES[:60])


def test_gaussian_weights_by_hand():
    weights = gaussian_epoch_weights(20, 15, 1)
    density = [math.exp(-0.5 * (e - 15) ** 2) / math.sqrt(2 * math.pi) for e in range(1, 21)]
    expected = torch.tensor([d / sum(density) for d in density], dtype=torch.float64)
    torch.testing.assert_close(weights, expected, atol=1e-15, rtol=1e-12)
    assert int(weights.argmax()) == 14 and float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(weights[14]) == pytest.approx(0.398942, abs=1e-6)  # the peak density: the rest sums to ~1
    # far from the mean the reference's density underflows; the softmax form still gives weights
    assert float(gaussian_epoch_weights(2, 5000, 1)[1]) == 1.0


def test_gaussian_prompt_aggregation_by_hand(vit_backbone):
    method = build_method("promptsrc", vit_backbone, CLASSES, {**TINY, "gpa_mean": 2.0, "gpa_std": 1.0})
    weights = gaussian_epoch_weights(3, 2.0, 1.0)  # ∝ (e^-1/2, 1, e^-1/2)
    with torch.no_grad():
        for epoch, value in enumerate((1.0, 2.0, 4.0)):
            for p in method.parameters():
                p.fill_(value)
            method.end_epoch(epoch, 3)
    expected = float(weights[0] * 1 + weights[1] * 2 + weights[2] * 4)
    a = math.exp(-0.5)
    assert expected == pytest.approx((a * 1 + 2 + a * 4) / (2 * a + 1), abs=1e-12)
    for name, p in method.named_parameters():
        torch.testing.assert_close(p, torch.full_like(p, expected), atol=1e-6, rtol=0, msg=name)


def test_without_aggregation_the_last_prompts_stay(vit_backbone):
    method = build_method("promptsrc", vit_backbone, CLASSES, {**TINY, "aggregate": False})
    with torch.no_grad():
        method.ctx.fill_(3.0)
        method.end_epoch(0, 1)
    assert torch.equal(method.ctx, torch.full_like(method.ctx, 3.0))


def test_promptsrc_resume_restores_the_aggregate_and_prompt_files_omit_it(vit_backbone, image_root, tmp_path):
    data = image_folder(image_root, vit_backbone.image_transform())
    config = TrainConfig(epochs=3, batch_size=8, lr=0.05, schedule="constant", warmup_epochs=0)
    options = {**TINY, "gpa_mean": 2.0, "gpa_std": 1.0}  # every epoch weighs in

    def make(seed=0):
        torch.manual_seed(seed)
        return build_method("promptsrc", vit_backbone, CLASSES, options)

    straight = make()
    fit(straight, vit_backbone, data, config, progress=False)
    first = make()

    def interrupt(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(first, vit_backbone, data, config, run_dir=tmp_path, progress=False, on_epoch_end=interrupt)
    resumed = make(seed=5)
    fit(resumed, vit_backbone, data, config, run_dir=tmp_path, resume=True, progress=False)
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    save_pretrained(resumed, vit_backbone, tmp_path / "prompt")
    assert set(load_file(str(tmp_path / "prompt" / TENSORS_FILE))) == {"ctx", "deep_text", "vision"}
    loaded = load_prompt(tmp_path / "prompt", vit_backbone)
    assert isinstance(loaded, PromptSRC) and torch.equal(loaded.ctx, resumed.ctx)


def test_promptsrc_reuses_ivlp_prompts_with_its_recipe_sizes(vit_backbone):
    method = PromptSRC(vit_backbone, ClassNames(CLASSES), PromptSRC.Config(**TINY))
    assert method.ctx.shape[0] == 4 and method.vision.shape[1] == 4  # 4 + 4 tokens
    assert method.prefix_text == "a photo of a"  # the whole phrase is learned


def test_fit_calls_end_epoch_after_each_epoch_before_validation_and_checkpoint(vit_backbone, image_root, tmp_path):
    calls = []

    class Recording(KgCoOp):
        def end_epoch(self, epoch, epochs):
            calls.append(("end_epoch", epoch, epochs, (tmp_path / "checkpoint.pt").exists()))

    def scorer(method, backbone):
        calls.append(("validate",))
        return 0.0

    data = image_folder(image_root, vit_backbone.image_transform())
    method = Recording(vit_backbone, ClassNames(CLASSES))
    config = TrainConfig(epochs=2, batch_size=8, lr=0.01, schedule="constant", warmup_epochs=0, eval_every=1)
    fit(method, vit_backbone, data, config, scorer=scorer, run_dir=tmp_path, progress=False)
    assert calls == [("end_epoch", 0, 2, False), ("validate",), ("end_epoch", 1, 2, True), ("validate",)]


def test_a_promptsrc_file_missing_a_tensor_is_still_refused(vit_backbone, tmp_path):
    """Its extra state makes the final load non-strict: the names are checked before it."""
    from safetensors.torch import save_file

    from vlprompt.prompts import PromptFileError

    method = build_method("promptsrc", vit_backbone, CLASSES, TINY)
    save_pretrained(method, vit_backbone, tmp_path / "prompt")
    tensors = load_file(str(tmp_path / "prompt" / TENSORS_FILE))
    save_file({k: v for k, v in tensors.items() if k != "vision"}, str(tmp_path / "prompt" / TENSORS_FILE))
    with pytest.raises(PromptFileError, match=r"missing \['vision'\]"):
        load_prompt(tmp_path / "prompt", vit_backbone)
