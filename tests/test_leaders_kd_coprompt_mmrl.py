"""PromptKD, CoPrompt and MMRL against their equations on hand-computed cases, and their bad inputs."""

from __future__ import annotations

import json
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from vlprompt.backbones import Backbone, BackboneError, tiny_random_clip
from vlprompt.backbones.loading import _openai_preprocess
from vlprompt.data import image_folder
from vlprompt.engine import TrainConfig, fit
from vlprompt.errors import DataError, OptionError
from vlprompt.labels import ClassNames, PairSpace
from vlprompt.methods import Batch, build_method
from vlprompt.methods.base import MethodOptionError
from vlprompt.methods.promptkd import GlobalBatchNorm, distillation_loss
from vlprompt.prompts import load_prompt, read_prompt_config

CLASSES = ("blue_square", "gold", "green_square", "red_square")
STEP = TrainConfig(epochs=1, batch_size=8, lr=0.05, schedule="constant", warmup_epochs=0, momentum=0.0)


def pixels_of(backbone, image_root, n=8):
    data = image_folder(image_root, backbone.image_transform())
    return torch.stack([data[i][0] for i in range(0, len(data), len(data) // n)][:n])


# ---------------------------------------------------------------- PromptKD
def student(backbone, teacher, **options):
    """A PromptKD student on the 2-block tiny tower."""
    return build_method(
        "promptkd", backbone, ClassNames(CLASSES), {"teacher": str(teacher), "depth_vision": 2, **options}
    )


def test_distillation_loss_is_the_released_kl_over_the_number_of_logits():
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    teacher = torch.tensor([[3.0, 2.0, 1.0], [1.0, 0.0, 0.0]])
    t = 2.0

    def softmax(row):
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]

    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p, q = softmax(t_row), softmax(s_row)
        total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    expected = total * t * t / 6  # summed, times T², over B · C = 6 logits (not batchmean)
    assert distillation_loss(student, teacher, t).item() == pytest.approx(expected, rel=1e-6)


def test_global_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    ours, reference = GlobalBatchNorm(5), torch.nn.BatchNorm1d(5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2.0)
        ours.bias.normal_()
    reference.load_state_dict(ours.state_dict())
    for _ in range(2):
        x = torch.randn(6, 5) * 3 + 1
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=0)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, atol=1e-6, rtol=0, msg=key)
    ours.eval(), reference.eval()
    torch.testing.assert_close(ours(x), reference(x), atol=1e-6, rtol=0)


def test_promptkd_student_logits_and_loss_by_hand(vit_backbone, image_root):
    torch.manual_seed(0)
    method = build_method("promptkd", vit_backbone, ClassNames(CLASSES), {"teacher": "zeroshot", "depth_vision": 2})
    assert method.config.kd_weight == 1000.0 and method.config.temperature == 1.0  # the released values
    pixels = pixels_of(vit_backbone, image_root)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        bn = method.projector[1]
        bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2.0)
    # the teacher's class features: the zero-shot hand template's, L2-normalised
    hand = vit_backbone.encode_text([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])
    torch.testing.assert_close(method.class_features, F.normalize(hand, dim=-1))
    v = method.vision.detach()
    with torch.no_grad():
        f = vit_backbone.encode_image(pixels, token_prompts=v[0], deep_prompts=[v[1]])
        lin1, lin2 = method.projector[0], method.projector[3]
        h = f @ lin1.weight.t() + lin1.bias

        def projected(mean, var):
            z = (h - mean) / torch.sqrt(var + 1e-5) * bn.weight + bn.bias
            return z.clamp_min(0) @ lin2.weight.t() + lin2.bias

        t = F.normalize(hand, dim=-1)
        eval_logits = 100 * F.normalize(projected(bn.running_mean, bn.running_var), dim=-1) @ t.t()
        train_logits = 100 * F.normalize(projected(h.mean(0), h.var(0, unbiased=False)), dim=-1) @ t.t()
        teacher_logits = 100 * F.normalize(vit_backbone.encode_image(pixels), dim=-1) @ t.t()
    method.eval()
    with torch.no_grad():
        torch.testing.assert_close(method(vit_backbone, Batch(pixels=pixels)), eval_logits, atol=1e-4, rtol=0)
    method.train()
    batch = Batch(pixels=pixels, targets=None)  # labels unused
    logits = method(vit_backbone, batch)
    torch.testing.assert_close(logits, train_logits, atol=1e-4, rtol=0)
    p, log_q = teacher_logits.softmax(-1), logits.detach().log_softmax(-1)
    expected = 1000 * (p * (p.log() - log_q)).sum() / logits.numel()
    torch.testing.assert_close(method.loss(vit_backbone, batch, logits), expected, atol=1e-4, rtol=1e-5)


