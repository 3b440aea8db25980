"""The built-in benchmark with the bundled tiny CLIP: learned prompts must help on held-out images."""

from __future__ import annotations

import json

import pytest
import torch

from vlprompt.backbones import load_backbone
from vlprompt.cli import main
from vlprompt.data import few_shot, split_json
from vlprompt.data.synthetic import build_benchmark, default_cache_dir
from vlprompt.demo import VIEW
from vlprompt.engine import FeatureCache, TrainConfig, fit
from vlprompt.evaluation import evaluate
from vlprompt.methods import build_method
from vlprompt.runs import CZSLData, CZSLRun, run_czsl, train_overrides
from vlprompt.runs.recipes import builtin_entries


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The benchmark where ``VLPROMPT_CACHE=<its cache>`` finds it (:func:`default_cache_dir`)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLPROMPT_CACHE", str(cache))
        return build_benchmark(default_cache_dir(0), seed=0)


@pytest.fixture(scope="module")
def shapes():
    return load_backbone("vlprompt/tiny-shapes")


@pytest.fixture(scope="module")
def cache():
    return FeatureCache()


def test_coop_beats_zero_shot_on_held_out_images(bench, shapes, cache):
    """16-shot CoOp on the demo's view (colours under the benchmark's warm light), on images it never saw."""
    transform = shapes.image_transform()
    train = split_json(bench.splits[VIEW], bench.image_root, "train", transform)
    test = split_json(bench.splits[VIEW], bench.image_root, "test", transform)
    zero = evaluate(build_method("zeroshot", shapes, test.classnames), shapes, test, cache)["accuracy"]
    torch.manual_seed(1)
    coop = build_method("coop", shapes, train.classnames, {"n_ctx": 4})
    fit(coop, shapes, few_shot(train, 16, seed=1), TrainConfig(epochs=10, lr=0.02), cache=cache, progress=False)
    learned = evaluate(coop, shapes, test, cache)["accuracy"]
    assert learned >= zero + 0.05, (zero, learned)


@pytest.mark.parametrize("label", ["vp", "maple"])
def test_the_default_visual_rows_beat_zero_shot(label, bench, shapes, cache):
    """The demo's image-side (VP) and two-tower (MaPLe) rows, 3 of their 10 epochs on 4 shots, on held-out images."""
    from dataclasses import replace

    entry = next(e for e in builtin_entries("few-shot") if e.label == label)
    assert entry.default
    transform = shapes.image_transform()
    train = split_json(bench.splits[VIEW], bench.image_root, "train", transform)
    test = few_shot(split_json(bench.splits[VIEW], bench.image_root, "test", transform), 30, seed=0)  # 300 images
    zero = evaluate(build_method("zeroshot", shapes, test.classnames), shapes, test, cache)["accuracy"]
    torch.manual_seed(1)
    method = build_method(entry.method, shapes, train.classnames, entry.options)
    fit(method, shapes, few_shot(train, 4, seed=1), replace(entry.train, epochs=3), cache=cache, progress=False)
    assert evaluate(method, shapes, test, cache)["accuracy"] >= zero + 0.05


