"""The method contract, checked for every registered method on the tiny ViT and ResNet backbones.

Registering a method in ``vlprompt.methods.METHODS`` puts it here: it builds on its label space,
trains for a step through the common engine, gradients reach every trainable tensor and nothing
else changes (the backbone stays bit-identical), a save/load round trip gives the same logits,
``set_classes`` works where the method declares it transfers, and a resumed run equals an
uninterrupted one. (Two-process DDP for every registered method: tests/test_ddp.py.)
"""

from __future__ import annotations

import pytest
import torch
from conftest import TASKS, assert_state_equal, state_snapshot, task_images

from vlprompt.backbones import BackboneError
from vlprompt.data import image_folder
from vlprompt.engine import FeatureCache, TrainConfig, fit
from vlprompt.labels import ClassNames, PairSpace, Task, TaskSpace
from vlprompt.methods import METHODS, Batch, CoOp, PromptMethod, build_method, register
from vlprompt.methods.base import running_statistics
from vlprompt.prompts import load_prompt, save_pretrained

#: Class names of the fixture image folder (sorted) and the same classes read as attribute-object pairs.
CLASSES = ("blue_square", "gold", "green_square", "red_square")
PAIRS = PairSpace(("blue", "gold", "green", "red"), ("square", "coin"),
                  (("blue", "square"), ("gold", "coin"), ("green", "square"), ("red", "square")))  # fmt: skip
STEP = TrainConfig(epochs=1, batch_size=8, lr=0.05, schedule="constant", warmup_epochs=0, momentum=0.0)


def labels_for(cls: type[PromptMethod]):
    return {ClassNames: ClassNames(CLASSES), PairSpace: PAIRS, TaskSpace: TASKS}[cls.label_kind]


def other_labels_for(cls: type[PromptMethod]):
    if cls.label_kind is ClassNames:
        return ClassNames(("purple_square", "orange"))
    if cls.label_kind is TaskSpace:
        return TaskSpace((Task(TASKS.tasks[0].name, ("purple_square", "orange", "teal")), TASKS.tasks[1]))
    return PAIRS.with_pairs([("blue", "coin"), ("red", "coin"), ("gold", "square")])


def data_for(method: PromptMethod, data):
    """The fixture images in the method's label space (two tasks for a multi-task method)."""
    return task_images(data) if method.label_kind is TaskSpace and data.tasks is None else data


def make(name: str, backbone, seed: int = 0, data=None, cache=None) -> PromptMethod:
    """The method with its own tiny options (``tiny_recipe``: small and deterministic on the tiny models), set up
    on ``data`` (the training images) as the run loop does where it ``sets_up``."""
    torch.manual_seed(seed)
    cls = METHODS[name]
    method = build_method(name, backbone, labels_for(cls), dict(cls.tiny_recipe(backbone).options))
    if method.sets_up:
        method.setup(backbone, data_for(method, data), cache or FeatureCache())
    return method


def make_or_skip(name: str, backbone, data=None, cache=None) -> PromptMethod:
    """The method, or a skip where the backbone cannot carry it (token prompts on a ResNet tower: a clear error)."""
    try:
        return make(name, backbone, data=data, cache=cache)
    except BackboneError as err:
        assert "need a ViT image tower" in str(err)
        pytest.skip(f"{name} needs a ViT image tower")


CASES = [pytest.param(name, kind, id=f"{name}-{kind}") for name in METHODS for kind in ("vit", "resnet")]


@pytest.fixture()
def train_data(image_root, backbone):
    return image_folder(image_root, backbone.image_transform())


@pytest.fixture(scope="module")
def cache():
    return FeatureCache()


@pytest.fixture()
def backbone(request, vit_backbone, resnet_backbone):
    return vit_backbone if request.param == "vit" else resnet_backbone


