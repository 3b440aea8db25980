"""The ``vlprompt`` command line, generated from the typed run and command configs (jsonargparse).

Every subcommand's options are the fields of one dataclass (``ClassificationRun`` for ``train``,
``CZSLRun`` for ``czsl``, the small command configs below for the rest), so the CLI, YAML files and
the Python API take the same options; boolean options also work as bare flags (``--json``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

from . import __version__
from . import distributed as dist
from .backbones import BackboneError
from .data import DataError, base_new_split
from .labels import ClassNames, LabelSpaceError, PairSpace
from .methods import methods_for
from .prompts import PromptFileError
from .runs import BackboneConfig, ClassificationRun, CZSLRun, DataConfig, run_classification, run_czsl

log = logging.getLogger("vlprompt")
BOOL_WORDS = {"true", "false", "yes", "no", "1", "0", "null"}


@dataclass
class EvalCommand:
    """Evaluate a saved prompt on a dataset split.

    Attributes:
        prompt: the prompt directory.
        backbone: the frozen model (default: the one the prompt was trained on).
        data: the dataset.
        split: the split to evaluate ("train", "val" or "test").
        class_split: "all", "base" or "new" (the halves of base-to-new).
    """

    prompt: str = ""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    split: str = "test"
    class_split: str = "all"


@dataclass
class PredictCommand:
    """Classify images with a saved prompt, or zero-shot from class names.

    Attributes:
        prompt: a prompt directory.
        classes: zero-shot instead: comma-separated class names.
        template: the zero-shot template, with {} for the class name.
        backbone: the frozen model (default: the prompt's, or the bundled one for zero-shot).
        topk: how many of the best classes to print per image.
        json: print JSON with every class probability instead.
        batch_size: images per forward pass.
    """

    prompt: str | None = None
    classes: str | None = None
    template: str = "a photo of a {}."
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    topk: int = 5
    json: bool = False
    batch_size: int = 64


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


#: subcommand -> (config dataclass, help)
COMMAND_CONFIGS: dict[str, tuple[type, str]] = {
    "train": (ClassificationRun, "train prompts over seeds (few-shot, base-to-new)"),
    "czsl": (CZSLRun, "compositional zero-shot: train on seen pairs, test in the closed / open world"),
    "eval": (EvalCommand, "evaluate a saved prompt"),
    "predict": (PredictCommand, "predict the classes of images"),
    "interpret": (InterpretCommand, "interpret learned context vectors"),
    "demo": (DemoCommand, "run the built-in demo"),
}
_METHOD_HELP = {
    "train": f"the method: {', '.join(methods_for(ClassNames))}",
    "czsl": f"the method: {', '.join(methods_for(PairSpace))}",
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="vlprompt", description="Prompt learning for CLIP-style models.", version=__version__, allow_abbrev=False
    )
    commands = parser.add_subcommands(dest="command")
    for name, (config, help_text) in COMMAND_CONFIGS.items():
        sub = ArgumentParser(description=(config.__doc__ or "").split("\n")[0], allow_abbrev=False)
        sub.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of these options")
        if name == "predict":
            sub.add_argument("images", nargs="+", help="image files")
        sub.add_class_arguments(config, None, as_group=False)
        if name in _METHOD_HELP:  # list only the methods of this command's protocol
            sub._option_string_actions["--method"].help = _METHOD_HELP[name]
        commands.add_subcommand(name, sub, help=help_text)
    return parser


def _config(cls: type, namespace) -> Any:
    values = {k: v for k, v in vars(namespace).items() if k in {f.name for f in dataclasses.fields(cls)}}
    return cls(**values)


def cmd_train(run: ClassificationRun, _: Any) -> int:
    run_classification(run)
    return _print_results(run.out)


def cmd_czsl(run: CZSLRun, _: Any) -> int:
    run_czsl(run)
    return _print_results(run.out)


def _print_results(out: str) -> int:
    if dist.is_main():
        print((Path(out) / "results.md").read_text(), end="")
        print(f"run directory: {out}")
    return 0


def cmd_eval(cfg: EvalCommand, _: Any) -> int:
    from .evaluation import evaluate
    from .prompts import load_prompt

    backbone = cfg.backbone.load(cfg.prompt)
    method = load_prompt(cfg.prompt, backbone)
    data = cfg.data.load(backbone.image_transform())
    if cfg.split not in data:
        raise DataError(f"--split {cfg.split!r} is not in the dataset (have {sorted(data)})")
    dataset = base_new_split(data[cfg.split], cfg.class_split)
    if list(dataset.classnames) != method.class_names():
        method.set_classes(backbone, dataset.classnames)
    metrics = evaluate(method, backbone, dataset, progress=True)
    summary = {"prompt": cfg.prompt, "split": cfg.split, "class_split": cfg.class_split, "n": len(dataset), **metrics}
    print(json.dumps(summary, indent=2))
    return 0


def cmd_predict(cfg: PredictCommand, namespace: Any) -> int:
    from .predict import Predictor

    if (cfg.prompt is None) == (cfg.classes is None):
        raise ValueError("give either --prompt DIR or --classes (zero-shot), not both")
    if cfg.topk < 1:
        raise ValueError(f"--topk must be >= 1, not {cfg.topk}")
    backbone = cfg.backbone.load(cfg.prompt)
    if cfg.prompt is not None:
        predictor = Predictor.from_prompt(cfg.prompt, backbone, batch_size=cfg.batch_size)
    else:
        names = [c.strip() for c in cfg.classes.split(",") if c.strip()]
        if not names:
            raise ValueError("--classes needs at least one class name")
        predictor = Predictor.zero_shot(names, backbone, template=cfg.template, batch_size=cfg.batch_size)
    images = list(namespace.images)
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

    report = run_demo(cfg.out, list(cfg.seeds), cfg.methods, cfg.shots, cfg.overwrite, view=cfg.view)
    print(report["table"], end="")
    print(f"run directory: {cfg.out}")
    return 0


def cmd_interpret(cfg: InterpretCommand, _: Any) -> int:
    from .prompts import load_prompt

    backbone = cfg.backbone.load(cfg.prompt)
    method = load_prompt(cfg.prompt, backbone)
    if not method.has_context:
        raise ValueError(f"{method.name} has no context vectors to interpret")
    for i, words in enumerate(method.nearest_words(backbone, cfg.k)):
        print(f"ctx {i:>2}: " + ", ".join(f"{w} ({d:.3f})" for w, d in words))
    return 0


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "czsl": cmd_czsl,
    "demo": cmd_demo,
    "interpret": cmd_interpret,
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vlprompt`` console script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    namespace = parser.parse_args(expand_bare_flags(list(sys.argv[1:] if argv is None else argv)))
    dist.init_from_env()
    command = namespace.command
    sub = namespace[command]
    config_cls = COMMAND_CONFIGS[command][0]
    try:
        config = _config(config_cls, parser.instantiate(namespace)[command])
        return COMMANDS[command](config, sub)
    except (DataError, BackboneError, PromptFileError, LabelSpaceError, FileExistsError, ValueError) as err:
        print(f"vlprompt {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build_parser", "expand_bare_flags", "main"]
