"""Multi-task prompting: SoftCPT against its equations, the task-masked loss, per-task runs, banks, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import CLASSES, TASKS, make_image_folder, task_images

from vlprompt.bank import PromptBank, load_task_method
from vlprompt.cli import main
from vlprompt.data import DataError, image_folder
from vlprompt.data.tasks import TaskImages
from vlprompt.engine import FeatureCache, TrainConfig
from vlprompt.evaluation import evaluate
from vlprompt.labels import LabelSpaceError, Task, TaskSpace
from vlprompt.methods import Batch, PerTask, PerTaskConfig, SoftCPT, SoftCPTConfig
from vlprompt.methods.multitask import task_cross_entropy
from vlprompt.predict import predict_tasks
from vlprompt.prompts import PromptFileError
from vlprompt.runs import MultiTaskData, MultiTaskRun, TaskData, run_multitask, train_overrides

QUICK = train_overrides(TrainConfig(epochs=2, batch_size=4, lr=0.05, schedule="constant", warmup_epochs=0))


def encode(backbone, words: str, ctx: torch.Tensor) -> torch.Tensor:
    """CLIP's text feature of "X .. X <words>." with the n X embeddings replaced by ``ctx`` [n, d] (full 77 tokens)."""
    n = ctx.shape[0]
    ids = backbone.tokenize([" ".join(["X"] * n + [words]).strip() + "."])
    embeds = backbone.token_embedding(ids).clone()
    embeds[0, 1 : 1 + n] = ctx
    return backbone.encode_text_embeddings(embeds, backbone.eot_index(ids))[0]


def hand_softcpt(method: SoftCPT, backbone) -> torch.Tensor:
    """SoftCPT's class features written out from the paper's equations, one prompt at a time."""
    cfg, n_ctx, width = method.config, method.config.n_ctx, backbone.text_width
    out = []
    class_index = 0
    for t, task in enumerate(method.labels.tasks):
        meta = method.meta_ctx[t] if method.task_specific else method.meta_ctx
        task_feature = encode(backbone, task.name.replace("_", " "), meta)
        for name in task.classes:
            if method.class_aware:
                tokens = method.class_ctx[class_index] if method.class_features == "specific" else method.class_ctx
                tokens = torch.zeros(0, width) if tokens is None else tokens  # class_n_ctx 0: "<class name>."
                class_feature = encode(backbone, name.replace("_", " "), tokens)
                x = {
                    "lin": torch.cat([class_feature, task_feature]),
                    "linmean": (class_feature + task_feature) / 2,
                    "lincls": class_feature,
                }[cfg.generator]
            else:
                x = task_feature
            ctx = (x @ method.proj).reshape(n_ctx, width)
            out.append(encode(backbone, name.replace("_", " "), ctx))
            class_index += 1
    return torch.stack(out)


VARIANTS = [("NATA", "lin"), ("NATS", "lin"), ("CATA", "lin"), ("CATA", "linmean"), ("CATA", "lincls"),
            ("CATS", "lin"), ("CSTA", "linmean"), ("CSTS", "lin")]  # fmt: skip


@pytest.mark.parametrize("variant,generator", VARIANTS)
def test_softcpt_generator_matches_the_equations(vit_backbone, variant, generator):
    torch.manual_seed(0)
    config = SoftCPTConfig(variant=variant, generator=generator, n_ctx=3, meta_n_ctx=2, class_n_ctx=2)
    method = SoftCPT(vit_backbone, TASKS, config)
    with torch.no_grad():
        for p in method.parameters():  # away from the N(0, 0.02) init, so that every term matters
            p.normal_(0, 0.3)
        torch.testing.assert_close(
            method.text_features(vit_backbone), hand_softcpt(method, vit_backbone), atol=2e-5, rtol=0
        )
    shapes = {k: tuple(v.shape) for k, v in method.trainable_state().items()}
    d, D = vit_backbone.text_width, vit_backbone.embed_dim
    assert shapes["meta_ctx"] == ((2, 2, d) if variant.endswith("TS") else (2, d))
    assert shapes["proj"] == ((2 * D if variant[0] == "C" and generator == "lin" else D), 3 * d)
    if variant[0] == "C":
        assert shapes["class_ctx"] == ((4, 2, d) if variant.startswith("CS") else (2, d))
    else:
        assert "class_ctx" not in shapes