def wide_teacher_backbone() -> Backbone:
    """A tiny ViT CLIP of another width (embed 24) and weights, at the same 32 px input as tiny-random-vit."""
    model = tiny_random_clip("vit", seed=1, embed_dim=24)
    return Backbone(model, open_clip.tokenizer.SimpleTokenizer(), _openai_preprocess(model), "tiny-wide", "seed1")


@pytest.fixture()
def wide_teacher(image_root, tmp_path, monkeypatch):
    """A CoOp teacher trained on the wide tiny backbone, saved; loading its prompt gives that backbone."""
    teacher_backbone = wide_teacher_backbone()
    torch.manual_seed(0)
    teacher = build_method("coop", teacher_backbone, ClassNames(CLASSES), {"n_ctx": 2})
    fit(teacher, teacher_backbone, image_folder(image_root, teacher_backbone.image_transform()), STEP, progress=False)
    teacher.save_pretrained(tmp_path / "teacher", teacher_backbone)
    import vlprompt.predict

    monkeypatch.setattr(vlprompt.predict, "backbone_for_prompt", lambda *args, **kwargs: teacher_backbone)
    return tmp_path / "teacher", teacher, teacher_backbone


def test_promptkd_distils_a_teacher_of_another_width_and_keeps_none_of_its_weights(
    wide_teacher, vit_backbone, image_root, tmp_path
):
    teacher_dir, teacher, teacher_backbone = wide_teacher
    torch.manual_seed(0)
    kd = build_method("promptkd", vit_backbone, ClassNames(CLASSES), {"teacher": str(teacher_dir), "depth_vision": 2})
    assert kd.projector[0].weight.shape == (24, 32) and kd.projector[3].weight.shape == (24, 24)
    with torch.no_grad():
        expected = F.normalize(teacher.text_features(teacher_backbone), dim=-1)
    torch.testing.assert_close(kd.class_features, expected)
    pixels = pixels_of(vit_backbone, image_root)
    kd.train()
    logits = kd(vit_backbone, Batch(pixels=pixels))
    with torch.no_grad():
        teacher_logits = teacher.eval()(teacher_backbone, Batch(pixels=pixels))
    torch.testing.assert_close(
        kd.loss(vit_backbone, Batch(pixels=pixels), logits), 1000 * distillation_loss(logits, teacher_logits, 1.0)
    )
    teacher_before = {k: v.clone() for k, v in teacher_backbone.state_dict().items()}
    fit(kd, vit_backbone, image_folder(image_root, vit_backbone.image_transform()), STEP, progress=False)
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher_backbone.state_dict().items())
    kd.save_pretrained(tmp_path / "kd", vit_backbone)
    record = read_prompt_config(tmp_path / "kd")["extra"]["teacher"]
    assert record["method"] == "coop" and record["backbone"]["model"] == "tiny-wide"
    assert record["tensors_sha256"] == read_prompt_config(teacher_dir)["tensors_sha256"]
    bn = {f"projector.1.{k}" for k in ("running_mean", "running_var", "num_batches_tracked")}
    projector = {f"projector.{i}.{k}" for i in (0, 1, 3) for k in ("weight", "bias")}
    assert set(kd.trainable_state()) == {"vision"} | projector | bn  # none of the teacher's weights
    loaded = load_prompt(tmp_path / "kd", vit_backbone)
    kd.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(vit_backbone, Batch(pixels=pixels)), kd(vit_backbone, Batch(pixels=pixels)), atol=1e-5, rtol=0
        )


