"""Splicing learned context vectors into tokenized prompts (shared by the text-prompt methods)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..backbones import Backbone
from .base import MethodOptionError, cosine_logits

CLASS_POSITIONS = ("end", "middle", "front")
#: PromptLayout's buffers with one row per class (what :meth:`PromptLayout.subset` selects: keep it in step).
_PER_CLASS = ("prefix", "suffix", "eot_index", "order")


def clean_classname(name: str) -> str:
    """Class names as CLIP reads them: underscores become spaces."""
    return name.replace("_", " ").strip()


class PromptLayout(nn.Module):
    """Fixed token embeddings around ``n_ctx`` learned slots, for a list of class names.

    Prompts are ``[SOT] [ctx_1..ctx_n] [class words] [.] [EOT]`` (class at the end), or with the class
    words in the middle of the context or in front of it. The fixed parts are non-persistent buffers,
    already cut after the longest end-of-text position (the rest can never change a feature). The prompts share
    their first :attr:`shared_positions` positions when the context is shared (:meth:`shared_prefix`), which the
    text tower then runs once.

    Args:
        backbone: supplies the tokenizer and the word embeddings.
        classnames: one string per class.
        n_ctx: number of learned context slots (BPE tokens).
        position: where the class words go: ``end``, ``middle`` or ``front``.
        suffix_template: text after the class words (default a period).
        prefix_text: the words the prompt starts with, whose first ``n_ctx`` tokens are the learned
            slots (MaPLe's and IVLP's "a photo of a {class}." with "a photo" learned and "of a" kept);
            default ``n_ctx`` placeholder tokens. Only with the class at the end.
    """

    prefix: Tensor
    suffix: Tensor
    eot_index: Tensor
    order: Tensor

    def __init__(
        self,
        backbone: Backbone,
        classnames: Sequence[str],
        n_ctx: int,
        position: str = "end",
        suffix_template: str = ".",
        prefix_text: str = "",
    ):
        super().__init__()
        if position not in CLASS_POSITIONS:
            raise MethodOptionError(f"class_token_position must be one of {CLASS_POSITIONS}, not {position!r}")
        if prefix_text and (position != "end" or backbone.bpe_length(prefix_text) < n_ctx):
            raise MethodOptionError(
                f"prefix text {prefix_text!r} needs the class at the end and at least {n_ctx} tokens"
            )
        if not classnames:
            raise MethodOptionError("a prompt needs at least one class name")
        self.n_ctx = n_ctx
        self.position = position
        names = [clean_classname(n) for n in classnames]
        placeholder = prefix_text or " ".join(["X"] * n_ctx)
        texts = [f"{placeholder} {name}{suffix_template}".strip() for name in names]
        for name, text in zip(names, texts):
            if backbone.bpe_length(text) + 2 > backbone.context_length:
                raise ValueError(
                    f"class name {name!r} is too long: its prompt needs more than "
                    f"{backbone.context_length} tokens with {n_ctx} context tokens"
                )
        ids = backbone.tokenize(texts)
        eot = backbone.eot_index(ids)
        length = int(eot.max()) + 1
        embeds = backbone.token_embedding(ids[:, :length])
        # one row per class each (_PER_CLASS)
        self.register_buffer("prefix", embeds[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", embeds[:, 1 + n_ctx :].clone(), persistent=False)
        self.register_buffer("eot_index", eot, persistent=False)
        name_lens = [backbone.bpe_length(name) for name in names]  # class words between context and "."
        order = _class_position_order(name_lens, n_ctx, length, position).to(backbone.device)
        self.register_buffer("order", order, persistent=False)
        # positions every class's prompt shares when the context is shared: the start token, the context slots
        # before the class words, and (class at the end) the fixed words all prompts continue with
        same = (self.suffix == self.suffix[:1]).all(-1).all(0).tolist() + [False]
        self.shared_positions = {"end": 1 + n_ctx + same.index(False), "middle": 1 + n_ctx // 2, "front": 1}[position]

    @property
    def num_classes(self) -> int:
        return self.prefix.shape[0]

    def subset(self, rows: Tensor) -> PromptLayout:
        """This layout over the classes ``rows`` only, in that order (e.g. a sample of the classes)."""
        part = copy.copy(self)
        buffers = self._buffers.items()
        part._buffers = {name: (b[rows] if name in _PER_CLASS and b is not None else b) for name, b in buffers}
        return part

    def assemble(self, ctx: Tensor) -> Tensor:
        """Prompt embeddings [*lead, C, L, d] from context ``ctx``.

        Args:
            ctx: [n, d] shared by all classes, [C, n, d] one per class, or [*lead, 1 or C, n, d]
                (e.g. one context per image, [B, 1, n, d]).
        """
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0)
        lead = ctx.shape[:-3]
        classes = self.num_classes
        ctx = ctx.expand(*lead, classes, -1, -1)
        prefix = self.prefix.to(ctx.dtype).expand(*lead, -1, -1, -1)
        suffix = self.suffix.to(ctx.dtype).expand(*lead, -1, -1, -1)
        embeds = torch.cat([prefix, ctx, suffix], dim=-2)
        if self.position != "end":
            index = self.order[..., None].expand(*lead, -1, -1, embeds.shape[-1])
            embeds = embeds.gather(-2, index)
        return embeds

    def encode(
        self,
        backbone: Backbone,
        ctx: Tensor,
        chunk_size: int = 0,
        deep_prompts: list[Tensor | None] | None = None,
        class_context: Tensor | None = None,
    ) -> Tensor:
        """Text features of the prompts built from ``ctx``: [C, D], or [B, C, D] for per-image contexts.

        Per-image contexts ([B, 1 or C, n, d]) are assembled and encoded a few images at a time, so
        that at most ``chunk_size`` prompts exist at once (0: all at once). ``deep_prompts``: the text tower's
        deep prompts at the context's positions (:meth:`Backbone.encode_text_embeddings`). ``class_context``: [C]
        which of K contexts ``ctx`` ([K, n, d]) each class reads; the classes reading one (e.g. a task's) share
        their first :attr:`shared_positions`, run once for them.
        """
        if class_context is not None:
            if ctx.dim() != 3 or class_context.shape != (self.num_classes,):
                raise ValueError(f"class_context gives each of {self.num_classes} classes one of K contexts [K, n, d]")
            return self._encode(backbone, ctx[class_context], deep_prompts, (self.shared_positions, class_context))
        if ctx.dim() <= 3:
            return self._encode(backbone, ctx, deep_prompts)
        step = max(1, chunk_size // self.num_classes) if chunk_size > 0 else ctx.shape[0]
        chunks = [ctx[i : i + step] for i in range(0, ctx.shape[0], step)]
        return torch.cat([self._encode(backbone, chunk, deep_prompts) for chunk in chunks])

    def shared_prefix(self, ctx: Tensor) -> tuple[int, int]:
        """(positions, groups): the prompts from ``ctx`` (see :meth:`assemble`) share their first ``positions`` within
        each of ``groups`` groups of consecutive prompts (a context shared by the classes: one group, or one per
        image; one per class: the start token only)."""
        lead = ctx.shape[:-3] if ctx.dim() > 2 else ()
        per_class = ctx.dim() > 2 and ctx.shape[-3] > 1
        return (1, 1) if per_class else (self.shared_positions, math.prod(lead))

    def _encode(
        self,
        backbone: Backbone,
        ctx: Tensor,
        deep_prompts: list[Tensor | None] | None = None,
        prefix: tuple[int, int | Tensor] | None = None,
    ) -> Tensor:
        embeds = self.assemble(ctx)
        lead = embeds.shape[:-3]
        flat = embeds.reshape(-1, *embeds.shape[-2:])
        eot = self.eot_index.expand(*lead, -1).reshape(-1)
        shared, groups = prefix if prefix is not None else self.shared_prefix(ctx)
        features = backbone.encode_text_embeddings(flat, eot, deep_prompts, shared_prefix=shared, prefix_groups=groups)
        return features.reshape(*lead, self.num_classes, -1)


def _class_position_order(name_lens: Sequence[int], n_ctx: int, length: int, position: str) -> Tensor:
    """For each class, where each output position reads from the class-at-end layout."""
    rows = []
    for n_name in name_lens:
        start = list(range(1))
        ctx = list(range(1, 1 + n_ctx))
        name = list(range(1 + n_ctx, 1 + n_ctx + n_name))
        rest = list(range(1 + n_ctx + n_name, length))
        if position == "middle":
            half = n_ctx // 2
            rows.append(start + ctx[:half] + name + ctx[half:] + rest)
        elif position == "front":
            rows.append(start + name + ctx + rest)
        else:
            rows.append(start + ctx + name + rest)
    return torch.tensor(rows, dtype=torch.long)


def initial_context(backbone: Backbone, n_ctx: int, ctx_init: str = "", std: float = 0.02, classes: int = 0) -> Tensor:
    """Initial context vectors [n, d], or [classes, n, d] for class-specific context.

    From ``ctx_init``'s word embeddings (its BPE length sets n), else drawn N(0, std) in one
    ``nn.init.normal_`` call on a float32 tensor, as the reference CoOp and CoCoOp draw them.
    """
    if ctx_init:
        init = phrase_embeddings(backbone, ctx_init)
        return init.expand(classes, -1, -1).clone() if classes else init
    shape = (classes, n_ctx, backbone.text_width) if classes else (n_ctx, backbone.text_width)
    return nn.init.normal_(torch.empty(shape), std=std)


def phrase_embeddings(backbone: Backbone, phrase: str) -> Tensor:
    """Word embeddings [n, d] of the BPE tokens of ``phrase`` (e.g. "a photo of a" gives 4)."""
    ids = backbone.token_ids(phrase)
    if not ids:
        raise MethodOptionError(f"context init phrase {phrase!r} has no tokens")
    return backbone.token_embedding(torch.tensor(ids))


class RemembersStep:
    """Mixin for a method whose loss reuses the image and class features of the training step's forward pass
    (PromptSRC, CoPrompt): :meth:`logits` keeps them in training, :meth:`step_features` hands them over once."""

    _step: tuple[Tensor, Tensor] | None = None

    def logits(self, backbone: Backbone, batch, text: Tensor | None = None) -> Tensor:
        image = self.image_features(backbone, batch)  # type: ignore[attr-defined]
        text = self.text_features(backbone) if text is None else text  # type: ignore[attr-defined]
        self._step = (image, text) if self.training else None  # type: ignore[attr-defined]
        return cosine_logits(image, text, backbone.logit_scale)

    def step_features(self) -> tuple[Tensor, Tensor]:
        if self._step is None:
            name = self.name  # type: ignore[attr-defined]
            raise RuntimeError(f"{name}'s loss needs the features of a training forward pass (call it in train mode)")
        step, self._step = self._step, None
        return step