def test_softcpt_without_class_tokens_uses_the_frozen_class_names(vit_backbone):
    torch.manual_seed(0)
    method = SoftCPT(vit_backbone, TASKS, SoftCPTConfig(variant="CATA", n_ctx=3, meta_n_ctx=2, class_n_ctx=0))
    assert set(method.trainable_state()) == {"meta_ctx", "proj"}
    with torch.no_grad():
        for p in method.parameters():
            p.normal_(0, 0.3)
        torch.testing.assert_close(
            method.text_features(vit_backbone), hand_softcpt(method, vit_backbone), atol=2e-5, rtol=0
        )


def test_softcpt_refuses_a_class_generator_without_class_features(vit_backbone):
    with pytest.raises(ValueError, match="generator 'linmean' reads class features"):
        SoftCPT(vit_backbone, TASKS, SoftCPTConfig(variant="NATA", generator="linmean"))


def test_a_sample_never_competes_with_another_tasks_classes():
    torch.manual_seed(0)
    blocks = [slice(0, 2), slice(2, 5)]
    task = torch.tensor([0, 1, 1, 0, 1])
    targets = torch.tensor([1, 2, 0, 0, 1])
    logits = torch.randn(5, 5, requires_grad=True)
    loss = task_cross_entropy(logits, targets, task, blocks)
    by_hand = (
        sum(-F.log_softmax(logits[i, blocks[int(t)]], -1)[int(y)] for i, (t, y) in enumerate(zip(task, targets))) / 5
    )
    torch.testing.assert_close(loss, by_hand)
    loss.backward()
    own = torch.zeros(5, 5, dtype=torch.bool)
    for i, t in enumerate(task):
        own[i, blocks[int(t)]] = True
    assert logits.grad[~own].abs().max() == 0  # other tasks' logits get no gradient ...
    changed = logits.detach().clone()
    changed[~own] += 100.0  # ... and cannot change the loss
    assert float(task_cross_entropy(changed, targets, task, blocks)) == pytest.approx(loss.item(), abs=1e-6)


def test_per_task_members_train_on_their_own_task_only(vit_backbone, image_root):
    data = task_images(image_folder(image_root, vit_backbone.image_transform()))
    torch.manual_seed(0)
    method = PerTask(vit_backbone, data.task_space, PerTaskConfig(method="coop", options={"n_ctx": 2}))
    cache = FeatureCache()
    rows = torch.tensor([0, 1, 2, 3])  # all of the first task
    subset = data.subset(rows.tolist())
    batch = Batch(features=cache.features(vit_backbone, subset, progress=False), targets=torch.tensor(subset.labels),
                  task=torch.tensor(subset.tasks))  # fmt: skip
    logits = method(vit_backbone, batch)
    assert logits.shape == (4, len(TASKS))
    loss = method.loss(vit_backbone, batch, logits)
    torch.testing.assert_close(loss, task_cross_entropy(logits, batch.targets, batch.task, TASKS.blocks()))
    loss.backward()
    assert method.members[0].ctx.grad.abs().sum() > 0 and method.members[1].ctx.grad.abs().max() == 0


