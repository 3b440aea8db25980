"""Throwaway methods a contributor could write in their own module: each becomes usable everywhere with one
``register`` call (tests/test_extending.py registers them and runs them through every command)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.methods import CoOp, MethodConfig, PromptMethod, Recipe
from vlprompt.methods.base import cosine_logits, option
from vlprompt.methods.teacher import Teacher
from vlprompt.methods.wrapper import MethodWrapper
from vlprompt.methods.zeroshot import ensemble_text_features


@dataclass
class ShiftConfig(MethodConfig):
    """A learned shift of the hand-crafted class features.

    Attributes:
        template: the hand template, with ``{}`` for the class name.
        init: the shift's initial value in every dimension.
    """

    template: str = "a photo of a {}."
    init: float = option(0.0, low=-1.0, high=1.0)


class TextShift(PromptMethod):
    """Learns one vector added to every class's frozen hand-crafted feature."""

    name = "throwaway-shift"
    Config = ShiftConfig
    recipes = {"default": Recipe(train={"epochs": 2, "batch_size": 8, "lr": 0.01}, source="a test's own")}
    builtin_rows = ()
    tiny = Recipe()
    template_option = "template"

    def __init__(self, backbone, labels, config=None):
        super().__init__(backbone, labels, config)
        self.shift = nn.Parameter(torch.full((backbone.embed_dim,), self.config.init, device=backbone.device))
        self._labels_changed(backbone)

    def _labels_changed(self, backbone):
        with torch.no_grad():
            hand = ensemble_text_features(backbone, self.labels.names, [self.config.template])
        self.register_buffer("hand", hand, persistent=False)

    def text_features(self, backbone, image_features=None):
        return self.hand + self.shift


class CacheOnly(PromptMethod):
    """Training-free: a cache of the training images' features (keys) and labels (values), built at setup;
    logits are the labels' sums of exp(-beta (1 - cos(image, key))), as Tip-Adapter's cache term."""

    name = "throwaway-cache"
    Config = MethodConfig
    learns = False
    sets_up = True
    transfers = False
    scores_with_text = False
    recipes = {}
    builtin_rows = ()
    tiny = Recipe()
    template_option = None

    def __init__(self, backbone, labels, config=None):
        super().__init__(backbone, labels, config)
        self.register_setup_state("keys", torch.empty(0, backbone.embed_dim, device=backbone.device))
        self.register_setup_state("values", torch.empty(0, dtype=torch.long, device=backbone.device))

    def setup(self, backbone, train_set, cache):
        features = cache.features(backbone, train_set, progress=False)
        self.register_setup_state("keys", F.normalize(features.float(), dim=-1))
        self.register_setup_state("values", torch.tensor(train_set.labels, device=features.device))

    def logits(self, backbone, batch, text=None):
        if not len(self.keys):
            raise ValueError("throwaway-cache has no cache: run setup first")
        image = F.normalize(self.image_features(backbone, batch).float(), dim=-1)
        affinity = torch.exp(-5.0 * (1 - image @ self.keys.t()))
        return affinity @ F.one_hot(self.values, self.num_classes).float()


@dataclass
class EntropyShiftConfig(MethodConfig):
    """Attributes:
    steps: entropy-minimisation steps on each test batch.
    lr: their step size.
    """

    steps: int = option(1, low=1)
    lr: float = option(0.1, low=0.0)


class EntropyShift(PromptMethod):
    """Test-time: on each test batch, a class-feature shift takes ``steps`` gradient steps that lower the entropy
    of the batch's averaged prediction (TPT's objective, simplified), scores the batch, and is reset."""

    name = "throwaway-tpt"
    Config = EntropyShiftConfig
    learns = False
    adapts_at_test_time = True
    recipes = {}
    builtin_rows = ()
    tiny = Recipe()
    template_option = None

    def __init__(self, backbone, labels, config=None):
        super().__init__(backbone, labels, config)
        self._labels_changed(backbone)
        self.register_buffer("shift", torch.zeros(backbone.embed_dim, device=backbone.device), persistent=False)

    def _labels_changed(self, backbone):
        with torch.no_grad():
            hand = ensemble_text_features(backbone, self.labels.names, ["a photo of a {}."])
        self.register_buffer("hand", hand, persistent=False)

    def text_features(self, backbone, image_features=None):
        return self.hand + self.shift

    @contextmanager
    def adapted(self, backbone, batch):
        shift = torch.zeros_like(self.shift, requires_grad=True)
        with torch.enable_grad():
            image = self.image_features(backbone, batch).detach()
            for _ in range(self.config.steps):
                probs = cosine_logits(image, self.hand + shift, backbone.logit_scale).softmax(-1).mean(0)
                entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
                (grad,) = torch.autograd.grad(entropy, shift)
                shift = (shift - self.config.lr * grad).detach().requires_grad_()
        self.shift = shift.detach()
        try:
            yield
        finally:
            self.shift = torch.zeros_like(self.shift)


class ClassBias(MethodWrapper):
    """A wrapper: any method's logits plus a learned bias per class (so it cannot score other classes)."""

    name = "throwaway-bias"
    transfers = False
    recipes = {}  # it trains with the wrapped method's recipe
    builtin_rows = ()
    tiny = Recipe(options={"method": "coop", "options": {"n_ctx": 2}})
    template_option = None

    def __init__(self, backbone, labels, config=None):
        super().__init__(backbone, labels, config)
        self.bias = nn.Parameter(torch.zeros(len(self.labels), device=backbone.device))

    def logits(self, backbone, batch, text=None):
        return self.inner.logits(backbone, batch, text) + self.bias


@dataclass
class DistilledConfig(MethodConfig):
    """Attributes:
    teacher: the teacher's prompt directory.
    temperature: the distillation temperature.
    n_ctx: the student's context vectors.
    """

    teacher: str = ""
    temperature: float = option(1.0, low=0.01)
    n_ctx: int = option(2, low=1)


class Distilled(PromptMethod):
    """A CoOp student learning only from a teacher's logits (labels unused): KL(teacher || student) at
    ``temperature``, scaled by its square. The teacher's logits of every training image are precomputed at
    setup (a non-persistent buffer: neither they nor the teacher's weights enter the student's file)."""

    name = "throwaway-kd"
    Config = DistilledConfig
    has_context = True
    recipes = {}
    builtin_rows = ()
    tiny = Recipe()
    template_option = None

    def __init__(self, backbone, labels, config=None):
        super().__init__(backbone, labels, config)
        self.student = CoOp(backbone, self.labels, CoOp.Config(n_ctx=self.config.n_ctx))
        self.teacher: Teacher | None = None

    def setup(self, backbone, train_set, cache):
        self.teacher = Teacher.from_pretrained(self.config.teacher)
        self.teacher.set_classes(self.labels)
        data = train_set.with_transform(self.teacher.backbone.image_transform())
        pixels = torch.stack([data[i][0] for i in range(len(data))])
        self.register_buffer("teacher_logits", self.teacher.logits(pixels).float(), persistent=False)

    def prompt_record(self):
        return {"teacher": self.teacher.identity()} if self.teacher is not None else {}

    def text_features(self, backbone, image_features=None):
        return self.student.text_features(backbone)

    def loss(self, backbone, batch, logits, label_smoothing=0.0):
        t = self.config.temperature
        target = self.teacher_logits[batch.index.to(self.teacher_logits.device)]
        kl = F.kl_div(
            F.log_softmax(logits / t, -1), F.log_softmax(target / t, -1), log_target=True, reduction="batchmean"
        )
        return kl * t * t
