"""The ``vlprompt`` command line: typed configs from YAML files and flags (jsonargparse)."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import field, fields, make_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from . import __version__
from .backbones import Backbone, BackboneError
from .data import DataError, base_new_split, load_rgb
from .engine import PRESETS, TrainConfig
from .engine import distributed as dist
from .evaluation import evaluate
from .methods import COMPOSITIONAL_METHODS, METHODS, ZeroShot, ZeroShotConfig
from .prompts import PromptFileError, load_prompt, read_prompt_config
from .runs import BackboneConfig, ClassificationRun, DataConfig, merged_train_config, run_classification

log = logging.getLogger("vlprompt")
COMPOSITIONAL = [m.name for m in COMPOSITIONAL_METHODS]

_hints = get_type_hints(TrainConfig)
#: TrainConfig with every field optional: only the fields a user sets override the preset.
TrainOverrides = make_dataclass(
    "TrainOverrides",
    [(f.name, _hints[f.name] | None, field(default=None)) for f in fields(TrainConfig)],
)


def _common(parser: ArgumentParser) -> None:
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options")


def _backbone_args(parser: ArgumentParser, optional: bool = False) -> None:
    default = BackboneConfig(name=None) if optional else BackboneConfig()  # type: ignore[arg-type]
    parser.add_argument(
        "--backbone",
        type=BackboneConfig,
        default=default,
        help="the frozen model" + (" (default: the one the prompt was trained on)" if optional else ""),
    )


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="vlprompt", description="Prompt learning for CLIP-style models.", version=__version__)
    commands = parser.add_subcommands(dest="command")

    train = ArgumentParser(description="Train a method on a dataset over several seeds (few-shot, base-to-new).")
    _common(train)
    _backbone_args(train)
    train.add_argument("--data", type=DataConfig, default=DataConfig())
    train.add_argument("--method", type=str, default="coop", help=f"one of {', '.join(sorted(METHODS))}")
    train.add_argument("--method_options", type=dict[str, Any], default={}, help="method hyperparameters")
    train.add_argument(
        "--preset",
        type=str | None,
        default=None,
        help=f"training recipe: {', '.join(sorted(PRESETS))} (default: the method's own if any)",
    )
    train.add_argument("--train", type=TrainOverrides, default=TrainOverrides(), help="overrides of the recipe")
    train.add_argument("--seeds", type=list[int], default=[1, 2, 3])
    train.add_argument("--out", type=str, default="runs/train")
    train.add_argument("--resume", type=bool, default=False)
    train.add_argument("--overwrite", type=bool, default=False)
    train.add_argument("--feature_cache_dir", type=str | None, default=None)
    commands.add_subcommand("train", train, help="train prompts")

    ev = ArgumentParser(description="Evaluate a saved prompt on a dataset's test split.")
    _common(ev)
    ev.add_argument("--prompt", type=str, required=True, help="a prompt directory")
    _backbone_args(ev, optional=True)
    ev.add_argument("--data", type=DataConfig, default=DataConfig())
    ev.add_argument("--split", type=str, default="test")
    ev.add_argument("--classes", type=str, default="all", help="all, base or new (the base-to-new halves)")
    commands.add_subcommand("eval", ev, help="evaluate a saved prompt")

    pr = ArgumentParser(description="Classify images with a saved prompt, or zero-shot from class names.")
    _common(pr)
    pr.add_argument("images", nargs="+", help="image files")
    pr.add_argument("--prompt", type=str | None, default=None, help="a prompt directory")
    pr.add_argument(
        "--classes",
        type=str | None,
        default=None,
        help="zero-shot: comma-separated class names",
    )
    pr.add_argument("--template", type=str, default="a photo of a {}.")
    _backbone_args(pr, optional=True)
    pr.add_argument("--topk", type=int, default=5)
    pr.add_argument("--json", type=bool, default=False, help="print JSON with every class probability")
    commands.add_subcommand("predict", pr, help="predict the classes of images")

    cz = ArgumentParser(description="Compositional zero-shot: train on seen pairs, test in the closed / open world.")
    _common(cz)
    _backbone_args(cz, optional=True)
    cz.add_argument("--root", type=str, required=True, help="CZSL dataset root (MIT-States, UT-Zappos, C-GQA format)")
    cz.add_argument("--prompt", type=str | None, default=None, help="evaluate this saved prompt instead of training")
    cz.add_argument("--split", type=str, default="compositional-split-natural")
    cz.add_argument("--method", type=str, default="csp", help=f"one of {', '.join(sorted(COMPOSITIONAL))}")
    cz.add_argument("--method_options", type=dict[str, Any], default={})
    cz.add_argument("--preset", type=str, default="csp-mit-states", help="csp-mit-states, csp-ut-zappos, csp-cgqa")
    cz.add_argument("--train", type=TrainOverrides, default=TrainOverrides(), help="overrides of the recipe")
    cz.add_argument("--seeds", type=list[int], default=[1, 2, 3])
    cz.add_argument("--world", type=str, default="both", help="closed, open or both")
    cz.add_argument("--calibrate", type=bool, default=True, help="open world: feasibility calibration on val")
    cz.add_argument("--word_vectors", type=str, default="backbone", help="'backbone' or a GloVe text file")
    cz.add_argument("--glove_fallback", type=str, default="error", help="missing GloVe word: error, zeros, skip")
    cz.add_argument("--topk", type=int, default=1)
    cz.add_argument("--skip_bad_images", type=bool, default=False)
    cz.add_argument("--out", type=str, default="runs/czsl")
    cz.add_argument("--resume", type=bool, default=False)
    cz.add_argument("--overwrite", type=bool, default=False)
    commands.add_subcommand("czsl", cz, help="compositional zero-shot training and evaluation")

    dm = ArgumentParser(description="Every method on the built-in benchmark with the bundled tiny CLIP (offline).")
    _common(dm)
    dm.add_argument("--out", type=str, default="runs/demo")
    dm.add_argument("--seeds", type=list[int], default=[1, 2, 3])
    dm.add_argument("--methods", type=list[str] | None, default=None, help="a subset of the demo's methods")
    dm.add_argument("--shots", type=int, default=16)
    dm.add_argument(
        "--view", type=str | None, default=None, help="classification view: colours (default), shapes or pairs"
    )
    dm.add_argument("--overwrite", type=bool, default=False)
    commands.add_subcommand("demo", dm, help="run the built-in demo")

    it = ArgumentParser(description="Nearest vocabulary words to each learned context vector.")
    _common(it)
    it.add_argument("--prompt", type=str, required=True)
    _backbone_args(it, optional=True)
    it.add_argument("--k", type=int, default=3)
    commands.add_subcommand("interpret", it, help="interpret learned context vectors")
    return parser


def _load_backbone_for_prompt(cfg: Namespace, prompt_dir: str | None) -> Backbone:
    name, pretrained = cfg.backbone.name, cfg.backbone.pretrained
    if name is None and prompt_dir is not None:
        identity = read_prompt_config(prompt_dir)["backbone"]
        name = identity["model"]
        if str(identity.get("pretrained", "")).startswith("sha256:") or name.startswith("openai-format:"):
            raise BackboneError(
                f"{prompt_dir} was trained on weights from a local file ({name}); pass --backbone.name / "
                "--backbone.pretrained to say where that file is"
            )
        pretrained = identity.get("pretrained") if identity.get("pretrained") != "bundled" else None
    cfg_backbone = BackboneConfig(name=name or BackboneConfig.name, pretrained=pretrained, device=cfg.backbone.device)
    return cfg_backbone.load()


def cmd_train(cfg: Namespace) -> int:
    data = DataConfig(**vars(cfg.data))
    preset_name = cfg.preset or (cfg.method if cfg.method in PRESETS else None)
    overrides = {k: v for k, v in vars(cfg.train).items()}
    run = ClassificationRun(
        backbone=BackboneConfig(**vars(cfg.backbone)),
        data=data,
        method=cfg.method,
        method_options=dict(cfg.method_options),
        train=merged_train_config(preset_name, data.shots, overrides),
        seeds=list(cfg.seeds),
        out=cfg.out,
        resume=cfg.resume,
        overwrite=cfg.overwrite,
        feature_cache_dir=cfg.feature_cache_dir,
    )
    rows = run_classification(run)
    if dist.is_main():
        print((Path(run.out) / "results.md").read_text(), end="")
        print(f"run directory: {run.out}")
    return 0 if rows else 1


def cmd_eval(cfg: Namespace) -> int:
    backbone = _load_backbone_for_prompt(cfg, cfg.prompt)
    method = load_prompt(cfg.prompt, backbone)
    data = DataConfig(**vars(cfg.data)).load(backbone.image_transform())
    if cfg.split not in data:
        raise DataError(f"split {cfg.split!r} not in the dataset (have {sorted(data)})")
    dataset = base_new_split(data[cfg.split], cfg.classes)
    if dataset.classnames != method.classes:
        method.set_classes(backbone, dataset.classnames)
    metrics = evaluate(method, backbone, dataset)
    summary = {"prompt": cfg.prompt, "split": cfg.split, "classes": cfg.classes, "n": len(dataset), **metrics}
    print(json.dumps(summary, indent=2))
    return 0


def _split_classes(classes: str) -> list[str]:
    names = [c.strip() for c in classes.split(",") if c.strip()]
    if not names:
        raise ValueError("--classes needs at least one class name")
    return names


@torch.no_grad()
def cmd_predict(cfg: Namespace) -> int:
    if (cfg.prompt is None) == (cfg.classes is None):
        raise ValueError("give either --prompt DIR or --classes (zero-shot), not both")
    backbone = _load_backbone_for_prompt(cfg, cfg.prompt)
    if cfg.prompt is not None:
        method = load_prompt(cfg.prompt, backbone)
    else:
        method = ZeroShot(backbone, _split_classes(cfg.classes), ZeroShotConfig(templates=[cfg.template]))
    method.eval()
    transform = backbone.image_transform()
    pixels = torch.stack([transform(load_rgb(p)) for p in cfg.images])
    feats = method.image_features(backbone, pixels)
    probs = method(backbone, feats).softmax(dim=-1).cpu()
    names = method.class_names()
    k = min(cfg.topk, len(names))
    if cfg.json:
        out = [{"image": p, "probabilities": dict(zip(names, map(float, row)))} for p, row in zip(cfg.images, probs)]
        print(json.dumps(out, indent=2))
        return 0
    for path, row in zip(cfg.images, probs):
        values, ids = row.topk(k)
        print(path)
        for rank, (v, i) in enumerate(zip(values, ids), 1):
            print(f"  {rank:>2}. {names[int(i)]:<30} {100 * float(v):6.2f}%")
    return 0


def cmd_czsl(cfg: Namespace) -> int:
    from .czsl_runs import CZSLRun, run_czsl

    options = {k: v for k, v in vars(cfg).items() if k not in ("config", "backbone", "train", "preset", "__path__")}
    backbone = _load_backbone_for_prompt(cfg, cfg.prompt)
    run = CZSLRun(
        backbone=BackboneConfig(backbone.identity.model, cfg.backbone.pretrained, cfg.backbone.device),
        train=merged_train_config(cfg.preset, 0, vars(cfg.train)),
        **{k: (dict(v) if isinstance(v, Namespace) else v) for k, v in options.items()},
    )
    run_czsl(run, backbone)
    if dist.is_main():
        print((Path(run.out) / "results.md").read_text(), end="")
        print(f"run directory: {run.out}")
    return 0


def cmd_demo(cfg: Namespace) -> int:
    from .demo import run_demo

    report = run_demo(cfg.out, list(cfg.seeds), cfg.methods, cfg.shots, cfg.overwrite, view=cfg.view)
    print(report["table"], end="")
    print(f"run directory: {cfg.out}")
    return 0


def cmd_interpret(cfg: Namespace) -> int:
    backbone = _load_backbone_for_prompt(cfg, cfg.prompt)
    method = load_prompt(cfg.prompt, backbone)
    if not hasattr(method, "nearest_words"):
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vlprompt`` console script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    cfg = parser.parse_args(argv)
    dist.init_from_env()
    command = cfg.command
    try:
        return COMMANDS[command](cfg[command])
    except (DataError, BackboneError, PromptFileError, FileExistsError, ValueError) as err:
        print(f"vlprompt {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build_parser", "main"]
