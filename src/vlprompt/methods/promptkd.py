"""PromptKD: a prompted student distilled from a larger prompted teacher on unlabeled images (Li et al., CVPR 2024).

Follows zhengli97/PromptKD (``trainers/promptkd.py``). The teacher is a saved vlprompt prompt on its own
backbone (the paper's: PromptSRC on ViT-L/14), frozen; its prompted, L2-normalised class features t are the
student's classifier, encoded once per label space. The student has no text branch: IVLP image prompts
(4 tokens, N(0, 0.02), fresh ones replacing them before blocks 1 .. depth-1) and a projector from its width
to the teacher's, ``Linear(d_s, d_t) -> BatchNorm(d_t) -> ReLU -> Linear(d_t, d_t)`` (the release's 1x1
convolutions on [B, d, 1, 1], the same function and initialisation), then L2-normalised. Logits
z_s = exp(student logit scale) f_s tᵀ, z_t = the teacher's logits of the same (augmented) images, and the
loss, labels unused,

    kd_weight · T² · Σ_{b,c} p_t (log p_t − log q_s) / (B · C),   p = softmax(z / T)

(KL summed over the batch and divided by the number of logits, not ``batchmean``). Trainable: the image
prompts and the whole projector; its BatchNorm keeps running statistics in training and uses them in
evaluation (so train- and eval-mode logits differ, as in the release); under DDP its batch statistics are
those of the global batch (one process on the same batch gives the same numbers). The student's prompt file
records the teacher's identity (its directory, method, backbone and tensor hash) and none of its weights;
loading the student loads the teacher again, for its class features.

Where this differs, deliberately: widths come from the two models (the release hard-codes 512 / 768);
everything stays fp32 (the release runs only in fp16: PREC fp32 casts break, amp returns a tuple to
backward); image prompts sit after the class token (IVLP's difference). The release trains on every
class's training images, unlabeled, with the teacher's features of all class names (transductive), and
selects the epoch on base-class *test* accuracy (FINAL_MODEL best_val). Here the method learns on the run's
training images over the run's label space, and the run selects the last epoch; the transductive set is the
run's protocol (``learns_without_labels``): ``vlprompt bench base-to-new`` hands it every class's images over
every class name as the release does (``--transductive false``: the base images only), ``vlprompt train`` with
``--data.class_split base-to-new-transductive``. ``teacher="zeroshot"`` is our own:
the student's backbone with its hand template, un-prompted, as teacher (the tiny tests and a demo row).

Both stages in one command: ``vlprompt bench ... --methods promptsrc promptkd`` with ``teacher: "bench:promptsrc"``
distils, seed by seed, the PromptSRC prompt trained just before on the same dataset and shots (the built-in
row ``promptkd`` does this; teacher and student are both the bundled model, as no smaller tiny CLIP exists).
``vlprompt bench cross-dataset`` runs the release's cross protocol (``MODAL cross``): the teacher trained on
ImageNet, then one student per target dataset, on every one of its training images, unlabeled, over its classes
(``--transductive false``: one student on ImageNet's images, transferred like the other methods).
Outside bench, ``teacher: "runs/t/seed{seed}/prompt"`` names each seed's teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed as dist
from ..backbones import Backbone, BackboneError
from ..errors import OptionError, VlpromptError
from ..labels import ClassNames
from .base import Batch, BuiltinRow, MethodConfig, MethodOptionError, PromptMethod, Recipe, option
from .recipes import CPU_VISUAL, dassl_recipe
from .teacher import Teacher

#: zhengli97/PromptKD, pinned.
PROMPTKD_REPO = "zhengli97/PromptKD@ec244f783c8b9b2503ad5a838a3fd97365686ddb"
#: The teacher that is the student's own backbone, un-prompted, with the hand template (vlprompt's, not the paper's).
ZEROSHOT_TEACHER = "zeroshot"


@dataclass
class PromptKDConfig(MethodConfig):
    """PromptKD hyperparameters (the base-to-new recipe's).

    Attributes:
        teacher: the teacher's prompt directory (a prompt trained with labels, e.g. PromptSRC on a larger
            backbone), or "zeroshot" (the student's backbone un-prompted, with ``teacher_template``).
        teacher_backbone: the teacher's backbone name (default: the one its prompt records).
        teacher_pretrained: its pretrained tag or weight file (with ``teacher_backbone``).
        teacher_template: the zero-shot teacher's template.
        n_ctx_vision: image prompt tokens per block.
        depth_vision: image blocks that see prompts, counting the input (9; 3 in the cross-dataset config).
        init_std: std of the N(0, std) image prompts.
        temperature: T of the distillation (1.0).
        kd_weight: weight of the distillation loss (1000; 200 on FGVCAircraft, Flowers and DTD).
    """

    inputs = ("teacher", "teacher_backbone", "teacher_pretrained")

    teacher: str = ""
    teacher_backbone: str = ""
    teacher_pretrained: str = ""
    teacher_template: str = "a photo of a {}."
    n_ctx_vision: int = option(4, low=1)
    depth_vision: int = option(9, low=1)
    init_std: float = option(0.02, low=0.0)
    temperature: float = option(1.0, low=1e-3)
    kd_weight: float = option(1000.0, low=0.0)


#: Where the recipes deliberately differ (METHODS.md: select on the last epoch or a held-out split, and say so).
_SELECTION = (
    "model selection deliberately not the release's: its TEST.FINAL_MODEL best_val picks the epoch on test images "
    "(datasets/*.py: val is the test split, the base classes' in base2novel, the target's in cross), which would "
    "select on the test set; select last here"
)


def _release(
    config: str, source: str, protocols: tuple[str, ...], *, depth: int, kd_weight: float, datasets: tuple = ()
) -> Recipe:
    """A recipe of the release: ``configs/trainers/PromptKD/<config>.yaml`` (20 epochs, batch 8, lr 0.005, 4 image
    prompt tokens, T 1) with its depth and the scripts' KD_WEIGHT."""
    return dassl_recipe(
        f"{PROMPTKD_REPO}:configs/trainers/PromptKD/{config}.yaml, {source}; {_SELECTION}",
        protocols,
        datasets=datasets,
        epochs=20,
        batch_size=8,
        lr=0.005,
    ).with_options(n_ctx_vision=4, depth_vision=depth, temperature=1.0, kd_weight=kd_weight)


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) over the processes, whose gradient is the all-reduced gradient."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        torch.distributed.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


