"""Methods for compositional zero-shot learning: the labels are (attribute, object) pairs.

The label space is a :class:`~vlprompt.labels.PairSpace`; its vocabulary (attributes and objects)
is fixed at construction, the pairs scored can be swapped with ``set_classes`` (train on seen
pairs, evaluate on closed- or open-world pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone
from ..labels import PairSpace
from .base import Batch, BuiltinRow, MethodConfig, MethodOptionError, PromptMethod, Recipe, option
from .coop import nearest_words
from .recipes import CPU_CZSL, CSP_OWN_RECIPES, CSP_RECIPES
from .zeroshot import ensemble_text_features


def primitive_text(name: str) -> str:
    """How a primitive name is read, as CSP does: lower-cased, '.' as a space (Faux.Fur -> faux fur)."""
    return name.replace(".", " ").lower().strip()


def pair_space(attrs: list[str], objs: list[str], pairs: list) -> PairSpace:
    """The label space of a compositional method."""
    return PairSpace(tuple(attrs), tuple(objs), tuple(tuple(p) for p in pairs))


class PairMethod(PromptMethod):
    """Shared bookkeeping: vocabulary indices of the pairs currently scored."""

    label_kind = PairSpace
    labels: PairSpace
    pair_attr: Tensor
    pair_obj: Tensor

    def __init__(self, backbone: Backbone, classes: PairSpace, config: MethodConfig | None = None):
        super().__init__(backbone, classes, config)
        self.attr_index = {a: i for i, a in enumerate(self.labels.attrs)}
        self.obj_index = {o: i for i, o in enumerate(self.labels.objs)}
        self._set_pair_indices(backbone.device)

    def _labels_changed(self, backbone: Backbone) -> None:
        self._set_pair_indices(backbone.device)

    def _set_pair_indices(self, device: torch.device) -> None:
        a = [self.attr_index[attr] for attr, _ in self.labels.pairs]
        o = [self.obj_index[obj] for _, obj in self.labels.pairs]
        self.register_buffer("pair_attr", torch.tensor(a, dtype=torch.long, device=device), persistent=False)
        self.register_buffer("pair_obj", torch.tensor(o, dtype=torch.long, device=device), persistent=False)

    def vocabulary_vectors(self, backbone: Backbone) -> Tensor:
        """Word-averaged BPE embeddings of attributes then objects [A + O, width]."""
        names = [primitive_text(n) for n in self.labels.attrs + self.labels.objs]
        return backbone.word_vectors(names)


@dataclass
class CSPConfig(MethodConfig):
    """Compositional soft prompting.

    Attributes:
        template: prompt with two ``X`` slots, filled by the attribute then the object vector.
        vocab_dropout: element-wise dropout on the vocabulary table in training (0.3 MIT-States,
            0.2 UT-Zappos).
    """

    template: str = "a photo of X X"
    vocab_dropout: float = option(0.3, low=0.0, high=1.0)


class CompositionalPrompt(PairMethod):
    """``[SOT] context... [attr vector] [obj vector] [EOT]`` with one vector per primitive."""

    learn_vocabulary: bool = True
    learn_context: bool = False
    #: pairs encoded per text-tower pass (open-world C-GQA has 278,362 of them).
    pair_chunk: int = 4096
    config: CSPConfig | CZSLCoOpConfig
    start: Tensor
    end: Tensor
    context: Tensor
    vocabulary: Tensor

    def __init__(self, backbone: Backbone, classes: PairSpace, config: MethodConfig | None = None):
        super().__init__(backbone, classes, config)
        ids = backbone.tokenize([self.config.template])[0]
        x_id = backbone.token_ids("x")[0]
        slots = (ids == x_id).nonzero().flatten().tolist()
        eot = int(backbone.eot_index(ids[None])[0])
        if len(slots) != 2 or slots[1] != slots[0] + 1 or slots[1] + 1 != eot:
            raise MethodOptionError(f"template {self.config.template!r} must end with two adjacent X slots")
        embeds = backbone.token_embedding(ids[: eot + 1])
        context = embeds[1 : slots[0]].clone()
        vocab = self.vocabulary_vectors(backbone)
        self.register_buffer("start", embeds[:1].clone(), persistent=False)
        self.register_buffer("end", embeds[eot:].clone(), persistent=False)
        if self.learn_context:
            self.context = nn.Parameter(context)
        else:
            self.register_buffer("context", context, persistent=False)
        if self.learn_vocabulary:
            self.vocabulary = nn.Parameter(vocab)
        else:
            self.register_buffer("vocabulary", vocab, persistent=False)

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        vocab = self.vocabulary
        dropout = getattr(self.config, "vocab_dropout", 0.0)
        if self.training and dropout > 0:
            vocab = F.dropout(vocab, dropout)
        n_attrs = len(self.labels.attrs)
        feats = []
        for start in range(0, self.num_classes, self.pair_chunk):
            attr = vocab[self.pair_attr[start : start + self.pair_chunk]].unsqueeze(1)
            obj = vocab[n_attrs + self.pair_obj[start : start + self.pair_chunk]].unsqueeze(1)
            count = attr.shape[0]
            embeds = torch.cat(
                [
                    self.start.expand(count, -1, -1),
                    self.context.expand(count, -1, -1),
                    attr,
                    obj,
                    self.end.expand(count, -1, -1),
                ],
                dim=1,
            )
            eot = torch.full((count,), embeds.shape[1] - 1, device=embeds.device)
            feats.append(backbone.encode_text_embeddings(embeds, eot))
        return torch.cat(feats)


class CSP(CompositionalPrompt):
    """CSP (Nayak, Yu & Bach, ICLR 2023): learned attribute and object vectors, fixed context."""

    name = "csp"
    Config = CSPConfig
    config: CSPConfig
    recipes = CSP_OWN_RECIPES  # its baselines' with its vocabulary dropout
    builtin_rows = (BuiltinRow("csp", CPU_CZSL.with_options(vocab_dropout=0.2)),)
    tiny = Recipe(options={"vocab_dropout": 0.0})  # its dropout draws from each process's RNG
    template_option = None


@dataclass
class CZSLCoOpConfig(MethodConfig):
    """CoOp for CZSL: context learned from ``template``'s words, primitive slots frozen."""

    template: str = "a photo of X X"


