"""The practitioner's entry point: a saved prompt or class names in, labels and probabilities out."""

from __future__ import annotations

import pytest
import torch

from vlprompt import Predictor
from vlprompt.data import image_folder, load_rgb
from vlprompt.methods import Batch, build_method
from vlprompt.prompts import save_pretrained


@pytest.fixture()
def prompt_dir(tmp_path, vit_backbone, image_root):
    data = image_folder(image_root)
    torch.manual_seed(0)
    method = build_method("coop", vit_backbone, data.classnames, {"n_ctx": 4})
    with torch.no_grad():
        method.ctx.normal_(0, 0.5)
    return save_pretrained(method, vit_backbone, tmp_path / "prompt"), method


def test_predict_from_a_saved_prompt_in_two_lines(prompt_dir, vit_backbone, image_root):
    directory, method = prompt_dir
    paths = [str(image_root / "gold" / "0.png"), str(image_root / "red_square" / "3.png")]
    predictions = Predictor.from_prompt(directory, "tiny-random-vit").predict([paths[0], load_rgb(paths[1])], topk=2)
    transform = vit_backbone.image_transform()
    pixels = torch.stack([transform(load_rgb(p)) for p in paths])
    with torch.no_grad():
        expected = method.eval()(vit_backbone, Batch(pixels=pixels)).softmax(-1)
    for prediction, probs in zip(predictions, expected):
        best = int(probs.argmax())
        assert prediction.label == method.class_names()[best]
        assert prediction.probability == pytest.approx(float(probs[best]), abs=1e-6)
        assert len(prediction.top) == 2 and prediction.top[0] == (prediction.label, prediction.probability)
        assert list(prediction.probabilities.values()) == pytest.approx(probs.tolist(), abs=1e-6)
    one_at_a_time = Predictor.from_prompt(directory, vit_backbone, batch_size=1).probabilities(paths)
    torch.testing.assert_close(one_at_a_time, expected, atol=1e-6, rtol=0)


def test_zero_shot_from_class_names(vit_backbone, image_root):
    predictor = Predictor.zero_shot(["red square", "gold coin"], vit_backbone, template="a photo of a {}.")
    [prediction] = predictor.predict([image_root / "gold" / "1.png"])
    assert set(prediction.probabilities) == {"red square", "gold coin"}
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="topk must be >= 1"):
        predictor.predict([image_root / "gold" / "1.png"], topk=0)
