"""One training loop for every method: cached features, AMP, accumulation, DDP, checkpoints, resume."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..backbones import Backbone
from ..data.images import LabeledImages
from ..io import atomic_write, load_checkpoint, tensors_sha256
from ..methods import PromptMethod
from . import distributed as dist
from .features import FeatureCache
from .schedules import lr_factor

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "adamw")
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass
class TrainConfig:
    """How to train (defaults: CoOp's recipe).

    Attributes:
        epochs: passes over the training set.
        batch_size: images per optimizer step, over all processes and accumulation steps.
        grad_accum: micro-batches per optimizer step (each process sees batch_size / (world · accum)).
        optimizer: "sgd", "adam" (L2 weight decay) or "adamw" (decoupled weight decay).
        lr, momentum, weight_decay: optimizer settings (momentum for SGD only).
        schedule: "constant", "cosine" (per step, linear warmup) or "coop" (per epoch, constant
            warmup at ``warmup_lr``, cosine over ``epochs``).
        warmup_epochs: warmup length in epochs (converted to steps for per-step schedules).
        warmup_lr: the constant warmup lr of the "coop" schedule.
        precision: "auto" (bf16 autocast on GPU, fp32 on CPU), "fp32", "bf16" or "fp16". Prompt
            parameters always stay fp32.
        seed: seeds Python and torch; data order is a function of (seed, epoch).
        cache_features: reuse frozen image features every epoch. ``None`` = automatic: on when the
            method leaves the image tower untouched and ``augment`` is off. With ``augment`` on, set
            it explicitly (True caches features of un-augmented images).
        augment: random-resized-crop and flip training augmentation (open_clip's train transform).
        eval_every: evaluate on validation every N epochs (0: only at the end).
        select: "last" epoch or "best" validation score (the metric is recorded).
        checkpoint_every: write the resumable checkpoint every N epochs.
        num_workers: DataLoader workers for image loading.
        label_smoothing: cross-entropy label smoothing.
    """

    epochs: int = 50
    batch_size: int = 32
    grad_accum: int = 1
    optimizer: str = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "coop"
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    precision: str = "auto"
    seed: int = 1
    cache_features: bool | None = None
    augment: bool = False
    eval_every: int = 0
    select: str = "last"
    checkpoint_every: int = 1
    num_workers: int = 0
    label_smoothing: float = 0.0

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}")
        if self.select not in ("last", "best"):
            raise ValueError(f"select must be 'last' or 'best', not {self.select!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {self.precision!r}")
        if self.select == "best" and self.eval_every < 1:
            raise ValueError("select='best' compares epochs on validation: set eval_every >= 1")
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("epochs, batch_size and grad_accum must be positive")


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
) -> FitResult:
    """Train ``method`` on ``train_set`` (items: image tensor, label) with the frozen ``backbone``.

    Args:
        scorer: validation score for ``select="best"`` and ``eval_every`` (e.g. accuracy or AUC).
        run_dir: where metrics.jsonl and the resumable checkpoint go (rank 0 writes).
        resume: continue from ``run_dir/checkpoint.pt`` if it exists.
        cache: a shared :class:`FeatureCache` (a private one otherwise).
        on_epoch_end: called with each epoch's record (after the checkpoint is written).

    Returns:
        The history; ``method`` holds the selected (last or best) parameters afterwards.
    """
    config.validate()
    if config.select == "best" and scorer is None:
        raise ValueError("select='best' needs a validation scorer (e.g. a validation split)")
    start_time = time.time()
    world, rank = dist.world_size(), dist.rank()
    device = backbone.device
    per_step = config.batch_size
    n = len(train_set)
    if n == 0:
        raise ValueError("the training set is empty")
    if n < per_step:
        per_step = n
    micro = per_step // (world * config.grad_accum)
    if micro * world * config.grad_accum != per_step:
        raise ValueError(
            f"batch_size {per_step} must split evenly over {world} process(es) x {config.grad_accum} accumulation steps"
        )
    steps_per_epoch = n // per_step

    use_cache = _resolve_cache(method, config)
    labels = torch.tensor(train_set.labels, device=device)
    if use_cache:
        features = (cache or FeatureCache()).features(backbone, train_set, progress=progress and dist.is_main())
    else:
        features = None
        transform = backbone.image_transform(train=config.augment)
        loader_set = train_set.with_transform(transform)

    params = [p for p in method.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"method {method.name} has nothing to train")
    optimizer = _make_optimizer(params, config)
    per_epoch_schedule = config.schedule == "coop"
    total_ticks = config.epochs if per_epoch_schedule else config.epochs * steps_per_epoch
    warmup_ticks = config.warmup_epochs if per_epoch_schedule else config.warmup_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(config.schedule, total_ticks, warmup_ticks, config.lr, config.warmup_lr)
    )
    amp_dtype = _amp_dtype(config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    model: torch.nn.Module = method
    if world > 1:
        buffers = [name for name, _ in method.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(method, buffers)
        model = DistributedDataParallel(method, broadcast_buffers=False)

    run_dir = Path(run_dir) if run_dir else None
    result = FitResult(feature_cache=use_cache)
    start_epoch, best_state = 0, None
    random.seed(config.seed)
    torch.manual_seed(config.seed + 7919 * rank)
    if resume and run_dir and (run_dir / CHECKPOINT).is_file():
        state = load_checkpoint(run_dir / CHECKPOINT, map_location=device)  # verifies the tensor checksums
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch = state["epoch"]
        result.history = json.loads(state["history"])
        best_state = state.get("best_state")
        result.selected_epoch, result.selected_score = state["selected_epoch"], state["selected_score"]
        random.setstate(_tuple_state(state["python_rng"]))
        torch.set_rng_state(state["torch_rng"][rank].cpu())
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"][rank].cpu(), device)
        if dist.is_main():
            log.info("resumed from %s at epoch %d", run_dir / CHECKPOINT, start_epoch)
    if run_dir and dist.is_main():
        _rewrite_metrics(run_dir / METRICS, result.history)

    method.train()
    epochs = tqdm(
        range(start_epoch, config.epochs),
        desc=f"train {method.name}",
        initial=start_epoch,
        total=config.epochs,
        disable=not (progress and dist.is_main()),
        leave=False,
    )
    for epoch in epochs:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        order = order[: steps_per_epoch * per_step].view(steps_per_epoch, config.grad_accum, world, micro)
        mine = order[:, :, rank]  # [steps, accum, micro]
        batches = _feature_batches(features, mine) if use_cache else _image_batches(loader_set, mine, config)
        total_loss, total_correct, seen = 0.0, 0, 0
        for _ in range(steps_per_epoch):
            for m in range(config.grad_accum):
                inputs, idx = next(batches)
                target = labels[idx.to(device)]
                sync = m == config.grad_accum - 1
                with (
                    _maybe_no_sync(model, sync),
                    torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None),
                ):
                    image_features = inputs if use_cache else method.image_features(backbone, inputs)
                    logits = model(backbone, image_features)
                    loss = F.cross_entropy(logits.float(), target, label_smoothing=config.label_smoothing)
                    scaler.scale(loss / config.grad_accum).backward()
                total_loss += loss.item() * len(idx)
                total_correct += int((logits.argmax(-1) == target).sum())
                seen += len(idx)
            lr_used = optimizer.param_groups[0]["lr"]  # the lr of this epoch's last step (as logged)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if not per_epoch_schedule:
                scheduler.step()
        if per_epoch_schedule:
            scheduler.step()
        record = {
            "epoch": epoch + 1,
            "step": (epoch + 1) * steps_per_epoch,
            "lr": lr_used,
            "loss": _global_mean(total_loss, seen),
            "train_acc": _global_mean(float(total_correct), seen),
        }
        last = epoch + 1 == config.epochs
        if scorer is not None and (last or (config.eval_every and (epoch + 1) % config.eval_every == 0)):
            method.eval()
            record["val_score"] = scorer(method, backbone)
            method.train()
            if config.select == "best" and (
                result.selected_score is None or record["val_score"] > result.selected_score
            ):
                result.selected_epoch, result.selected_score = epoch + 1, record["val_score"]
                best_state = copy.deepcopy(method.state_dict())
        if config.select == "last":
            result.selected_epoch, result.selected_score = epoch + 1, record.get("val_score")
        record["seconds"] = round(time.time() - start_time, 3)
        result.history.append(record)
        epochs.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_acc']:.3f}")
        if run_dir:
            if dist.is_main():
                _append_metrics(run_dir / METRICS, record)
            if last or (epoch + 1) % config.checkpoint_every == 0:
                _save_checkpoint(
                    run_dir / CHECKPOINT, method, optimizer, scheduler, scaler, epoch + 1, result, best_state
                )
        if on_epoch_end is not None:
            on_epoch_end(record)
    if config.select == "best" and best_state is not None:
        method.load_state_dict(best_state)
    method.eval()
    result.seconds = time.time() - start_time
    return result


def _resolve_cache(method: PromptMethod, config: TrainConfig) -> bool:
    if method.changes_image_tower:
        if config.cache_features:
            raise ValueError(f"{method.name} changes the image tower: its image features cannot be cached")
        return False
    if config.cache_features is None:
        if config.augment:
            raise ValueError(
                "augment is on and the method leaves the image tower untouched: choose explicitly, "
                "cache_features=true (features of un-augmented images, fast) or cache_features=false "
                "(augmented images through the image tower every epoch)"
            )
        return True
    return bool(config.cache_features)


def _make_optimizer(params: list[Tensor], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


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


def _feature_batches(features: Tensor, order: Tensor):
    for idx in order.reshape(-1, order.shape[-1]):
        yield features[idx.to(features.device)], idx


def _image_batches(dataset: LabeledImages, order: Tensor, config: TrainConfig):
    flat = order.reshape(-1, order.shape[-1]).tolist()
    loader = DataLoader(dataset, batch_sampler=flat, num_workers=config.num_workers)
    for (pixels, _), idx in zip(loader, flat):
        yield pixels, torch.tensor(idx)


def _global_mean(total: float, count: int) -> float:
    if dist.is_distributed():
        t = torch.tensor([total, float(count)], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        total, count = float(t[0]), int(t[1])
    return total / max(count, 1)


def _tuple_state(state: Any) -> Any:
    return tuple(_tuple_state(s) for s in state) if isinstance(state, list) else state


def _save_checkpoint(path, method, optimizer, scheduler, scaler, epoch, result: FitResult, best_state) -> None:
    """Every rank calls this (to gather RNG states); rank 0 writes atomically."""
    device = next(method.parameters()).device
    torch_rng = _gather(torch.get_rng_state())
    cuda_rng = _gather(torch.cuda.get_rng_state(device)) if device.type == "cuda" else None
    state = {
        "method": method.state_dict(),
        "method_sha256": tensors_sha256(method.state_dict()),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "history": json.dumps(result.history),
        "selected_epoch": result.selected_epoch,
        "selected_score": result.selected_score,
        "best_state": best_state,
        "best_state_sha256": tensors_sha256(best_state) if best_state is not None else None,
        "python_rng": list(_list_state(random.getstate())),
        "torch_rng": torch_rng,
        "cuda_rng": cuda_rng,
    }
    if dist.is_main():
        atomic_write(path, lambda tmp: torch.save(state, tmp))


def _gather(state: Tensor) -> list[Tensor]:
    """Every rank's copy of a CPU state tensor (all ranks must call this)."""
    if not dist.is_distributed():
        return [state]
    gathered = [torch.empty_like(state) for _ in range(dist.world_size())]
    torch.distributed.all_gather(gathered, state)
    return gathered


def _list_state(state: Any) -> Any:
    return [_list_state(s) for s in state] if isinstance(state, tuple) else state


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _rewrite_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """Start metrics.jsonl from the checkpointed history (drops epochs a crash left unsaved)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in history)))