def test_a_task_agnostic_softcpt_scores_a_task_it_never_saw(vit_backbone):
    torch.manual_seed(0)
    method = SoftCPT(vit_backbone, TASKS, SoftCPTConfig(n_ctx=2)).eval()
    with torch.no_grad():
        before = method.text_features(vit_backbone)
        grown = TaskSpace(TASKS.tasks + (Task("shape", ("square", "coin", "star")),))
        method.set_classes(vit_backbone, grown)
        after = method.text_features(vit_backbone)
        assert after.shape[0] == len(TASKS) + 3
        torch.testing.assert_close(after[: len(TASKS)], before, atol=1e-6, rtol=0)  # the old tasks are untouched
        # the new task's context comes from its name: another name gives other features
        method.set_classes(vit_backbone, TaskSpace(TASKS.tasks + (Task("metal", ("square", "coin", "star")),)))
        assert (method.text_features(vit_backbone)[len(TASKS) :] - after[len(TASKS) :]).abs().max() > 1e-4
    specific = SoftCPT(vit_backbone, TASKS, SoftCPTConfig(variant="NATS", n_ctx=2))
    with pytest.raises(LabelSpaceError, match="cannot score the new task"):
        specific.set_classes(vit_backbone, grown)
    specific.set_classes(vit_backbone, TaskSpace(TASKS.tasks[:1]))  # a subset of its own tasks is fine


@pytest.fixture()
def two_tasks(tmp_path, image_root, split_file):
    """Task "cool colour" as class folders (2 classes), task "any colour" as a split file (4 classes)."""
    cool_root = make_image_folder(tmp_path / "cool", classes={k: CLASSES[k] for k in ("blue_square", "green_square")})
    return [
        TaskData(name="cool colour", format="imagefolder", train_dir=str(cool_root), test_dir=str(cool_root)),
        TaskData(name="any colour", root=str(image_root), split_file=str(split_file)),
    ]


def multitask_run(tasks, out, method="softcpt", options=None, **kwargs) -> MultiTaskRun:
    return MultiTaskRun(method=method, method_options=options if options is not None else {"n_ctx": 2},
                        data=MultiTaskData(tasks=tasks, shots=2), seeds=[1], train=QUICK, out=str(out),
                        **kwargs)  # fmt: skip


def test_a_multitask_run_reports_each_task_and_their_mean(two_tasks, vit_backbone, tmp_path):
    cache = FeatureCache()
    rows = run_multitask(multitask_run(two_tasks, tmp_path / "soft"), vit_backbone, cache, progress=False)
    assert [r["task"] for r in rows] == ["cool colour", "any colour", "Average"]
    assert rows[2]["accuracy"] == pytest.approx((rows[0]["accuracy"] + rows[1]["accuracy"]) / 2)
    seed = tmp_path / "soft" / "seed1"
    train = [json.loads((seed / f"train_subset_task{t}.json").read_text()) for t in (0, 1)]
    assert [len(s["paths"]) for s in train] == [2 * 2, 2 * 4]  # 2 shots of every class of each task
    # the saved multi-task prompt scores one task on its own, with the run's numbers
    method = load_task_method(seed / "prompt", vit_backbone, "any colour")
    test = TaskData(name="any colour", root=two_tasks[1].root, split_file=two_tasks[1].split_file)
    test_set = test.load(vit_backbone.image_transform())["test"]
    assert evaluate(method, vit_backbone, test_set, cache)["accuracy"] == pytest.approx(rows[1]["accuracy"])
    summary = json.loads((tmp_path / "soft" / "results.json").read_text())["summary"]
    assert [r["task"] for r in summary] == ["cool colour", "any colour", "Average"]


def test_per_task_coop_writes_a_bank_that_predicts_every_task_in_one_pass(two_tasks, vit_backbone, tmp_path):
    rows = run_multitask(multitask_run(two_tasks, tmp_path / "coop", "coop"), vit_backbone, FeatureCache(),
                         progress=False)  # fmt: skip
    bank_dir = tmp_path / "coop" / "seed1" / "prompt"
    bank = PromptBank.load(bank_dir, vit_backbone)
    assert bank.names == ["cool colour", "any colour"]
    assert bank["cool colour"].name == "coop" and bank["cool colour"].class_names() == ["blue_square", "green_square"]
    test_set = two_tasks[1].load(vit_backbone.image_transform())["test"]
    assert evaluate(bank["any colour"], vit_backbone, test_set)["accuracy"] == pytest.approx(rows[1]["accuracy"])
    images = [s.path for s in test_set.samples]
    encoded = []
    original = vit_backbone.encode_image
    vit_backbone.encode_image = lambda pixels, **kw: encoded.append(len(pixels)) or original(pixels, **kw)
    try:
        both = predict_tasks(bank_dir, ["cool colour", "any colour"], images, vit_backbone)
    finally:
        del vit_backbone.encode_image
    assert sum(encoded) == len(images)  # every image encoded once for both tasks
    alone = predict_tasks(bank_dir, ["any colour"], images, vit_backbone)["any colour"]
    assert [p.label for p in both["any colour"]] == [p.label for p in alone]
    assert set(both["cool colour"][0].probabilities) == {"blue_square", "green_square"}