def test_demo_runs_a_subset(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    methods = "[zeroshot, coop, czsl-zeroshot, mt-zeroshot]"
    assert main(["demo", "--out", str(out), "--seeds", "[1]", "--methods", methods]) == 0
    report = json.loads((out / "results.json").read_text())
    tasks = {"colour", "shape", "texture", "coloured shape"}
    assert {r["dataset"] for r in report["multitask"]["per_seed"]} == tasks  # a bench row per task
    assert {c["dataset"] for c in report["multitask"]["summary"]} == tasks | {"Average"}
    assert (out / "classification" / "results.md").is_file() and (out / "czsl" / "config.yaml").is_file()
    assert "| mt-zeroshot |" in (out / "results.md").read_text()
    assert report["classification"]["summary"][0]["method"] == "zeroshot"
    shown = (out / "results.md").read_text()
    assert "| zeroshot | 64.2 ± 0.0 |" in shown and "| coop |" in shown  # the README's zero-shot row
    assert report["training_curves"] == ["coop"]  # the trained rows' loss curves are drawn
    assert {r["world"] for r in report["czsl"]["per_seed"]} == {"closed", "open", "open+calibrated"}
    assert (out / "accuracy.png").is_file() and (out / "czsl_auc.png").is_file()
    assert "±" in capsys.readouterr().out
    assert main(["demo", "--out", str(out), "--seeds", "[1]", "--methods", "[zeroshot]"]) == 2  # not empty
    shapes_out = tmp_path / "shapes"
    assert (
        main(["demo", "--out", str(shapes_out), "--seeds", "[1]", "--methods", "[zeroshot]", "--data.view", "shapes"])
        == 0
    )
    assert "view 'shapes'" in (shapes_out / "results.md").read_text()
    assert main(["demo", "--out", str(tmp_path / "bad"), "--data.view", "sizes"]) == 2
    assert "unknown view 'sizes'" in capsys.readouterr().err


def test_csp_beats_coop_and_zero_shot_on_unseen_compositions(bench, shapes, cache, tmp_path):
    """The demo's CZSL recipe, one seed, closed world, test split (unseen pairs included)."""
    entries = {e.label: e for e in builtin_entries("czsl")}
    auc = {}
    for label in ("czsl-zeroshot", "czsl-coop", "csp"):
        entry = entries[label]
        run = CZSLRun(
            data=CZSLData(root=str(bench.czsl_root)),
            method=entry.method,
            method_options=entry.options,
            train=train_overrides(entry.train),
            seeds=[1],
            world="closed",
            out=str(tmp_path / label),
        )
        (row,) = run_czsl(run, shapes, cache, progress=False)
        auc[label] = row["AUC"]
    assert auc["csp"] >= auc["czsl-coop"] + 0.03 and auc["csp"] >= auc["czsl-zeroshot"] + 0.1, auc


def test_softcpt_and_per_task_coop_beat_zero_shot_on_the_multitask_collection(bench, shapes, cache, tmp_path):
    """The demo's multi-task rows (4 shots, one seed) on the built-in collection's held-out images, averaged."""
    from vlprompt.data.synthetic import build_multitask_collection
    from vlprompt.demo import MULTITASK_SHOTS
    from vlprompt.engine.presets import NO_PRESET
    from vlprompt.runs import MultiTaskData, MultiTaskRun, TaskData, run_multitask

    tasks = [TaskData(name=t.name, root=str(t.root), split_file=str(t.split_file))
             for t in build_multitask_collection(bench.root)]  # fmt: skip
    assert [t.name for t in tasks] == ["colour", "shape", "texture", "coloured shape"]
    mean = {}
    for entry in builtin_entries("multitask"):
        if entry.label == "softcpt-cata":
            continue  # the slowest row; NATA stands for SoftCPT here
        run = MultiTaskRun(method=entry.method, method_options=entry.options, preset=NO_PRESET,  # the row is its recipe
                           data=MultiTaskData(tasks=tasks, shots=MULTITASK_SHOTS), train=train_overrides(entry.train),
                           seeds=[1], out=str(tmp_path / entry.label))  # fmt: skip
        rows = run_multitask(run, shapes, cache, progress=False)
        assert [r["task"] for r in rows] == [t.name for t in tasks] + ["Average"]
        mean[entry.label] = rows[-1]["accuracy"]
    assert min(mean["mt-coop"], mean["softcpt-nata"]) >= mean["mt-zeroshot"] + 0.03, mean


def test_the_few_shot_bench_sweeps_the_multitask_collection(bench, shapes, cache, tmp_path, monkeypatch):
    """`bench few-shot --datasets multitask-builtin`: a row per task and their Average, as run_multitask gives."""
    from vlprompt.runs import MultiTaskData, MultiTaskRun, run_multitask
    from vlprompt.runs.bench import BenchData, BenchRun, run_bench

    monkeypatch.setenv("VLPROMPT_CACHE", str(bench.root.parent.parent))
    sweep = BenchRun(datasets=["multitask-builtin"], methods=["zeroshot", "coop"], data=BenchData(shots=[1]), seeds=[1],
                     train=train_overrides(epochs=2), out=str(tmp_path / "bench"))  # fmt: skip
    report = run_bench("few-shot", sweep, shapes, cache, progress=False)
    summary = {(c["dataset"], c["method"]): c["accuracy"] for c in report["summary"]}
    tasks = ["colour", "shape", "texture", "coloured shape"]
    for method in ("zeroshot", "coop"):
        entry = demo_entry(method)
        train = train_overrides(entry.train, epochs=2)
        run = MultiTaskRun(method=method, method_options=entry.options,
                           data=MultiTaskData(collection="builtin", shots=1), seeds=[1], train=train,
                           out=str(tmp_path / f"hand-{method}"))  # fmt: skip
        by_hand = run_multitask(run, shapes, cache, progress=False)
        assert [summary[(t, method)] for t in tasks] == [r["accuracy"] for r in by_hand[:4]]
        assert summary[("Average", method)] == pytest.approx(by_hand[4]["accuracy"], abs=1e-12)
    assert "| coop |" in report["table"] and (tmp_path / "bench" / "results.png").is_file()


def demo_entry(method: str):
    """The demo's first multi-task row of ``method`` (the recipe the sweep uses)."""
    return next(e for e in builtin_entries("multitask") if e.method == method)


def test_demo_row_selection():
    from vlprompt.demo import demo_methods, selected_demo_methods

    default = selected_demo_methods(None)
    assert {"vp", "maple", "coop", "csp"} <= set(default) and not {"vpt-deep", "ivlp", "upt"} & set(default)
    assert selected_demo_methods(["all"]) == demo_methods() and {"vpt-deep", "ivlp", "upt"} <= set(demo_methods())
    assert selected_demo_methods(["upt"]) == ["upt"]
    assert {"mt-zeroshot", "mt-coop", "softcpt-nata", "softcpt-cata"} <= set(default)
