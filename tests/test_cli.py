"""The ``vlprompt`` command line, run in-process on tiny random models and small on-disk datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_square_image

from vlprompt.backbones import tiny_random_backbone
from vlprompt.cli import main
from vlprompt.data.czsl import write_czsl
from vlprompt.evaluation import harmonic_mean
from vlprompt.methods.base import Batch
from vlprompt.prompts import load_prompt

TINY = ["--backbone.name", "tiny-random-vit"]


def _data(image_root: Path, split_file: Path) -> list[str]:
    return ["--data.root", str(image_root), "--data.split_file", str(split_file), "--data.shots", "4"]


def _train(tmp_path: Path, image_root: Path, split_file: Path, *extra: str) -> Path:
    out = tmp_path / "run"
    args = ["train", *TINY, *_data(image_root, split_file), "--train.epochs", "2", "--train.batch_size", "8"]
    assert main([*args, "--seeds", "[1, 2]", "--out", str(out), *extra]) == 0
    return out


def test_train_writes_resolved_config_prompts_and_tables(tmp_path, image_root, split_file, capsys):
    out = _train(tmp_path, image_root, split_file, "--method_options", "{n_ctx: 4}")
    config = yaml.safe_load((out / "config.yaml").read_text())
    # The CoOp preset with the user's overrides on top.
    assert config["train"]["epochs"] == 2 and config["train"]["batch_size"] == 8
    assert config["train"]["lr"] == 0.002 and config["train"]["schedule"] == "dassl-cosine"
    assert config["method_options"] == {"n_ctx": 4}
    results = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in results["per_seed"]] == [1, 2]
    accs = [r["accuracy"] for r in results["per_seed"]]
    assert results["summary"][0]["accuracy"] == pytest.approx(sum(accs) / 2)
    assert "coop" in (out / "results.md").read_text() and "±" in capsys.readouterr().out
    for seed in (1, 2):
        assert len((out / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()) == 2
        method = load_prompt(out / f"seed{seed}" / "prompt", tiny_random_backbone("vit"))
        assert method.ctx.shape == (4, 32)


def test_yaml_config_and_flags_combine(tmp_path, image_root, split_file):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"method": "linear-probe", "train": {"epochs": 3, "lr": 0.1}, "seeds": [5]}))
    out = tmp_path / "lp"
    args = ["train", "--config", str(cfg), *TINY, *_data(image_root, split_file), "--train.lr", "0.05"]
    assert main([*args, "--out", str(out)]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["method"] == "linear-probe" and config["seeds"] == [5]
    assert config["train"]["epochs"] == 3 and config["train"]["lr"] == 0.05
    assert config["train"]["optimizer"] == "adamw"  # the linear-probe preset


def test_non_empty_out_needs_overwrite_or_resume(tmp_path, image_root, split_file, capsys):
    out = _train(tmp_path, image_root, split_file)
    first = json.loads((out / "results.json").read_text())["per_seed"]
    args = ["train", *TINY, *_data(image_root, split_file), "--train.epochs", "2", "--train.batch_size", "8"]
    assert main([*args, "--seeds", "[1, 2]", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # Resuming a finished run trains nothing more and reproduces the results.
    assert main([*args, "--seeds", "[1, 2]", "--out", str(out), "--resume", "true"]) == 0
    again = json.loads((out / "results.json").read_text())["per_seed"]
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in first]


def test_unknown_method_lists_valid_ones(tmp_path, image_root, split_file, capsys):
    args = ["train", *TINY, *_data(image_root, split_file), "--method", "coopp", "--out", str(tmp_path / "x")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "coopp" in err and "cocoop" in err and "linear-probe" in err
    assert "csp" not in err  # only the methods of this command
    assert not (tmp_path / "x").exists()
    assert main([*args[:-4], "--method", "csp", "--out", str(tmp_path / "y")]) == 2
    assert "run it with `vlprompt czsl`" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_base_to_new(tmp_path, image_root, split_file):
    out = _train(tmp_path, image_root, split_file, "--data.class_split", "base-to-new", "--method", "cocoop")
    for row in json.loads((out / "results.json").read_text())["per_seed"]:
        assert {"base", "new", "hm"} <= set(row)
        assert row["hm"] == pytest.approx(harmonic_mean(row["base"], row["new"]))
    prompt = json.loads((out / "seed1" / "prompt" / "prompt.json").read_text())
    assert prompt["labels"] == {"kind": "classes", "names": ["blue_square", "gold"]}  # the base half, sorted


def test_eval_predict_interpret(tmp_path, image_root, split_file, capsys):
    out = _train(tmp_path, image_root, split_file)
    prompt = out / "seed1" / "prompt"
    capsys.readouterr()
    assert (
        main(["eval", "--prompt", str(prompt), "--data.root", str(image_root), "--data.split_file", str(split_file)])
        == 0
    )
    evaluated = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "seed1" / "results.json").read_text())
    assert evaluated["accuracy"] == pytest.approx(saved["accuracy"]) and evaluated["n"] == 4

    images = [str(image_root / "gold" / "0.png"), str(image_root / "red_square" / "1.png")]
    assert main(["predict", *images, "--prompt", str(prompt), "--json", "true"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in rows] == images
    backbone = tiny_random_backbone("vit")
    method = load_prompt(prompt, backbone)
    transform = backbone.image_transform()
    from vlprompt.data import load_rgb

    pixels = torch.stack([transform(load_rgb(p)) for p in images])
    expected = method(backbone, Batch(pixels=pixels)).softmax(-1)
    for row, probs in zip(rows, expected):
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert list(row["probabilities"].values()) == pytest.approx(probs.tolist(), abs=1e-6)

    assert main(["predict", images[0], "--prompt", str(prompt), "--topk", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == images[0] and len(table) == 3 and table[1].strip().startswith("1.")

    assert main(["interpret", "--prompt", str(prompt), "--k", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 16  # CoOp's default 16 context vectors


def test_predict_zero_shot_and_bad_usage(image_root, capsys):
    image = str(image_root / "gold" / "0.png")
    assert main(["predict", image, *TINY, "--classes", "cat, dog,bird", "--json", "true"]) == 0
    probs = json.loads(capsys.readouterr().out)[0]["probabilities"]
    assert list(probs) == ["cat", "dog", "bird"]
    assert main(["predict", image, *TINY]) == 2
    assert "--classes" in capsys.readouterr().err
    assert main(["predict", str(image_root / "nope.png"), *TINY, "--classes", "a,b"]) == 2
    assert "nope.png" in capsys.readouterr().err


def make_czsl(root: Path) -> Path:
    """A tiny CZSL dataset: 3 colours x 3 shapes as noisy squares, in the standard on-disk format."""
    colours = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
    objs = ["circle", "square", "star"]
    train = [
        ("red", "circle"),
        ("red", "square"),
        ("green", "square"),
        ("green", "star"),
        ("blue", "circle"),
        ("blue", "star"),
    ]
    val = [("red", "circle"), ("green", "circle"), ("blue", "square")]
    test = [("red", "square"), ("red", "star"), ("blue", "square"), ("green", "circle")]
    samples: list[dict] = []
    for phase, pairs in (("train", train), ("val", val), ("test", test)):
        for a, o in pairs:
            for i in range(3):
                rel = f"{a}_{o}/{phase}{i}.png"
                (root / "images" / f"{a}_{o}").mkdir(parents=True, exist_ok=True)
                write_square_image(root / "images" / rel, colours[a], seed=len(samples))
                samples.append({"image": rel, "attr": a, "obj": o, "set": phase})
    assert sorted({o for _, o in train}) == objs
    write_czsl(root, train, val, test, samples)
    return root


def test_czsl_closed_open_calibrated(tmp_path, capsys):
    root = make_czsl(tmp_path / "czsl")
    out = tmp_path / "czsl_run"
    args = [
        "czsl",
        *TINY,
        "--data.root",
        str(root),
        "--method",
        "csp",
        "--train.epochs",
        "2",
        "--train.batch_size",
        "6",
    ]
    assert main([*args, "--seeds", "[1]", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())["per_seed"]
    assert [r["world"] for r in results] == ["closed", "open", "open+calibrated"]
    for r in results:
        assert 0 <= r["AUC"] <= 1 and r["H"] <= max(r["S"], r["U"]) + 1e-9
        assert r["selected_epoch"] in (1, 2)
    assert (out / "seen_unseen_curve.png").stat().st_size > 1000
    curves = json.loads((out / "seen_unseen_curve.json").read_text())  # every world the run evaluated
    assert set(curves) == {"csp closed", "csp open", "csp open+calibrated"}
    assert all(len(c["seen"]) == len(c["unseen"]) > 1 for c in curves.values())
    prompt = json.loads((out / "seed1" / "prompt" / "prompt.json").read_text())
    assert prompt["method"] == "csp" and len(prompt["labels"]["pairs"]) == 9  # train ∪ val ∪ test pairs
    capsys.readouterr()
    image = str(root / "images" / "red_square" / "test0.png")
    assert main(["predict", image, "--prompt", str(out / "seed1" / "prompt"), "--topk", "1"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert len(line.split("%")[0].split()) == 4  # "1." attr obj probability
    cached = tmp_path / "features"  # czsl keeps frozen features across runs as train does: the same numbers
    for name in ("cached1", "cached2"):
        assert main([*args, "--seeds", "[1]", "--out", str(tmp_path / name), "--feature_cache_dir", str(cached)]) == 0
        again = json.loads((tmp_path / name / "results.json").read_text())["per_seed"]
        assert [{k: v for k, v in r.items() if k != "train_seconds"} for r in again] == [
            {k: v for k, v in r.items() if k != "train_seconds"} for r in results
        ]
    assert any(cached.rglob("*.safetensors"))


def test_czsl_evaluates_a_saved_prompt(tmp_path, capsys):
    root = make_czsl(tmp_path / "czsl")
    out = tmp_path / "czsl_run"
    args = ["czsl", *TINY, "--data.root", str(root), "--method", "czsl-coop", "--train.epochs", "1", "--seeds", "[3]"]
    assert main([*args, "--train.batch_size", "6", "--world", "closed", "--out", str(out)]) == 0
    trained = json.loads((out / "results.json").read_text())["per_seed"][0]
    again = ["czsl", "--data.root", str(root), "--prompt", str(out / "seed3" / "prompt"), "--world", "closed"]
    assert main([*again, "--out", str(tmp_path / "eval")]) == 0
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())["per_seed"][0]
    for key in ("S", "U", "H", "AUC", "attr", "obj"):
        assert evaluated[key] == pytest.approx(trained[key])


def test_czsl_bad_world(tmp_path, capsys):
    root = make_czsl(tmp_path / "czsl")
    assert main(["czsl", *TINY, "--data.root", str(root), "--world", "half", "--out", str(tmp_path / "o")]) == 2
    assert "world" in capsys.readouterr().err


def _per_seed_metrics(out: Path) -> list[dict]:
    rows = json.loads((out / "results.json").read_text())["per_seed"]
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]


def test_config_yaml_replays_the_run(tmp_path, image_root, split_file):
    out = _train(tmp_path, image_root, split_file, "--method_options", "{n_ctx: 4}", "--train.lr", "0.01")
    config = out / "config.yaml"
    assert config.read_text().startswith("# replay: vlprompt train --config")
    replay = tmp_path / "replay"
    assert main(["train", "--config", str(config), "--out", str(replay)]) == 0
    assert _per_seed_metrics(replay) == _per_seed_metrics(out)
    saved, replayed = (yaml.safe_load(p.read_text()) for p in (config, replay / "config.yaml"))
    assert {**saved, "out": None} == {**replayed, "out": None}


def test_config_yaml_with_the_old_schedule_name_replays_and_resumes(tmp_path, image_root, split_file):
    """A run saved when dassl-cosine was called "coop" replays to the same numbers and resumes."""
    out = _train(tmp_path, image_root, split_file)
    config = out / "config.yaml"
    text = config.read_text()
    assert text.count("schedule: dassl-cosine") == 1
    old = text.replace("schedule: dassl-cosine", "schedule: coop")  # as an older vlprompt wrote it, before
    old = "".join(line for line in old.splitlines(True) if "crop_scale:" not in line and "augmentation:" not in line)
    config.write_text(old)  # --train.crop_scale and --train.augmentation existed
    replay = tmp_path / "replay"
    assert main(["train", "--config", str(config), "--out", str(replay)]) == 0
    assert _per_seed_metrics(replay) == _per_seed_metrics(out)
    assert yaml.safe_load((replay / "config.yaml").read_text())["train"]["schedule"] == "coop"  # kept as written
    lrs = [
        [json.loads(line)["lr"] for line in (run / "seed1" / "metrics.jsonl").read_text().splitlines()]
        for run in (out, replay)
    ]
    assert lrs[0] == lrs[1] and len(lrs[0]) == 2
    # Resuming the old run with today's options (the default is now spelled "dassl-cosine") is allowed; an
    # augmentation it did not run with is not.
    args = ["train", *TINY, *_data(image_root, split_file), "--train.epochs", "2", "--train.batch_size", "8"]
    resume = [*args, "--seeds", "[1, 2]", "--out", str(out), "--resume", "true"]
    assert main([*resume, "--train.augmentation", "csp"]) == 2
    assert main(resume) == 0
    assert "schedule: coop" in config.read_text()  # a resumed run's config.yaml is left as it was


def test_czsl_config_yaml_replays_the_run(tmp_path, capsys):
    root = make_czsl(tmp_path / "data")
    out = tmp_path / "czsl"
    args = ["czsl", *TINY, "--data.root", str(root), "--method", "csp", "--seeds", "[1]", "--train.epochs", "2"]
    assert main([*args, "--out", str(out), "--world", "closed"]) == 0
    assert main(["czsl", "--config", str(out / "config.yaml"), "--out", str(tmp_path / "again")]) == 0
    assert _per_seed_metrics(tmp_path / "again") == _per_seed_metrics(out)


def test_data_options_moved_under_data_name_their_new_place_and_old_configs_replay_and_resume(tmp_path, capsys):
    """czsl's --root (and every command's data options) moved under --data.*: the old flag names the new one, an
    older config.yaml with them at the top level replays to the same numbers, and its run resumes."""
    root = make_czsl(tmp_path / "data")
    assert main(["czsl", *TINY, "--root", str(root), "--out", str(tmp_path / "x")]) == 2
    assert "--root is now --data.root" in capsys.readouterr().err and not (tmp_path / "x").exists()
    for command, flag in (("bench", "--shots"), ("multitask", "--collection"), ("demo", "--view"), ("data", "--root")):
        assert main([command, flag, "1"]) == 2
        assert f"{flag} is now --data.{flag[2:]}" in capsys.readouterr().err
    out = tmp_path / "czsl"
    args = ["czsl", *TINY, "--data.root", str(root), "--method", "czsl-coop", "--seeds", "[1, 2]"]
    assert main([*args, "--train.epochs", "1", "--world", "closed", "--out", str(out)]) == 0
    config = out / "config.yaml"
    record = yaml.safe_load(config.read_text())
    data = record.pop("data")
    config.write_text(yaml.safe_dump({**record, **data}, sort_keys=False))  # as an older vlprompt wrote it
    assert main(["czsl", "--config", str(config), "--out", str(tmp_path / "again")]) == 0
    assert _per_seed_metrics(tmp_path / "again") == _per_seed_metrics(out)
    (out / "seed2" / "results.json").unlink()  # seed 2 unfinished: resuming the older run finishes it
    assert main([*args, "--train.epochs", "1", "--world", "closed", "--out", str(out), "--resume", "true"]) == 0
    assert _per_seed_metrics(out) == _per_seed_metrics(tmp_path / "again")


def test_list_options_of_bench_and_demo_take_plain_values():
    """The README's commands: ``vlprompt demo --methods all``, ``vlprompt bench few-shot --methods coop cocoop``."""
    from vlprompt.cli.parser import expand_list_values

    assert expand_list_values(["demo", "--methods", "all"]) == ["demo", "--methods", "[all]"]
    assert expand_list_values(["demo", "--methods", "vp", "maple", "--seeds", "[1]"]) == [
        "demo", "--methods", "[vp, maple]", "--seeds", "[1]"
    ]  # fmt: skip
    bench = ["bench", "--methods", "coop", "cocoop", "few-shot"]
    assert expand_list_values(bench) == ["bench", "--methods", "[coop, cocoop]", "few-shot"]
    assert expand_list_values(["train", "--seeds", "1"]) == ["train", "--seeds", "1"]


def test_boolean_options_work_as_bare_flags(image_root, capsys):
    from vlprompt.cli import expand_bare_flags

    assert expand_bare_flags(["predict", "a.png", "--json", "--topk", "2"]) == [
        "predict", "a.png", "--json", "true", "--topk", "2"
    ]  # fmt: skip
    assert expand_bare_flags(["czsl", "--calibrate", "false", "--resume"]) == [
        "czsl",
        "--calibrate",
        "false",
        "--resume",
        "true",
    ]
    assert expand_bare_flags(["train", "--data.skip_bad_images"]) == ["train", "--data.skip_bad_images", "true"]
    image = str(image_root / "gold" / "0.png")
    assert main(["predict", image, *TINY, "--classes", "cat,dog", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)[0]["probabilities"]) == {"cat", "dog"}