def test_predict_and_eval_take_a_task(two_tasks, vit_backbone, tmp_path, capsys):
    run_multitask(multitask_run(two_tasks, tmp_path / "coop", "coop"), vit_backbone, FeatureCache(), progress=False)
    bank = str(tmp_path / "coop" / "seed1" / "prompt")
    image = str(next((tmp_path / "cool" / "blue_square").iterdir()))
    assert main(["predict", "--prompt", bank, "--task", "cool colour,any colour", "--json", "true", image]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out[0]) == {"image", "cool colour", "any colour"}
    assert main(["predict", "--prompt", bank, "--task", "shape", image]) == 2
    assert "holds no task 'shape'; it holds ['cool colour', 'any colour']" in capsys.readouterr().err
    code = main(["eval", "--prompt", bank, "--task", "any colour", "--data.root", two_tasks[1].root,
                 "--data.split_file", two_tasks[1].split_file])  # fmt: skip
    assert code == 0 and json.loads(capsys.readouterr().out)["task"] == "any colour"


def test_the_multitask_command_runs_from_the_cli(two_tasks, tmp_path, capsys):
    tasks = json.dumps([{k: v for k, v in vars(t).items() if v not in ("", False)} for t in two_tasks])
    code = main(["multitask", "--method", "softcpt", "--method_options", '{"n_ctx": 2, "variant": "CATA"}',
                 "--data.tasks", tasks, "--data.shots", "1", "--seeds", "[1]", "--train.epochs", "1",
                 "--train.batch_size", "2", "--backbone.name", "tiny-random-vit",
                 "--out", str(tmp_path / "cli")])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "| softcpt | 1 | Average |" in out.out.replace("  ", " ")


# ---------------------------------------------------------------- bad input
def test_bad_multitask_input_gets_a_clear_message(two_tasks, vit_backbone, tmp_path):
    def fails(tasks, match):
        with pytest.raises(DataError, match=match):
            run_multitask(multitask_run(tasks, tmp_path / "bad", overwrite=True), vit_backbone, progress=False)

    same = [two_tasks[0], TaskData(**{**vars(two_tasks[1]), "name": "cool colour"})]
    fails(
        same, r"--data.tasks\[1\].name 'cool colour' is also the name of --data.tasks\[0\]: task names must be unique"
    )
    fails([TaskData(name=" ", root="x", split_file="y")], r"--data.tasks\[0\].name is empty")
    fails([], "--data.tasks is empty")
    fails([TaskData(name="t", format="imagefolder", test_dir="x")], r"--data.tasks\[0\].train_dir is required")
    empty = tmp_path / "empty.json"
    split = json.loads(Path(two_tasks[1].split_file).read_text())
    empty.write_text(json.dumps({**split, "train": []}))
    fails([TaskData(name="t", root=two_tasks[1].root, split_file=str(empty))], "has no|no images")
    outside = tmp_path / "outside.json"
    split["train"][0][1] = 7  # a label outside the task's 4 classes
    outside.write_text(json.dumps(split))
    with pytest.raises(DataError, match="label|7"):
        run_multitask(multitask_run([TaskData(name="t", root=two_tasks[1].root, split_file=str(outside))],
                                    tmp_path / "bad", overwrite=True), vit_backbone, progress=False)  # fmt: skip


