"""Linear probe: a linear classifier on frozen image features, trained by the engine or fitted by scikit-learn.

With ``solver: sklearn`` it is CoOp's linear-probe baseline (KaiyangZhou/CoOp@ff61507:lpclip/linear_probe.py,
features from lpclip/feat_extractor.py): scikit-learn's L-BFGS logistic regression (L2 penalty, max_iter 1000,
everything else sklearn's default; no random_state, which L-BFGS never reads) on the raw image features (the visual
tower's output, never normalised; the evaluation transform on every split), with its inverse regularisation C chosen
on the validation split by the release's search (:func:`search_c`). The classifier of the last search step is kept;
its ``coef_`` and ``intercept_`` become the head's W and b, so the prompt file, prediction and evaluation are those
of any linear probe (a two-class fit's one row w becomes the rows [0, w], which give the same predictions and
probabilities).

Where it differs from the release: the few-shot training and validation images are vlprompt's draws (the
release samples K training and min(K, 4) validation images a class with ``np.random.seed(seed)`` from the full
splits: the same counts, other images); the features come from the backbone at its precision (the release's from
fp16 RN50); sklearn's ``penalty="l2"`` is not passed (its default, and deprecated from scikit-learn 1.8).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone
from ..errors import DataError
from ..labels import ClassNames
from .base import Batch, BuiltinRow, MethodConfig, MethodInputError, MethodOptionError, PromptMethod, Recipe, option
from .recipes import COOP_REPO
from .zeroshot import ensemble_text_features

if TYPE_CHECKING:
    from ..data.images import LabeledImages
    from ..features import FeatureCache

#: The release's first sweep of C, in its order (lpclip/linear_probe.py: ``search_list``).
C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
LPCLIP_SOURCE = f"{COOP_REPO}:lpclip/linear_probe.py, lpclip/feat_extractor.py"


@dataclass
class LinearProbeConfig(MethodConfig):
    """Attributes:
    init: "random" (the CoOp paper's baseline) or "zeroshot" (start from the zero-shot classifier
        of ``template``, scaled by the logit scale); solver "engine" only.
    template: template for the zero-shot initialisation.
    solver: "engine": the engine trains the head on L2-normalised features (the training recipe's optimizer and
        schedule); "sklearn": CoOp's baseline, scikit-learn's L-BFGS logistic regression on the raw features,
        fitted at setup and C searched on the validation split, nothing trained (``pip install 'vlprompt[sklearn]'``).
    C: solver "sklearn": fit once with this inverse regularisation at setup and search nothing (e.g. data without
        a validation split); None: search it on the validation split (a run without one is an error).
    c_grid: the search's first sweep of C (the release's, in its order: the first best wins).
    search_steps: the search's refinement steps after the sweep (the release's ``--num_step 8``).
    max_iter: L-BFGS iterations of each fit (the release's 1000).
    """

    init: str = option("random", choices=("random", "zeroshot"))
    template: str = "a photo of a {}."
    solver: Literal["engine", "sklearn"] = "engine"
    C: float | None = None
    c_grid: list[float] = field(default_factory=lambda: list(C_GRID))
    search_steps: int = option(8, low=1)
    max_iter: int = option(1000, low=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        name = self.method_name or "linear-probe"
        if self.C is not None and not 0 < self.C < math.inf:
            raise MethodOptionError(f"{name} option C must be a number > 0 (or null: searched), not {self.C!r}")
        if not self.c_grid or not all(0 < c < math.inf for c in self.c_grid):
            raise MethodOptionError(f"{name} option c_grid must be a non-empty list of numbers > 0, not {self.c_grid}")
        if self.solver == "sklearn" and self.init != "random":
            raise MethodOptionError(
                f"{name} option init {self.init!r} is for solver 'engine' (sklearn fits from scratch)"
            )


def _logistic_regression() -> Any:
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as err:
        raise MethodOptionError(
            f"linear-probe solver 'sklearn' needs scikit-learn: pip install 'vlprompt[sklearn]' ({err})"
        ) from None
    return LogisticRegression


def fit_logistic(features: np.ndarray, labels: np.ndarray, c: float, max_iter: int = 1000) -> Any:
    """The release's classifier: sklearn's ``LogisticRegression(solver="lbfgs", max_iter, C)`` fitted on the arrays."""
    return _logistic_regression()(solver="lbfgs", max_iter=max_iter, C=c).fit(features, labels)


def search_c(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    grid: Sequence[float] = C_GRID,
    steps: int = 8,
    max_iter: int = 1000,
) -> tuple[float, Any]:
    """(C, classifier): the release's search (lpclip/linear_probe.py) of C on the validation arrays.

    A fit for each C of ``grid``; around the first with the most validation images right, c_peak, the range
    [c_peak / 10, c_peak · 10]. Then ``steps`` times: fit both ends; the right end wins only when strictly more
    validation images are right with it (a tie keeps the left); the range becomes the winner and the midpoint, in
    log10, of the two ends. The winner of the last step is the answer (c_peak itself is never refitted).
    """
    (train_x, train_y), (val_x, val_y) = train, val

    def fitted(c: float) -> tuple[Any, int]:
        model = fit_logistic(train_x, train_y, c, max_iter)
        return model, int((model.predict(val_x) == val_y).sum())

    correct = [fitted(c)[1] for c in grid]
    peak = grid[int(np.argmax(correct))]
    left, right = 1e-1 * peak, 1e1 * peak
    chosen, model = left, None
    for _ in range(steps):
        (model_left, correct_left), (model_right, correct_right) = fitted(left), fitted(right)
        middle = 0.5 * (np.log10(right) + np.log10(left))
        if correct_left < correct_right:
            chosen, model = right, model_right
            left, right = middle, np.log10(right)
        else:
            chosen, model = left, model_left
            left, right = np.log10(left), middle
        left, right = np.power(10, left), np.power(10, right)
    return float(chosen), model


class LinearProbe(PromptMethod):
    """``logits = W · normalize(image feature) + b`` (solver "engine"), or ``W · image feature + b`` (solver
    "sklearn": fitted at setup, C searched on validation, nothing trained; the C it kept is saved with W and b)."""

    name = "linear-probe"
    Config = LinearProbeConfig
    config: LinearProbeConfig
    labels: ClassNames
    recipes = {
        "default": Recipe(
            train={
                "epochs": 100,
                "optimizer": "adamw",
                "lr": 1e-3,
                "weight_decay": 1e-4,
                "schedule": "cosine",
                "warmup_epochs": 0,
            },
            source="vlprompt's: AdamW with a cosine schedule on frozen features; CoOp's baseline is the preset "
            "linear-probe-lpclip (solver sklearn)",
        ),
        "lpclip": Recipe(
            options={"solver": "sklearn"},
            source=f"{LPCLIP_SOURCE} (fitted and searched, never trained: no training field applies)",
        ),
    }
    builtin_rows = (
        BuiltinRow(
            "linear-probe",
            Recipe(
                train={
                    "epochs": 60,
                    "batch_size": 64,
                    "optimizer": "adamw",
                    "lr": 1e-2,
                    "weight_decay": 1e-4,
                    "schedule": "cosine",
                    "warmup_epochs": 0,
                },
                source="vlprompt's CPU recipe for the built-in benchmark",
            ),
        ),
    )
    tiny = Recipe(options={"init": "zeroshot"})
    template_option = "template"
    C: Tensor
    scores_with_text = False
    transfers = False

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: LinearProbeConfig | None = None):
        super().__init__(backbone, classes, config)
        self.head = nn.Linear(backbone.embed_dim, len(self.labels)).to(backbone.device)
        if self.config.solver == "sklearn":
            self.learns, self.sets_up = False, True
            self.head.requires_grad_(False)
            # the C of the fit held (saved with W and b); NaN: not fitted yet
            self.register_setup_state("C", torch.tensor(math.nan, dtype=torch.float64, device=backbone.device))
            self._train_arrays: tuple[np.ndarray, np.ndarray] | None = None
        elif self.config.init == "zeroshot":
            with torch.no_grad():
                feats = ensemble_text_features(backbone, self.labels.names, [self.config.template])
                self.head.weight.copy_(feats * backbone.logit_scale)
                self.head.bias.zero_()
        elif self.config.init != "random":
            raise MethodOptionError(f"linear-probe init must be 'random' or 'zeroshot', not {self.config.init!r}")

    @classmethod
    def capabilities(cls, config: MethodConfig | None = None) -> dict[str, bool]:
        config = config if config is not None else cls.Config()
        flags = super().capabilities(config)
        fitted = config.solver == "sklearn"  # type: ignore[attr-defined]
        flags["learns"], flags["sets_up"] = not fitted, fitted
        return flags

    @classmethod
    def default_preset(cls, options: Mapping[str, Any]) -> str | None:
        return f"{cls.name}-lpclip" if options.get("solver") == "sklearn" else super().default_preset(options)

    # ---------------------------------------------------------------- solver "sklearn"
    def setup(self, backbone: Backbone, train_set: LabeledImages, cache: FeatureCache) -> None:
        """Solver "sklearn": the training features (kept for :meth:`tune`), and the fit itself where C is set."""
        if self.config.solver != "sklearn":
            return
        _logistic_regression()  # the missing extra, before any work
        counts = np.bincount(np.asarray(train_set.labels, dtype=np.int64), minlength=self.num_classes)
        if self.num_classes < 2 or not len(train_set) or (counts == 0).any():
            empty = [self.labels.names[i] for i in np.flatnonzero(counts == 0)][:5]
            raise DataError(
                f"{self.name} (solver sklearn) fits one output per class from at least two classes, each with "
                f"training images; class(es) {empty} have none: give --data.shots >= 1 and every class"
            )
        self._train_arrays = self._arrays(backbone, train_set, cache)
        if self.config.C is not None:
            self._hold(self.config.C, fit_logistic(*self._train_arrays, self.config.C, self.config.max_iter))

    def tune(self, backbone: Backbone, val_set: LabeledImages, cache: FeatureCache) -> None:
        """Solver "sklearn" without a set C: the release's search of C on the validation images (:func:`search_c`)."""
        if self.config.solver != "sklearn" or self.config.C is not None:
            return
        if self._train_arrays is None:
            raise MethodInputError(
                f"{self.name} searches C with the training features its setup keeps: set it up first"
            )
        if not len(val_set):
            raise DataError(f"{self.name} searches C on the validation split, and it is empty")
        cfg = self.config
        val = self._arrays(backbone, val_set, cache)
        self._hold(*search_c(self._train_arrays, val, cfg.c_grid, cfg.search_steps, cfg.max_iter))
        self._train_arrays = None  # the fit is held: the features are not needed again

    def _arrays(self, backbone: Backbone, data: LabeledImages, cache: FeatureCache) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of ``data`` as float64 arrays: the raw features of the evaluation transform."""
        data = data.with_transform(backbone.image_transform())
        features = cache.features(backbone, data, progress=False)
        return features.double().cpu().numpy(), np.asarray(data.labels, dtype=np.int64)

    def _hold(self, c: float, model: Any) -> None:
        """W and b of a fitted sklearn classifier in the head, and its C."""
        if list(model.classes_) != list(range(self.num_classes)):
            raise MethodInputError(
                f"{self.name}: the fit's classes {list(model.classes_)} are not 0..{self.num_classes - 1}"
            )
        weight, bias = np.asarray(model.coef_), np.asarray(model.intercept_)
        if weight.shape[0] == 1:  # two classes: sklearn's one row w scores class 1 against 0, as the rows [0, w]
            weight, bias = np.concatenate([np.zeros_like(weight), weight]), np.concatenate([[0.0], bias])
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(weight))
            self.head.bias.copy_(torch.from_numpy(bias))
            self.C.fill_(c)

    # ---------------------------------------------------------------- scoring
    def logits(self, backbone: Backbone, batch: Batch, text: Tensor | None = None) -> Tensor:
        image = self.image_features(backbone, batch)
        if self.config.solver != "sklearn":
            return self.head(F.normalize(image.float(), dim=-1))
        if bool(self.C.isnan()):
            raise MethodInputError(
                f"{self.name} (solver sklearn) is not fitted: with option C unset, C is searched on the validation "
                "split after setup, and this run has none (a split file's val, --data.val_dir); or set option C to "
                "fit at setup without a search"
            )
        with torch.autocast(image.device.type, enabled=False):  # fp32, on the raw features sklearn fitted
            return self.head(image.float())
