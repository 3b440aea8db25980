"""The ``vlprompt`` command line, generated from the typed run and command configs (jsonargparse).

Every subcommand's options are the fields of one dataclass (``ClassificationRun`` for ``train``,
``CZSLRun`` for ``czsl``, the small command configs below for the rest), so the CLI, YAML files and
the Python API take the same options; boolean options also work as bare flags (``--json``).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import sys
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docstring_parser
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

from . import __version__
from . import distributed as dist
from .data import DataError, base_new_split
from .data.sampling import CLASS_SPLITS
from .engine.presets import preset_name
from .errors import OptionError, VlpromptError
from .labels import ClassNames, PairSpace, TaskSpace
from .methods import COMMAND_OF_LABELS, METHODS, PromptMethod, method_class, methods_for
from .runs import (
    BackboneConfig,
    ClassificationRun,
    CZSLRun,
    DataConfig,
    MultiTaskRun,
    run_classification,
    run_czsl,
    run_multitask,
)
from .runs.bench import PROTOCOLS, BenchRun

log = logging.getLogger("vlprompt")
BOOL_WORDS = {"true", "false", "yes", "no", "1", "0", "null"}
DEBUG_FLAG = "--debug"


@dataclass
class EvalCommand:
    """Evaluate a saved prompt on a dataset split.

    Attributes:
        prompt: the prompt directory.
        backbone: the frozen model (default: the one the prompt was trained on).
        data: the dataset.
        split: the split to evaluate ("train", "val" or "test").
        class_split: "all", "base" or "new" (the halves of base-to-new).
        task: the task to evaluate, of a prompt bank or a multi-task prompt.
    """

    prompt: str = ""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    split: str = "test"
    class_split: str = "all"
    task: str | None = None

    def validate(self) -> None:
        _require_prompt(self.prompt)
        if self.class_split not in CLASS_SPLITS:
            raise OptionError(f"--class_split must be 'all', 'base' or 'new', not {self.class_split!r}")
        self.backbone.validate()
        self.data.validate()


@dataclass
class PredictCommand:
    """Classify images with a saved prompt, or zero-shot from class names.

    Attributes:
        prompt: a prompt directory, or a prompt bank / multi-task prompt with ``task``.
        task: the task(s) to predict, comma-separated (a prompt bank or a multi-task prompt): each image is
            encoded once for all of them.
        classes: zero-shot instead: comma-separated class names.
        template: the zero-shot template, with {} for the class name.
        backbone: the frozen model (default: the prompt's, or the bundled one for zero-shot).
        topk: how many of the best classes to print per image.
        json: print JSON with every class probability instead.
        batch_size: images per forward pass.
    """

    prompt: str | None = None
    task: str | None = None
    classes: str | None = None
    template: str = "a photo of a {}."
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    topk: int = 5
    json: bool = False
    batch_size: int = 64

    def validate(self) -> None:
        if (self.prompt is None) == (self.classes is None):
            raise OptionError("give either --prompt DIR or --classes (zero-shot), not both")
        if self.topk < 1:
            raise OptionError(f"--topk must be >= 1, not {self.topk}")
        if self.batch_size < 1:
            raise OptionError(f"--batch_size must be >= 1, not {self.batch_size}")
        if self.classes is not None and not self.class_names():
            raise OptionError("--classes needs at least one class name")
        if self.task is not None and (self.prompt is None or not self.tasks()):
            raise OptionError("--task names task(s) of --prompt (a prompt bank or multi-task prompt), e.g. --task a")
        self.backbone.validate()

    def class_names(self) -> list[str]:
        return [c.strip() for c in (self.classes or "").split(",") if c.strip()]

    def tasks(self) -> list[str]:
        return [t.strip() for t in (self.task or "").split(",") if t.strip()]


@dataclass
class InterpretCommand:
    """Nearest vocabulary words of each learned context vector.

    Attributes:
        prompt: the prompt directory.
        backbone: the frozen model (default: the one the prompt was trained on).
        k: neighbours per vector.
    """

    prompt: str = ""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    k: int = 3

    def validate(self) -> None:
        _require_prompt(self.prompt)
        if self.k < 1:
            raise OptionError(f"--k must be >= 1, not {self.k}")
        self.backbone.validate()


@dataclass
class DemoCommand:
    """Every method on the built-in benchmark with the bundled tiny CLIP (offline).

    Attributes:
        out: the demo's run directory.
        seeds: one run per seed.
        methods: the demo rows to run (default: one row per method family; [all]: every row).
        shots: K images per class for the few-shot table.
        view: the few-shot view of the benchmark: colours (default), shapes or pairs.
        overwrite: replace an existing demo run in ``out``.
    """

    out: str = "runs/demo"
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    methods: list[str] | None = None
    shots: int = 16
    view: str | None = None
    overwrite: bool = False

    def validate(self) -> None:
        if self.shots < 0:
            raise OptionError(f"--shots must be >= 0 (0: all images), not {self.shots}")
        if not self.seeds:
            raise OptionError("--seeds is empty: give at least one seed, e.g. --seeds [1]")


@dataclass
class BankCommand:
    """Gather separately trained prompts into one prompt bank (one backbone, named prompts).

    Attributes:
        prompts: task name -> prompt directory, e.g. '{colour: runs/a/seed1/prompt, shape: runs/b/seed1/prompt}'.
        out: the bank directory to write.
        backbone: the frozen model (default: the one the prompts were trained on).
    """

    prompts: dict[str, str] = field(default_factory=dict)
    out: str = ""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)

    def validate(self) -> None:
        if not self.prompts:
            raise OptionError("--prompts is empty: give task names and prompt directories, e.g. '{colour: DIR}'")
        if not self.out:
            raise OptionError("--out is required: the bank directory to write")
        if Path(self.out).exists() and any(Path(self.out).iterdir()):
            raise OptionError(f"--out {self.out} exists and is not empty: choose a new directory")
        self.backbone.validate()


@dataclass
class DataCommand:
    """Check benchmark datasets under a root: what is missing and where to get it (nothing is downloaded).

    Attributes:
        root: the datasets root (CoOp's $DATA layout, see docs/datasets.md).
    """

    root: str = ""

    def validate(self) -> None:
        if not self.root:
            raise OptionError("--root is required: the folder that holds the dataset folders (CoOp's $DATA)")


@dataclass
class IncontextCommand:
    """In-context visual prompting: example pairs and queries on 2x2 canvases, the answer filled by an inpainter.

    Attributes:
        examples: example input images.
        outputs: their outputs, one per example: a black/white mask (segmentation), a mask whose white
            pixels' bounding box is the box (detection), an image (colourisation, image).
        queries: the query images.
        task: segmentation, detection, colourisation or image (any image-to-image task).
        model: the inpainter: vlprompt/tiny-canvas (bundled), a folder saved by vlprompt, or the authors'
            MAE-VQGAN checkpoint (.pth).
        arch: the MAE architecture of a .pth checkpoint (mae_vit_large_patch16, ...).
        targets: optional true outputs of the queries, to score the answers.
        out: folder for the filled canvases (canvas_<i>.png) and answers (answer_<i>.png).
        json: print the answers' numbers as JSON.
    """

    examples: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    task: str = "segmentation"
    model: str = "vlprompt/tiny-canvas"
    arch: str = "mae_vit_large_patch16"
    targets: list[str] | None = None
    out: str = "runs/incontext"
    json: bool = False

    def validate(self) -> None:
        from .incontext import TASKS

        if self.task not in TASKS:
            raise OptionError(f"--task must be one of {sorted(TASKS)}, not {self.task!r}")
        if not self.examples or not self.queries:
            raise OptionError("give --examples [a.png,...], --outputs [a_mask.png,...] and --queries [q.png,...]")


@dataclass
class MethodsCommand:
    """Every registered method: the command that trains it, its capabilities and its recipes.

    Attributes:
        json: print JSON (one object per method) instead of a table.
    """

    json: bool = False


def _require_prompt(prompt: str) -> None:
    if not prompt:
        raise OptionError("--prompt is required: a prompt directory (e.g. RUN/seed1/prompt)")


#: subcommand -> (config dataclass, help)
COMMAND_CONFIGS: dict[str, tuple[type, str]] = {
    "train": (ClassificationRun, "train prompts over seeds (few-shot, base-to-new)"),
    "czsl": (CZSLRun, "compositional zero-shot: train on seen pairs, test in the closed / open world"),
    "multitask": (MultiTaskRun, "several few-shot tasks at once (SoftCPT), or a method once per task"),
    "eval": (EvalCommand, "evaluate a saved prompt"),
    "predict": (PredictCommand, "predict the classes of images"),
    "interpret": (InterpretCommand, "interpret learned context vectors"),
    "bank": (BankCommand, "gather trained prompts into a prompt bank"),
    "demo": (DemoCommand, "run the built-in demo"),
    "bench": (BenchRun, "run a protocol over datasets, methods, shots and seeds (paper-style tables)"),
    "data": (DataCommand, "check benchmark datasets: `vlprompt data check NAME|all --root DIR`"),
    "incontext": (IncontextCommand, "in-context visual prompting by inpainting (no training)"),
    "methods": (
        MethodsCommand,
        "list the methods: command, capabilities, recipes (`vlprompt train --method X --help`)",
    ),
}
_METHOD_HELP = {
    "train": f"the method: {', '.join(methods_for(ClassNames))}",
    "czsl": f"the method: {', '.join(methods_for(PairSpace))}",
    "multitask": f"the method: {', '.join(methods_for(TaskSpace))}, or a single-task method run once per task "
    f"({', '.join(methods_for(ClassNames))})",
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="vlprompt",
        description="Prompt learning for CLIP-style models.",
        version=__version__,
        allow_abbrev=False,
        exit_on_error=False,
    )
    commands = parser.add_subcommands(dest="command")
    for name, (config, help_text) in COMMAND_CONFIGS.items():
        sub = ArgumentParser(description=(config.__doc__ or "").split("\n")[0], allow_abbrev=False, exit_on_error=False)
        sub.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of these options")
        sub.add_argument(DEBUG_FLAG, action="store_true", help="show the full traceback of an error")
        if name == "predict":
            sub.add_argument("images", nargs="+", help="image files")
        if name == "bench":
            sub.add_argument("protocol", choices=PROTOCOLS, help="the protocol: " + " | ".join(PROTOCOLS))
        if name == "data":
            sub.add_argument("action", choices=["check"], help="check: report what is missing")
            sub.add_argument("names", nargs="+", help="registry dataset names, or all")
        sub.add_class_arguments(config, None, as_group=False)
        if name in _METHOD_HELP:  # list only the methods of this command's protocol
            sub._option_string_actions["--method"].help = _METHOD_HELP[name]
        commands.add_subcommand(name, sub, help=help_text)
    return parser


#: Commands that train a registered method (``--method NAME``): ``--help`` with a method shows its options.
METHOD_COMMANDS = ("train", "czsl", "multitask")


def method_help(argv: list[str]) -> str | None:
    """``vlprompt train --method kgcoop --help``: the command's help, then the method's options, capabilities and
    recipes (None when ``argv`` asks for no help about a method)."""
    command = next((a for a in argv if a in COMMAND_CONFIGS), None)
    if command not in METHOD_COMMANDS or not {"--help", "-h"} & set(argv) or "--method" not in argv[:-1]:
        return None
    cls = method_class(argv[argv.index("--method") + 1])
    sub = build_parser()._subcommands_action._name_parser_map[command]
    return sub.format_help() + "\n" + describe_method(cls)


def describe_method(cls: type[PromptMethod]) -> str:
    """A method's options (type, default, range, docstring), capabilities, presets and template use, as text."""
    config = cls.Config
    docs: dict[str, str] = {}
    for klass in reversed(config.__mro__):
        docs |= {p.arg_name: p.description or "" for p in docstring_parser.parse(klass.__doc__ or "").params}
    hints = typing.get_type_hints(config)
    command = COMMAND_OF_LABELS.get(cls.label_kind, "train")
    lines = [f"{cls.name} options (`vlprompt {command} --method {cls.name} --method_options '{{name: value, ...}}'`, "
             "or method_options: in a --config YAML):"]  # fmt: skip
    for f in dataclasses.fields(config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        low, high, choices = (f.metadata.get(k) for k in ("low", "high", "choices"))
        limits = [f">= {low}"] if low is not None else []
        limits += [f"<= {high}"] if high is not None else []
        limits += [f"one of {list(choices)}"] if choices is not None else []
        kind = getattr(hints[f.name], "__name__", None) or str(hints[f.name])
        lines.append(f"  {f.name}: {kind} = {default!r}" + (f" ({', '.join(limits)})" if limits else ""))
        lines += textwrap.wrap(docs.get(f.name, ""), 100, initial_indent="      ", subsequent_indent="      ")
    flags = [k for k, v in cls.capabilities().items() if v]
    lines += ["", f"capabilities: {', '.join(flags) or 'none'}"]
    template = f"the dataset's hand template in option {cls.template_option!r}" if cls.template_option else "none"
    lines.append(f"template: {template}")
    lines.append("presets (--preset):" if cls.recipes else "presets: none (TrainConfig's defaults)")
    for key, recipe in cls.recipes.items():
        lines.append(f"  {preset_name(cls.name, key)}: {dict(recipe.train)}" + (
            f" epochs by shots {list(recipe.epochs_by_shots)}" if recipe.epochs_by_shots else ""))  # fmt: skip
        lines.append(f"      source: {recipe.source}")
    return "\n".join(lines) + "\n"


def cmd_methods(cfg: MethodsCommand, _: Any) -> int:
    rows = [
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


def _config(cls: type, namespace) -> Any:
    values = {k: v for k, v in vars(namespace).items() if k in {f.name for f in dataclasses.fields(cls)}}
    return cls(**values)


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
    from .evaluation import evaluate
    from .prompts import load_prompt

    cfg.validate()
    backbone = cfg.backbone.load(cfg.prompt)
    if cfg.task is not None:
        from .bank import load_task_method

        method = load_task_method(cfg.prompt, backbone, cfg.task)
    else:
        method = load_prompt(cfg.prompt, backbone)
    data = cfg.data.load(backbone.image_transform())
    if cfg.split not in data:
        raise DataError(f"--split {cfg.split!r} is not in the dataset (have {sorted(data)})")
    dataset = base_new_split(data[cfg.split], cfg.class_split)
    if list(dataset.classnames) != method.class_names():
        method.set_classes(backbone, dataset.classnames)
    metrics = evaluate(method, backbone, dataset, progress=True)
    summary = {"prompt": cfg.prompt, "split": cfg.split, "class_split": cfg.class_split, "n": len(dataset), **metrics}
    if cfg.task is not None:
        summary["task"] = cfg.task
    print(json.dumps(summary, indent=2))
    return 0


def cmd_predict(cfg: PredictCommand, namespace: Any) -> int:
    from .predict import Predictor, predict_tasks

    cfg.validate()
    backbone = cfg.backbone.load(cfg.prompt)
    images = list(namespace.images)
    if cfg.task is not None:
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


def cmd_demo(cfg: DemoCommand, _: Any) -> int:
    from .demo import run_demo

    cfg.validate()
    report = run_demo(cfg.out, list(cfg.seeds), cfg.methods, cfg.shots, cfg.overwrite, view=cfg.view)
    print(report["table"], end="")
    print(f"run directory: {cfg.out}")
    return 0


def cmd_bench(bench: BenchRun, namespace: Any) -> int:
    from .runs.bench import run_bench

    report = run_bench(namespace.protocol, bench)
    if dist.is_main():
        print(report["table"], end="")
        print(f"bench directory: {bench.out}")
    return 0


def cmd_data(cfg: DataCommand, namespace: Any) -> int:
    from .data.benchmarks import DATASETS, check_dataset, dataset_names

    cfg.validate()
    reports = [check_dataset(name, cfg.root) for name in dataset_names(namespace.names, tuple(DATASETS))]
    for report in reports:
        print(report.text())
    ready = sum(r.ok for r in reports)
    print(f"{ready} of {len(reports)} dataset(s) ready under {cfg.root} (docs/datasets.md says where to get each)")
    return 0 if ready == len(reports) else 1


def cmd_interpret(cfg: InterpretCommand, _: Any) -> int:
    from .prompts import load_prompt

    cfg.validate()
    backbone = cfg.backbone.load(cfg.prompt)
    method = load_prompt(cfg.prompt, backbone)
    if not method.has_context:
        raise OptionError(f"{method.name} has no context vectors to interpret")
    for i, words in enumerate(method.nearest_words(backbone, cfg.k)):
        print(f"ctx {i:>2}: " + ", ".join(f"{w} ({d:.3f})" for w, d in words))
    return 0


def cmd_bank(cfg: BankCommand, _: Any) -> int:
    from .bank import PromptBank

    cfg.validate()
    first = next(iter(cfg.prompts.values()))
    backbone = cfg.backbone.load(first)
    PromptBank.from_prompts(cfg.prompts, backbone).save(backbone, cfg.out)
    print(f"prompt bank of {len(cfg.prompts)} prompts ({', '.join(cfg.prompts)}): {cfg.out}")
    return 0


def cmd_incontext(cfg: IncontextCommand, _: Any) -> int:
    from .incontext import load_inpainter
    from .incontext.predict import predict_files

    cfg.validate()
    model = load_inpainter(cfg.model, cfg.arch)
    records = predict_files(model, cfg.task, cfg.examples, cfg.outputs, cfg.queries, cfg.out, cfg.targets)
    if cfg.json:
        print(json.dumps(records, indent=2))
        return 0
    for record in records:
        extra = ", ".join(f"{k}: {v}" for k, v in record.items() if k not in ("query", "canvas", "answer"))
        print(f"{record['query']} -> {record['answer']}" + (f" ({extra})" if extra else ""))
    print(f"filled canvases and answers in {cfg.out}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "czsl": cmd_czsl,
    "multitask": cmd_multitask,
    "demo": cmd_demo,
    "interpret": cmd_interpret,
    "bank": cmd_bank,
    "bench": cmd_bench,
    "data": cmd_data,
    "incontext": cmd_incontext,
    "methods": cmd_methods,
}


def _bool_flags(cls: type, prefix: str = "--") -> set[str]:
    """The option strings of every boolean field of a config dataclass (nested ones included)."""
    flags = set()
    for name, hint in typing.get_type_hints(cls).items():
        if name not in {f.name for f in dataclasses.fields(cls)}:
            continue
        if dataclasses.is_dataclass(hint):
            flags |= _bool_flags(hint, f"{prefix}{name}.")
        elif hint is bool or set(typing.get_args(hint)) == {bool, type(None)}:
            flags.add(prefix + name)
    return flags


def expand_bare_flags(argv: list[str]) -> list[str]:
    """``--flag`` with no value after it means ``--flag true`` for boolean options."""
    command = next((a for a in argv if a in COMMAND_CONFIGS), None)
    if command is None:
        return argv
    flags = _bool_flags(COMMAND_CONFIGS[command][0])
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        following = argv[i + 1] if i + 1 < len(argv) else None
        if arg in flags and (following is None or following.lower() not in BOOL_WORDS):
            out.append("true")
    return out


def _list_flags(cls: type, prefix: str = "--") -> set[str]:
    """The option strings of every list field of a config dataclass (top level)."""
    hints = typing.get_type_hints(cls)
    lists = set()
    for f in dataclasses.fields(cls):
        args = {typing.get_origin(a) or a for a in (typing.get_args(hints[f.name]) or (hints[f.name],))}
        if typing.get_origin(hints[f.name]) is list or list in args:
            lists.add(prefix + f.name)
    return lists


#: Commands whose list options take plain values, and the positional words those values stop at.
_PLAIN_LISTS = {"bench": set(PROTOCOLS)}


def expand_list_values(argv: list[str]) -> list[str]:
    """``vlprompt bench --methods coop cocoop`` (plain values after a list option): ``--methods [coop, cocoop]``."""
    command = next((a for a in argv if a in COMMAND_CONFIGS), None)
    if command not in _PLAIN_LISTS:
        return argv
    flags, stop = _list_flags(COMMAND_CONFIGS[command][0]), _PLAIN_LISTS[command]
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] in flags:
            values = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("--") and argv[i + 1] not in stop:
                values.append(argv[i + 1])
                i += 1
            if len(values) == 1 and (values[0].startswith("[") or values[0].lower() == "null"):
                out += values
            elif values:
                out.append("[" + ", ".join(values) + "]")
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vlprompt`` console script.

    A bad option or input (a :class:`~vlprompt.errors.VlpromptError`, an option jsonargparse rejects, or
    a file-system error) is one line on stderr and exit code 2; any other exception is unexpected: one
    line naming its type, a hint to rerun with ``--debug``, and exit code 1. ``--debug`` (anywhere on
    the command line) shows the traceback instead. Ctrl-C is exit code 130.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    argv = [a for a in argv if a != DEBUG_FLAG]
    command = next((a for a in argv if a in COMMAND_CONFIGS), None)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_third_party_logs(debug)
    prog = f"vlprompt {command}" if command else "vlprompt"
    try:
        help_text = method_help(argv)
        if help_text is not None:
            print(help_text, end="")
            return 0
        parser = build_parser()
        try:
            namespace = parser.parse_args(expand_list_values(expand_bare_flags(argv)))
        except ArgumentError as err:
            if debug:
                raise
            print(f"{prog}: error: {parse_error_message(str(err))}", file=sys.stderr)
            print(f"(`{prog} --help` lists the options)", file=sys.stderr)
            return 2
        dist.init_from_env()
        sub = namespace[command]
        config = _config(COMMAND_CONFIGS[command][0], parser.instantiate(namespace)[command])
        return COMMANDS[command](config, sub)
    except Exception as err:  # noqa: BLE001 - every failure is one message; --debug shows the traceback
        if debug:
            raise
        code, message = describe_error(err)
        print(f"{prog}: error: {message}", file=sys.stderr)
        if code != 2:
            print(f"(an unexpected error: rerun with {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted (a run continues where it stopped with --resume true)", file=sys.stderr)
        return 130


def describe_error(err: Exception) -> tuple[int, str]:
    """(exit code, one-line message): 2 for bad options or inputs, 1 for anything unexpected.

    Bad input is a :class:`~vlprompt.errors.VlpromptError` (or a file-system error: a missing file, a
    full disk, no permission); any other exception, a plain ``ValueError`` from torch included, is a bug
    or a failure we did not foresee, so its type is named and ``--debug`` shows where it came from.
    """
    if isinstance(err, VlpromptError):
        return 2, str(err)
    if isinstance(err, OSError):
        return 2, os_error_message(err)
    lines = str(err).strip().splitlines()
    if not lines:
        return 1, type(err).__name__
    more = " ..." if len(lines) > 1 else ""  # the rest is in the --debug traceback
    return 1, f"{type(err).__name__}: {lines[0]}{more}"


def os_error_message(err: OSError) -> str:
    """A file-system error as one line: what failed, on which file, and what to do."""
    what = err.strerror or str(err)
    where = f" ({err.filename})" if err.filename else ""
    hint = {
        errno.ENOSPC: "free some space or choose another --out; files written before are unchanged",
        errno.EDQUOT: "free some space or choose another --out; files written before are unchanged",
        errno.EACCES: "choose a folder you can write to (--out) or fix its permissions",
        errno.EPERM: "choose a folder you can write to (--out) or fix its permissions",
        errno.EROFS: "the file system is read-only: choose another --out",
    }.get(err.errno)
    return f"{what}{where}" + (f": {hint}" if hint else "")


def parse_error_message(message: str) -> str:
    """jsonargparse's message for a bad value, shortened to the flag, the expected types and the value."""
    key = re.match(r'Parser key "([^"]+)":', message)
    if not key:
        return message.strip()
    expected = re.findall(r"Expected a <class '(\w+)'>", message)
    given = re.search(r"Given value: (.*)$|Got value: (.*)$", message, re.MULTILINE)
    names = [
        {"NoneType": "null", "int": "an integer", "float": "a number", "str": "a string"}.get(t, t) for t in expected
    ]
    value = next((g for g in given.groups() if g is not None), "") if given else ""
    names = [n for n in names if n != "null"] or names  # every override may be null: not worth saying
    if not names:
        return f"--{key.group(1)}: " + " ".join(message[key.end() :].split())
    return f"--{key.group(1)}: expected {' or '.join(dict.fromkeys(names))}, got {value!r}"


class _HideOpenClipInfo(logging.Filter):
    """Drops open_clip's INFO lines (it logs every model it builds on the root logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}open_clip{os.sep}" not in record.pathname


def quiet_third_party_logs(debug: bool) -> None:
    """Hide open_clip's INFO lines unless ``--debug`` asks for everything."""
    for handler in logging.getLogger().handlers:
        for f in [f for f in handler.filters if isinstance(f, _HideOpenClipInfo)]:
            handler.removeFilter(f)
        if not debug:
            handler.addFilter(_HideOpenClipInfo())


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build_parser", "expand_bare_flags", "main"]