def test_promptkd_refuses_a_teacher_of_another_label_space(vit_backbone, image_root, tmp_path):
    torch.manual_seed(0)
    other = ClassNames(("purple_square", "orange", "teal", "white"))
    probe = build_method("linear-probe", vit_backbone, other)
    probe.save_pretrained(tmp_path / "probe", vit_backbone)
    with pytest.raises(OptionError, match=r"teacher .*probe \(linear-probe\) learned the classes .*purple_square"):
        build_method(
            "promptkd", vit_backbone, ClassNames(CLASSES), {"teacher": str(tmp_path / "probe"), "depth_vision": 2}
        )
    pairs = PairSpace(("blue", "gold"), ("square", "coin"), (("blue", "square"), ("gold", "coin")))
    build_method("czsl-zeroshot", vit_backbone, pairs).save_pretrained(tmp_path / "pairs", vit_backbone)
    with pytest.raises(OptionError, match="teacher .*pairs scores pairs, the student scores classes"):
        build_method(
            "promptkd", vit_backbone, ClassNames(CLASSES), {"teacher": str(tmp_path / "pairs"), "depth_vision": 2}
        )


def test_promptkd_refuses_a_teacher_whose_backbone_cannot_be_loaded(vit_backbone, tmp_path):
    teacher = build_method("coop", vit_backbone, ClassNames(CLASSES), {"n_ctx": 2})
    teacher.save_pretrained(tmp_path / "teacher", vit_backbone)
    config = json.loads((tmp_path / "teacher" / "prompt.json").read_text())
    config["backbone"]["model"] = "no-such-model"
    (tmp_path / "teacher" / "prompt.json").write_text(json.dumps(config))
    with pytest.raises(BackboneError, match=r"teacher .*teacher: its backbone cannot be loaded .*no-such-model"):
        student(vit_backbone, tmp_path / "teacher")
    with pytest.raises(MethodOptionError, match="promptkd needs option teacher"):
        student(vit_backbone, "")


# ---------------------------------------------------------------- CoPrompt
SENTENCES = {c: [f"a picture of {c}.", f"there is a {c} here."] for c in CLASSES}


def coprompt(backbone, **options):
    return build_method("coprompt", backbone, ClassNames(CLASSES), {"depth": 2, "sentences": SENTENCES, **options})


def adapted(x, adapter, ratio):
    w1, w2 = adapter[0].weight, adapter[2].weight
    return ratio * (x @ w1.t()).clamp_min(0).__matmul__(w2.t()).clamp_min(0) + (1 - ratio) * x


@pytest.mark.parametrize("frozen_view", ["same", "randaugment"])
def test_coprompt_logits_and_loss_by_hand(vit_backbone, image_root, frozen_view):
    from vlprompt.methods import MaPLe
    from vlprompt.methods.coprompt import randaugment_view

    torch.manual_seed(0)
    method = coprompt(vit_backbone, weight=8.0, frozen_view=frozen_view)
    pixels, targets = pixels_of(vit_backbone, image_root), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    batch = Batch(pixels=pixels, targets=targets)
    with torch.no_grad():
        f = MaPLe.image_features(method, vit_backbone, batch)
        t = MaPLe.text_features(method, vit_backbone)
        image = F.normalize(adapted(f, method.adapter_image, 0.1), dim=-1)
        text = F.normalize(adapted(t, method.adapter_text, 0.2), dim=-1)
        expected_logits = 100 * image @ text.t()
        # the descriptions: [2 sentences, 4 classes, D], frozen and normalised
        d = torch.stack(
            [F.normalize(vit_backbone.encode_text([SENTENCES[c][i] for c in CLASSES]), dim=-1) for i in (0, 1)]
        )
        torch.manual_seed(7)
        k = int(torch.randint(2, ()))
        view = randaugment_view(pixels, vit_backbone.preprocess_cfg["mean"], vit_backbone.preprocess_cfg["std"])
        view = view if frozen_view == "randaugment" else pixels
        frozen = F.normalize(vit_backbone.encode_image(view), dim=-1)
        text_term = 1 - (text * d[k]).sum(-1).mean()
        image_term = 1 - (image * frozen).sum(-1).mean()
        expected_loss = F.cross_entropy(expected_logits, targets) + 8.0 * (text_term + image_term)
    method.eval()
    with torch.no_grad():
        torch.testing.assert_close(method(vit_backbone, batch), expected_logits, atol=1e-4, rtol=0)
    method.train()
    logits = method(vit_backbone, batch)
    torch.manual_seed(7)
    torch.testing.assert_close(method.loss(vit_backbone, batch, logits), expected_loss, atol=1e-4, rtol=1e-5)
    if frozen_view == "randaugment":
        assert (view - pixels).abs().max() > 0.1  # a perturbed view, not the same one