def batch_for(method: PromptMethod, backbone, data, cache) -> Batch:
    """Eight training images (of every task) as the engine would feed them."""
    data = data_for(method, data)
    subset = data.subset(range(0, len(data), len(data) // 8)[:8])
    targets = torch.tensor(subset.labels)
    task = torch.tensor(subset.tasks) if subset.tasks is not None else None
    if method.changes_image_tower:
        pixels = torch.stack([subset[i][0] for i in range(len(subset))])
        return Batch(pixels=pixels, targets=targets, index=torch.arange(8), task=task)
    features = cache.features(backbone, subset, progress=False)
    return Batch(features=features, targets=targets, index=torch.arange(8), task=task)


def check_one_step(method: PromptMethod, backbone, data, cache) -> None:
    """Gradients reach every trainable tensor; a training epoch changes them and nothing else."""
    data = data_for(method, data)
    trainable = {k for k, p in method.named_parameters() if p.requires_grad}
    if not method.learns:
        assert not trainable, f"{method.name} declares learns=False but has trainable tensors {sorted(trainable)}"
        with pytest.raises(ValueError, match="nothing to train"):
            fit(method, backbone, data, STEP, cache=cache, progress=False)
        return
    assert trainable, f"{method.name} declares learns=True but has no trainable tensor"
    batch = batch_for(method, backbone, data, cache)
    method.train()
    logits = method(backbone, batch)
    assert logits.shape == (8, method.num_classes)
    method.loss(backbone, batch, logits).backward()
    for name, p in method.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    method.zero_grad(set_to_none=True)
    backbone_before = state_snapshot(backbone)
    buffers_before = {k: v.clone() for k, v in method.named_buffers()}
    params_before = {k: p.detach().clone() for k, p in method.named_parameters()}
    fit(method, backbone, data, STEP, cache=cache, progress=False)
    if not method.changes_backbone:
        assert_state_equal(backbone_before, backbone)
    running = running_statistics(method)  # BatchNorm's running statistics: training updates them
    for k, v in method.named_buffers():
        assert k in running or torch.equal(v, buffers_before[k]), f"constant buffer {k} changed"
    moved = [k for k, p in method.named_parameters() if not torch.equal(p.detach(), params_before[k])]
    assert moved, f"training changed none of {method.name}'s tensors"


@pytest.mark.parametrize("name,backbone", [c.values for c in CASES], ids=[c.id for c in CASES], indirect=["backbone"])
def test_builds_trains_and_touches_only_its_own_tensors(name, backbone, train_data, cache):
    method = make_or_skip(name, backbone, train_data, cache)
    cls = METHODS[name]
    for flag in ("changes_image_tower", "conditions_on_image", "scores_with_text", "learns", "transfers",
                 "has_context", "changes_backbone"):  # fmt: skip
        assert isinstance(getattr(cls, flag), bool), flag
    assert isinstance(method.labels, cls.label_kind) and method.num_classes == len(method.labels)
    setup_state = set(getattr(method, "_setup_state", ()))
    assert not setup_state or cls.sets_up, f"{name} registers setup state but does not declare sets_up"
    # a prompt file holds the trainable tensors, the setup state and running statistics, never other persistent buffers
    expected = {k for k, _ in method.named_parameters()} | setup_state | running_statistics(method)
    assert set(method.trainable_state()) == expected
    check_one_step(method, backbone, train_data, cache)


@pytest.mark.parametrize("name,backbone", [c.values for c in CASES], ids=[c.id for c in CASES], indirect=["backbone"])
def test_save_load_and_set_classes(name, backbone, train_data, cache, tmp_path):
    method = make_or_skip(name, backbone, train_data, cache)
    with torch.no_grad():  # move the tensors off their initialisation
        for p in method.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    method.eval()
    batch = batch_for(method, backbone, train_data, cache)
    with torch.no_grad():
        logits = method(backbone, batch)
    save_pretrained(method, backbone, tmp_path / "prompt")
    loaded = load_prompt(tmp_path / "prompt", backbone)
    assert type(loaded) is type(method) and loaded.labels == method.labels
    with torch.no_grad():
        torch.testing.assert_close(loaded(backbone, batch), logits, atol=1e-5, rtol=0)
    other = other_labels_for(type(method))
    if method.transfers_to_new_classes:
        loaded.set_classes(backbone, other)
        with torch.no_grad():
            assert loaded(backbone, batch).shape == (8, len(other))
        loaded.set_classes(backbone, method.labels)
        with torch.no_grad():
            torch.testing.assert_close(loaded(backbone, batch), logits, atol=1e-5, rtol=0)
    else:
        with pytest.raises(ValueError, match="cannot score other classes"):
            loaded.set_classes(backbone, other)


@pytest.mark.parametrize("name", [n for n, c in METHODS.items() if c.learns])
def test_resume_equals_uninterrupted(name, vit_backbone, image_root, cache, tmp_path):
    images = image_folder(image_root, vit_backbone.image_transform())
    straight = make(name, vit_backbone, data=images, cache=cache)
    train_data = data_for(straight, images)
    config = TrainConfig(epochs=2, batch_size=8, lr=0.05, schedule="cosine", warmup_epochs=0)
    fit(straight, vit_backbone, train_data, config, cache=cache, progress=False)
    first = make(name, vit_backbone, data=images, cache=cache)
    stop = {}

    def interrupt(record):
        if record["epoch"] == 1:
            stop["state"] = {k: v.clone() for k, v in first.state_dict().items()}
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(first, vit_backbone, train_data, config, run_dir=tmp_path, cache=cache, progress=False,
            on_epoch_end=interrupt)  # fmt: skip
    resumed = make(name, vit_backbone, seed=123, data=images, cache=cache)  # another init: the checkpoint wins
    fit(resumed, vit_backbone, train_data, config, run_dir=tmp_path, resume=True, cache=cache, progress=False)
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


class _TouchesTheBackbone(CoOp):
    """A deliberately broken method: it also nudges a backbone weight while scoring."""

    name = "broken-coop"

    def logits(self, backbone, batch, text=None):
        with torch.no_grad():
            backbone.model.ln_final.bias.add_(1e-3)
        return super().logits(backbone, batch, text)


def test_the_suite_catches_a_method_that_changes_the_backbone(image_root):
    from vlprompt.backbones import tiny_random_backbone

    backbone = tiny_random_backbone("vit")  # a private copy: this method damages it
    data = image_folder(image_root, backbone.image_transform())
    broken = _TouchesTheBackbone(backbone, ClassNames(CLASSES), CoOp.Config(n_ctx=4))
    with pytest.raises(AssertionError, match="tensors changed"):
        check_one_step(broken, backbone, data, FeatureCache())


class _TunesLnFinal(CoOp):
    """A method with a backbone delta (tests only): CoOp plus its own copy of the text tower's final LayerNorm bias."""

    name = "coop-ln-delta"
    changes_backbone = True

    def __init__(self, backbone, classes, config=None):
        super().__init__(backbone, classes, config)
        self.ln_bias = torch.nn.Parameter(backbone.model.ln_final.bias.detach().clone())

    def text_features(self, backbone, image_features=None):
        embeds = self.layout.assemble(self.ctx)
        return backbone.with_weights({"model.ln_final.bias": self.ln_bias}, "encode_text_embeddings",
                                     embeds, self.layout.eot_index)  # fmt: skip

    def cache_key(self) -> str:
        from vlprompt.io import tensors_sha256

        return tensors_sha256({"ln_bias": self.ln_bias})


def test_a_backbone_delta_stays_with_its_method(vit_backbone, image_root, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, _TunesLnFinal.name, _TunesLnFinal)  # registered for the prompt round trip
    data = image_folder(image_root, vit_backbone.image_transform())
    torch.manual_seed(0)
    method = _TunesLnFinal(vit_backbone, ClassNames(CLASSES), CoOp.Config(n_ctx=4))
    key_before = method.cache_key()
    backbone_before = state_snapshot(vit_backbone)
    fit(method, vit_backbone, data, STEP, cache=FeatureCache(), progress=False)
    assert_state_equal(backbone_before, vit_backbone)  # the delta never leaked into the shared backbone
    assert not torch.equal(method.ln_bias, vit_backbone.model.ln_final.bias)  # ... and it was trained
    assert method.cache_key() != key_before  # the feature-cache key follows the delta
    plain = CoOp(vit_backbone, ClassNames(CLASSES), CoOp.Config(n_ctx=4))
    with torch.no_grad():
        plain.ctx.copy_(method.ctx)
        assert (plain.text_features(vit_backbone) - method.text_features(vit_backbone)).abs().max() > 1e-4
    save_pretrained(method, vit_backbone, tmp_path / "prompt")
    loaded = load_prompt(tmp_path / "prompt", vit_backbone)
    assert torch.equal(loaded.ln_bias, method.ln_bias)  # the delta is saved in the prompt file
    with torch.no_grad():
        torch.testing.assert_close(loaded.text_features(vit_backbone), method.text_features(vit_backbone))
    with pytest.raises(Exception, match="no backbone parameter"):
        vit_backbone.with_weights({"model.nope": method.ln_bias}, "encode_text", ["a"])


@pytest.mark.parametrize("name", list(METHODS))
def test_declares_its_recipes_tiny_options_and_template_use(name, vit_backbone):
    """Every recipe, built-in row and tiny option set is valid; the method declares each itself (register checks)."""
    from vlprompt.engine import recipe_config
    from vlprompt.runs.recipes import table_of

    cls = METHODS[name]
    assert register(cls) is cls  # registering again re-checks that it declares its recipes, rows, tiny, template
    for key, recipe in cls.recipes.items():
        recipe_config(recipe, shots=1).validate()
        recipe_config(recipe, shots=16).validate()
        cls.Config.from_dict(dict(recipe.options), name)
        assert "@" in recipe.source or "vlprompt" in recipe.source, f"{name} recipe {key}: cite repo@commit:path"
    for row in cls.builtin_rows:
        recipe_config(row.recipe).validate()
        cls.Config.from_dict(dict(row.recipe.options), name)
        assert table_of(cls, row.per_task) in ("few-shot", "czsl", "multitask")
    cls.Config.from_dict(dict(cls.tiny_recipe(vit_backbone).options), name)
    if cls.template_option is not None:
        options = cls.with_dataset_template({}, "oxford_pets", "a photo of a {}, a type of pet.")
        built = cls.Config.from_dict(options, name)
        value = getattr(built, cls.template_option)
        expected = cls.authors_template or cls.templates_by_dataset.get(
            "oxford_pets", "a photo of a {}, a type of pet."
        )
        assert value in (expected, [expected])
        assert cls.with_dataset_template({cls.template_option: value}, "dtd", "x {}") == {cls.template_option: value}
    else:
        assert cls.with_dataset_template({}, "oxford_pets", "a photo of a {}, a type of pet.") == {}
