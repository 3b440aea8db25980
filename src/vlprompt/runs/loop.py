"""The per-seed run loop every protocol shares: run directory, seeding, build, fit, save, tables."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml

from .. import distributed as dist
from ..backbones import Backbone
from ..data.images import LabeledImages
from ..engine import TrainConfig, fit
from ..engine.loggers import RunLoggers
from ..engine.schedules import canonical_schedule
from ..engine.trainer import Scorer
from ..errors import RunDirError
from ..evaluation import markdown_table, summarize
from ..evaluation.reports import write_results
from ..features import FeatureCache
from ..io import atomic_write_text
from ..labels import LabelSpace
from ..methods import PromptMethod, build_method, method_class
from ..prompts import load_prompt, save_pretrained
from ..rundir import check_run_dir, prepare_run_dir
from ..schema import read_yaml_file
from .config import RunConfig, check_seeds, moved_to_data, options_for_seed

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
#: Every ``TrainConfig`` field's default (a field added later is filled in when an older run resumes).
TRAIN_DEFAULTS = dataclasses.asdict(TrainConfig())
#: Metrics the tables know, in column order.
METRICS = ("accuracy", "mean_per_class_accuracy", "ece", "base", "new", "hm", "S", "U", "H", "AUC", "attr", "obj")


class Protocol:
    """What a protocol adds to :func:`run_seeds`: its data, its label space, its evaluation, its tables.

    Subclasses set ``command`` (the CLI command), ``label_kind`` (the label space its methods score)
    and ``group`` (the table's row keys besides the metrics), and implement the hooks below.
    """

    command: ClassVar[str]
    label_kind: ClassVar[type[LabelSpace]]
    group: ClassVar[tuple[str, ...]]
    #: the key under which a row reports the selected epoch's validation score (None: not reported).
    val_key: ClassVar[str | None] = None

    def __init__(self, run: RunConfig):
        self.run = run

    def shots(self) -> int:
        """K for the preset's recipe (0: not a few-shot protocol)."""
        return 0

    def validate(self) -> None:
        """Check the run's own options before any expensive work."""

    def prepare(self, backbone: Backbone, cache: FeatureCache) -> None:
        """Load the data once for all seeds."""

    def seed_data(self, seed: int, seed_dir: Path | None) -> tuple[LabeledImages, LabelSpace, Scorer | None]:
        """The training set, the label space to build the method on and the validation scorer."""
        raise NotImplementedError

    def validation_set(self) -> LabeledImages | None:
        """The held-out validation images of the seed :meth:`seed_data` last returned (None: none)."""
        return None

    def method_options(self) -> dict[str, Any]:
        """The method's options here: the recipe's, the user's on top (a protocol may add the dataset's template)."""
        return self.run.resolved_options()

    def check_options(self) -> None:
        """The method exists for this protocol and its options are valid (before any work)."""
        cls = method_class(self.run.method, self.label_kind)
        cls.Config.from_dict(self.method_options(), cls.name)

    def build_method(self, backbone: Backbone, labels: LabelSpace, seed: int | None = None) -> PromptMethod:
        """The run's method on ``labels`` (for ``seed``: ``{seed}`` in its options' text is that seed)."""
        return build_method(self.run.method, backbone, labels, options_for_seed(self.method_options(), seed))

    def check(self, method: PromptMethod) -> None:
        """Refuse a method (with these options) that cannot run this protocol."""

    def evaluate(self, method: PromptMethod, backbone: Backbone, keys: dict[str, Any]) -> list[dict[str, Any]]:
        """Result rows of a trained (or loaded) method; ``keys`` go into every row."""
        raise NotImplementedError

    def saved_labels(self, method: PromptMethod) -> LabelSpace:
        """The label space the saved prompt records."""
        return method.labels

    def prompt_extra(self, seed: int) -> dict[str, Any]:
        return {"seed": seed}

    def save(self, method: PromptMethod, backbone: Backbone, directory: Path, extra: dict[str, Any]) -> None:
        """Write the trained method (a prompt directory)."""
        save_pretrained(method, backbone, directory, extra=extra)

    def seed_record(self, rows: list[dict[str, Any]]) -> Any:
        """What a seed's results.json holds (its rows)."""
        return rows

    def finish(self, out: Path, rows: list[dict[str, Any]]) -> None:
        """Protocol-specific outputs after the tables (plots)."""


def run_seeds(
    run: RunConfig,
    protocol: Protocol,
    backbone: Backbone | None = None,
    cache: FeatureCache | None = None,
    progress: bool = True,
    prompt: str | None = None,
    seed_done: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Train and evaluate ``run.method`` once per seed (or evaluate the saved ``prompt`` once); ``seed_done`` is
    called after each seed (a sweep's overall progress).

    Writes ``config.yaml`` (replays the run), per seed ``seedN/{prompt/, metrics.jsonl, checkpoint.pt,
    results.json}``, and ``results.{json,md,csv}`` (mean ± std over seeds).
    """
    train_config = validate_run(run, protocol, prompt)
    record = run_record(run, train_config)
    check_run_dir(run.out, run.resume, run.overwrite)  # before any work; the directory is made once inputs load
    check_config_unchanged(Path(run.out), record, run.resume, protocol.command)
    backbone = backbone or run.backbone.load(prompt)
    cache = cache or FeatureCache()
    protocol.prepare(backbone, cache)
    out = prepare_out_dir(run.out, run.resume, run.overwrite, protocol.command)
    write_config(out, record, run.resume, protocol.command)
    rows: list[dict[str, Any]] = []
    if prompt:
        method = load_prompt(prompt, backbone)
        rows = protocol.evaluate(method, backbone, {"method": method.name, "prompt": prompt})
    for seed in [] if prompt else run.seeds:
        rows += _run_seed(run, protocol, train_config, seed, out, backbone, cache, progress)
        if seed_done is not None:
            seed_done()
    if dist.is_main():
        write_tables(out, rows, list(protocol.group))
        protocol.finish(out, rows)
    return rows


def _run_seed(run, protocol, train_config: TrainConfig, seed: int, out: Path, backbone, cache, progress):
    seed_dir = out / f"seed{seed}"
    if dist.is_main():  # the other ranks write nothing there (and on a disk of their own the run has no folder)
        seed_dir.mkdir(exist_ok=True)
    train_set, labels, scorer = protocol.seed_data(seed, seed_dir if dist.is_main() else None)
    torch.manual_seed(seed)
    method = protocol.build_method(backbone, labels, seed)
    protocol.check(method)
    method.setup(backbone, train_set, cache)
    fit_info: dict[str, Any] = {}
    seed_config = dataclasses.replace(train_config, seed=seed)
    with RunLoggers(train_config.loggers, seed_dir) as loggers:
        if method.learns:
            result = fit(
                method,
                backbone,
                train_set,
                seed_config,
                scorer=scorer,
                run_dir=seed_dir,
                resume=run.resume,
                cache=cache,
                progress=progress,
                loggers=loggers,
            )
            fit_info = {"selected_epoch": result.selected_epoch}
            if protocol.val_key:
                fit_info[protocol.val_key] = result.selected_score
            fit_info["train_seconds"] = round(result.seconds, 2)
        val_set = protocol.validation_set()
        if val_set is not None:
            method.tune(backbone, val_set, cache)
        rows = protocol.evaluate(method, backbone, {"method": run.method, "seed": seed, **fit_info})
        loggers.log_end(run_record(run, seed_config), rows)
    if dist.is_main():
        method.set_classes(backbone, protocol.saved_labels(method))
        protocol.save(method, backbone, seed_dir / "prompt", protocol.prompt_extra(seed))
        atomic_write_text(seed_dir / "results.json", json.dumps(protocol.seed_record(rows), indent=2))
    return rows


def validate_run(run: RunConfig, protocol: Protocol, prompt: str | None = None) -> TrainConfig:
    """Every check that needs no data or model, so that a bad option fails before any work."""
    if not prompt:
        protocol.check_options()
        check_seeds(run.seeds)
    train_config = run.train_config(protocol.shots())
    train_config.validate()
    protocol.validate()
    run.backbone.validate()
    return train_config


def run_record(run: RunConfig, train_config: TrainConfig) -> dict[str, Any]:
    """The run as written to config.yaml: every option, with the recipe resolved field by field."""
    record = dataclasses.asdict(run)
    record["train"] = dataclasses.asdict(train_config)
    return record


def prepare_out_dir(out: str | Path, resume: bool, overwrite: bool, command: str | None = None) -> Path:
    """Create the run directory (see :func:`vlprompt.rundir.prepare_run_dir`: only marked runs are overwritten)."""
    return prepare_run_dir(out, resume, overwrite, command)


def write_config(
    run_dir: Path, config: dict[str, Any], resume: bool = False, command: str = "", added: dict[str, Any] | None = None
) -> None:
    """Write ``config.yaml`` (``vlprompt COMMAND --config`` replays it); a resumed run's must not change (see
    :func:`check_config_unchanged` for ``added``)."""
    path = run_dir / CONFIG_FILE
    if resume and path.is_file():
        check_config_unchanged(run_dir, config, resume, command.split()[0] if command else "", added)
        return
    if dist.is_main():
        header = f"# replay: vlprompt {command} --config {path} --out NEW_DIR\n" if command else ""
        atomic_write_text(path, header + yaml.safe_dump(config, sort_keys=False))


def check_config_unchanged(
    run_dir: Path, config: dict[str, Any], resume: bool, command: str = "", added: dict[str, Any] | None = None
) -> None:
    """A resumed run's options must be those in its ``config.yaml`` (of ``command``: written by an older version,
    its moved options are read where they are now, and the options ``added`` since at the values it ran with)."""
    path = run_dir / CONFIG_FILE
    if not (resume and path.is_file()):
        return
    saved = read_yaml_file(path, RunDirError)
    if not isinstance(saved, dict):
        raise RunDirError(f"cannot resume {run_dir}: {path} does not hold a run config")
    ignore = {"resume", "overwrite", "out"}  # a moved or copied run directory resumes too
    saved = {**{k: v for k, v in (added or {}).items() if k in config}, **saved}
    saved = _absent_as_unset(moved_to_data(command, saved), config)
    saved, config = _old_names_resolved(saved), _old_names_resolved(config)
    changed = sorted(k for k in set(saved) | set(config) if k not in ignore and saved.get(k) != config.get(k))
    if changed:
        what = "; ".join(_differences(saved, config, changed))
        raise RunDirError(
            f"cannot resume {run_dir}: its config differs in {changed} ({what}): resume with the options it was "
            "written with, or start a new --out"
        )


def _absent_as_unset(saved: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with the options it lacks (added since it was written) read as unset where ``given`` leaves them
    unset (None: a bench's ``--train`` overrides), at any depth."""
    out = dict(saved)
    for key, value in given.items():
        if value is None and key not in out:
            out[key] = None
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _absent_as_unset(out[key], value)
    return out


def _differences(saved: dict[str, Any], given: dict[str, Any], keys: list[str], prefix: str = "") -> list[str]:
    """``key: X written, Y given`` for each of ``keys`` that differs, nested options by their dotted names."""
    out = []
    for key in keys:
        old, new = saved.get(key, "(absent)"), given.get(key, "(absent)")
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            out += _differences(old, new, sorted(set(old) | set(new)), f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}: {_short(old)} written, {_short(new)} given")
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _old_names_resolved(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as this version writes it: an old schedule name resolved (a run saved with "coop" resumes as
    "dassl-cosine"), and ``TrainConfig`` fields added since it was saved at their defaults (which it ran with)."""
    train = record.get("train")
    if not isinstance(train, dict):
        return record
    train = {**TRAIN_DEFAULTS, **train}
    if isinstance(train.get("schedule"), str):
        train["schedule"] = canonical_schedule(train["schedule"])
    return {**record, "train": train}


def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    return [m for m in METRICS if any(m in r for r in rows)]


def write_tables(out: Path, rows: list[dict[str, Any]], group: list[str]) -> str:
    """results.json (per seed + summary), results.md and results.csv (mean ± std over seeds)."""
    metrics = metric_names(rows)
    summary = summarize(rows, group, metrics)
    table = markdown_table(summary, group, metrics)
    write_results(out, table, summary, per_seed=rows)
    return table