def test_coprompt_needs_descriptions_for_every_class_in_equal_numbers(vit_backbone, tmp_path):
    with pytest.raises(
        MethodOptionError, match=r"coprompt needs class descriptions: set option descriptions to a JSON"
    ):
        build_method("coprompt", vit_backbone, ClassNames(CLASSES), {"depth": 2})
    uneven = {**SENTENCES, "gold": ["a gold coin."]}
    with pytest.raises(DataError, match="each needs the same number of sentences; the counts are"):
        coprompt(vit_backbone, sentences=uneven)
    file = tmp_path / "descriptions.json"
    file.write_text(json.dumps({c: s for c, s in SENTENCES.items() if c != "gold"}))
    with pytest.raises(
        DataError, match=r"descriptions .*descriptions.json: 1 class\(es\) have no sentence, e.g. \['gold'\]"
    ):
        build_method("coprompt", vit_backbone, ClassNames(CLASSES), {"depth": 2, "descriptions": str(file)})


def test_coprompt_recipes_carry_the_released_per_dataset_settings():
    from vlprompt.methods import CoPrompt

    food, pets = CoPrompt.recipes["food101"], CoPrompt.recipes["oxford_pets"]
    assert food.train["epochs"] == 5 and dict(food.options) | {"weight": 0.5, "n_ctx": 4, "depth": 9} == food.options
    assert pets.train["epochs"] == 8 and pets.options["weight"] == 0.1 and pets.options["n_ctx"] == 2
    assert food.train["lr"] == 0.0035 and food.train["batch_size"] == 4


# ---------------------------------------------------------------- MMRL and the adapter's token insertion
def manual_image(backbone, pixels, tokens, fresh):
    """The tiny ViT by hand: block 0 without tokens, ``tokens`` inserted after CLS, ``fresh`` replacing them
    before block 1 when given (None: kept). Returns the pooled feature and ln_post of the token states."""
    visual = backbone.model.visual
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(len(x), 1, -1), x], 1) + visual.positional_embedding
    x = visual.transformer.resblocks[0](visual.ln_pre(x))
    x = torch.cat([x[:, :1], tokens.expand(len(x), -1, -1), x[:, 1:]], 1)
    x = visual.transformer.resblocks[1](x)
    n = tokens.shape[0]
    return visual.ln_post(x[:, 0]) @ visual.proj, visual.ln_post(x[:, 1 : 1 + n])


def manual_text(backbone, ids, tokens):
    model = backbone.model
    eot = backbone.eot_index(ids)
    x = model.token_embedding(ids) + model.positional_embedding
    length = x.shape[1]
    x = model.transformer.resblocks[0](x, attn_mask=model.attn_mask[:length, :length])
    x = torch.cat([x[:, :1], tokens.expand(len(x), -1, -1), x[:, 1:]], 1)
    mask = torch.full((length + len(tokens),) * 2, float("-inf")).triu(1)
    x = model.ln_final(model.transformer.resblocks[1](x, attn_mask=mask))
    return x[torch.arange(len(x)), eot + len(tokens)] @ model.text_projection


def test_tokens_inserted_at_a_later_block_of_either_tower(vit_backbone, image_root):
    torch.manual_seed(0)
    pixels = pixels_of(vit_backbone, image_root, 4)
    tokens = torch.randn(3, vit_backbone.vision_width)
    with torch.no_grad():
        features, states = vit_backbone.encode_image(pixels, token_prompts=tokens, insert_at=1, prompt_outputs=True)
        expected_features, expected_states = manual_image(vit_backbone, pixels, tokens, None)
        torch.testing.assert_close(features, expected_features, atol=1e-5, rtol=0)
        torch.testing.assert_close(states, expected_states, atol=1e-5, rtol=0)
        ids = vit_backbone.tokenize(["a photo of a gold coin.", "red"])
        text_tokens = torch.randn(2, vit_backbone.text_width)
        text = vit_backbone.encode_text_embeddings(
            vit_backbone.token_embedding(ids), vit_backbone.eot_index(ids), inserted=text_tokens, insert_at=1
        )
        torch.testing.assert_close(text, manual_text(vit_backbone, ids, text_tokens), atol=1e-5, rtol=0)
    with pytest.raises(BackboneError, match="tokens inserted before block 2 of a 2-block tower"):
        vit_backbone.encode_image(pixels, token_prompts=tokens, insert_at=2)


