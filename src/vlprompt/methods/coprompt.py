"""CoPrompt: MaPLe prompts with adapters, kept consistent with the frozen model (Roy & Etemad, ICLR 2024).

Follows ShuvenduRoy/CoPrompt (``trainers/coprompt.py``). Prompts exactly as MaPLe's (its
MultiModalPromptLearner is MaPLe's: see :mod:`vlprompt.methods.maple`); two adapters on the un-normalised
final features, ``A(x) = ReLU(W2 ReLU(W1 x))`` (``Linear(d, d/4)``, ``Linear(d/4, d)``, no biases): image
``0.1 A_i(f) + 0.9 f``, text ``0.2 A_t(t) + 0.8 t``, then L2-normalised and scaled cosines. Training adds
two consistency terms against the frozen, prompt-free CLIP:

    CE(z, y) + W · [(1 − mean_c cos(t_c, d_kc)) + (1 − mean_b cos(v_b, v⁰_b))]     (cos eps 1e-7)

d_kc: the frozen, L2-normalised feature of class c's k-th description sentence (the descriptions file, CuPL's
format; every class the same number of sentences), one k drawn per step for all classes; v⁰: the frozen image
tower's features of a second augmented view of the batch's images. Evaluation returns the logits only.

Where this differs, deliberately: widths come from the model (the release hard-codes 512 / 768); everything
stays fp32 (the release rounds the image and deep prompts to fp16 even in fp32 runs); k is drawn from torch's
generator (the release: Python's ``random``); descriptions longer than the context are truncated (the
release's ``clip.tokenize`` raises). The release's views are two independent RandAugment(2, 10) draws of the
resized image (``K_TRANSFORMS 2``, ``INPUT.TRANSFORMS randaugment``): the recipes train with ``--train.augment
true --train.augmentation randaugment`` and ``frozen_view="second"`` (default), the frozen encoder's view being
the feed's second, independent view of each image (``Batch.second_view``, its frozen features cached as the
views are; the image itself without ``augment``). ``"same"`` gives the frozen encoder the batch's own view (no
second view: the tiny tests and DDP checks); ``"randaugment"`` draws it at each step as torchvision's
RandAugment(2, 10) of the batch's view (de-normalised to 8 bits and normalised again: a perturbed view when
training does not augment; the built-in benchmark's row). Its per-dataset settings (trainers/constants.py: W,
N_CTX, PROMPT_DEPTH, Food101's 5 epochs) are the recipes ``coprompt-<dataset>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone
from ..errors import DataError
from ..schema import name_key
from .base import Batch, BuiltinRow, MethodInputError, MethodOptionError, Recipe, option
from .descriptions import check_descriptions, class_sentences, read_descriptions
from .maple import MaPLe, MaPLeConfig
from .prompting import RemembersStep
from .recipes import CPU_TWO_TOWER, dassl_recipe

#: ShuvenduRoy/CoPrompt, pinned.
COPROMPT_REPO = "ShuvenduRoy/CoPrompt@a2a6c12e3622cfe4b3a127f4ba0c4f3eb841418c"
FROZEN_VIEWS = ("second", "same", "randaugment")


@dataclass
class CoPromptConfig(MaPLeConfig):
    """CoPrompt hyperparameters (configs/trainers/coprompt.yaml's; MaPLe's otherwise).

    Attributes:
        weight: W, the weight of the two consistency terms (1.0 in the yaml; per dataset in the recipes).
        image_ratio: the image adapter's share (0.1).
        text_ratio: the text adapter's share (0.2).
        reduction: the adapters' bottleneck divisor (4).
        descriptions: the class descriptions file: JSON mapping each class name to its sentences (CuPL's format,
            the release's gpt_file/<dataset>_prompt.json), or "builtin" (the built-in benchmark's); read into
            ``sentences``.
        sentences: class name -> sentences (from ``descriptions``; saved in prompt.json).
        frozen_view: the frozen image tower's view: "second" (the feed's second view of each image, as the
            release's K_TRANSFORMS 2), "same" (the batch's view) or "randaugment" (torchvision's RandAugment(2,
            10) of the batch's view).
    """

    weight: float = option(1.0, low=0.0)
    image_ratio: float = option(0.1, low=0.0, high=1.0)
    text_ratio: float = option(0.2, low=0.0, high=1.0)
    reduction: int = option(4, low=1)
    descriptions: str = ""
    sentences: dict[str, list[str]] = field(default_factory=dict)
    frozen_view: str = option("second", choices=FROZEN_VIEWS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sentences:
            self.sentences = check_descriptions(self.sentences, "coprompt option sentences")
        elif self.descriptions:
            self.sentences = read_descriptions(self.descriptions)


class Adapter(nn.Sequential):
    """CoPrompt's adapter: ReLU(W2 ReLU(W1 x)), no biases."""

    def __init__(self, width: int, reduction: int):
        super().__init__(
            nn.Linear(width, width // reduction, bias=False),
            nn.ReLU(),
            nn.Linear(width // reduction, width, bias=False),
            nn.ReLU(),
        )


def consistency(features: Tensor, frozen: Tensor) -> Tensor:
    """1 − mean over rows of cos(features, frozen), eps 1e-7 (the release's CosineSimilarity)."""
    return 1.0 - F.cosine_similarity(features.float(), frozen.float(), dim=1, eps=1e-7).mean()


def randaugment_view(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """RandAugment(2, 10) of normalised images, each drawn on its own from torch's generator."""
    from torchvision.transforms import v2

    mean_, std_ = pixels.new_tensor(mean).view(3, 1, 1), pixels.new_tensor(std).view(3, 1, 1)
    images = ((pixels * std_ + mean_).clamp(0, 1) * 255).round().to(torch.uint8)
    augment = v2.RandAugment(num_ops=2, magnitude=10)
    views = torch.stack([augment(image) for image in images.cpu()]).to(pixels.device)
    return (views.float() / 255 - mean_) / std_


_DATASETS = {  # trainers/constants.py: dataset -> (W, N_CTX, PROMPT_DEPTH, epochs)
    "imagenet": (8.0, 4, 12, 8),
    "caltech101": (4.0, 4, 12, 8),
    "oxford_pets": (0.1, 2, 12, 8),
    "stanford_cars": (4.0, 4, 12, 8),
    "oxford_flowers": (8.0, 4, 9, 8),
    "food101": (0.5, 4, 9, 5),
    "fgvc_aircraft": (2.0, 4, 9, 8),
    "sun397": (8.0, 4, 12, 8),
    "dtd": (8.0, 2, 12, 8),
    "eurosat": (0.1, 2, 12, 8),
    "ucf101": (2.0, 4, 12, 8),
}
_SOURCE = f"{COPROMPT_REPO}:configs/trainers/coprompt.yaml, scripts/base2new_train_coprompt.sh"


#: The release's views (coprompt.yaml INPUT.TRANSFORMS, DATALOADER.K_TRANSFORMS; Dassl's RandAugment defaults).
_VIEWS = "two views: INPUT.TRANSFORMS randaugment, K_TRANSFORMS 2 (frozen_view second), RANDAUGMENT_N 2, _M 10"


def _recipe(source: str, datasets: tuple[str, ...], epochs: int, **options) -> Recipe:
    return dassl_recipe(
        f"{source}; {_VIEWS}",
        ("base-to-new",),
        datasets=datasets,
        epochs=epochs,
        batch_size=4,
        lr=0.0035,
        augmentation="randaugment",
    ).with_options(ctx_init="a photo of a", frozen_view="second", **options)


class CoPrompt(RemembersStep, MaPLe):
    """MaPLe prompts, adapters on both features, and consistency with the frozen model on perturbed inputs."""

    name = "coprompt"
    Config = CoPromptConfig
    config: CoPromptConfig
    recipes = {
        "default": _recipe(_SOURCE, (), 8, n_ctx=2, depth=9, weight=1.0),
        **{
            dataset: _recipe(f"{_SOURCE}, trainers/constants.py", (dataset,), epochs, n_ctx=n, depth=d, weight=w)
            for dataset, (w, n, d, epochs) in _DATASETS.items()
        },
    }
    builtin_rows = (  # the frozen view its numbers were measured with (it trains without augmentation)
        BuiltinRow(
            "coprompt",
            CPU_TWO_TOWER.with_options(depth=3, descriptions="builtin", frozen_view="randaugment"),
            default=False,
        ),
    )
    tiny = Recipe(
        options={
            "depth": 2,
            "frozen_view": "same",
            "sentences": {c: [f"a picture of {c}."] for c in ("blue_square", "gold", "green_square", "red_square")},
        }
    )
    template_option = None

    def __init__(self, backbone: Backbone, classes: Sequence[str], config: CoPromptConfig | None = None):
        super().__init__(backbone, classes, config)
        cfg = self.config
        if not cfg.sentences:
            raise MethodOptionError(
                "coprompt needs class descriptions: set option descriptions to a JSON file mapping each class name "
                'to its sentences, {"class name": ["sentence.", ...]} (CuPL\'s format, e.g. the release\'s '
                "gpt_file/<dataset>_prompt.json), or to 'builtin' on the built-in benchmark"
            )
        self._description_sentences()  # every class scored in training has sentences (checked up front)
        width = backbone.embed_dim
        self.adapter_image = Adapter(width, cfg.reduction).to(backbone.device)
        self.adapter_text = Adapter(width, cfg.reduction).to(backbone.device)
        self._step = None

    def _description_sentences(self) -> list[list[str]]:
        where = f"coprompt descriptions {self.config.descriptions or '(option sentences)'}"
        keys = {name_key(k) for k, v in self.config.sentences.items() if v}
        missing = [c for c in self.labels.names if name_key(c) not in keys]
        if missing:
            raise DataError(f"{where}: {len(missing)} class(es) have no sentence, e.g. {missing[:5]}")
        sentences = class_sentences(self.config.sentences, self.labels.names, where)
        counts = {len(s) for s in sentences}
        if len(counts) > 1:
            raise DataError(
                f"{where}: one sentence index is drawn for every class, so each needs the same number of sentences; "
                f"the counts are {sorted(counts)}"
            )
        return sentences

    def _labels_changed(self, backbone: Backbone) -> None:
        super()._labels_changed(backbone)
        self._descriptions: Tensor | None = None  # [n, C, D], encoded at the first training step

    def description_features(self, backbone: Backbone) -> Tensor:
        """[n, C, D] the frozen, L2-normalised features of each class's n sentences."""
        if self._descriptions is None:
            sentences = self._description_sentences()
            flat = [s[i] for i in range(len(sentences[0])) for s in sentences]
            features = F.normalize(backbone.encode_text(flat), dim=-1)
            self._descriptions = features.view(len(sentences[0]), len(sentences), -1)
        return self._descriptions

    def needs_second_view(self) -> bool:
        return self.config.frozen_view == "second"

    def _frozen_view(self, backbone: Backbone, batch: Batch) -> Tensor:
        """The frozen tower's features of the batch's view, or of its RandAugment (frozen_view randaugment)."""
        pixels = batch.pixels
        assert pixels is not None  # it changes the image tower: batches carry pixels
        if self.config.frozen_view == "randaugment":
            pixels = randaugment_view(pixels, backbone.preprocess_cfg["mean"], backbone.preprocess_cfg["std"])
        with torch.no_grad():
            return backbone.encode_image(pixels)

    def image_features(self, backbone: Backbone, batch: Batch) -> Tensor:
        image = super().image_features(backbone, batch)
        ratio = self.config.image_ratio
        return ratio * self.adapter_image(image) + (1 - ratio) * image

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        text = super().text_features(backbone)
        ratio = self.config.text_ratio
        return ratio * self.adapter_text(text) + (1 - ratio) * text

    def loss(self, backbone: Backbone, batch: Batch, logits: Tensor, label_smoothing: float = 0.0) -> Tensor:
        image, text = self.step_features()
        descriptions = self.description_features(backbone)
        k = int(torch.randint(len(descriptions), ()))
        frozen_image = batch.second_view if self.config.frozen_view == "second" else self._frozen_view(backbone, batch)
        if frozen_image is None:
            raise MethodInputError(
                "coprompt's frozen_view second needs training batches with a second view (vlprompt's feed gives "
                "them); set frozen_view same to use the batch's own view"
            )
        text_term = consistency(F.normalize(text.float(), dim=-1), descriptions[k].to(text.device))
        image_term = consistency(F.normalize(image.float(), dim=-1), F.normalize(frozen_image.float(), dim=-1))
        cross_entropy = super().loss(backbone, batch, logits, label_smoothing)
        return cross_entropy + self.config.weight * (text_term + image_term)
