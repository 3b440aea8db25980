"""VP: a learned prompt in pixel space, added to every normalised image (Bahng et al., 2022).

Follows hjbahng/visual_prompting (``models/prompters.py``, ``main_clip.py``): the padding prompter is
four tensors (top and bottom ``3 x p x W``, left and right ``3 x (H - 2p) x p``; the corners belong
to top and bottom), the patch prompters one ``3 x p x p`` tensor; all initialised N(0, 1) and added
to the image after CLIP's normalisation, unclamped. Class features are frozen hand-written prompts
("This is a photo of a {}"), encoded once.

Where this differs, deliberately:
- the image size comes from the backbone (any resolution), not a hard-coded 224;
- the random-patch prompter draws its place from torch's (seeded) RNG instead of unseeded numpy,
  once per forward for the whole batch and never at the last offset, as the reference does; in
  evaluation it uses one place drawn from ``eval_seed``, so scores are reproducible (the reference
  draws a new place at test time too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..backbones import Backbone
from .base import Batch, BuiltinRow, MethodOptionError, Recipe
from .recipes import CPU_VISUAL, VP_REPO
from .zeroshot import ZeroShot, ZeroShotConfig

PROMPTERS = ("padding", "fixed_patch", "random_patch")


@dataclass
class VPConfig(ZeroShotConfig):
    """VP hyperparameters.

    Attributes:
        prompter: "padding" (a frame of ``prompt_size`` pixels), "fixed_patch" (a square at the top
            left) or "random_patch" (a square at a random place each forward).
        prompt_size: frame width, or patch side, in pixels (30 at 224 px in the paper).
        templates: the frozen class prompts' template(s).
        eval_seed: where the random patch sits in evaluation (see the module docstring).
    """

    templates: list[str] = field(default_factory=lambda: ["This is a photo of a {}"])
    prompter: str = "padding"
    prompt_size: int = 30
    eval_seed: int = 0


class VP(ZeroShot):
    """Pixel-space visual prompting: ``logits = scale · cos(f(x + prompt), frozen class text)``."""

    name = "vp"
    Config = VPConfig
    config: VPConfig
    recipes = {
        "default": Recipe(
            train={
                "epochs": 1000,
                "batch_size": 256,
                "lr": 40.0,
                "momentum": 0.9,
                "weight_decay": 0.0,
                "schedule": "cosine",
                "warmup_steps": 1000,
                "drop_last": False,
                "select": "best",
                "eval_every": 1,
            },
            source=f"{VP_REPO}:main_clip.py (autocast with a GradScaler, CLIP's preprocess: no augmentation; "
            "plain DataLoaders, lines 150-156: the last partial batch kept; the best epoch, lines 199-215, picked on "
            "the test split there, on validation here; patience 1000 never stops a 1000-epoch run), utils.py "
            "(cosine_lr)",
        ).but(precision="fp16"),
        "cpu": Recipe(
            train={
                "epochs": 30,
                "batch_size": 32,
                "lr": 40.0,
                "momentum": 0.9,
                "weight_decay": 0.0,
                "schedule": "cosine",
                "warmup_steps": 20,
            },
            source="vlprompt's: VP's recipe sized for a CPU (30 epochs, batch 32, 20 warmup steps)",
        ),
    }
    builtin_rows = (
        BuiltinRow("vp", CPU_VISUAL.but(lr=40.0, weight_decay=0.0, warmup_steps=10).with_options(prompt_size=8)),
    )
    tiny = Recipe(options={"prompt_size": 4}, train={"lr": 1.0})  # N(0, 1) pixel prompts need a large lr
    template_option = "templates"
    authors_template = "This is a photo of a {}"  # main_clip.py, every dataset
    learns = True
    changes_image_tower = True

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: VPConfig | None = None):
        super().__init__(backbone, classes, config)
        cfg, size = self.config, backbone.image_size
        if cfg.prompter not in PROMPTERS:
            raise MethodOptionError(f"vp prompter must be one of {PROMPTERS}, not {cfg.prompter!r}")
        if cfg.prompt_size < 1:
            raise MethodOptionError(f"vp prompt_size must be >= 1, not {cfg.prompt_size}")
        p = cfg.prompt_size
        if cfg.prompter == "padding":
            if 2 * p >= size:
                raise MethodOptionError(
                    f"a padding of {p} px leaves no image inside a {size} px input (needs < {size / 2})"
                )
            self.pad_up = nn.Parameter(torch.randn(1, 3, p, size))
            self.pad_down = nn.Parameter(torch.randn(1, 3, p, size))
            self.pad_left = nn.Parameter(torch.randn(1, 3, size - 2 * p, p))
            self.pad_right = nn.Parameter(torch.randn(1, 3, size - 2 * p, p))
        else:
            if p >= size:
                raise MethodOptionError(f"a {p} px patch does not fit inside a {size} px input")
            self.patch = nn.Parameter(torch.randn(1, 3, p, p))
        self.image_size = size
        self.to(backbone.device)

    def prompt(self) -> Tensor:
        """The additive prompt [1, 3, H, W] of this forward."""
        cfg, size = self.config, self.image_size
        if cfg.prompter == "padding":
            base = self.pad_up.new_zeros(1, 3, size - 2 * cfg.prompt_size, size - 2 * cfg.prompt_size)
            middle = torch.cat([self.pad_left, base, self.pad_right], dim=3)
            return torch.cat([self.pad_up, middle, self.pad_down], dim=2)
        row, col = 0, 0
        if cfg.prompter == "random_patch":
            generator = None if self.training else torch.Generator().manual_seed(cfg.eval_seed)
            row, col = (int(v) for v in torch.randint(size - cfg.prompt_size, (2,), generator=generator))
        prompt = self.patch.new_zeros(1, 3, size, size)
        prompt[:, :, row : row + cfg.prompt_size, col : col + cfg.prompt_size] = self.patch
        return prompt

    def image_features(self, backbone: Backbone, batch: Batch) -> Tensor:
        assert batch.pixels is not None  # it changes the image tower: batches carry pixels
        return backbone.encode_image(batch.pixels, pixel_prompt=self.prompt())
