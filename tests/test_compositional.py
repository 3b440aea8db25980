"""Compositional methods: CSP's prompt against a hand construction, training, transfer, prompt files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_state_equal, state_snapshot

from vlprompt.engine import TrainConfig, fit
from vlprompt.labels import PairSpace
from vlprompt.methods import build_method, methods_for, pair_space
from vlprompt.methods.base import Batch
from vlprompt.methods.compositional import primitive_text
from vlprompt.prompts import load_prompt, save_pretrained

ATTRS = ["Faux.Fur", "red", "wet"]
OBJS = ["Boots.Ankle", "circle", "dog"]
SEEN = [["Faux.Fur", "Boots.Ankle"], ["red", "circle"], ["wet", "dog"], ["red", "dog"]]
SPACE = pair_space(ATTRS, OBJS, SEEN)


def test_primitive_names_follow_csp():
    assert primitive_text("Faux.Fur") == "faux fur"
    assert primitive_text("traffic_light") == "traffic_light"  # CSP replaces only "."


def test_csp_prompt_matches_hand_construction(vit_backbone):
    bb = vit_backbone
    csp = build_method("csp", bb, SPACE).eval()
    ids = bb.tokenize(["a photo of x x"])[0]
    emb = bb.token_embedding(ids)
    rows = []
    for attr, obj in SEEN:
        a = bb.token_embedding(torch.tensor(bb.token_ids(primitive_text(attr)))).mean(0)
        o = bb.token_embedding(torch.tensor(bb.token_ids(primitive_text(obj)))).mean(0)
        # [SOT] a photo of [attr] [obj] [EOT]
        rows.append(torch.cat([emb[:4], a[None], o[None], emb[6:7]]))
    expected = bb.encode_text_embeddings(torch.stack(rows), torch.full((len(SEEN),), 6))
    torch.testing.assert_close(csp.text_features(bb), expected, atol=1e-5, rtol=0)
    # A vocabulary row per attribute then object, initialised to its averaged BPE embeddings.
    assert csp.vocabulary.shape == (len(ATTRS) + len(OBJS), bb.text_width)
    # Before training CSP and CoOp-for-CZSL build the same prompts.
    coop = build_method("czsl-coop", bb, SPACE).eval()
    torch.testing.assert_close(coop.text_features(bb), expected, atol=1e-5, rtol=0)


def test_vocabulary_dropout_only_in_training(vit_backbone):
    csp = build_method("csp", vit_backbone, SPACE, {"vocab_dropout": 0.5})
    csp.eval()
    a, b = csp.text_features(vit_backbone), csp.text_features(vit_backbone)
    assert torch.equal(a, b)
    csp.train()
    torch.manual_seed(0)
    assert not torch.allclose(csp.text_features(vit_backbone), a, atol=1e-4)


def test_zero_shot_pairs_use_normal_tokenization(vit_backbone):
    zs = build_method("czsl-zeroshot", vit_backbone, SPACE)
    expected = F.normalize(
        vit_backbone.encode_text(["a photo of faux fur boots ankle", "a photo of red circle"]), dim=-1
    )
    torch.testing.assert_close(zs.reusable_text_features(vit_backbone)[:2], expected, atol=1e-5, rtol=0)


def _train_set(tmp_path, bb):
    """Four pair classes of noisy coloured squares (labels index SEEN)."""
    from conftest import write_square_image

    from vlprompt.data import LabeledImages, Sample

    colours = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 40)]
    samples = []
    for label, colour in enumerate(colours):
        for i in range(4):
            path = tmp_path / f"{label}_{i}.png"
            write_square_image(path, colour, seed=10 * label + i)
            samples.append(Sample(str(path), label))
    return LabeledImages(samples, [" ".join(p) for p in SEEN], bb.image_transform())


@pytest.mark.parametrize("name", [m for m in methods_for(PairSpace) if m != "czsl-zeroshot"])
def test_trains_only_its_own_parameters_and_round_trips(name, vit_backbone, tmp_path):
    bb = vit_backbone
    torch.manual_seed(0)
    method = build_method(name, bb, SPACE)
    before_backbone = state_snapshot(bb)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    result = fit(
        method,
        bb,
        _train_set(tmp_path, bb),
        TrainConfig(epochs=4, batch_size=8, optimizer="adam", lr=0.005, schedule="constant", warmup_epochs=0),
        progress=False,
    )
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert all(not torch.equal(before[k], v) for k, v in method.state_dict().items())
    assert_state_equal(before_backbone, bb)
    # Scoring all pairs (open world) keeps the learned tensors; a saved prompt scores the same.
    open_world = [[a, o] for a in ATTRS for o in OBJS]
    method.set_classes(bb, open_world)
    feats = torch.randn(5, bb.embed_dim)
    logits = method(bb, Batch(features=feats))
    assert logits.shape == (5, 9)
    save_pretrained(method, bb, tmp_path / "prompt")
    loaded = load_prompt(tmp_path / "prompt", bb)
    assert loaded.labels.pairs == tuple(tuple(p) for p in open_world)
    torch.testing.assert_close(loaded(bb, Batch(features=feats)), logits, atol=1e-5, rtol=0)


def test_pairs_outside_the_vocabulary_are_refused(vit_backbone):
    csp = build_method("csp", vit_backbone, SPACE)
    with pytest.raises(ValueError, match="blue"):
        csp.set_classes(vit_backbone, [["blue", "dog"]])