def _global_sum(x: Tensor) -> Tensor:
    return _SumOverProcesses.apply(x) if dist.is_distributed() else x


class GlobalBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch: under DDP the per-feature sums are
    all-reduced over the processes (differentiably), so two processes compute what one does on their union."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        x = x.float()
        count = _global_sum(x.new_tensor(float(x.shape[0])))
        if count < 2:
            raise ValueError("BatchNorm in training needs at least 2 images in the batch")
        mean = _global_sum(x.sum(0)) / count
        var = _global_sum(((x - mean) ** 2).sum(0)) / count
        with torch.no_grad():
            assert self.running_mean is not None and self.running_var is not None  # track_running_stats
            assert self.num_batches_tracked is not None and self.momentum is not None
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * count / (count - 1), self.momentum)
            self.num_batches_tracked.add_(1)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)) summed and divided by the number of logits."""
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student.float() / t, dim=1),
        F.log_softmax(teacher.float() / t, dim=1),
        reduction="sum",
        log_target=True,
    )
    return kl * t * t / student.numel()


def load_teacher(config: PromptKDConfig, backbone: Backbone, labels: ClassNames) -> Teacher:
    """The teacher the options name, on the student's device, scoring ``labels``."""
    if config.teacher == ZEROSHOT_TEACHER:
        from .zeroshot import ZeroShot, ZeroShotConfig

        return Teacher(ZeroShot(backbone, labels, ZeroShotConfig(templates=[config.teacher_template])), backbone)
    if not config.teacher:
        raise MethodOptionError(
            "promptkd needs option teacher: a saved prompt directory (e.g. PromptSRC trained with labels on a "
            "larger backbone) or 'zeroshot'"
        )
    from ..predict import backbone_for_prompt

    try:
        name, pretrained = config.teacher_backbone or None, config.teacher_pretrained or None
        teacher_backbone = backbone_for_prompt(config.teacher, name, pretrained, device=str(backbone.device))
    except VlpromptError as err:
        if not (config.teacher_backbone or _is_prompt(config.teacher)):
            raise
        raise BackboneError(
            f"promptkd teacher {config.teacher}: its backbone cannot be loaded ({err}); set teacher_backbone "
            "(and teacher_pretrained) to where it is"
        ) from None
    return Teacher.from_pretrained(config.teacher, teacher_backbone)


def _is_prompt(directory: str) -> bool:
    from ..prompts import read_prompt_config

    try:
        read_prompt_config(directory)
    except VlpromptError:
        return False
    return True


