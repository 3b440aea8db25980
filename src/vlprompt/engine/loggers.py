"""Training logs, written by the libraries themselves: JSON lines, CSV, TensorBoard and Weights & Biases.

``--train.loggers`` picks any of :data:`LOGGERS`. Each logger gets the same records from the training loop:

- per optimizer step: ``{"step", "epoch", "lr", "loss", "train_acc"}`` (the step's global means over every
  process; the loss is the method's total loss: methods report no separate terms);
- per epoch: the epoch record of ``metrics.jsonl`` (``epoch``, ``step``, ``lr``, ``loss``, ``train_acc``,
  ``val_score`` when validated, ``seconds``);
- at the end: the run's hyperparameters (the resolved config) and its result rows.

Only rank 0 logs. A resumed run continues the same log from the checkpointed step: the files keep the records
up to it, TensorBoard writes into the same folder with ``purge_step`` there, W&B resumes the run whose id is
stored in the run directory (``wandb-run-id``; ``resume="allow"``; ``WANDB_MODE=offline`` needs no network).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .. import distributed as dist
from ..errors import OptionError
from ..io import atomic_write_text

#: logger name -> the package it needs (and the extra that installs it), None for the standard library.
LOGGERS: dict[str, str | None] = {"jsonl": None, "csv": None, "tensorboard": "tensorboard", "wandb": "wandb"}
EPOCHS_FILE, STEPS_FILE = "metrics", "steps"  # + ".jsonl" / ".csv"
STEP_FIELDS = ("step", "epoch", "lr", "loss", "train_acc")
EPOCH_FIELDS = ("epoch", "step", "lr", "loss", "train_acc", "val_score", "seconds")
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb-run-id"


def check_loggers(names: Sequence[str]) -> None:
    """Known names, listed once, whose packages are installed (a one-line error naming the extra otherwise)."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise OptionError(f"--train.loggers must be a list (of {', '.join(LOGGERS)}), not {names!r}")
    for name in names:
        if name not in LOGGERS:
            raise OptionError(f"--train.loggers: unknown logger {name!r} (choose from {', '.join(LOGGERS)})")
        if list(names).count(name) > 1:
            raise OptionError(f"--train.loggers lists {name!r} twice")
        package = LOGGERS[name]
        if package and importlib.util.find_spec(package) is None:
            raise OptionError(f"--train.loggers {name} needs the {package} package: pip install 'vlprompt[{package}]'")


