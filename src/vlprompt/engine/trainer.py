"""One training loop for every method: cached features, AMP, accumulation, DDP, checkpoints, resume.

(One concern, kept in one file above ~400 lines on purpose: the loop's named parts (``StepPlan``,
``TrainingState``, an epoch, validation, resume) share its state and are read together; its batches come
from :class:`vlprompt.feed.Feed`.)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import distributed as dist
from ..backbones import Backbone
from ..data.augment import AUGMENTATIONS
from ..data.images import LabeledImages
from ..errors import DataError, OptionError
from ..features import FeatureCache
from ..feed import Feed
from ..io import atomic_write_bytes, load_checkpoint, remove_stale_temp_files, tensors_sha256, torch_bytes
from ..methods import PromptMethod
from .loggers import RunLoggers, check_loggers
from .schedules import PER_EPOCH_SCHEDULES, SCHEDULES, canonical_schedule, lr_factor

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "adamw")
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass
class TrainConfig:
    """How to train (defaults: CoOp's recipe).

    Attributes:
        epochs: passes over the training set.
        max_steps: train for this many optimizer steps instead (0: ``epochs`` decide): as many epochs as they need,
            the last one cut short, with per-step schedules spanning them (CLIP-LoRA's 500 x shots iterations).
        batch_size: images per optimizer step, over all processes and accumulation steps.
        drop_last: drop each epoch's last partial batch, as Dassl's loader does (False: train on it too, a
            smaller step, as CLIP-LoRA's loader does).
        grad_accum: micro-batches per optimizer step (each process sees batch_size / (world · accum)).
        optimizer: "sgd", "adam" (L2 weight decay) or "adamw" (decoupled weight decay).
        lr: the learning rate (peak of the schedule).
        momentum: SGD momentum.
        weight_decay: weight decay (L2 for SGD and Adam, decoupled for AdamW).
        adam_eps: Adam's and AdamW's epsilon (torch's default 1e-8; Tip-Adapter-F's recipe uses 1e-4).
        schedule: "constant", "cosine" (per step, linear warmup) or "dassl-cosine" (per epoch, constant
            warmup at ``warmup_lr``, cosine over ``epochs``; "coop" is its old name, still accepted and
            kept as written, so old config.yaml files replay and resume).
        warmup_epochs: warmup length in epochs (converted to steps for per-step schedules).
        warmup_steps: warmup length in optimizer steps for per-step schedules; when set, it replaces
            ``warmup_epochs`` (VP's recipe warms up over 1,000 steps).
        warmup_lr: the constant warmup lr of the "dassl-cosine" schedule.
        min_lr: the lr the cosine schedules anneal to (PyTorch's ``eta_min``; CLIP-LoRA's 1e-6), 0 by default.
        precision: "auto" (bf16 autocast on GPU, fp32 on CPU), "fp32", "bf16" or "fp16". Prompt
            parameters always stay fp32.
        seed: seeds Python and torch; data order is a function of (seed, epoch) (runs set it per seed).
        cache_features: for a method that leaves the image tower untouched: ``None`` = automatic (cached
            frozen features of the images, or with ``augment`` of each epoch's augmented views, encoded once
            in no-grad batches), True (features of the un-augmented images even with ``augment``: the fast
            option) or False (pixels through the frozen tower every step). See :mod:`vlprompt.feed`.
        augment: train on augmented views (``augmentation``), each view a pure function of (seed, epoch,
            image) (:class:`~vlprompt.data.images.SeededViews`).
        crop_scale: the smallest area of an augmented crop, as a fraction of the image (Dassl's
            ``INPUT.RRCROP_SCALE`` lower bound: 0.08; MMRL's release 0.5).
        augmentation: which release's augmentation ``augment`` draws (:data:`~vlprompt.data.augment.AUGMENTATIONS`):
            "crop-flip" (random-resized crops at scale ``crop_scale``-1 and flips: the Dassl-based releases'),
            "randaugment" (a square resize, then Dassl's RandAugment(2, 10): CoPrompt's) or "csp" (the centre
            crop, flip, perspective and 5-degree rotation: CSP's).
        eval_every: evaluate on validation every N epochs (0: only at the end).
        select: "last" epoch or "best" validation score (the metric is recorded).
        checkpoint_every: write the resumable checkpoint every N epochs.
        checkpoint_every_steps: also write it every N optimizer steps within an epoch (0: only at epoch
            ends), for long epochs; a resumed run continues at the exact step.
        num_workers: DataLoader workers for image loading.
        label_smoothing: cross-entropy label smoothing.
        activation_checkpointing: recompute both towers' block activations in the backward pass instead of
            storing them (the same numbers, one more forward; less memory on large ViTs, and for CoCoOp's
            B x C prompts: 1,000 classes at batch 8, see ``benchmarks/imagenet_step.py``).
        loggers: where the run directory's training log goes, any of "jsonl" (metrics.jsonl and steps.jsonl),
            "csv" (metrics.csv and steps.csv), "tensorboard" (RUN/tensorboard; ``vlprompt[tensorboard]``) and
            "wandb" (``vlprompt[wandb]``; ``WANDB_MODE=offline`` needs no network). See
            :mod:`vlprompt.engine.loggers`.
    """

    epochs: int = 50
    max_steps: int = 0
    batch_size: int = 32
    drop_last: bool = True
    grad_accum: int = 1
    optimizer: str = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    adam_eps: float = 1e-8
    schedule: str = "dassl-cosine"
    warmup_epochs: int = 1
    warmup_steps: int | None = None
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    precision: str = "auto"
    seed: int = 1
    cache_features: bool | None = None
    augment: bool = False
    crop_scale: float = 0.08
    augmentation: str = "crop-flip"
    eval_every: int = 0
    select: str = "last"
    checkpoint_every: int = 1
    checkpoint_every_steps: int = 0
    num_workers: int = 0
    label_smoothing: float = 0.0
    activation_checkpointing: bool = False
    loggers: list[str] = field(default_factory=lambda: ["jsonl"])

    def __post_init__(self) -> None:
        self.validate()  # checked on construction, whatever builds it (the CLI, YAML, a preset or Python)

    def validate(self) -> None:
        """Every option in range (messages name the CLI flags, ``--train.<field>``)."""
        choices = {
            "optimizer": OPTIMIZERS,
            "select": ("last", "best"),
            "precision": ("auto", "fp32", "bf16", "fp16"),
            "augmentation": tuple(AUGMENTATIONS),
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise OptionError(f"--train.{name} must be one of {', '.join(valid)}, not {getattr(self, name)!r}")
        if canonical_schedule(self.schedule) not in SCHEDULES:
            raise OptionError(f"--train.schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        self._check_ranges()
        if self.select == "best" and self.eval_every < 1:
            raise OptionError("--train.select best compares epochs on validation: set --train.eval_every 1 (or more)")
        check_loggers(self.loggers)

    def _check_ranges(self) -> None:
        """The numeric options' bounds."""
        minimum: dict[str, float] = {
            "epochs": 1,
            "max_steps": 0,
            "batch_size": 1,
            "grad_accum": 1,
            "checkpoint_every": 1,
            "checkpoint_every_steps": 0,
        }
        minimum |= dict.fromkeys(("warmup_epochs", "eval_every", "num_workers", "momentum", "weight_decay"), 0)
        minimum |= {"warmup_lr": 0, "label_smoothing": 0, "min_lr": 0, "warmup_steps": 0}
        for name, low in minimum.items():
            if getattr(self, name) is not None and getattr(self, name) < low:  # warmup_steps may be None
                raise OptionError(f"--train.{name} must be >= {low}, not {getattr(self, name)}")
        above: tuple[tuple[str, float, str], ...] = (
            ("lr", 0, "0"), ("adam_eps", 0, "0"), ("lr", self.min_lr, f"--train.min_lr ({self.min_lr})"),
            ("crop_scale", 0, "0"),
        )  # fmt: skip
        for name, low, what in above:
            if not getattr(self, name) > low:
                raise OptionError(f"--train.{name} must be > {what}, not {getattr(self, name)}")
        for name, bound in (("label_smoothing", "< 1"), ("crop_scale", "<= 1")):
            value = getattr(self, name)
            if value > 1 or (value == 1 and bound == "< 1"):
                raise OptionError(f"--train.{name} must be {bound}, not {value}")


@dataclass
class FitResult:
    """What training produced: the per-epoch history and the selected epoch."""

    history: list[dict[str, Any]] = field(default_factory=list)
    selected_epoch: int = 0
    selected_score: float | None = None
    feature_cache: bool = False
    seconds: float = 0.0


# A scoring function for model selection: (method, backbone) -> higher is better.
Scorer = Callable[[PromptMethod, Backbone], float]


def fit(
    method: PromptMethod,
    backbone: Backbone,
    train_set: LabeledImages,
    config: TrainConfig,
    *,
    scorer: Scorer | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    cache: FeatureCache | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    loggers: RunLoggers | None = None,
) -> FitResult:
    """Train ``method`` on ``train_set`` (items: image tensor, label) with the frozen ``backbone``.

    The method computes its logits and loss (:class:`~vlprompt.methods.PromptMethod`); this loop
    only feeds batches, steps, accumulates, syncs, checkpoints and logs.

    Args:
        scorer: validation score for ``select="best"`` and ``eval_every`` (e.g. accuracy or AUC).
        run_dir: where metrics.jsonl and the resumable checkpoint go (rank 0 writes).
        resume: continue from ``run_dir/checkpoint.pt`` if it exists.
        cache: a shared :class:`~vlprompt.features.FeatureCache` (a private one otherwise).
        on_epoch_end: called with each epoch's record (after the checkpoint is written).
        loggers: the run's loggers, left open for the caller to log the results and close (default: those of
            ``config.loggers`` in ``run_dir``, closed at the end after logging ``config`` as the hyperparameters).

    Returns:
        The history; ``method`` holds the selected (last or best) parameters afterwards.
    """
    config.validate()
    if config.select == "best" and scorer is None:
        raise OptionError("select='best' needs a validation scorer (e.g. a validation split)")
    start_time = time.time()
    plan = StepPlan.build(len(train_set), config)
    feed = Feed(
        backbone,
        train_set,
        method,
        cache,
        augment=config.augment,
        crop_scale=config.crop_scale,
        augmentation=config.augmentation,
        cache_features=config.cache_features,
        view_seed=config.seed,
        targets=True,
        num_workers=config.num_workers,
        progress=progress,
    )
    state = TrainingState.build(method, config, plan, backbone.device)
    model = _distributed(method)
    run_dir = Path(run_dir) if run_dir else None
    result = FitResult(feature_cache=feed.uses_cached_features)
    random.seed(config.seed)
    torch.manual_seed(config.seed + 7919 * dist.rank())
    own_loggers = loggers is None
    loggers = RunLoggers(config.loggers, run_dir) if loggers is None else loggers
    if run_dir:
        _resume(run_dir, resume, state, method, result)
    loggers.start(result.history, state.epoch * plan.steps_per_epoch + state.progress.step)
    start_time -= state.seconds_before  # a resumed run's time counts the whole run

    def save_checkpoint() -> None:
        assert run_dir is not None  # only called with a run directory
        state.seconds_before = time.time() - start_time
        state.save(run_dir / CHECKPOINT, method, result)

    mid_epoch = save_checkpoint if run_dir and config.checkpoint_every_steps else None
    method.train()
    epochs = tqdm(
        range(state.epoch, plan.epochs),
        desc=f"train {method.name}",
        initial=state.epoch,
        total=plan.epochs,
        disable=not (progress and dist.is_main()),
        leave=False,
    )
    try:
        for epoch in epochs:
            with backbone.checkpointing(config.activation_checkpointing):
                record = _train_epoch(model, method, backbone, feed, state, plan, config, epoch, mid_epoch, loggers)
            method.end_epoch(epoch, plan.epochs)
            _validate(method, backbone, scorer, config, plan.epochs, state, result, record)
            record["seconds"] = round(time.time() - start_time, 3)
            result.history.append(record)
            epochs.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_acc']:.3f}")
            state.epoch = epoch + 1
            loggers.log_epoch(record)
            if run_dir and (state.epoch == plan.epochs or state.epoch % config.checkpoint_every == 0):
                save_checkpoint()
            if on_epoch_end is not None:
                on_epoch_end(record)
        if own_loggers:
            loggers.log_end(dataclasses.asdict(config), [])
    finally:
        if own_loggers:
            loggers.close()
    if config.select == "best" and state.best is not None:
        method.load_state_dict(state.best)
    method.eval()
    result.seconds = time.time() - start_time
    return result


@dataclass(frozen=True)
class StepPlan:
    """How the training set splits into optimizer steps, accumulation micro-batches and ranks, and how many
    epochs and steps the run takes."""

    n: int
    per_step: int
    micro: int
    steps_per_epoch: int
    accum: int
    world: int
    last_micro: int = 0  # micro-batch size of a kept last partial step (0: none)
    epochs: int = 1
    total_steps: int = 0

    @classmethod
    def build(cls, n: int, config: TrainConfig) -> StepPlan:
        if n == 0:
            raise DataError("the training set is empty")
        world = dist.world_size()
        per_step = min(config.batch_size, n)
        micro = per_step // (world * config.grad_accum)
        if micro * world * config.grad_accum != per_step:
            raise OptionError(
                f"batch_size {per_step} must split evenly over {world} process(es) x {config.grad_accum} "
                "accumulation steps"
            )
        full = n // per_step
        rest = 0 if config.drop_last else n - full * per_step
        last_micro = rest // (world * config.grad_accum)
        if last_micro * world * config.grad_accum != rest:
            raise OptionError(
                f"--train.drop_last false keeps a last batch of {rest} of the {n} images, which does not split evenly "
                f"over {world} process(es) x {config.grad_accum} accumulation steps"
            )
        steps = full + (rest > 0)
        epochs = -(-config.max_steps // steps) if config.max_steps else config.epochs
        total = config.max_steps or epochs * steps
        return cls(n, per_step, micro, steps, config.grad_accum, world, last_micro, epochs, total)

    def order(self, seed: int, epoch: int) -> Tensor:
        """This rank's sample indices of ``epoch``'s full steps: [steps, accum, micro], a function of (seed, epoch)."""
        full = self.n // self.per_step
        return self._permutation(seed, epoch)[: full * self.per_step].view(full, self.accum, self.world, self.micro)[
            :, :, dist.rank()
        ]

    def micro_batches(self, seed: int, epoch: int, start: int = 0) -> list[Tensor]:
        """This rank's micro-batches of ``epoch`` from step ``start`` on, in order (``accum`` per step), the kept
        last partial step's included."""
        rows = list(self.order(seed, epoch)[start:].reshape(-1, self.micro))
        if self.last_micro and start < self.steps_per_epoch:
            rest = self._permutation(seed, epoch)[(self.n // self.per_step) * self.per_step :]
            rows += list(rest.view(self.accum, self.world, self.last_micro)[:, dist.rank()])
        return rows

    def images_drawn(self, seed: int, epoch: int, steps: int) -> Tensor:
        """Every rank's sample indices of ``epoch``'s first ``steps`` steps (the images whose views they use)."""
        used = self.n if self.last_micro else (self.n // self.per_step) * self.per_step
        return self._permutation(seed, epoch)[: min(steps * self.per_step, used)]

    def steps_in(self, epoch: int) -> int:
        """The optimizer steps ``epoch`` takes (the last epoch of a ``max_steps`` run is cut short)."""
        return min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)

    def _permutation(self, seed: int, epoch: int) -> Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


@dataclass
class EpochProgress:
    """How far the current epoch got: optimizer steps taken and this rank's running loss / accuracy sums."""

    step: int = 0
    loss: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    lr: float = 0.0


class TrainingState:
    """Optimizer, schedule, loss scaler, the epoch and step reached and the best state so far; checkpointed."""

    def __init__(self, optimizer, scheduler, scaler, amp_dtype, per_epoch_schedule: bool, repeats: int = 1):
        self.optimizer = optimizer
        self.repeats = repeats  # PromptMethod.optimizer_steps
        self.scheduler = scheduler
        self.scaler = scaler
        self.amp_dtype = amp_dtype
        self.per_epoch_schedule = per_epoch_schedule
        self.epoch = 0
        self.progress = EpochProgress()
        self.seconds_before = 0.0  # training time of the run before this process (resumed runs)
        self.best: dict[str, Tensor] | None = None

    @classmethod
    def build(cls, method: PromptMethod, config: TrainConfig, plan: StepPlan, device: torch.device) -> TrainingState:
        groups = [g for g in method.param_groups() if g["params"]]
        if not groups:
            raise OptionError(f"method {method.name} has nothing to train")
        optimizer = _make_optimizer(groups, config)
        per_epoch = canonical_schedule(config.schedule) in PER_EPOCH_SCHEDULES
        total = plan.epochs if per_epoch else plan.total_steps
        warmup = config.warmup_epochs if per_epoch else config.warmup_epochs * plan.steps_per_epoch
        if config.warmup_steps is not None and not per_epoch:
            warmup = config.warmup_steps
        factors = [  # each group's own base lr: warmup_lr and min_lr are the same for every group (as Dassl's)
            lr_factor(config.schedule, total, warmup, group["lr"] or config.lr, config.warmup_lr, config.min_lr)
            for group in optimizer.param_groups
        ]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        amp_dtype = _amp_dtype(config.precision, device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        repeats = method.optimizer_steps()
        if repeats < 1:
            raise OptionError(f"method {method.name} asks for {repeats} optimizer steps a batch: at least 1")
        return cls(optimizer, scheduler, scaler, amp_dtype, per_epoch, repeats)

    def step(self) -> None:
        """One optimizer step on the accumulated gradients (and a per-step schedule tick); ``repeats`` steps on the
        same gradients where the method asks for them (a skipped fp16 step, on overflowing gradients, skips all)."""
        if self.repeats == 1:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.scaler.unscale_(self.optimizer)  # the repeated steps read the true gradients, whatever the optimizer
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scaler.get_scale() >= scale:  # taken (an overflow skips the step and lowers the scale)
                for _ in range(self.repeats - 1):
                    self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not self.per_epoch_schedule:
            self.scheduler.step()

    def end_epoch(self) -> None:
        if self.per_epoch_schedule:
            for _ in range(self.repeats):  # a reference stepping one optimizer n times steps its schedule n times
                self.scheduler.step()

    def save(self, path: Path, method: PromptMethod, result: FitResult) -> None:
        """Every rank calls this (to gather RNG states); rank 0 writes atomically."""
        device = next(method.parameters()).device
        state = {
            "method": method.state_dict(),
            "method_sha256": tensors_sha256(method.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.progress.step,
            "epoch_sums": _gather(
                torch.tensor([self.progress.loss, self.progress.correct, self.progress.seen], dtype=torch.float64)
            ),
            "epoch_lr": self.progress.lr,
            "train_seconds": self.seconds_before,
            "history": json.dumps(result.history),
            "selected_epoch": result.selected_epoch,
            "selected_score": result.selected_score,
            "best_state": self.best,
            "best_state_sha256": tensors_sha256(self.best) if self.best is not None else None,
            "python_rng": list(_list_state(random.getstate())),
            "torch_rng": _gather(torch.get_rng_state()),
            "cuda_rng": _gather(torch.cuda.get_rng_state(device)) if device.type == "cuda" else None,
        }
        if dist.is_main():
            atomic_write_bytes(path, torch_bytes(state))

    def restore(self, path: Path, method: PromptMethod, result: FitResult) -> None:
        device = next(method.parameters()).device
        state = load_checkpoint(path, map_location=device)  # verifies the tensor checksums
        method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        sums = state.get("epoch_sums")
        loss, correct, seen = sums[dist.rank()].tolist() if sums is not None else (0.0, 0.0, 0.0)
        self.progress = EpochProgress(state.get("step_in_epoch", 0), loss, correct, seen, state.get("epoch_lr", 0.0))
        self.seconds_before = state.get("train_seconds", 0.0)
        self.best = state.get("best_state")
        result.history = json.loads(state["history"])
        result.selected_epoch, result.selected_score = state["selected_epoch"], state["selected_score"]
        random.setstate(_tuple_state(state["python_rng"]))
        torch.set_rng_state(state["torch_rng"][dist.rank()].cpu())
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"][dist.rank()].cpu(), device)
        if dist.is_main():
            log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.progress.step)


def _train_epoch(
    model,
    method,
    backbone,
    feed: Feed,
    state: TrainingState,
    plan: StepPlan,
    config,
    epoch,
    mid_epoch=None,
    loggers: RunLoggers | None = None,
):
    """One pass over the training set (from ``state.progress.step`` on, for a resumed run); returns its record.

    ``mid_epoch`` writes the checkpoint every ``config.checkpoint_every_steps`` optimizer steps; ``loggers`` get
    each step's record (every rank computes it: its means are global).
    """
    progress = state.progress
    steps = plan.steps_in(epoch)
    rows = plan.micro_batches(config.seed, epoch, progress.step)[: (steps - progress.step) * plan.accum]
    drawn = plan.images_drawn(config.seed, epoch, steps)  # from step 0: a resumed epoch encodes the same batches
    loader_seed = config.seed * 100_003 + epoch * 1_009 + progress.step
    batches = feed.batches(rows, seed=loader_seed, epoch=epoch, views_of=drawn)
    autocast = torch.autocast(backbone.device.type, dtype=state.amp_dtype, enabled=state.amp_dtype is not None)
    for step in range(progress.step, steps):
        before = (progress.loss, progress.correct, progress.seen)
        for m in range(plan.accum):
            (batch,) = next(batches)
            with _maybe_no_sync(model, sync=m == plan.accum - 1), autocast:
                logits = model(backbone, batch)
                loss = method.loss(backbone, batch, logits, config.label_smoothing)
                state.scaler.scale(loss / plan.accum).backward()
            progress.loss += loss.item() * len(batch)
            progress.correct += int((method.predicted_labels(batch, logits) == batch.targets).sum())
            progress.seen += len(batch)
        progress.lr = state.optimizer.param_groups[0]["lr"]  # the lr of this epoch's last step (as logged)
        state.step()
        progress.step = step + 1
        if loggers is not None:
            loggers.log_step(_step_record(epoch, plan, progress, before))
        every = config.checkpoint_every_steps
        if mid_epoch is not None and progress.step % every == 0 and progress.step < steps:
            mid_epoch()
    state.end_epoch()
    state.progress = EpochProgress()
    return {
        "epoch": epoch + 1,
        "step": epoch * plan.steps_per_epoch + steps,
        "lr": progress.lr,
        "loss": _global_mean(progress.loss, int(progress.seen)),
        "train_acc": _global_mean(progress.correct, int(progress.seen)),
    }


def _step_record(epoch: int, plan: StepPlan, progress: EpochProgress, before: tuple[float, float, float]):
    """The record of the step just taken: its loss and accuracy means over every process (one all-reduce)."""
    now = (progress.loss, progress.correct, progress.seen)
    sums = torch.tensor([a - b for a, b in zip(now, before)], dtype=torch.float64)
    if dist.is_distributed():
        torch.distributed.all_reduce(sums)
    loss, correct, seen = sums.tolist()
    step = epoch * plan.steps_per_epoch + progress.step
    return {"step": step, "epoch": epoch + 1, "lr": progress.lr, "loss": loss / seen, "train_acc": correct / seen}


def _resume(run_dir: Path, resume: bool, state: TrainingState, method: PromptMethod, result: FitResult) -> None:
    """Continue from the run directory's checkpoint when resuming (the loggers then start from its history)."""
    if resume and dist.is_main():
        remove_stale_temp_files(run_dir)  # left by a write that a crash interrupted
    if resume and (run_dir / CHECKPOINT).is_file():
        state.restore(run_dir / CHECKPOINT, method, result)


def _validate(method, backbone, scorer, config: TrainConfig, epochs: int, state: TrainingState, result, record) -> None:
    """Score on validation when due (every ``eval_every`` epochs and after the last of ``epochs``); keep the
    selected epoch (and the best state) up to date."""
    epoch = record["epoch"]
    if scorer is not None and (epoch == epochs or (config.eval_every and epoch % config.eval_every == 0)):
        method.eval()
        record["val_score"] = scorer(method, backbone)
        method.train()
        if config.select == "best" and (result.selected_score is None or record["val_score"] > result.selected_score):
            result.selected_epoch, result.selected_score = epoch, record["val_score"]
            state.best = copy.deepcopy(method.state_dict())
    if config.select == "last":
        result.selected_epoch, result.selected_score = epoch, record.get("val_score")


def _distributed(method: PromptMethod) -> torch.nn.Module:
    """The method wrapped in DDP under torchrun (constant buffers are not broadcast), else itself."""
    if dist.world_size() == 1:
        return method
    buffers = [name for name, _ in method.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(method, buffers)
    return DistributedDataParallel(method, broadcast_buffers=False)


def _make_optimizer(params: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of ``config`` over the method's groups; a group's ``lr_scale`` sets its lr to that multiple of
    the recipe's (e.g. DePT's head at 6.5 times the prompt's)."""
    params = [_scaled_lr(group, config.lr) for group in params]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay)


def _scaled_lr(group: dict[str, Any], lr: float) -> dict[str, Any]:
    if "lr_scale" not in group:
        return group
    group = dict(group)
    group["lr"] = lr * group.pop("lr_scale")
    return group


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16


def _maybe_no_sync(model: torch.nn.Module, sync: bool):
    if isinstance(model, DistributedDataParallel) and not sync:
        return model.no_sync()
    return contextlib.nullcontext()


def _global_mean(total: float, count: int) -> float:
    if dist.is_distributed():
        t = torch.tensor([total, float(count)], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        total, count = float(t[0]), int(t[1])
    return total / max(count, 1)


def _tuple_state(state: Any) -> Any:
    return tuple(_tuple_state(s) for s in state) if isinstance(state, list) else state


def _gather(state: Tensor) -> list[Tensor]:
    """Every rank's copy of a CPU state tensor (all ranks must call this)."""
    if not dist.is_distributed():
        return [state]
    gathered = [torch.empty_like(state) for _ in range(dist.world_size())]
    torch.distributed.all_gather(gathered, state)
    return gathered


def _list_state(state: Any) -> Any:
    return [_list_state(s) for s in state] if isinstance(state, tuple) else state
