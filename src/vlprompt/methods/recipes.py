"""Recipes as data (:class:`Recipe`, :class:`BuiltinRow`) and the pieces several methods share: the pinned
releases, Dassl's CoOp schedule and the built-in benchmark's CPU recipes.

Each method declares its own recipes (``PromptMethod.recipes``, ``builtin_rows``) in its module; this
module holds only what several of them start from, as :class:`~vlprompt.methods.base.Recipe` data (fields
of the engine's ``TrainConfig``; fields not named keep its defaults: SGD, lr 0.002, momentum 0.9, weight
decay 5e-4, batch 32, Dassl's per-epoch cosine with one constant warmup epoch at 1e-5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """A training recipe as data: fields of the engine's ``TrainConfig``, the method options it sets, its source.

    Attributes:
        train: ``TrainConfig`` fields (the rest keep their defaults).
        options: method options the recipe sets (the user's ``--method_options`` apply on top).
        source: where it comes from: ``repo@commit:path`` of the authors' release, or why it is ours.
        epochs_by_shots: ``((K, epochs), ...)``: the epochs of the first row whose K >= the run's shots
            (the last row beyond), e.g. CoOp's 50 / 100 / 200 epochs by shots.
        steps_per_shot: train for this many optimizer steps per shot (``max_steps`` = it x shots; 0: by epochs),
            e.g. CLIP-LoRA's 500.
        protocols: the bench protocols ("few-shot", "base-to-new", "cross-dataset", "domain-generalisation")
            its authors ran with it (empty: not a paper protocol's recipe).
        datasets: the registry datasets it is the authors' recipe for within those protocols (empty: any).
    """

    train: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    epochs_by_shots: tuple[tuple[int, int], ...] = ()
    steps_per_shot: int = 0
    protocols: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()

    def train_fields(self, shots: int = 16) -> dict[str, Any]:
        """The ``TrainConfig`` fields for a ``shots``-shot run."""
        fields = dict(self.train)
        if self.epochs_by_shots:
            fields["epochs"] = next((e for k, e in self.epochs_by_shots if shots <= k), self.epochs_by_shots[-1][1])
        if self.steps_per_shot and shots:
            fields["max_steps"] = self.steps_per_shot * shots
        return fields

    def but(self, source: str = "", **train: Any) -> Recipe:
        """This recipe with some ``TrainConfig`` fields replaced (and a note of why, added to its source)."""
        note = f"{self.source}; {source}" if self.source and source else source or self.source
        return dataclasses.replace(self, train={**self.train, **train}, source=note)

    def with_options(self, **options: Any) -> Recipe:
        """This recipe setting method options too."""
        return dataclasses.replace(self, options={**self.options, **options})

    def covers(self, protocol: str, dataset: str | None = None) -> bool:
        """Whether its authors ran ``protocol`` (on ``dataset``, where given) with this recipe."""
        return protocol in self.protocols and (not self.datasets or dataset is None or dataset in self.datasets)


@dataclass(frozen=True)
class BuiltinRow:
    """A row of the built-in benchmark's tables (the demo's, and ``vlprompt bench`` on the built-in views).

    The table follows the method's label space: classes (the few-shot table), attribute-object pairs (the
    compositional table) or tasks (the multi-task table); ``per_task`` puts a single-task method in the
    multi-task table, run once per task.

    Attributes:
        label: the row's name (``vlprompt demo --methods LABEL``).
        recipe: its CPU-sized recipe and options.
        default: whether ``vlprompt demo`` runs it without ``--methods``.
        per_task: a single-task method's row of the multi-task table.
    """

    label: str
    recipe: Recipe
    default: bool = True
    per_task: bool = False


# The authors' releases, pinned (a recipe cites ``<repo>:<path>``).
COOP_REPO = "KaiyangZhou/CoOp@ff61507c790454bce7c5052c3ac39e60772f1f89"
MPL_REPO = "muzairkhattak/multimodal-prompt-learning@69bce21ae8eda80ad6187534b2dce09cf6c59e17"
PROMPTSRC_REPO = "muzairkhattak/PromptSRC@bb95c77b634d63488f2cad81ff4a72d53bdd06d5"
KGCOOP_REPO = "htyao89/KgCoOp@c43ccc32c8739f64b165cfa205fcc6c0f5bb5b17"
CLIP_LORA_REPO = "MaxZanella/CLIP-LoRA@358f0d7361f59e66c0b2d0b672a3dafb143a759b"
VP_REPO = "hjbahng/visual_prompting@679e71fc888cbd8cecc37f66284dc3c44e554832"
VPT_REPO = "KMnP/vpt@4410440ec1b489f24f66b9fad3d9b10ff3443567"
CSP_REPO = "BatsResearch/csp@029a4afb37f8e30c30188d57fdd63f9da541d32f"
SOFTCPT_REPO = "kding1225/softcpt@7cab4b9ce4b049212591be131d2fb663ebd6df26"
DASSL_REPO = "KaiyangZhou/Dassl.pytorch@c61a1b570ac6333bd50fb5ae06aea59002fb20bb"
#: UPT's code as its first author released it (the authors' own repository holds only its README).
UPT_REPO = "pedramyamini2023/UPT@3d1640fcfd2532fd651041bc955fc5baff51c71f"

#: CoOp's epochs by shots (COOP.md's commands: rn50_ep50 at 1 shot, rn50_ep100 at 2-4, rn50 (200) at 8-16).
COOP_EPOCHS_BY_SHOTS = ((1, 50), (4, 100), (16, 200))

#: The bench protocols that train on ImageNet and test on other datasets (one recipe in every release).
TRANSFER = ("cross-dataset", "domain-generalisation")
#: CoOp's few-shot datasets on which PromptSRC's few-shot config sets GPA mean 45, std 5 (30 / 30 elsewhere).
PROMPTSRC_GPA45 = ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat")


def dassl_recipe(
    source: str,
    protocols: tuple[str, ...],
    *,
    epochs: int | None = None,
    epochs_by_shots: tuple[tuple[int, int], ...] = (),
    datasets: tuple[str, ...] = (),
    dassl: str = DASSL_REPO + ":",
    **train: Any,
) -> Recipe:
    """A Dassl-based release's recipe (CoOp, CoCoOp, KgCoOp, MaPLe, IVLP, VPT-on-CLIP, PromptSRC).

    ``dassl``: where the release's Dassl is, as "repo@commit:folder/" (a release that bundles its own copy, e.g.
    KgCoOp's Dassl.ProGrad.pytorch, cites that copy's defaults).

    What they share: SGD with Dassl's ``OPTIM`` defaults (momentum 0.9, weight decay 5e-4, no Nesterov), the
    per-epoch cosine after one constant warmup epoch at 1e-5 (``LR_SCHEDULER: cosine``, ``WARMUP_*``),
    random-resized crops (scale 0.08-1, ``INPUT.RRCROP_SCALE``) and flips (``INPUT.TRANSFORMS``), fp16
    (``PREC: fp16``, every config's and trainer's default), the last epoch (the test scripts load it), and
    the last partial batch dropped (Dassl's ``drop_last``, as vlprompt's loop). A method that leaves the image
    tower untouched trains on cached features of each epoch's augmented views (``cache_features`` automatic:
    the same views and losses as the pixels through the tower, :mod:`vlprompt.feed`).
    """
    train = {**({"epochs": epochs} if epochs is not None else {}), **train}
    shared = {
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "dassl-cosine",
        "warmup_epochs": 1,
        "warmup_lr": 1e-5,
        "augment": True,
        "precision": "fp16",
        "select": "last",
    }
    fields = {**train, **{k: v for k, v in shared.items() if k not in train}}  # the recipe's own fields first
    dassl = f"{dassl}dassl/config/defaults.py, dassl/data/data_manager.py"
    return Recipe(
        train=fields,
        source=f"{source}; {dassl}",
        epochs_by_shots=epochs_by_shots,
        protocols=protocols,
        datasets=datasets,
    )


#: The MaPLe release's baselines (VPT, IVLP, language prompting) on cross-dataset transfer: what their scripts do.
MPL_XD_NOTE = (
    "the xd_test_*.sh scripts load epoch 2 (--load-epoch 2, line 30), which a 5-epoch run never saves (Dassl's "
    "CHECKPOINT_FREQ 0 saves the last): the 5 trained epochs are kept here"
)
#: The MaPLe release's VPT trainer run (deep image prompts on CLIP): the recipe of ``vpt`` and of IVLP's
#: vision-only variant, which each add their own options.
MPL_VPT_RECIPE = dassl_recipe(
    f"{MPL_REPO}:configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml, scripts/vpt/base2new_train_vpt.sh, "
    f"xd_train_vpt.sh, trainers/vpt.py; {MPL_XD_NOTE}",
    ("base-to-new", *TRANSFER),
    epochs=5,
    batch_size=4,
    lr=0.0025,
)

# ---------------------------------------------------------------- the built-in benchmark (CPU-sized)
_CPU = "vlprompt's CPU recipe for the built-in benchmark (runs/demo), not a paper's"
#: Text prompts: SGD at a 10x lr for the short run.
CPU_SGD = Recipe(
    train={"epochs": 20, "batch_size": 32, "lr": 0.002, "schedule": "dassl-cosine", "warmup_epochs": 1},
    source=_CPU,
)
#: Image-side prompts: per-step cosine with warmup (VP's lr is the paper's 40).
CPU_VISUAL = Recipe(
    train={"epochs": 10, "batch_size": 32, "momentum": 0.9, "schedule": "cosine", "warmup_epochs": 1}, source=_CPU
)
#: Backbone deltas (CLIP-LoRA, full fine-tuning): AdamW, per-step cosine, no warmup.
CPU_ADAMW = Recipe(
    train={"epochs": 10, "batch_size": 32, "optimizer": "adamw", "schedule": "cosine", "warmup_epochs": 0}, source=_CPU
)
#: Two-tower prompts: MaPLe's recipe (lr 0.0035 at batch 4) at batch 32, its lr scaled with the batch.
CPU_TWO_TOWER = CPU_SGD.but(epochs=10, lr=0.02)
#: The built-in multi-task collection's recipe (4 shots a class; every method of the multi-task table).
CPU_MULTITASK = CPU_SGD.but(epochs=10, lr=0.02)


def csp_recipe(lr: float, source: str) -> Recipe:
    """CSP's recipe (shared by its compositional baselines): Adam with L2 decay 1e-5, no schedule, 20 epochs,
    batch 128 (64 x 2 accumulation) with the last partial batch kept (train.py:34-38, a plain DataLoader), fp16 (the
    CLIP model in fp16 on the GPU, clip_modules/interface.py:45-50), the last epoch (README.md: evaluate.py loads
    soft_embeddings_epoch_20.pt; ``--train.select best --train.eval_every 1`` picks it on validation AUC instead),
    and its training augmentation (``augmentation csp``: flips, RandomPerspective and RandomRotation(5) of the
    centre crop, datasets/composition_dataset.py:47-63; cached features of each epoch's views)."""
    train = {
        "epochs": 20,
        "batch_size": 128,
        "optimizer": "adam",
        "lr": lr,
        "weight_decay": 1e-5,
        "schedule": "constant",
        "warmup_epochs": 0,
        "drop_last": False,
        "precision": "fp16",
        "augment": True,
        "augmentation": "csp",
    }
    views = "datasets/composition_dataset.py (transform_image, train)"
    return Recipe(train=train, source=f"{source}; README.md (evaluation: epoch 20), clip_modules/interface.py, {views}")


_CSP = f"{CSP_REPO}:README.md (MIT-States command), train.py; the paper's per-dataset lr"
#: CSP's recipes per dataset (lr 5e-5 on MIT-States and C-GQA, 5e-4 on UT-Zappos); the default is MIT-States'.
CSP_RECIPES = {
    "default": csp_recipe(5e-5, _CSP),
    "mit-states": csp_recipe(5e-5, _CSP),
    "ut-zappos": csp_recipe(5e-4, _CSP),
    "cgqa": csp_recipe(5e-5, _CSP),
}
_CSP_OWN = (
    f"{CSP_REPO}:README.md (--attr_dropout 0.3, MIT-States; 0.2 with --lr 5e-04 in its UT-Zappos command, the "
    "mixed-vocabulary ablation's mix/mix_train.py)"
)
#: CSP's own recipes: its baselines' with CSP's vocabulary (attribute) dropout per dataset.
CSP_OWN_RECIPES = {
    **CSP_RECIPES,
    "default": CSP_RECIPES["default"].with_options(vocab_dropout=0.3).but(_CSP_OWN),
    "mit-states": CSP_RECIPES["mit-states"].with_options(vocab_dropout=0.3).but(_CSP_OWN),
    "ut-zappos": CSP_RECIPES["ut-zappos"].with_options(vocab_dropout=0.2).but(_CSP_OWN),
}
#: CSP's UT-Zappos recipe sized for the built-in benchmark on a CPU: 150 steps instead of about 3,600, so a 10x
#: learning rate. CoOp and CSP share it, as in the CSP paper.
CPU_CZSL = CSP_RECIPES["ut-zappos"].but(
    _CPU, epochs=10, lr=5e-3, drop_last=True, precision="auto", select="best", eval_every=1, augment=False
)  # the loader, precision and selection the built-in numbers were measured with
