"""The papers' training recipes as named presets of :class:`TrainConfig`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ..errors import OptionError
from .trainer import TrainConfig


def _coop_epochs(shots: int) -> int:
    return 50 if shots <= 1 else 100 if shots <= 4 else 200


PRESETS: dict[str, Callable[[int], TrainConfig]] = {
    # CoOp: SGD 0.002, batch 32, 1 constant warmup epoch at 1e-5, cosine per epoch; 50/100/200 epochs by shots.
    "coop": lambda shots: TrainConfig(epochs=_coop_epochs(shots)),
    # CoOp's ImageNet recipe: 50 epochs whatever the shots.
    "coop-imagenet": lambda shots: TrainConfig(epochs=50),
    # SoftCPT (kding1225/softcpt MTCoOp vit_b16_ep50): CoOp's schedule, 50 epochs, batch 32 (one step a batch here).
    "softcpt": lambda shots: TrainConfig(epochs=50),
    # CoCoOp: as CoOp, 10 epochs, batch 1 in the paper.
    "cocoop": lambda shots: TrainConfig(epochs=10, batch_size=1),
    # Linear probe on frozen features (AdamW, cosine).
    "linear-probe": lambda shots: TrainConfig(
        epochs=100, optimizer="adamw", lr=1e-3, weight_decay=1e-4, schedule="cosine", warmup_epochs=0
    ),
    # VP (Bahng et al.): SGD lr 40, momentum 0.9, no weight decay, batch 256, 1000 epochs, linear warmup over
    # 1000 steps then cosine to 0, per step.
    "vp": lambda shots: TrainConfig(
        epochs=1000, batch_size=256, lr=40.0, momentum=0.9, weight_decay=0.0, schedule="cosine", warmup_steps=1000
    ),
    # VP sized for a CPU: 30 epochs, batch 32, warmup 20 steps (the same lr and schedule shape).
    "vp-cpu": lambda shots: TrainConfig(
        epochs=30, batch_size=32, lr=40.0, momentum=0.9, weight_decay=0.0, schedule="cosine", warmup_steps=20
    ),
    # VPT (Jia et al.): SGD momentum 0.9, 100 epochs, batch 128, cosine with 10 warmup epochs; the paper searches
    # lr over a grid scaled by batch/256: 0.25 of the grid gives 0.125 here, weight decay 1e-4 of its grid.
    "vpt": lambda shots: TrainConfig(
        epochs=100, batch_size=128, lr=0.125, momentum=0.9, weight_decay=1e-4, schedule="cosine", warmup_epochs=10
    ),
    # MaPLe and IVLP (Khattak et al.): SGD lr 0.0035, batch 4, 5 epochs, one constant warmup epoch at 1e-5, cosine
    # per epoch (Dassl's recipe, as CoOp's).
    "maple": lambda shots: TrainConfig(epochs=5, batch_size=4, lr=0.0035),
    "ivlp": lambda shots: TrainConfig(epochs=5, batch_size=4, lr=0.0035),
    # UPT (Zang et al.): SGD lr 0.002, batch 32, cosine with one warmup epoch (CoOp's recipe for 16 shots).
    "upt": lambda shots: TrainConfig(epochs=_coop_epochs(shots)),
    # KgCoOp (Yao et al.): CoOp's schedule with batch 128, 100 epochs (base-to-new and few-shot, all datasets).
    "kgcoop": lambda shots: TrainConfig(epochs=100, batch_size=128, lr=0.002),
    # PromptSRC (Khattak et al.): SGD lr 0.0025, batch 4, 20 epochs, one constant warmup epoch at 1e-5, cosine per
    # epoch; 50 epochs few-shot (then also gpa_mean 30, gpa_std 30: method options).
    "promptsrc": lambda shots: TrainConfig(epochs=20, batch_size=4, lr=0.0025),
    "promptsrc-few-shot": lambda shots: TrainConfig(epochs=50, batch_size=4, lr=0.0025),
    # CLIP-LoRA (Zanella & Ben Ayed): AdamW lr 2e-4, weight decay 0.01, batch 32, cosine per step from the start.
    # The release runs 500 x shots steps, i.e. 16000 / classes epochs whatever the shots: set --train.epochs.
    "clip-lora": lambda shots: TrainConfig(
        epochs=100, batch_size=32, optimizer="adamw", lr=2e-4, weight_decay=0.01, schedule="cosine", warmup_epochs=0
    ),
    # Full fine-tuning baseline (no paper recipe: WiSE-FT-like AdamW, small lr, decoupled decay 0.1).
    "full-finetune": lambda shots: TrainConfig(
        epochs=20, batch_size=32, optimizer="adamw", lr=1e-5, weight_decay=0.1, schedule="cosine", warmup_epochs=0
    ),
    # CSP (and its CZSL baselines): Adam with L2 decay 1e-5, no schedule, 20 epochs, batch 128;
    # model selection by validation AUC. lr 5e-5 on MIT-States and C-GQA, 5e-4 on UT-Zappos
    # (with vocab_dropout 0.3 on MIT-States, 0.2 on UT-Zappos: a method option).
    "csp-mit-states": lambda shots: _csp(5e-5),
    "csp-ut-zappos": lambda shots: _csp(5e-4),
    "csp-cgqa": lambda shots: _csp(5e-5),
}


def _csp(lr: float) -> TrainConfig:
    return TrainConfig(
        epochs=20,
        batch_size=128,
        optimizer="adam",
        lr=lr,
        weight_decay=1e-5,
        schedule="constant",
        warmup_epochs=0,
        select="best",
        eval_every=1,
    )


def preset(name: str, shots: int = 16, **overrides) -> TrainConfig:
    """The named recipe for ``shots``-shot training, with field overrides."""
    try:
        config = PRESETS[name](shots)
    except KeyError:
        raise OptionError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}") from None
    return replace(config, **overrides)