def test_mmrl_logits_and_loss_by_hand(vit_backbone, image_root):
    torch.manual_seed(0)
    method = build_method("mmrl", vit_backbone, ClassNames(CLASSES), {"rep_layers": [2], "reg_weight": 7.0})
    assert method.rep.shape == (5, 512) and method.proj_rep.shape == (48, 32)  # released K, d_r; widths from the model
    pixels, targets = pixels_of(vit_backbone, image_root), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    batch = Batch(pixels=pixels, targets=targets)
    with torch.no_grad():
        image, states = manual_image(vit_backbone, pixels, method.to_vision[0](method.rep), None)
        names = [f"a photo of a {c.replace('_', ' ')}." for c in CLASSES]
        text = manual_text(vit_backbone, vit_backbone.tokenize(names), method.to_text[0](method.rep))
        rep = states.mean(1) @ method.proj_rep
        s_c = 100 * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
        s_r = 100 * F.normalize(rep, dim=-1) @ F.normalize(text, dim=-1).t()
        frozen_image, frozen_text = vit_backbone.encode_image(pixels), vit_backbone.encode_text(names)
        regulariser = (1 - F.cosine_similarity(image, frozen_image).mean()) + (
            1 - F.cosine_similarity(text, frozen_text).mean()
        )
        expected_loss = 0.7 * F.cross_entropy(s_c, targets) + 0.3 * F.cross_entropy(s_r, targets) + 7.0 * regulariser
    method.train()
    logits = method(vit_backbone, batch)
    torch.testing.assert_close(logits, 0.7 * s_c + 0.3 * s_r, atol=1e-4, rtol=0)
    torch.testing.assert_close(method.loss(vit_backbone, batch, logits), expected_loss, atol=1e-4, rtol=1e-5)
    method.eval()
    other = ClassNames(("purple_square", "orange"))
    method.set_classes(vit_backbone, other)  # new classes: the class token's logits alone
    with torch.no_grad():
        new_names = ["a photo of a purple square.", "a photo of a orange."]
        new_text = manual_text(vit_backbone, vit_backbone.tokenize(new_names), method.to_text[0](method.rep))
        expected = 100 * F.normalize(image, dim=-1) @ F.normalize(new_text, dim=-1).t()
        torch.testing.assert_close(method(vit_backbone, batch), expected, atol=1e-4, rtol=0)


def test_mmrl_layers_and_recipes(vit_backbone):
    from vlprompt.methods import MMRL

    torch.manual_seed(0)
    method = build_method("mmrl", vit_backbone, ClassNames(CLASSES), {"rep_layers": [2]})
    assert MMRL.Config().rep_layers == [6, 7, 8, 9, 10, 11, 12] and MMRL.Config().alpha == 0.7
    with pytest.raises(MethodOptionError, match=r"rep_layers must be increasing block numbers from 2 to 2"):
        build_method("mmrl", vit_backbone, ClassNames(CLASSES), {"rep_layers": [1, 2]})
    assert method.proj_rep.std().item() == pytest.approx(48**-0.5, rel=0.1)
    eurosat, cars = MMRL.recipes["eurosat"], MMRL.recipes["stanford_cars"]
    assert eurosat.options == {"reg_weight": 0.01, "rep_dim": 2048} and cars.options == {"reg_weight": 7.0}
    assert cars.train["optimizer"] == "adamw" and cars.train["lr"] == 1e-3 and cars.train["epochs"] == 10
    assert MMRL.recipes["imagenet"].train["batch_size"] == 32 and MMRL.recipes["imagenet"].train["epochs"] == 5
