"""Adding a method is one module and one ``register`` call: throwaway methods run through every command.

The methods live in ``tests/extensions/throwaway_methods.py`` (as a contributor's own module would): a learned
shift of the class features (an ordinary method), a training-free cache built at setup from the few-shot
features, and a test-time method that adapts to each test batch and resets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from benchmark_fixtures import write_fixture
from extensions.throwaway_methods import CacheOnly, ClassBias, Distilled, EntropyShift, TextShift
from test_contract import check_one_step

from vlprompt.cli import main
from vlprompt.data import image_folder, split_json
from vlprompt.engine import FeatureCache
from vlprompt.evaluation.classification import predict_logits
from vlprompt.labels import ClassNames
from vlprompt.methods import METHODS, Batch, build_method, register
from vlprompt.methods.base import MethodInputError, MethodOptionError, PromptMethod
from vlprompt.prompts import load_prompt, save_pretrained

TINY = ["--backbone.name", "tiny-random-vit"]


@pytest.fixture()
def registered():
    """The throwaway methods, registered with one call each, and removed again afterwards."""
    before = dict(METHODS)
    for cls in (TextShift, CacheOnly, EntropyShift, ClassBias, Distilled):
        register(cls)
    yield
    METHODS.clear()
    METHODS.update(before)


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-data")
    write_fixture("dtd", root)
    return root


def _data(image_root: Path, split_file: Path) -> list[str]:
    return ["--data.root", str(image_root), "--data.split_file", str(split_file), "--data.shots", "4"]


@pytest.mark.parametrize("name", [TextShift.name, CacheOnly.name, EntropyShift.name])
def test_a_registered_method_runs_through_every_command(
    name, registered, tmp_path, image_root, split_file, bench_root, capsys
):
    out = tmp_path / "train"
    args = ["train", *TINY, *_data(image_root, split_file), "--method", name, "--seeds", "[1]", "--out", str(out)]
    assert main(args) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    if METHODS[name].recipes:  # its own recipe is the default preset
        assert config["train"]["epochs"] == 2 and config["train"]["lr"] == 0.01
    prompt = out / "seed1" / "prompt"
    trained = json.loads((out / "results.json").read_text())["per_seed"][0]["accuracy"]
    capsys.readouterr()
    assert main(["eval", "--prompt", str(prompt), *_data(image_root, split_file)]) == 0
    evaluated = json.loads(capsys.readouterr().out)["accuracy"]
    assert evaluated == pytest.approx(trained)  # the saved prompt (and its setup state) scores as trained
    image = str(next(image_root.glob("*/*.png")))
    assert main(["predict", image, "--prompt", str(prompt), "--json", "true"]) == 0
    bench = ["bench", "few-shot", "--datasets", "dtd", "--methods", name, "--data.shots", "2", "--seeds", "1"]
    assert (
        main([*bench, "--data.root", str(bench_root), *TINY, "--train.epochs", "1", "--out", str(tmp_path / "b")]) == 0
    )
    assert (tmp_path / "b" / "results.md").read_text().count(f"| {name} |") == 1


@pytest.mark.parametrize("cls", [TextShift, CacheOnly, EntropyShift])
def test_the_contract_suite_takes_a_registered_method(cls, registered, vit_backbone, image_root, tmp_path):
    data = image_folder(image_root, vit_backbone.image_transform())
    cache = FeatureCache()
    torch.manual_seed(0)
    method = build_method(cls.name, vit_backbone, ClassNames(tuple(data.classnames)))
    method.setup(vit_backbone, data, cache)
    check_one_step(method, vit_backbone, data, cache)
    batch = Batch(features=cache.features(vit_backbone, data, progress=False)[:8])
    method.eval()
    with torch.no_grad():
        logits = method.score(vit_backbone, batch)
    save_pretrained(method, vit_backbone, tmp_path / "prompt")
    loaded = load_prompt(tmp_path / "prompt", vit_backbone)
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(vit_backbone, batch), logits, atol=1e-5, rtol=0)


def test_registration_checks_the_declarations(registered):
    class Undeclared(PromptMethod):
        name = "undeclared"

    with pytest.raises(TypeError, match="must declare"):
        register(Undeclared)
    inherits = type("Inherits", (TextShift,), {"name": "inherits"})  # a subclass must declare them itself
    with pytest.raises(TypeError, match=r"must declare \['recipes', 'builtin_rows', 'tiny', 'template_option'\]"):
        register(inherits)
    with pytest.raises(ValueError, match="already registered"):
        register(type("Clash", (TextShift,), {"name": "coop"}))


def test_setup_builds_a_cache_that_the_prompt_file_carries(registered, vit_backbone, image_root, tmp_path):
    data = image_folder(image_root, vit_backbone.image_transform())
    method = CacheOnly(vit_backbone, ClassNames(tuple(data.classnames)))
    assert method.keys.shape == (0, vit_backbone.embed_dim)
    method.setup(vit_backbone, data, FeatureCache())
    assert method.keys.shape == (len(data), vit_backbone.embed_dim) and method.values.tolist() == data.labels
    features = torch.nn.functional.normalize(FeatureCache().features(vit_backbone, data, progress=False), dim=-1)
    by_hand = torch.stack(
        [
            sum(torch.exp(-5.0 * (1 - f @ k)) * (label == c) for k, label in zip(features, data.labels))
            for f in features
            for c in range(4)
        ]  # fmt: skip
    ).reshape(len(data), 4)
    torch.testing.assert_close(predict_logits(method, vit_backbone, data), by_hand)
    save_pretrained(method, vit_backbone, tmp_path / "cache")
    loaded = load_prompt(tmp_path / "cache", vit_backbone)
    assert torch.equal(loaded.keys, method.keys) and torch.equal(loaded.values, method.values)


def test_the_test_time_step_adapts_each_batch_and_resets(registered, vit_backbone, image_root, split_file):
    test = split_json(split_file, image_root, "test", vit_backbone.image_transform())
    method = EntropyShift(vit_backbone, ClassNames(tuple(test.classnames)), EntropyShift.Config(steps=2, lr=0.01))
    plain = predict_logits(method, vit_backbone, test)  # adapted per batch
    assert torch.equal(method.shift, torch.zeros_like(method.shift))  # reset after every batch
    assert torch.equal(predict_logits(method, vit_backbone, test), plain)  # deterministic
    features = FeatureCache().features(vit_backbone, test, progress=False)
    with torch.no_grad():
        unadapted = method.logits(vit_backbone, Batch(features=features))
        adapted = method.score(vit_backbone, Batch(features=features))

    def entropy(logits):
        probs = logits.softmax(-1).mean(0)
        return float(-(probs * probs.log()).sum())

    assert not torch.equal(adapted, unadapted) and entropy(adapted) < entropy(unadapted)  # adapted: more confident
    assert torch.equal(method.logits(vit_backbone, Batch(features=features)), unadapted)  # ... and was reset


def test_a_method_that_changes_the_image_tower_refuses_cached_features(vit_backbone):
    vp = build_method("vp", vit_backbone, ["red", "blue"], {"prompt_size": 4})
    with pytest.raises(MethodInputError, match="must see pixels, not cached frozen image features"):
        vp.score(vit_backbone, Batch(features=torch.zeros(2, vit_backbone.embed_dim)))


def test_options_are_checked_the_same_way_everywhere(registered, tmp_path, image_root, split_file, capsys):
    message = "throwaway-shift option init must be in [-1.0, 1.0], not 3.0"
    with pytest.raises(MethodOptionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TextShift.Config(init=3.0)  # Python
    args = ["train", *TINY, *_data(image_root, split_file), "--method", TextShift.name, "--out", str(tmp_path / "o")]
    assert main([*args, "--method_options", "{init: 3.0}"]) == 2  # the command line
    assert message in capsys.readouterr().err
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"method": TextShift.name, "method_options": {"init": 3.0}}))
    assert main(["train", "--config", str(config), *args[1:]]) == 2  # a YAML file
    assert message in capsys.readouterr().err


def test_help_and_the_methods_list_show_a_registered_method(registered, capsys):
    from vlprompt.cli import main

    assert main(["train", "--method", "kgcoop", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--data.shots" in text  # the command's own help, then the method's
    assert "  weight: float = 8.0 (>= 0.0)\n      w, the weight of the knowledge-guided term" in text
    assert "template: the dataset's hand template in option 'template'" in text
    assert (
        "  kgcoop: {'epochs': 100, 'batch_size': 128, 'lr': 0.002, 'optimizer': 'sgd'" in text
        and "htyao89/KgCoOp@c43ccc3" in text
    )
    assert main(["train", "--method", TextShift.name, "-h"]) == 0
    assert "  init: float = 0.0 (>= -1.0, <= 1.0)\n      the shift's initial value" in capsys.readouterr().out
    assert main(["methods", "--json"]) == 0
    listed = {m["method"]: m for m in json.loads(capsys.readouterr().out)}
    assert list(listed) == list(METHODS)
    assert listed[CacheOnly.name]["capabilities"] == ["sets_up"] and listed["csp"]["command"] == "czsl"
    assert listed[EntropyShift.name]["capabilities"] == ["scores_with_text", "transfers", "adapts_at_test_time"]
    assert listed["coop"]["presets"] == ["coop", "coop-imagenet", "coop-base-to-new", "coop-cross-dataset"]


@pytest.mark.parametrize("wrapped", ["coop", "maple"])
def test_a_wrapper_adds_to_any_method_and_derives_its_capabilities(
    wrapped, registered, vit_backbone, image_root, tmp_path
):
    from vlprompt.runs import ClassificationRun

    options = {"method": wrapped, "options": dict(METHODS[wrapped].tiny.options)}
    caps, inner = ClassBias.capabilities(ClassBias.Config(**options)), METHODS[wrapped].capabilities()
    assert caps["changes_image_tower"] == inner["changes_image_tower"] and caps["has_context"]
    assert caps["learns"] and not caps["transfers"]  # its own bias is per class
    assert ClassificationRun(method=ClassBias.name, method_options=options).default_preset() == wrapped
    data = image_folder(image_root, vit_backbone.image_transform())
    cache = FeatureCache()
    torch.manual_seed(0)
    method = build_method(ClassBias.name, vit_backbone, ClassNames(tuple(data.classnames)), options)
    assert method.changes_image_tower == inner["changes_image_tower"]  # the engine reads the instance's flags
    check_one_step(method, vit_backbone, data, cache)  # gradients reach the wrapped tensors and the bias
    assert {k.split(".")[0] for k in method.trainable_state()} == {"inner", "bias"}
    method.save_pretrained(tmp_path / "prompt", vit_backbone)
    loaded = load_prompt(tmp_path / "prompt", vit_backbone)
    data = image_folder(image_root, vit_backbone.image_transform())
    torch.testing.assert_close(predict_logits(loaded, vit_backbone, data), predict_logits(method, vit_backbone, data))


def test_a_teacher_on_another_backbone_stays_out_of_the_students_file(registered, image_root, split_file, tmp_path):
    from vlprompt.backbones import tiny_random_backbone
    from vlprompt.engine import TrainConfig, fit
    from vlprompt.prompts import read_prompt_config
    from vlprompt.runs import ClassificationRun, DataConfig, run_classification, train_overrides

    teacher_backbone = tiny_random_backbone("vit")  # 32 px; the student below is a 64 px ResNet
    train = image_folder(image_root, teacher_backbone.image_transform())
    torch.manual_seed(0)
    teacher = build_method("coop", teacher_backbone, ClassNames(tuple(train.classnames)), {"n_ctx": 2})
    fit(teacher, teacher_backbone, train, TrainConfig(epochs=3, lr=0.05, schedule="constant"), progress=False)
    teacher.save_pretrained(tmp_path / "teacher", teacher_backbone)
    run = ClassificationRun(
        data=DataConfig(root=str(image_root), split_file=str(split_file), shots=4),
        method=Distilled.name,
        method_options={"teacher": str(tmp_path / "teacher")},
        train=train_overrides(epochs=5, lr=0.5, schedule="constant", warmup_epochs=0),
        seeds=[1],
        out=str(tmp_path / "student"),
    )
    student_backbone = tiny_random_backbone("resnet")
    run_classification(run, student_backbone, progress=False)
    prompt = tmp_path / "student" / "seed1" / "prompt"
    record = read_prompt_config(prompt)["extra"]["teacher"]
    assert record["backbone"]["model"] == "tiny-random-vit" and record["method"] == "coop"
    assert record["tensors_sha256"] == read_prompt_config(tmp_path / "teacher")["tensors_sha256"]
    student = load_prompt(prompt, student_backbone)
    assert set(student.trainable_state()) == {"student.ctx"}  # none of the teacher's weights