class Logger:
    """One destination. ``start`` comes first: the step a resumed run continues from (0: a new log)."""

    def start(self, history: list[dict[str, Any]], step: int) -> None: ...

    def log_step(self, record: dict[str, Any]) -> None: ...

    def log_epoch(self, record: dict[str, Any]) -> None: ...

    def log_end(self, hparams: dict[str, Any], results: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class RunLoggers(Logger):
    """The loggers named in ``names`` for ``run_dir`` (none without a run directory, or off rank 0)."""

    def __init__(self, names: Iterable[str], run_dir: str | Path | None):
        check_loggers(list(names))
        factories = {"jsonl": _JsonLines, "csv": _Csv, "tensorboard": _TensorBoard, "wandb": _Wandb}
        self.loggers: list[Logger] = []
        if run_dir is not None and dist.is_main():
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self.loggers = [factories[n](Path(run_dir)) for n in names]
        self.started = False

    def start(self, history: list[dict[str, Any]], step: int) -> None:
        self.started = True
        for logger in self.loggers:
            logger.start(history, step)

    def log_step(self, record: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_step(record)

    def log_epoch(self, record: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_epoch(record)

    def log_end(self, hparams: dict[str, Any], results: list[dict[str, Any]]) -> None:
        """The hyperparameters and result rows (a run that never trained starts its logs here)."""
        if not self.started:
            self.start([], 0)
        for logger in self.loggers:
            logger.log_end(hparams, results)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []

    def __enter__(self) -> RunLoggers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Records(Logger):
    """``metrics.<ext>`` (one record per epoch) and ``steps.<ext>`` (one per step); nothing at the end
    (``config.yaml`` and ``results.json`` hold the hyperparameters and results)."""

    ext = ""

    def __init__(self, run_dir: Path):
        self.epochs, self.steps = run_dir / f"{EPOCHS_FILE}.{self.ext}", run_dir / f"{STEPS_FILE}.{self.ext}"

    def start(self, history: list[dict[str, Any]], step: int) -> None:
        """A new log removes the old files; a resumed one keeps the records up to ``step`` (and the
        checkpointed epochs), dropping what a crash left after them."""
        if step == 0 and not history:
            self.epochs.unlink(missing_ok=True)
            self.steps.unlink(missing_ok=True)
            return
        kept = [r for r in self.read(self.steps) if isinstance(r.get("step"), int | float) and r["step"] <= step]
        self.rewrite(self.steps, kept, STEP_FIELDS)
        self.rewrite(self.epochs, history, EPOCH_FIELDS)

    def log_step(self, record: dict[str, Any]) -> None:
        self.append(self.steps, record, STEP_FIELDS)

    def log_epoch(self, record: dict[str, Any]) -> None:
        self.append(self.epochs, record, EPOCH_FIELDS)

    def read(self, path: Path) -> list[dict[str, Any]]:
        raise NotImplementedError

    def rewrite(self, path: Path, records: list[dict[str, Any]], fields: Sequence[str]) -> None:
        raise NotImplementedError

    def append(self, path: Path, record: dict[str, Any], fields: Sequence[str]) -> None:
        raise NotImplementedError


class _JsonLines(_Records):
    ext = "jsonl"

    def read(self, path: Path) -> list[dict[str, Any]]:
        records = []
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # the last line of a crashed write
                continue
        return records

    def rewrite(self, path: Path, records: list[dict[str, Any]], fields: Sequence[str]) -> None:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))

    def append(self, path: Path, record: dict[str, Any], fields: Sequence[str]) -> None:
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


class _Csv(_Records):
    ext = "csv"

    def read(self, path: Path) -> list[dict[str, Any]]:
        if not path.is_file():
            return []
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return [{k: _number(v) for k, v in row.items() if k is not None} for row in rows]

    def rewrite(self, path: Path, records: list[dict[str, Any]], fields: Sequence[str]) -> None:
        path.unlink(missing_ok=True)
        for record in records:
            self.append(path, record, fields)

    def append(self, path: Path, record: dict[str, Any], fields: Sequence[str]) -> None:
        new = not path.is_file()
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(fields), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(record)


class _TensorBoard(Logger):
    """Event files under ``RUN/tensorboard``: ``step/*`` and ``epoch/*`` scalars at the global step; at the end
    the hyperparameters (the HParams plugin), ``results/*`` scalars and the results table as text."""

    def __init__(self, run_dir: Path):
        self.folder = run_dir / TENSORBOARD_DIR
        self.writer: Any = None
        self.last_step = 0

    def start(self, history: list[dict[str, Any]], step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # events after the checkpointed step (a crash's leftovers, logged again now) are hidden
        self.writer = SummaryWriter(str(self.folder), purge_step=step + 1 if step else 0)
        self.last_step = step

    def log_step(self, record: dict[str, Any]) -> None:
        self._scalars("step", record)

    def log_epoch(self, record: dict[str, Any]) -> None:
        self._scalars("epoch", record)

    def _scalars(self, prefix: str, record: dict[str, Any]) -> None:
        self.last_step = record["step"]
        for key, value in record.items():
            if key != "step" and _is_number(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def log_end(self, hparams: dict[str, Any], results: list[dict[str, Any]]) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        metrics = result_metrics(results)
        for summary in hparams_summary(_tensorboard_values(flatten(hparams)), metrics):
            self.writer.file_writer.add_summary(summary)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, self.last_step)
        if results:
            self.writer.add_text("results", results_markdown(results), self.last_step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _Wandb(Logger):
    """A W&B run in ``RUN/wandb`` (project ``$WANDB_PROJECT`` or "vlprompt"): ``step/*`` and ``epoch/*`` at the
    global step; at the end the config, ``results/*`` in the summary and the results as a table."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.run: Any = None

    def start(self, history: list[dict[str, Any]], step: int) -> None:
        import wandb

        id_file = self.run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if step and id_file.is_file() else None  # None: a new run
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True)
        self.run = wandb.init(
            dir=str(self.run_dir),
            id=run_id,
            resume="allow",
            project=os.environ.get("WANDB_PROJECT", "vlprompt"),
            name=f"{self.run_dir.parent.name}/{self.run_dir.name}",
            settings=settings,
            reinit="create_new",
        )
        atomic_write_text(id_file, self.run.id + "\n")

    def log_step(self, record: dict[str, Any]) -> None:
        self.run.log({f"step/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])

    def log_epoch(self, record: dict[str, Any]) -> None:
        self.run.log({f"epoch/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])

    def log_end(self, hparams: dict[str, Any], results: list[dict[str, Any]]) -> None:
        import wandb

        self.run.config.update(hparams, allow_val_change=True)
        self.run.summary.update(result_metrics(results))
        if results:
            columns: list[str | int] = list(dict.fromkeys(k for row in results for k in row))
            data = [[_table_cell(row.get(str(c))) for c in columns] for row in results]
            self.run.summary["results"] = wandb.Table(columns=columns, data=data)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def result_metrics(results: list[dict[str, Any]]) -> dict[str, float]:
    """``results/<metric>`` for each number in the rows (``results/<row labels>/<metric>`` where the rows carry
    labels, e.g. the world of a CZSL row); the seed is a key, not a result."""
    metrics = {}
    for row in results:
        labels = [str(v) for k, v in row.items() if isinstance(v, str) and k not in ("method", "prompt")]
        for key, value in row.items():
            if _is_number(value) and key != "seed":
                metrics["/".join(["results", *labels, key])] = float(value)
    return metrics


def results_markdown(results: list[dict[str, Any]]) -> str:
    """The result rows as one Markdown table."""
    columns = list(dict.fromkeys(k for row in results for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(_table_cell(row.get(c, ""))) for c in columns) + " |" for row in results]
    return "\n".join(lines)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(text: str | None) -> Any:
    """A CSV cell read back: int, float, or the text itself ("" for a blank cell)."""
    for kind in (int, float):
        try:
            return kind(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
    return text


def _table_cell(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) or value is None else json.dumps(value)


def _tensorboard_values(values: dict[str, Any]) -> dict[str, Any]:
    """TensorBoard's hparams take numbers, strings and booleans only: the rest as JSON text."""
    return {k: v if isinstance(v, int | float | str | bool) else json.dumps(v) for k, v in values.items()}
