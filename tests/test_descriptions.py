"""Class descriptions (CuPL): the description ensembles against hand computations, the file's checks, prompt files
and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vlprompt.cli import main
from vlprompt.data.synthetic.render import COLOURS, SHAPES
from vlprompt.errors import DataError
from vlprompt.methods import ZeroShot, build_method
from vlprompt.methods.descriptions import description_features, read_descriptions
from vlprompt.prompts import load_prompt, save_pretrained

CLASSES = ["blue_square", "gold", "green_square", "red_square"]
SENTENCES = {
    "blue square": ["A blue square.", "A square the colour of the sky.", "Four equal sides, blue."],
    "Gold": ["A shiny gold coin."],
    "green square": ["A green tile.", "A square of grass green."],
    "red_square": ["A red box seen from above.", "A tomato-red square."],
}
TINY = ["--backbone.name", "tiny-random-vit"]


def write(tmp_path, data, name="descriptions.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def pooled(backbone, texts):
    """CuPL's class vector: normalise each text's feature, average, normalise."""
    return F.normalize(F.normalize(backbone.encode_text(texts), dim=-1).mean(0), dim=-1)


def test_description_ensembles_are_cupls_pools(vit_backbone):
    sentences = [SENTENCES["blue square"], SENTENCES["Gold"]]
    names = ["blue_square", "gold"]
    cupl = description_features(vit_backbone, names, sentences, ["a photo of a {}."], "cupl")
    expected = torch.stack([pooled(vit_backbone, s) for s in sentences])
    torch.testing.assert_close(cupl, expected, atol=1e-6, rtol=0)
    templates = ["a photo of a {}.", "art of the {}."]
    both = description_features(vit_backbone, names, sentences, templates, "cupl+templates")
    one_pool = [pooled(vit_backbone, [t.format(n.replace("_", " ")) for t in templates] + s)
                for n, s in zip(names, sentences)]  # fmt: skip
    torch.testing.assert_close(both, torch.stack(one_pool), atol=1e-6, rtol=0)
    # one pool of 2 + 3 texts, not the average of a template vector and a sentence vector
    two_vectors = F.normalize(pooled(vit_backbone, ["a photo of a blue square.", "art of the blue square."])
                              + pooled(vit_backbone, sentences[0]), dim=-1)  # fmt: skip
    assert (both[0] - two_vectors).abs().max() > 1e-4
    long = ["word " * 100 + "end."]  # over the context: its first tokens are kept, as clip.tokenize(truncate=True)
    assert torch.isfinite(description_features(vit_backbone, ["gold"], [long], [], "cupl")).all()


def test_zeroshot_with_descriptions_saves_its_sentences(vit_backbone, tmp_path):
    path = write(tmp_path, SENTENCES)
    method = build_method("zeroshot", vit_backbone, CLASSES, {"descriptions": path})
    assert method.config.sentences == SENTENCES  # keys matched as prompts read them: case and "_" aside
    expected = description_features(vit_backbone, CLASSES, [SENTENCES[k] for k in SENTENCES], [], "cupl")
    torch.testing.assert_close(method.text_features(vit_backbone), expected, atol=1e-6, rtol=0)
    save_pretrained(method, vit_backbone, tmp_path / "prompt")
    (tmp_path / "descriptions.json").unlink()  # the prompt scores without the file
    loaded = load_prompt(tmp_path / "prompt", vit_backbone)
    assert torch.equal(loaded.text_features(vit_backbone), method.text_features(vit_backbone))
    plain = build_method("zeroshot", vit_backbone, CLASSES, {})
    assert (plain.text_features(vit_backbone) - expected).abs().max() > 1e-3


def test_bad_descriptions_are_named(vit_backbone, tmp_path):
    typo = {**SENTENCES, "red squar": SENTENCES["red_square"]}
    del typo["red_square"]
    with pytest.raises(
        DataError, match=r"1 class\(es\) have no sentence, e.g. \['red_square'\]; its keys \['red squar'\]"
    ):
        build_method("zeroshot", vit_backbone, CLASSES, {"descriptions": write(tmp_path, typo)})
    empty = {**SENTENCES, "Gold": []}
    with pytest.raises(DataError, match=r"have no sentence, e.g. \['gold'\] \(descriptions_fallback"):
        build_method("zeroshot", vit_backbone, CLASSES, {"descriptions": write(tmp_path, empty)})
    with pytest.raises(DataError, match=r"class 'Gold'\[0\] must be a string"):
        build_method("zeroshot", vit_backbone, CLASSES, {"descriptions": write(tmp_path, {"Gold": [3]})})
    with pytest.raises(DataError, match="class names must be unique"):
        build_method(
            "zeroshot", vit_backbone, CLASSES, {"descriptions": write(tmp_path, {"gold": ["a"], "Gold": ["b"]})}
        )
    with pytest.raises(DataError, match="descriptions file not found"):
        ZeroShot.Config.from_dict({"descriptions": str(tmp_path / "none.json")}, "zeroshot")  # before any model


def test_fallback_to_the_template_is_counted(vit_backbone, tmp_path):
    partial = {k: v for k, v in SENTENCES.items() if k != "Gold"}
    options = {"descriptions": write(tmp_path, partial), "descriptions_fallback": "template"}
    with pytest.warns(UserWarning, match=r"1 of 4 classes have no sentence and score with the templates: \['gold'\]"):
        method = build_method("zeroshot", vit_backbone, CLASSES, options)
    assert method.prompt_record() == {"description_fallback_classes": ["gold"]}
    plain = build_method("zeroshot", vit_backbone, CLASSES, {})
    torch.testing.assert_close(method.text_features(vit_backbone)[1], plain.text_features(vit_backbone)[1])


def test_the_builtin_file_covers_the_benchmark_views():
    builtin = read_descriptions("builtin")
    assert set(builtin) == set(COLOURS) | set(SHAPES)
    assert all(len(s) >= 3 for s in builtin.values())


def test_cli_trains_and_evaluates_with_descriptions(tmp_path, image_root, split_file, capsys):
    path = write(tmp_path, SENTENCES)
    data = ["--data.root", str(image_root), "--data.split_file", str(split_file), "--data.shots", "2"]
    options = f"{{descriptions: {path}, description_mode: cupl+templates}}"
    out = tmp_path / "run"
    assert main(["train", *TINY, *data, "--method", "zeroshot", "--method_options", options, "--seeds", "[1]",
                 "--out", str(out)]) == 0  # fmt: skip
    trained = json.loads((out / "results.json").read_text())["per_seed"][0]["accuracy"]
    saved = json.loads((out / "seed1" / "prompt" / "prompt.json").read_text())
    assert saved["config"]["sentences"] == SENTENCES and saved["config"]["description_mode"] == "cupl+templates"
    (tmp_path / "descriptions.json").unlink()
    capsys.readouterr()
    assert main(["eval", "--prompt", str(out / "seed1" / "prompt"), *data]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(trained)