def test_a_task_with_no_classes_is_refused():
    with pytest.raises(LabelSpaceError, match="task 'empty' has no classes"):
        Task("empty", ())


def test_a_bank_of_prompts_from_different_backbones_is_refused(two_tasks, vit_backbone, tmp_path):
    run_multitask(multitask_run(two_tasks, tmp_path / "coop", "coop"), vit_backbone, FeatureCache(), progress=False)
    bank = tmp_path / "coop" / "seed1" / "prompt"
    member = next(p for p in sorted(bank.iterdir()) if p.is_dir()) / "prompt.json"
    config = json.loads(member.read_text())
    config["backbone"]["pretrained"] = "laion2b_s34b_b79k"
    member.write_text(json.dumps(config))
    with pytest.raises(PromptFileError, match="a bank holds prompts of one backbone"):
        PromptBank.load(bank, vit_backbone)


def test_a_single_task_prompt_has_no_tasks(vit_backbone, tmp_path, image_root, split_file):
    from vlprompt.methods import CoOp
    from vlprompt.prompts import save_pretrained

    save_pretrained(CoOp(vit_backbone, list(CLASSES)), vit_backbone, tmp_path / "p")
    with pytest.raises(PromptFileError, match="single-task coop prompt: --task needs a prompt bank"):
        load_task_method(tmp_path / "p", vit_backbone, "colour")


def test_task_images_keep_task_local_labels(vit_backbone, image_root):
    data = task_images(image_folder(image_root))
    assert isinstance(data, TaskImages) and data.task_space == TASKS
    assert sorted(set(data.labels)) == [0, 1] and sorted(set(data.tasks)) == [0, 1]
    part = data.part("warm colour")
    assert part.classnames == ["gold", "red_square"] and part.tasks is None
    sub = data.subset([0, len(data) - 1])
    assert sub.tasks == [0, 1]