class PromptKD(PromptMethod):
    """A student with image prompts and a projector, scoring with its teacher's class features."""

    name = "promptkd"
    Config = PromptKDConfig
    config: PromptKDConfig
    labels: ClassNames
    changes_image_tower = True
    learns_without_labels = True
    recipes = {
        "default": _release(
            "vit_b16_c2_ep20_batch8_4+4ctx",
            "scripts/promptkd/base2new_train.sh (SHOTS 0: every training image)",
            ("base-to-new",),
            depth=9,
            kd_weight=1000.0,
        ),
        # base2new_train.sh's comment: KD_WEIGHT 200 on these three, 1000 on the other eight
        "kd200": _release(
            "vit_b16_c2_ep20_batch8_4+4ctx",
            "scripts/promptkd/base2new_train.sh (comment: KD_WEIGHT 200)",
            ("base-to-new",),
            depth=9,
            kd_weight=200.0,
            datasets=("fgvc_aircraft", "oxford_flowers", "dtd"),
        ),
        # MODAL cross: a student per target dataset, on all its training images, unlabeled, from the teacher trained
        # on ImageNet (vlprompt bench cross-dataset: teacher "bench:promptsrc", every target's images)
        "cross-dataset": _release(
            "vit_b16_c2_ep20_batch8_4+4ctx_cross_datasets",
            "scripts/promptkd/xd_train.sh (SHOTS 0, SUBSAMPLE_CLASSES all, KD_WEIGHT 1000, TEMPERATURE 1, MODAL "
            "cross), trainers/promptkd.py:316-317 (the ImageNet teacher); datasets/*.py (MODAL cross: the target's "
            "train split)",
            ("cross-dataset",),
            depth=3,
            kd_weight=1000.0,
        ),
    }
    # the student distils the PromptSRC row that the same bench trains first (two stages, teacher and student on
    # the bundled model: there is no smaller tiny CLIP), and a one-stage row with the un-prompted model as teacher
    builtin_rows = (
        BuiltinRow(
            "promptkd",
            CPU_VISUAL.but(lr=0.005, batch_size=8).with_options(teacher="bench:promptsrc", depth_vision=3),
            default=False,
        ),
        BuiltinRow(
            "promptkd-zeroshot-teacher",
            CPU_VISUAL.but(lr=0.005, batch_size=8).with_options(teacher=ZEROSHOT_TEACHER, depth_vision=3),
            default=False,
        ),
    )
    tiny = Recipe(options={"teacher": ZEROSHOT_TEACHER, "depth_vision": 2, "kd_weight": 1.0})
    template_option = None
    class_features: Tensor

    def __init__(self, backbone: Backbone, labels: Sequence[str], config: PromptKDConfig | None = None):
        super().__init__(backbone, labels, config)
        cfg = self.config
        backbone.check_token_prompts(cfg.depth_vision)
        self.teacher = load_teacher(cfg, backbone, self.labels)
        teacher_dim = self.teacher.backbone.embed_dim
        shape = (cfg.depth_vision, cfg.n_ctx_vision, backbone.vision_width)
        self.vision = nn.Parameter(nn.init.normal_(torch.empty(shape), std=cfg.init_std))
        self.projector = nn.Sequential(
            nn.Linear(backbone.embed_dim, teacher_dim),
            GlobalBatchNorm(teacher_dim),
            nn.ReLU(),
            nn.Linear(teacher_dim, teacher_dim),
        )
        self.to(backbone.device)
        self._labels_changed(backbone)

    def _labels_changed(self, backbone: Backbone) -> None:
        teacher, where = self.teacher.method, self.config.teacher or "teacher"
        if teacher.label_kind is not ClassNames:
            raise OptionError(f"promptkd teacher {where} scores {teacher.label_kind.kind}, the student scores classes")
        if not teacher.transfers_to_new_classes and teacher.labels != self.labels:
            raise OptionError(
                f"promptkd teacher {where} ({teacher.name}) learned the classes {teacher.labels.display_names()} and "
                f"cannot score others; the student's are {list(self.labels.names)}"
            )
        self.teacher.set_classes(self.labels)
        text = self.teacher.text_features()
        if text is None:
            raise OptionError(
                f"promptkd teacher {where} ({teacher.name}) has no class features independent of the image"
            )
        self.register_buffer("class_features", F.normalize(text.float(), dim=-1).to(backbone.device), persistent=False)

    def image_features(self, backbone: Backbone, batch: Batch) -> Tensor:
        vision = self.vision
        assert batch.pixels is not None  # it changes the image tower: batches carry pixels
        features = backbone.encode_image(batch.pixels, token_prompts=vision[0], deep_prompts=list(vision[1:]))
        return self.projector(features.float())

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        return self.class_features

    def loss(self, backbone: Backbone, batch: Batch, logits: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """The distillation loss (labels unused): the teacher scores the batch's pixels."""
        if batch.pixels is None:
            raise ValueError("promptkd's loss needs the batch's pixels for its teacher")
        teacher_logits = self.teacher.logits(batch.pixels).to(logits.device)
        return self.config.kd_weight * distillation_loss(logits, teacher_logits, self.config.temperature)

    def prompt_record(self) -> dict:
        return {"teacher": self.teacher.identity()}