class CZSLCoOp(CompositionalPrompt):
    """The CSP paper's CoOp baseline: 3 learned context vectors, frozen word-averaged primitives."""

    name = "czsl-coop"
    Config = CZSLCoOpConfig
    config: CZSLCoOpConfig
    recipes = CSP_RECIPES  # CSP's, as the CSP paper runs its baselines
    builtin_rows = (BuiltinRow("czsl-coop", CPU_CZSL),)
    tiny = Recipe()
    template_option = None
    has_context = True
    learn_vocabulary = False
    learn_context = True

    @torch.no_grad()
    def nearest_words(self, backbone: Backbone, k: int = 3) -> list[list[tuple[str, float]]]:
        """For each learned context vector, the ``k`` nearest vocabulary words."""
        return nearest_words(backbone, self.context, k)


@dataclass
class CZSLZeroShotConfig(MethodConfig):
    """Zero-shot CLIP for CZSL: ``template`` filled with "attr obj", normal tokenization."""

    template: str = "a photo of {}"


class CZSLZeroShot(PairMethod):
    """Hand-written prompts for every pair (a constant buffer)."""

    name = "czsl-zeroshot"
    Config = CZSLZeroShotConfig
    config: CZSLZeroShotConfig
    recipes = CSP_RECIPES  # CSP's, as the CSP paper runs its baselines
    builtin_rows = (BuiltinRow("czsl-zeroshot", CPU_CZSL),)
    tiny = Recipe()
    template_option = None
    learns = False
    pair_features: Tensor

    def __init__(self, backbone: Backbone, classes: PairSpace, config: CZSLZeroShotConfig | None = None):
        super().__init__(backbone, classes, config)
        self._encode(backbone)

    def _labels_changed(self, backbone: Backbone) -> None:
        super()._labels_changed(backbone)
        self._encode(backbone)

    def _encode(self, backbone: Backbone) -> None:
        names = [f"{primitive_text(a)} {primitive_text(o)}" for a, o in self.labels.pairs]
        feats = ensemble_text_features(backbone, names, [self.config.template])
        self.register_buffer("pair_features", feats, persistent=False)

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        return self.pair_features


@dataclass
class AttrObjHeadsConfig(MethodConfig):
    """Separate attribute and object classifiers on frozen image features (no hyperparameters)."""


class AttrObjHeads(PairMethod):
    """Two linear heads; a pair scores ``log p(attr | x) + log p(obj | x)``.

    Trained, like every method here, with cross-entropy over the seen pairs of that composed score.
    """

    name = "attr-obj-heads"
    Config = AttrObjHeadsConfig
    config: AttrObjHeadsConfig
    recipes = CSP_RECIPES  # CSP's, as the CSP paper runs its baselines
    builtin_rows = (BuiltinRow("attr-obj-heads", CPU_CZSL.but(lr=1e-2)),)
    tiny = Recipe()
    template_option = None
    scores_with_text = False

    def __init__(self, backbone: Backbone, classes: PairSpace, config: MethodConfig | None = None):
        super().__init__(backbone, classes, config)
        self.attr_head = nn.Linear(backbone.embed_dim, len(self.labels.attrs)).to(backbone.device)
        self.obj_head = nn.Linear(backbone.embed_dim, len(self.labels.objs)).to(backbone.device)

    def logits(self, backbone: Backbone, batch: Batch, text: Tensor | None = None) -> Tensor:
        x = F.normalize(self.image_features(backbone, batch).float(), dim=-1)
        attr = F.log_softmax(self.attr_head(x), dim=-1)
        obj = F.log_softmax(self.obj_head(x), dim=-1)
        return attr[:, self.pair_attr] + obj[:, self.pair_obj]


@dataclass
class PairProjectionConfig(MethodConfig):
    """Attributes:
    hidden: width of the hidden layer of the projection (0: a single linear map).
    """

    hidden: int = option(0, low=0)


class PairProjection(PairMethod):
    """A learned map of concatenated [attr word vector; obj word vector] into the image space."""

    name = "pair-projection"
    Config = PairProjectionConfig
    config: PairProjectionConfig
    recipes = CSP_RECIPES  # CSP's, as the CSP paper runs its baselines
    builtin_rows = (BuiltinRow("pair-projection", CPU_CZSL.but(lr=1e-3)),)
    tiny = Recipe()
    template_option = None
    words: Tensor

    def __init__(self, backbone: Backbone, classes: PairSpace, config: PairProjectionConfig | None = None):
        super().__init__(backbone, classes, config)
        self.register_buffer("words", self.vocabulary_vectors(backbone), persistent=False)
        width, out = 2 * backbone.text_width, backbone.embed_dim
        hidden = self.config.hidden
        layers = [nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, out)] if hidden else [nn.Linear(width, out)]
        self.projection = nn.Sequential(*layers).to(backbone.device)

    def text_features(self, backbone: Backbone, image_features: Tensor | None = None) -> Tensor:
        n_attrs = len(self.labels.attrs)
        pairs = torch.cat([self.words[self.pair_attr], self.words[n_attrs + self.pair_obj]], dim=-1)
        return self.projection(pairs)