def test_separately_trained_prompts_make_a_bank(vit_backbone, tmp_path, capsys):
    from vlprompt.methods import CoOp, CoOpConfig
    from vlprompt.prompts import save_pretrained

    torch.manual_seed(0)
    save_pretrained(CoOp(vit_backbone, ["red", "blue"], CoOpConfig(n_ctx=2)), vit_backbone, tmp_path / "a")
    save_pretrained(CoOp(vit_backbone, ["circle", "star"], CoOpConfig(n_ctx=2)), vit_backbone, tmp_path / "b")
    prompts = f"{{colour: {tmp_path / 'a'}, shape: {tmp_path / 'b'}}}"
    args = ["bank", "--prompts", prompts, "--out", str(tmp_path / "bank"), "--backbone.name", "tiny-random-vit"]
    assert main(args) == 0, capsys.readouterr().err
    bank = PromptBank.load(tmp_path / "bank", vit_backbone)
    assert bank.names == ["colour", "shape"] and bank["shape"].class_names() == ["circle", "star"]
    assert torch.equal(bank["colour"].ctx, load_task_method(tmp_path / "bank", vit_backbone, "colour").ctx)
    assert main(args) == 2 and "exists and is not empty" in capsys.readouterr().err
    other = json.loads((tmp_path / "b" / "prompt.json").read_text())
    other["backbone"]["model"] = "ViT-B-32"
    (tmp_path / "b" / "prompt.json").write_text(json.dumps(other))
    with pytest.raises(PromptFileError, match="a bank holds prompts of one backbone"):
        PromptBank.from_prompts({"colour": tmp_path / "a", "shape": tmp_path / "b"}, vit_backbone)


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@pytest.mark.parametrize("variant,frozen,steps", [("NATA", False, 3), ("CATA", False, 4), ("CATA", True, 3)])
def test_softcpt_reference_steps_step_the_optimizer_and_schedule_as_the_reference(vit_backbone, variant, frozen, steps):
    """mtcoop.py registers one optimizer under 3-4 names and Dassl steps each: 3-4 SGD steps of one batch's gradients,
    and the per-epoch cosine ticking 3-4 times an epoch (periodic: it rises again after its period)."""
    from vlprompt.engine.trainer import StepPlan, TrainingState

    config = TrainConfig(epochs=50, lr=0.002, schedule="dassl-cosine", warmup_epochs=1, warmup_lr=1e-5,
                         momentum=0.9, weight_decay=5e-4, optimizer="sgd")  # fmt: skip
    options = SoftCPTConfig(variant=variant, n_ctx=2, train_class_prompt=not frozen, reference_steps=True)
    assert SoftCPT(vit_backbone, TASKS, SoftCPTConfig(variant=variant, n_ctx=2)).optimizer_steps() == 1
    torch.manual_seed(0)
    method = SoftCPT(vit_backbone, TASKS, options)
    assert method.optimizer_steps() == steps
    state = TrainingState.build(method, config, StepPlan.build(64, config), torch.device("cpu"))
    for _ in range(3):  # past the warmup epoch, into the cosine
        state.end_epoch()
    params = [p for g in state.optimizer.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    grads = [torch.randn_like(p) for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    lr = state.optimizer.param_groups[0]["lr"]
    state.step()
    for p, p0, g in zip(params, before, grads):  # SGD(momentum 0.9, weight decay 5e-4) by hand, `steps` times
        buf, expected = None, p0.clone()
        for _ in range(steps):
            d = g + 5e-4 * expected
            buf = d if buf is None else 0.9 * buf + d
            expected = expected - lr * buf
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)  # one step: 4e-3 off
    # the schedule: the reference's lr is torch's CosineAnnealingLR(T_max=50) after its warmup tick, ticked `steps`
    # times an epoch; ours after 3 epochs and then each epoch to the 50th
    cosine_params = [torch.nn.Parameter(torch.zeros(1))]
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD(cosine_params, lr=0.002), 50)
    lrs, expected_lrs = [], []
    for epoch in range(3, 50):
        lrs.append(state.optimizer.param_groups[0]["lr"])
        while reference.last_epoch < epoch * steps - 1:  # Dassl's first tick ends the warmup at the base lr
            reference.step()
        expected_lrs.append(reference.get_last_lr()[0])
        state.end_epoch()
    assert lrs == pytest.approx(expected_lrs, rel=1e-9, abs=1e-12)
    assert min(lrs) < 1e-5 and lrs[-1] > 10 * min(lrs)  # through the cosine's minimum and up again


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
def test_reference_steps_under_fp16_scaling_skip_together(vit_backbone):
    """With the fp16 loss scaler: an overflowing batch takes none of the 3 steps (the scale halves); a finite one
    takes all 3 on the unscaled gradients. A per-step schedule (the reference has none) ticks once a batch."""
    from vlprompt.engine.trainer import StepPlan, TrainingState

    config = TrainConfig(epochs=5, lr=0.002, momentum=0.0, weight_decay=0.0, optimizer="sgd", precision="fp16",
                         warmup_epochs=0)  # fmt: skip
    method = SoftCPT(vit_backbone, TASKS, SoftCPTConfig(n_ctx=2, reference_steps=True))
    state = TrainingState.build(method, config, StepPlan.build(64, config), torch.device("cpu"))
    assert state.scaler.is_enabled() and state.repeats == 3
    params = [p for g in state.optimizer.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    state.scaler.scale(torch.ones(()))  # as the engine's scaler.scale(loss).backward() starts each step
    scale = state.scaler.get_scale()
    for p in params:
        p.grad = torch.full_like(p, math.inf)
    state.step()
    assert all(torch.equal(p, p0) for p, p0 in zip(params, before)) and state.scaler.get_scale() == scale / 2
    grads = [torch.randn_like(p) for p in params]
    for p, g in zip(params, grads):
        p.grad = g * float(state.scaler.scale(torch.ones(())))  # as scaler.scale(loss).backward() leaves them
    lr = state.optimizer.param_groups[0]["lr"]
    state.step()
    for p, p0, g in zip(params, before, grads):
        torch.testing.assert_close(p.detach(), p0 - 3 * lr * g, rtol=1e-5, atol=1e-7)
    per_step = TrainConfig(epochs=5, schedule="cosine", warmup_epochs=0)  # no reference: it ticks once a batch
    state = TrainingState.build(method, per_step, StepPlan.build(64, per_step), torch.device("cpu"))
    state.scaler.scale(torch.ones(()))
    for p in params:
        p.grad = torch.zeros_like(p)
    state.step()
    assert state.scheduler.last_epoch == 1


def test_softcpt_class_sampling_follows_the_reference(vit_backbone):
    """CLS_SAMPLE_RATE: the batch's classes and ceil(rate x the others) per task (torch.randperm from the same RNG
    state, every task drawing), 1e-6 features elsewhere, the loss over the drawn columns only; eval and rate 1 score
    every class; a task-only variant refuses it."""
    import math

    from vlprompt.methods import cosine_logits
    from vlprompt.methods.base import MethodOptionError

    space = TaskSpace((Task("colour", ("red", "green", "blue", "gold", "white")), Task("shape", ("square", "circle",
                       "star", "ring"))))  # fmt: skip
    torch.manual_seed(0)
    method = SoftCPT(vit_backbone, space, SoftCPTConfig(variant="CATA", n_ctx=2, class_sample_rate=0.5)).train()
    features = torch.randn(4, vit_backbone.embed_dim)
    batch = Batch(features=features, targets=torch.tensor([3, 1, 3, 2]), task=torch.tensor([0, 1, 0, 0]))
    state = torch.get_rng_state()
    logits = method(vit_backbone, batch)
    loss = method.loss(vit_backbone, batch, logits)
    torch.set_rng_state(state)
    drawn = []  # by hand, as mtcoop.py: per task, its present classes, then the drawn others
    for start, size, present in ((0, 5, [2, 3]), (5, 4, [1])):
        others = torch.tensor([c for c in range(size) if c not in present])
        kept = others[torch.randperm(len(others))[: math.ceil(len(others) * 0.5)]]
        drawn += [start + c for c in present] + [start + int(c) for c in kept]
    assert method._sampled.tolist() == drawn and len(drawn) == 2 + 2 + 1 + 2
    with torch.no_grad():
        full = method.class_layout.encode(vit_backbone, method.contexts(vit_backbone))
    text = torch.full_like(full, 1e-6)
    text[drawn] += full[drawn]
    torch.testing.assert_close(logits, cosine_logits(features, text, vit_backbone.logit_scale), atol=1e-4, rtol=0)
    expected = 0.0
    for i, (t, y) in enumerate(zip(batch.task.tolist(), batch.targets.tolist())):
        start = 5 * t
        columns = sorted(c for c in drawn if start <= c < start + (5 if t == 0 else 4))
        expected += F.cross_entropy(logits[i, columns][None], torch.tensor([columns.index(start + y)]))
    torch.testing.assert_close(loss, expected / 4)
    loss.backward()
    assert method.proj.grad.abs().max() > 0
    method.eval()
    every = method(vit_backbone, batch)
    torch.testing.assert_close(every, cosine_logits(features, full, vit_backbone.logit_scale), atol=1e-4, rtol=0)
    method.train()
    method.config.class_sample_rate = 1.0  # every class drawn: the full loss, up to the 1e-6
    loss_all = method.loss(vit_backbone, batch, method(vit_backbone, batch))
    method.config.class_sample_rate = 0.0
    torch.testing.assert_close(
        loss_all, method.loss(vit_backbone, batch, method(vit_backbone, batch)), atol=1e-4, rtol=0
    )
    with pytest.raises(MethodOptionError, match="class_sample_rate samples the classes of a class-aware variant"):
        SoftCPT(vit_backbone, space, SoftCPTConfig(variant="NATA", class_sample_rate=0.5))
