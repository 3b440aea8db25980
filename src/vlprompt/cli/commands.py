"""What each command does, given its parsed config."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import distributed as dist
from ..data import DataError, base_new_split
from ..engine.presets import preset_name
from ..errors import OptionError, RunDirError
from ..labels import task_key
from ..methods import COMMAND_OF_LABELS, METHODS
from ..rundir import check_run_dir, prepare_run_dir
from ..runs import (
    ClassificationRun,
    CZSLRun,
    MultiTaskRun,
    run_classification,
    run_czsl,
    run_multitask,
)
from ..runs.bench import BenchRun
from ..schema import check_template, check_template_fits, check_unique
from .options import (
    BankCommand,
    DataCommand,
    DemoCommand,
    EvalCommand,
    IncontextCommand,
    InterpretCommand,
    MethodsCommand,
    PredictCommand,
    PushCommand,
)


def cmd_methods(cfg: MethodsCommand, _: Any) -> int:
    rows: list[dict[str, Any]] = [
        {
            "method": name,
            "command": COMMAND_OF_LABELS.get(cls.label_kind, "train"),
            "capabilities": [k for k, v in cls.capabilities().items() if v],
            "presets": [preset_name(name, k) for k in cls.recipes],
            "template": cls.template_option,
        }
        for name, cls in METHODS.items()
    ]
    if cfg.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("| method | command | capabilities | presets |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['command']} | {', '.join(r['capabilities'])} | {', '.join(r['presets'])} |")
    print("(single-task methods also run in `vlprompt multitask`, once per task; "
          "`vlprompt COMMAND --method NAME --help` shows a method's options)")  # fmt: skip
    return 0


def cmd_train(run: ClassificationRun, _: Any) -> int:
    run_classification(run)
    return _print_results(run.out)


def cmd_czsl(run: CZSLRun, _: Any) -> int:
    run_czsl(run)
    return _print_results(run.out)


def cmd_multitask(run: MultiTaskRun, _: Any) -> int:
    run_multitask(run)
    return _print_results(run.out)


def _print_results(out: str) -> int:
    if dist.is_main():
        print((Path(out) / "results.md").read_text(), end="")
        print(f"run directory: {out}")
    return 0


def cmd_eval(cfg: EvalCommand, _: Any) -> int:
    from ..evaluation import evaluate
    from ..prompts import load_prompt

    cfg.validate()
    backbone = cfg.backbone.load(cfg.prompt)
    if cfg.task is not None:
        from ..bank import load_task_method

        method = load_task_method(cfg.prompt, backbone, cfg.task)
    else:
        method = load_prompt(cfg.prompt, backbone)
    data = cfg.data.load(backbone.image_transform())
    if cfg.split not in data:
        raise DataError(f"--split {cfg.split!r} is not in the dataset (have {sorted(data)})")
    dataset = base_new_split(data[cfg.split], cfg.class_split)
    if list(dataset.classnames) != method.class_names():
        method.set_classes(backbone, dataset.classnames)
    if cfg.tpt:
        from ..methods import TPT

        method = TPT.wrapping(method, backbone, cfg.tpt_config())
    metrics = evaluate(method, backbone, dataset, progress=True)
    summary = {"prompt": cfg.prompt, "split": cfg.split, "class_split": cfg.class_split, "n": len(dataset), **metrics}
    if cfg.tpt:
        summary["tpt"] = {k: v for k, v in method.config.to_dict().items() if k not in ("method", "options")}
    if cfg.task is not None:
        summary["task"] = cfg.task
    print(json.dumps(summary, indent=2))
    return 0


def cmd_predict(cfg: PredictCommand, namespace: Any) -> int:
    from ..predict import Predictor, predict_tasks

    cfg.validate()
    images = list(namespace.images)
    _check_predict_inputs(cfg, images)
    backbone = cfg.backbone.load(cfg.prompt)
    if cfg.task is not None:
        assert cfg.prompt is not None  # validate: --task names tasks of --prompt
        by_task = predict_tasks(cfg.prompt, cfg.tasks(), images, backbone, cfg.topk, cfg.batch_size)
        if cfg.json:
            out = [
                {"image": path, **{t: p[i].probabilities for t, p in by_task.items()}} for i, path in enumerate(images)
            ]
            print(json.dumps(out, indent=2))
            return 0
        for i, path in enumerate(images):
            print(path)
            for task, preds in by_task.items():
                print(f"  {task}: " + ", ".join(f"{name} {100 * prob:.2f}%" for name, prob in preds[i].top))
        return 0
    if cfg.prompt is not None:
        predictor = Predictor.from_prompt(cfg.prompt, backbone, batch_size=cfg.batch_size)
    else:
        check_template_fits(cfg.template, cfg.class_names(), backbone, "--template")
        predictor = Predictor.zero_shot(cfg.class_names(), backbone, template=cfg.template, batch_size=cfg.batch_size)
    predictions = predictor.predict(images, topk=cfg.topk, progress=len(images) > cfg.batch_size)
    if cfg.json:
        out = [{"image": path, "probabilities": p.probabilities} for path, p in zip(images, predictions)]
        print(json.dumps(out, indent=2))
        return 0
    for path, prediction in zip(images, predictions):
        print(path)
        for rank, (name, prob) in enumerate(prediction.top, 1):
            print(f"  {rank:>2}. {name:<30} {100 * prob:6.2f}%")
    return 0


def _check_predict_inputs(cfg: PredictCommand, images: list[str]) -> None:
    """What ``predict`` can refuse before loading a model: names that collide, a bad template, missing images."""
    if cfg.classes is not None:
        check_unique(cfg.class_names(), "--classes", OptionError, what="class names")
        check_template(cfg.template, "--template")
    if cfg.task is not None:
        check_unique(cfg.tasks(), "--task", OptionError, key=task_key, what="task names")
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise DataError(
            f"image file not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if missing[1:] else "")
        )


def cmd_demo(cfg: DemoCommand, _: Any) -> int:
    from ..demo import run_demo

    cfg.validate()
    report = run_demo(cfg.out, list(cfg.seeds), cfg.methods, cfg.data.shots, cfg.overwrite, view=cfg.data.view)
    print(report["table"], end="")
    print(f"run directory: {cfg.out}")
    return 0


def cmd_bench(bench: BenchRun, namespace: Any) -> int:
    from ..runs.bench import run_bench

    report = run_bench(namespace.protocol, bench)
    if dist.is_main():
        print(report["table"], end="")
        print(f"bench directory: {bench.out}")
    return 0


def cmd_data(cfg: DataCommand, namespace: Any) -> int:
    from ..data.benchmarks import DATASETS, check_dataset, dataset_names

    cfg.validate()
    names = dataset_names(namespace.names, tuple(DATASETS))
    root = Path(cfg.data.root)
    if not root.exists():
        raise DataError(f"--data.root {root} does not exist: give the folder that holds the dataset folders")
    if not root.is_dir():
        raise DataError(f"--data.root {root} is a file, not a folder: give the folder that holds the dataset folders")
    reports = [check_dataset(name, cfg.data.root) for name in names]
    for report in reports:
        print(report.text())
    ready = sum(r.ok for r in reports)
    print(f"{ready} of {len(reports)} dataset(s) ready under {root} (docs/datasets.md says where to get each)")
    return 0 if ready == len(reports) else 1


def cmd_interpret(cfg: InterpretCommand, _: Any) -> int:
    from ..prompts import load_prompt

    cfg.validate()
    backbone = cfg.backbone.load(cfg.prompt)
    method = load_prompt(cfg.prompt, backbone)
    if not method.has_context:
        raise OptionError(f"{method.name} has no context vectors to interpret")
    for i, words in enumerate(method.nearest_words(backbone, cfg.k)):  # type: ignore[operator]
        print(f"ctx {i:>2}: " + ", ".join(f"{w} ({d:.3f})" for w, d in words))
    return 0


def cmd_bank(cfg: BankCommand, _: Any) -> int:
    from ..bank import PromptBank

    cfg.validate()
    check_unique(list(cfg.prompts), "--prompts", OptionError, key=task_key, what="task names")
    out = Path(cfg.out)
    if out.is_dir() and not out.is_symlink() and any(out.iterdir()):
        raise RunDirError(f"--out {out} exists and is not empty: a bank is written once, choose a new directory")
    check_run_dir(out, resume=False, overwrite=False)
    first = next(iter(cfg.prompts.values()))
    backbone = cfg.backbone.load(first)
    bank = PromptBank.from_prompts(cfg.prompts, backbone)
    prepare_run_dir(cfg.out, resume=False, overwrite=False, command="bank")
    bank.save(backbone, cfg.out)
    print(f"prompt bank of {len(cfg.prompts)} prompts ({', '.join(cfg.prompts)}): {cfg.out}")
    return 0


def cmd_incontext(cfg: IncontextCommand, _: Any) -> int:
    from ..incontext import load_inpainter
    from ..incontext.predict import check_incontext_out, predict_files

    cfg.validate()
    check_incontext_out(cfg.out, cfg.overwrite)
    model = load_inpainter(cfg.model, cfg.arch)
    model.layout = dataclasses.replace(model.layout, style=cfg.canvas)
    records = predict_files(
        model, cfg.task, cfg.examples, cfg.outputs, cfg.queries, cfg.out, cfg.targets, cfg.overwrite
    )
    if cfg.json:
        print(json.dumps(records, indent=2))
        return 0
    for record in records:
        extra = ", ".join(f"{k}: {v}" for k, v in record.items() if k not in ("query", "canvas", "answer"))
        print(f"{record['query']} -> {record['answer']}" + (f" ({extra})" if extra else ""))
    print(f"filled canvases and answers in {cfg.out}")
    return 0


def cmd_push(cfg: PushCommand, namespace: Any) -> int:
    from ..hub import push_to_hub

    info = push_to_hub(namespace.prompt, namespace.repo, cfg.revision, cfg.private, cfg.commit_message)
    print(f"pushed {namespace.prompt} to {getattr(info, 'commit_url', info)}")
    print(f"load it with --prompt hf-hub:{namespace.repo.removeprefix('hf-hub:')}")
    return 0


COMMANDS: dict[str, Callable[[Any, Any], int]] = {
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "czsl": cmd_czsl,
    "multitask": cmd_multitask,
    "demo": cmd_demo,
    "interpret": cmd_interpret,
    "bank": cmd_bank,
    "push": cmd_push,
    "bench": cmd_bench,
    "data": cmd_data,
    "incontext": cmd_incontext,
    "methods": cmd_methods,
}
