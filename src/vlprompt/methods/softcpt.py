"""SoftCPT: soft context sharing across tasks (Ding et al., 2022).

A task's feature is the frozen text encoding of ``"[M_1 .. M_m] <task name>."`` with learned meta-prompt
tokens ``M`` (one set shared by all tasks, TA, or one per task, TS). A learned bias-free linear map
(``proj``, init N(0, 0.02)) turns it into the task's ``n_ctx`` context vectors, spliced CoOp-style in front
of each of the task's class names (NA: one context per task). Class-aware variants concatenate each
class's feature (the encoding of ``"[C_1 .. C_k] <class name>."`` with learned class tokens, shared CA or
class-specific CS) in front of its task's feature, giving one context per class; the generator reads the
concatenation (``lin``), the mean of the two (``linmean``) or the class half (``lincls``). Task and class
features enter the map unnormalised. The six variants of the paper and of kding1225/softcpt:

=======  ==============================  ==========================================
variant  class features                  meta prompt
=======  ==============================  ==========================================
NATA     none                            shared by all tasks (new tasks can be added)
NATS     none                            one per task
CATA     shared class tokens             shared
CATS     shared class tokens             one per task
CSTA     class-specific class tokens     shared
CSTS     class-specific class tokens     one per task
=======  ==============================  ==========================================

Where this differs from the reference (trainers/mtcoop.py) on purpose:

- ``reference_steps`` (on in the ``default`` recipe, off in the built-in CPU rows): the reference registers
  its one optimizer under three model names (four with trained class tokens, mtcoop.py:729-736) and Dassl
  steps every registered name's optimizer and schedule (trainer.py:216-221, 299-308), so each batch takes
  3-4 SGD steps of the same gradients and the per-epoch cosine ticks 3-4 times an epoch (a whole period
  and more in 50 epochs). ``reference_steps`` does the same (:meth:`optimizer_steps`); off, one step a batch.
- fp32 parameters and logits (the reference casts the model to fp16; its preset's ``precision fp16`` autocasts).
- An init phrase for the meta prompt of a task-specific (TS) variant initialises every task's tokens
  (the reference ignores TS when an init phrase is given).
- Context length is counted in BPE tokens of an init phrase (as everywhere in vlprompt), not words.

``class_sample_rate`` (the reference's CLS_SAMPLE_RATE, scripts/main_mtcoop_cls_sample.sh; class-aware variants, as
mtcoop.py:533-534 asserts): in training, each task's prompts are encoded only for the classes of the batch's
samples and ceil(rate x the others) drawn by ``torch.randperm``; the rest get the reference's 1e-6 features, and
the loss covers the drawn classes only (mtcoop.py:599-631, 818-855). 0 (the default): every class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..backbones import Backbone
from ..labels import LabelSpaceError
from .base import Batch, BuiltinRow, MethodConfig, MethodInputError, MethodOptionError, Recipe, option
from .multitask import TaskMethod
from .prompting import PromptLayout, initial_context
from .recipes import CPU_MULTITASK, SOFTCPT_REPO, dassl_recipe

#: variant -> (class features: "none" | "shared" | "specific", task-specific meta prompt)
VARIANTS: dict[str, tuple[str, bool]] = {
    "NATA": ("none", False),
    "NATS": ("none", True),
    "CATA": ("shared", False),
    "CATS": ("shared", True),
    "CSTA": ("specific", False),
    "CSTS": ("specific", True),
}
GENERATORS = ("lin", "linmean", "lincls")


@dataclass
class SoftCPTConfig(MethodConfig):
    """SoftCPT hyperparameters (defaults: the paper's NATA, the reference's lin generator).

    Attributes:
        variant: one of :data:`VARIANTS` (see the module docstring).
        n_ctx: context vectors generated for each task (NA) or class (CA / CS) (the reference's N_CTX).
        meta_n_ctx: learned meta-prompt tokens before the task name (TASK_N_CTX).
        meta_init: initialise the meta prompt from this phrase's word embeddings (TASK_CTX_INIT).
        class_n_ctx: learned tokens before each class name for the class feature (CLASS_N_CTX; 0: the
            frozen encoding of "<class name>.").
        class_init: initialise the class tokens from this phrase (CLASS_CTX_INIT).
        generator: "lin", "linmean" or "lincls" (PG_TYPE); the last two need class features.
        init_std: standard deviation of the N(0, std) initialisations.
        train_class_prompt: learn the class tokens (False: the reference's FREEZE_CLS_PROMPT).
        reference_steps: step the optimizer and the per-epoch schedule as often as the reference does, 3 times
            (4 for a class-aware variant learning its class tokens) for each one of a plain loop (a per-step
            schedule, which the reference has not, still ticks once a batch).
        class_sample_rate: in training, encode each task's batch classes and this fraction of its other classes
            (CLS_SAMPLE_RATE; class-aware variants); 0: every class.
    """

    variant: str = option("NATA", choices=tuple(VARIANTS))
    n_ctx: int = option(16, low=1)
    meta_n_ctx: int = option(4, low=1)
    meta_init: str = ""
    class_n_ctx: int = option(4, low=0)
    class_init: str = ""
    generator: str = option("lin", choices=GENERATORS)
    init_std: float = option(0.02, low=0.0)
    train_class_prompt: bool = True
    reference_steps: bool = False
    class_sample_rate: float = option(0.0, low=0.0, high=1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if VARIANTS[self.variant][0] != "none":
            return
        if self.generator != "lin":
            raise MethodOptionError(
                f"softcpt generator {self.generator!r} reads class features: use a class-aware variant "
                f"(CATA, CATS, CSTA, CSTS) or generator 'lin', not variant {self.variant}"
            )
        if self.class_sample_rate:
            raise MethodOptionError(
                f"softcpt class_sample_rate samples the classes of a class-aware variant (CATA, CATS, CSTA, CSTS), "
                f"not of {self.variant}: the reference allows it only there"
            )


class SoftCPT(TaskMethod):
    """Task-shared prompt generation: each task's context comes from its name through a learned map."""

    name = "softcpt"
    Config = SoftCPTConfig
    config: SoftCPTConfig
    recipes = {
        # the README's commands run rn50_ep50.yaml, the same fields on RN50; the rest from the Dassl it bundles
        "default": dassl_recipe(
            f"{SOFTCPT_REPO}:configs/trainers/MTCoOp/vit_b16_ep50.yaml (rn50_ep50.yaml in README.md's commands: the "
            "same but the backbone), train.py:116 (PREC fp16), trainers/mtcoop.py:726-736 (one optimizer under 3-4 "
            "names: reference_steps)",
            (),
            epochs=50,
            batch_size=32,
            lr=0.002,
            dassl=f"{SOFTCPT_REPO}:dist/Dassl.pytorch/",
        ).with_options(reference_steps=True)
    }
    builtin_rows = (
        BuiltinRow("softcpt-nata", CPU_MULTITASK.with_options(n_ctx=4)),
        BuiltinRow("softcpt-cata", CPU_MULTITASK.with_options(n_ctx=4, variant="CATA")),
    )
    tiny = Recipe(options={"n_ctx": 4, "variant": "CATA"})
    template_option = None
    class_ctx: Tensor | None
    name_layout: PromptLayout | None
    frozen_class_features: Tensor
    meta_rows: Tensor
    class_task: Tensor

    def __init__(self, backbone: Backbone, labels: Any, config: SoftCPTConfig | None = None):
        super().__init__(backbone, labels, config)
        cfg = self.config
        class_features, task_specific = VARIANTS[cfg.variant]
        self.class_features, self.task_specific = class_features, task_specific
        self.class_aware = class_features != "none"
        self._sampled: Tensor | None = None  # the classes the last training forward encoded (class_sample_rate)
        self.trained_tasks = tuple(self.labels.names)
        self.trained_classes = tuple(self.labels.tasks)
        self.n_ctx = cfg.n_ctx
        # Drawn in the reference's order: meta prompt, class tokens, then the generator.
        n_tasks = len(self.labels.tasks) if task_specific else 0
        meta = initial_context(backbone, cfg.meta_n_ctx, cfg.meta_init, cfg.init_std, n_tasks)
        self.meta_ctx = nn.Parameter(meta.to(backbone.device))
        if self.class_aware and cfg.class_n_ctx > 0:
            n_classes = len(self.labels) if class_features == "specific" else 0
            init = initial_context(backbone, cfg.class_n_ctx, cfg.class_init, cfg.init_std, n_classes)
            self.class_ctx = nn.Parameter(init.to(backbone.device), requires_grad=cfg.train_class_prompt)
        else:
            self.class_ctx = None
        width = 2 * backbone.embed_dim if self.class_aware and cfg.generator == "lin" else backbone.embed_dim
        proj = nn.init.normal_(torch.empty(width, cfg.n_ctx * backbone.text_width), std=cfg.init_std)
        self.proj = nn.Parameter(proj.to(backbone.device))
        self._labels_changed(backbone)

    # ---------------------------------------------------------------- label space
    @property
    def transfers_to_new_classes(self) -> bool:
        return self.class_features != "specific"

    def set_classes(self, backbone: Backbone, labels: Any) -> None:
        labels = self.label_kind.coerce(labels, self.labels)
        unknown = [n for n in labels.names if n not in self.trained_tasks]
        if self.task_specific and unknown:
            raise LabelSpaceError(
                f"softcpt {self.config.variant} learned one meta prompt for each of the tasks "
                f"{list(self.trained_tasks)}: it cannot score the new task(s) {unknown}; a task-agnostic variant "
                "(NATA, CATA, CSTA) can"
            )
        if self.class_features == "specific" and labels.tasks != self.trained_classes:
            raise MethodInputError(
                f"softcpt {self.config.variant} learned class tokens for each training class: "
                "it cannot score other classes"
            )
        self.labels = labels
        self._labels_changed(backbone)

    def _labels_changed(self, backbone: Backbone) -> None:
        device = self.proj.device
        meta_len = self.meta_ctx.shape[-2]
        self.task_layout = PromptLayout(backbone, self.labels.names, meta_len).to(device)
        classes = self.labels.all_classes()
        self.class_layout = PromptLayout(backbone, classes, self.n_ctx).to(device)
        self.name_layout = None
        frozen = torch.empty(0, device=device)
        if self.class_aware and self.class_ctx is not None:
            self.name_layout = PromptLayout(backbone, classes, self.class_ctx.shape[-2]).to(device)
        elif self.class_aware:  # no class tokens: "<class name>." has nothing that learns, so encode it once
            with torch.no_grad():
                empty = self.proj.new_zeros(0, backbone.text_width)
                frozen = PromptLayout(backbone, classes, 0).to(device).encode(backbone, empty)
        self.register_buffer("frozen_class_features", frozen, persistent=False)
        rows = [self.trained_tasks.index(n) for n in self.labels.names] if self.task_specific else []
        self.register_buffer("meta_rows", torch.tensor(rows, dtype=torch.long, device=device), persistent=False)
        class_task = torch.tensor(self.labels.class_tasks(), dtype=torch.long, device=device)
        self.register_buffer("class_task", class_task, persistent=False)

    def optimizer_steps(self) -> int:
        """With ``reference_steps``, the reference's registered names: prompt_learner, task_prompt_learner and
        prompt_gen, and class_prompt_learner where CSC is set (a class-aware variant) and FREEZE_CLS_PROMPT is not
        (``train_class_prompt``), whether or not it has class tokens (mtcoop.py:729-736); else 1."""
        if not self.config.reference_steps:
            return 1
        return 3 + int(self.class_aware and self.config.train_class_prompt)

    # ---------------------------------------------------------------- scoring
    def task_features(self, backbone: Backbone) -> Tensor:
        """[T, D] unnormalised text features of "[meta prompt] <task name>."."""
        meta = self.meta_ctx[self.meta_rows] if self.task_specific else self.meta_ctx
        return self.task_layout.encode(backbone, meta)

    def class_name_features(self, backbone: Backbone) -> Tensor:
        """[C, D] unnormalised text features of "[class tokens] <class name>." (class-aware variants)."""
        if self.class_ctx is None:
            return self.frozen_class_features
        assert self.name_layout is not None  # class tokens are only learned by a class-aware variant
        return self.name_layout.encode(backbone, self.class_ctx)

    def generate_context(self, features: Tensor) -> Tensor:
        """Context vectors [N, n_ctx, d] from task features [N, D] or (class ‖ task) features [N, 2D]."""
        half = features.shape[-1] // 2
        if self.config.generator == "linmean":
            features = (features[..., :half] + features[..., half:]) / 2
        elif self.config.generator == "lincls":
            features = features[..., :half]
        return (features @ self.proj).reshape(len(features), self.n_ctx, -1)

    def task_contexts(self, backbone: Backbone) -> Tensor:
        """[T, n_ctx, d]: each task's generated context (task-only variants, NA)."""
        return self.generate_context(self.task_features(backbone))

    def contexts(self, backbone: Backbone) -> Tensor:
        """[C, n_ctx, d]: the generated context in front of every class name, in logit order."""
        if not self.class_aware:
            return self.task_contexts(backbone)[self.class_task]
        tasks = self.task_features(backbone)
        joint = torch.cat([self.class_name_features(backbone), tasks[self.class_task]], dim=-1)
        return self.generate_context(joint)

    def logits(self, backbone: Backbone, batch: Batch, text: Tensor | None = None) -> Tensor:
        self._sampled = None
        if text is None and self.training and self.config.class_sample_rate and batch.targets is not None:
            self._sampled = self.sample_classes(batch)
            text = self.sampled_text_features(backbone, self._sampled)
        return super().logits(backbone, batch, text)

    def loss_columns(self) -> Tensor | None:
        """The classes the last training forward drew (``class_sample_rate``; the engine computes each micro-batch's
        loss right after its forward), else None: every class."""
        if self._sampled is None:
            return None
        kept = torch.zeros(len(self.labels), dtype=torch.bool, device=self._sampled.device)
        kept[self._sampled] = True
        return kept

    def sample_classes(self, batch: Batch) -> Tensor:
        """Column indices, task by task: the classes of the batch's samples of the task, then ceil(rate x its other
        classes) in ``torch.randperm``'s order (mtcoop.py:605-622, every task drawing even without samples)."""
        assert batch.targets is not None
        tasks, chosen = self._tasks_of(batch).cpu(), []
        for t, cols in enumerate(self.labels.blocks()):
            present = torch.zeros(cols.stop - cols.start, dtype=torch.bool)
            present[batch.targets.cpu()[tasks == t]] = True
            others = (~present).nonzero().flatten()
            drawn = others[torch.randperm(len(others))[: math.ceil(len(others) * self.config.class_sample_rate)]]
            chosen += [present.nonzero().flatten() + cols.start, drawn + cols.start]
        return torch.cat(chosen).to(self.proj.device)

    def sampled_text_features(self, backbone: Backbone, classes: Tensor) -> Tensor:
        """[C, D]: the prompts of ``classes`` encoded (their contexts generated from every class's features, as the
        reference's), plus 1e-6; every other class 1e-6 (mtcoop.py:625-628)."""
        encoded = self.class_layout.subset(classes).encode(backbone, self.contexts(backbone)[classes])
        return encoded.new_full((self.class_layout.num_classes, encoded.shape[-1]), 1e-6).index_add(0, classes, encoded)

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        if self.class_aware:
            return self.class_layout.encode(backbone, self.contexts(backbone))
        # one context per task: each task's classes share it, and its positions run once for them
        return self.class_layout.encode(backbone, self.task_contexts(backbone), class_context=self.class_task)
