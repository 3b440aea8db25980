"""The method contract: what every prompt method holds, declares and computes.

A method holds only its trainable tensors (saved in its prompt file) and constant buffers
(registered non-persistent, rebuilt from the backbone). It scores a typed label space
(:mod:`vlprompt.labels`), declares its capabilities as class flags, and owns its logits, its loss
and its optimizer parameter groups; the engine only loops, steps, syncs, checkpoints and logs.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone
from ..errors import OptionError
from ..labels import ClassNames, LabelSpace
from .config import MethodConfig, MethodOptionError, option
from .recipes import BuiltinRow, Recipe

if TYPE_CHECKING:
    from ..data.images import LabeledImages
    from ..features import FeatureCache

#: The state-dict key suffix of a module's extra state (``nn.Module.get_extra_state``).
EXTRA_STATE_KEY = "_extra_state"


@dataclass
class Batch:
    """One batch of images: cached frozen features or preprocessed pixels, and what is known of them.

    Attributes:
        features: [B, D] frozen image features (methods that leave the image tower untouched).
        pixels: [B, 3, H, W] preprocessed images (methods that change the image tower, or no cache).
        targets: [B] label indices (task-local where there are tasks); None at inference.
        index: [B] positions of the samples in their dataset.
        task: [B] task ids, where a run has tasks.
        second_view: [B, D] in training, for a method that asks for it (:meth:`PromptMethod.needs_second_view`):
            the frozen tower's features of a second, independent view of each image (the image itself when
            training does not augment).
    """

    features: Tensor | None = None
    pixels: Tensor | None = None
    targets: Tensor | None = None
    index: Tensor | None = None
    task: Tensor | None = None
    second_view: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.features is None) == (self.pixels is None):
            raise ValueError("a batch holds either cached image features or pixels")

    def __len__(self) -> int:
        held = self.features if self.features is not None else self.pixels
        assert held is not None  # __post_init__: a batch holds one of them
        return len(held)


class MethodInputError(OptionError):
    """A method asked to score what it cannot (other classes than it learned, cached features where it changes
    the image tower)."""


#: The capability flags every method declares (class flags; :meth:`PromptMethod.capabilities` per config).
CAPABILITIES = (
    "changes_image_tower",
    "conditions_on_image",
    "scores_with_text",
    "learns",
    "transfers",
    "has_context",
    "changes_backbone",
    "sets_up",
    "adapts_at_test_time",
    "learns_without_labels",
)
#: What every registered method declares besides its capabilities (the contract suite checks each is its own).
DECLARATIONS = ("recipes", "builtin_rows", "tiny", "template_option")


class PromptMethod(nn.Module):
    """A prompt-learning method on a frozen backbone.

    Capabilities (class flags; the engine and the runs read only these, through :meth:`capabilities`):
        changes_image_tower: image features depend on learned tensors, so they are never cached and
            batches carry pixels.
        conditions_on_image: class text features depend on each image (no reuse across images).
        scores_with_text: logits are scaled cosines with class text features (False: a classifier
            head on image features).
        learns: has tensors to train (False: zero-shot).
        transfers: can score classes it was not trained on (``set_classes`` with new labels).
        has_context: holds learned context vectors ``ctx`` that ``nearest_words`` can interpret.
        changes_backbone: owns a backbone delta (e.g. LoRA); it is saved in the prompt file and
            folded into :meth:`cache_key`.
        sets_up: builds tensors from the training data in :meth:`setup` (e.g. a cache of few-shot
            features), registered with :meth:`register_setup_state` and saved in its prompt file.
        adapts_at_test_time: adapts to each test batch before scoring it (:meth:`adapted`); scoring feeds it
            pixels (it may augment them), read with its :meth:`test_views` where it has its own.
        learns_without_labels: its loss never reads the labels (e.g. PromptKD's distillation), so a transductive
            base-to-new run may hand it every class's training images (``class_split`` "base-to-new-transductive").

    What a method owns besides its tensors (every registered method declares each, see
    :data:`DECLARATIONS`; the registry and the contract suite check it):
        recipes: its authors' recipes by name: ``"default"`` (the paper's, preset ``<name>``) and variants
            per protocol or dataset (preset ``<name>-<key>``), each with its source.
        builtin_rows: its rows of the built-in benchmark's tables, with CPU-sized recipes.
        tiny: options (and training overrides) that keep it small and deterministic on the tiny test models.
        template_option: the option that takes the dataset's hand-written template ("templates": a list,
            "template": one string), or None when it scores with no hand template; ``templates_by_dataset``
            holds its authors' own template per dataset where they used one, ``authors_template`` the one
            template its authors used on every dataset (VP, VPT-on-CLIP, CLIP-LoRA), if so.

    Args:
        backbone: the frozen backbone (dimensions, tokenizer, word embeddings).
        labels: the label space scored (a :data:`~vlprompt.labels.LabelSpace` of ``label_kind``,
            or what ``label_kind.coerce`` accepts, e.g. a list of class names).
        config: the method's hyperparameters.
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    config: MethodConfig
    label_kind: ClassVar[type[LabelSpace]] = ClassNames
    labels: LabelSpace
    # the name and capability flags are class attributes that an instance may set from its config (not ClassVar)
    name: str
    changes_image_tower: bool = False
    conditions_on_image: bool = False
    scores_with_text: bool = True
    learns: bool = True
    transfers: bool = True
    has_context: bool = False
    changes_backbone: bool = False
    sets_up: bool = False
    adapts_at_test_time: bool = False
    learns_without_labels: bool = False

    recipes: ClassVar[Mapping[str, Recipe]] = {}
    builtin_rows: ClassVar[tuple[BuiltinRow, ...]] = ()
    tiny: ClassVar[Recipe] = Recipe()
    template_option: ClassVar[str | None] = None
    templates_by_dataset: ClassVar[Mapping[str, str]] = {}
    authors_template: ClassVar[str | None] = None

    def __init__(self, backbone: Backbone | None, labels: Any, config: MethodConfig | None = None):
        super().__init__()
        self.config = config if config is not None else self.Config()
        self.labels = self.label_kind.coerce(labels)

    # ---------------------------------------------------------------- what the method declares
    @classmethod
    def capabilities(cls, config: MethodConfig | None = None) -> dict[str, bool]:
        """The capability flags of the method built with ``config`` (default: the paper's options)."""
        config = config if config is not None else cls.Config()
        flags = {name: bool(getattr(cls, name)) for name in CAPABILITIES}
        flags["transfers"] = cls.transfers_with(config)
        return flags

    @classmethod
    def default_preset(cls, options: Mapping[str, Any]) -> str | None:
        """The preset a run of this method with ``options`` trains with unless it names one (None: TrainConfig's
        defaults): its own ``"default"`` recipe (a wrapper without one: the wrapped method's)."""
        return cls.name if "default" in cls.recipes else None

    @classmethod
    def tiny_recipe(cls, backbone: Backbone) -> Recipe:
        """:attr:`tiny` on ``backbone`` (a method may need other options on a tiny ResNet tower)."""
        return cls.tiny

    @classmethod
    def with_dataset_template(cls, options: Mapping[str, Any], dataset: str, template: str | None) -> dict[str, Any]:
        """``options`` with the template the method scores ``dataset`` with, unless the user set that option.

        The template is its authors' one template for every dataset (:attr:`authors_template`) where they used
        one, else their own for ``dataset`` (:attr:`templates_by_dataset`), else the dataset's (CoOp's table,
        ``template``); nothing is added for a method without hand templates.
        """
        options = dict(options)
        template = cls.authors_template or cls.templates_by_dataset.get(dataset, template)
        if cls.template_option is None or not template or cls.template_option in options:
            return options
        hint = typing.get_type_hints(cls.Config)[cls.template_option]
        takes_list = typing.get_origin(hint) in (list, tuple)
        return {**options, cls.template_option: [template] if takes_list else template}

    # ---------------------------------------------------------------- hooks
    def setup(self, backbone: Backbone, train_set: LabeledImages, cache: FeatureCache) -> None:
        """Run-loop hook before training, for every method (those that learn nothing too).

        A method that :attr:`sets_up` builds tensors from the training data here (e.g. a cache of the
        few-shot features, ``cache.features(backbone, train_set)``) with :meth:`register_setup_state`.
        Default: nothing.
        """

    def register_setup_state(self, name: str, tensor: Tensor) -> None:
        """A tensor built by :meth:`setup` (its size may depend on the data): saved in the prompt file."""
        self.register_buffer(name, tensor)
        if name not in getattr(self, "_setup_state", ()):
            self._setup_state = (*getattr(self, "_setup_state", ()), name)

    def expect_setup_state(self, tensors: Mapping[str, Tensor]) -> None:
        """Before loading a prompt file: make room for the setup state it holds, at the file's shapes."""
        for prefix, module in self.named_modules():  # a wrapped method's setup state too
            for name in getattr(module, "_setup_state", ()):
                key, current = f"{prefix}.{name}" if prefix else name, getattr(module, name)
                if key in tensors and tuple(current.shape) != tuple(tensors[key].shape):
                    module.register_buffer(name, torch.empty_like(tensors[key], device=current.device))

    def tune(self, backbone: Backbone, val_set: LabeledImages, cache: FeatureCache) -> None:
        """Run-loop hook after training (or instead of it, for a method that learns nothing), when the protocol
        has a validation set: choose hyperparameters without gradients on those held-out images (never on test),
        e.g. Tip-Adapter's (beta, alpha) grid search. What it chooses must be setup state, so that the prompt
        file carries it. Default: nothing."""

    @contextmanager
    def adapted(self, backbone: Backbone, batch: Batch) -> Iterator[None]:
        """Evaluation hook around scoring one test batch: a test-time method adapts to ``batch`` on entry
        (gradients are enabled there if it needs them) and restores its tensors on exit. Default: nothing."""
        yield

    def test_views(self, backbone: Backbone) -> Callable | None:
        """How a test-time method reads each test image file when scored: a transform of the PIL image (called
        with the image and its path where it is ``per_image``, e.g. a :class:`~vlprompt.data.images.SeededViews`)
        to what its batches' ``pixels`` hold per image (TPT: its [V, 3, H, W] augmented views); None (default):
        the backbone's evaluation transform."""
        return None

    # ---------------------------------------------------------------- label space
    @property
    def transfers_to_new_classes(self) -> bool:
        """Whether ``set_classes`` can score labels not seen in training (base-to-new)."""
        return self.transfers_with(self.config)

    @classmethod
    def transfers_with(cls, config: MethodConfig) -> bool:
        """Whether the method built with ``config`` can score new classes (known before building it)."""
        return cls.transfers

    def set_classes(self, backbone: Backbone, labels: Any) -> None:
        """Score another label space with the same learned tensors (see :attr:`transfers`)."""
        labels = self.label_kind.coerce(labels, self.labels)
        if not self.transfers_to_new_classes and labels != self.labels:
            raise MethodInputError(f"{self.name} learned one output per training class: it cannot score other classes")
        self.labels = labels
        self._labels_changed(backbone)

    def _labels_changed(self, backbone: Backbone) -> None:
        """Rebuild whatever depends on ``self.labels`` (constant buffers, layouts)."""

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def class_names(self) -> list[str]:
        """Display names of the labels scored, in logit order."""
        return self.labels.display_names()

    # ---------------------------------------------------------------- scoring
    def image_features(self, backbone: Backbone, batch: Batch) -> Tensor:
        """The batch's image features: cached ones, or its pixels through the (prompted) image tower."""
        if batch.features is not None:
            return batch.features
        assert batch.pixels is not None  # a batch holds features or pixels
        return backbone.encode_image(batch.pixels)

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        """[C, D] class features, or [B, C, D] when ``conditions_on_image``."""
        raise NotImplementedError(f"{self.name} does not score with text features")

    def reusable_text_features(self, backbone: Backbone) -> Tensor | None:
        """Class features to encode once and reuse for every evaluation batch (None: not reusable)."""
        if self.scores_with_text and not self.conditions_on_image and not self.adapts_at_test_time:
            return self.text_features(backbone)
        return None

    def logits(self, backbone: Backbone, batch: Batch, text: Tensor | None = None) -> Tensor:
        """[B, C] logits = scale · cos(image, class); pass ``text`` to reuse encoded class features."""
        image = self.image_features(backbone, batch)
        if text is None:
            text = self.text_features(backbone, image if self.conditions_on_image else None)
        return cosine_logits(image, text, backbone.logit_scale)

    def score(self, backbone: Backbone, batch: Batch, text: Tensor | None = None) -> Tensor:
        """[B, C] logits of one evaluation batch: every scoring path (evaluation, predict, CZSL, bench) calls this.

        A method that changes the image tower refuses cached frozen features; a test-time method adapts to
        the batch first and restores its tensors afterwards (:meth:`adapted`).
        """
        if batch.features is not None and self.changes_image_tower:
            raise MethodInputError(
                f"{self.name} changes the image tower: it must see pixels, not cached frozen image features"
            )
        with self.adapted(backbone, batch):
            return self.logits(backbone, batch, text)

    def loss(self, backbone: Backbone, batch: Batch, logits: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """The training objective (cross-entropy over the label space; methods add regularisers)."""
        assert batch.targets is not None  # a training batch
        return F.cross_entropy(logits.float(), batch.targets, label_smoothing=label_smoothing)

    def predicted_labels(self, batch: Batch, logits: Tensor) -> Tensor:
        """[B] predicted labels in the batch's label space (task-local where there are tasks)."""
        return logits.argmax(-1)

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups (one group of every trainable tensor by default)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def forward(self, backbone: Backbone, batch: Batch, text: Tensor | None = None) -> Tensor:
        return self.logits(backbone, batch, text)

    def end_epoch(self, epoch: int, epochs: int) -> None:
        """Engine hook after training epoch ``epoch`` (0-based) of ``epochs``, before validation and the checkpoint.

        Default: nothing. A method that keeps training state besides its tensors (e.g. PromptSRC's running
        average of its prompts over epochs) keeps it as module extra state (``get_extra_state`` /
        ``set_extra_state``): checkpoints carry it, prompt files do not.
        """

    # ---------------------------------------------------------------- files and caches
    def save_pretrained(self, directory: str | Path, backbone: Backbone, extra: dict[str, Any] | None = None) -> Path:
        """Write this method as a prompt directory (prompt.json and safetensors, see :mod:`vlprompt.prompts`)."""
        from ..prompts import save_pretrained

        return save_pretrained(self, backbone, directory, extra)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, backbone: Backbone | None = None, strict_backbone: bool = False
    ) -> PromptMethod:
        """Load a prompt directory onto ``backbone`` (default: the backbone it records); on a method class, the
        prompt must be of that method (``CoOp.from_pretrained(dir)``), on ``PromptMethod`` any method."""
        from ..predict import backbone_for_prompt
        from ..prompts import PromptFileError, load_prompt

        backbone = backbone if backbone is not None else backbone_for_prompt(directory, None, None)
        method = load_prompt(directory, backbone, strict_backbone)
        if not isinstance(method, cls):
            raise PromptFileError(f"{directory} holds a {method.name} prompt, not {cls.__name__}")
        return method

    def prompt_record(self) -> dict[str, Any]:
        """What the prompt file records besides the config and tensors (e.g. a teacher's identity: never its
        weights). Default: nothing."""
        return {}

    def trainable_state(self) -> dict[str, Tensor]:
        """The tensors a prompt file stores (training bookkeeping kept as module extra state is not one)."""
        return {
            k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.endswith(EXTRA_STATE_KEY)
        }

    def needs_second_view(self) -> bool:
        """Whether training batches carry ``Batch.second_view`` (CoPrompt's frozen-encoder view)."""
        return False

    def optimizer_steps(self) -> int:
        """How many optimizer steps each batch's gradients take, and per-epoch schedules' ticks per epoch: 1, or a
        reference's count where it steps one optimizer several times (SoftCPT's ``reference_steps``). A per-step
        schedule still ticks once a batch (no reference steps one)."""
        return 1

    def cache_key(self) -> str:
        """What image features depend on besides the backbone: empty unless a backbone delta exists."""
        return ""


def running_statistics(method: nn.Module) -> set[str]:
    """Names (in ``state_dict``) of the buffers training updates without gradients, BatchNorm's running mean,
    variance and count: a prompt file carries them with the trainable tensors."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in method.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for name, _ in module.named_buffers(recurse=False)
    }


def cosine_logits(image_features: Tensor, text_features: Tensor, scale: Tensor | float) -> Tensor:
    """scale · normalize(image) · normalize(text)ᵀ, for [C, D] or per-image [B, C, D] text features."""
    with torch.autocast(image_features.device.type, enabled=False):  # logits in fp32 even under AMP
        img = F.normalize(image_features.float(), dim=-1)
        txt = F.normalize(text_features.float(), dim=-1)
        if txt.dim() == 3:
            return scale * torch.einsum("bd,bcd->bc", img, txt)
        return scale * img @ txt.t()


# The contract's names, importable from here as before the options and recipes got their own modules.
__all__ = [
    "CAPABILITIES",
    "DECLARATIONS",
    "EXTRA_STATE_KEY",
    "Batch",
    "BuiltinRow",
    "MethodConfig",
    "MethodInputError",
    "MethodOptionError",
    "PromptMethod",
    "Recipe",
    "cosine_logits",
    "option",
    "running_statistics",
]
