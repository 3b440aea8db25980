"""The backbone adapter: the only code in vlprompt that knows CLIP internals.

(One concern, kept in one file above ~400 lines on purpose: every hook into open_clip's towers lives
here, so that no other module needs to know them.)

A :class:`Backbone` wraps a frozen open_clip ``CLIP`` model and exposes what prompt methods need:
tokenization, token embeddings, a text encoder that runs on spliced embeddings (exact: each prompt up to
its own end-of-text position, the positions all prompts share once), an image encoder with optional pixel-space
and token prompts, the logit scale, the eval preprocessing, and a stable identity that saved prompts
record.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import open_clip
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from ..errors import BackboneError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


#: Deep ("per-layer") token prompts for one tower. Either a sequence whose element ``i - 1`` (a
#: tensor [n, width] or [N, n, width], or None to leave them be) *replaces* the n prompt positions
#: before transformer block ``i`` (i = 1, 2, ...; block 0 sees the input prompts), as VPT-deep,
#: IVLP and MaPLe do; or a function ``(i, previous) -> tensor | None`` of the block index and the
#: prompt positions' current hidden states [N, n, width] (the previous block's output), for prompts
#: that depend on the previous layer's. Fresh prompts get no positional embedding.
DeepPrompts = Sequence[Tensor | None] | Callable[[int, Tensor], Tensor | None]

#: Residuals added to transformer blocks' outputs (adapters on a tower's layers, as MMA's): block index ``i``
#: (0-based) -> a function of the block's normalised input (its ``ln_1(x)``, what its attention reads) whose
#: output is added to the block's output, at every token.
BlockResiduals = Mapping[int, Callable[[Tensor], Tensor]]


@dataclass(frozen=True)
class Identity:
    """What a saved prompt records about the backbone it was trained on."""

    model: str
    pretrained: str
    embed_dim: int
    text_width: int
    vision_width: int
    preprocess: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "pretrained": self.pretrained,
            "embed_dim": self.embed_dim,
            "text_width": self.text_width,
            "vision_width": self.vision_width,
            "preprocess": self.preprocess,
        }

    @property
    def key(self) -> str:
        """A short hash that changes whenever the weights or preprocessing change."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class Backbone(nn.Module):
    """A frozen CLIP-style model seen through the interface prompt methods need.

    Args:
        model: an open_clip ``CLIP`` or ``CustomTextCLIP`` with a causal text transformer.
        tokenizer: open_clip's BPE tokenizer for the model.
        preprocess: eval preprocessing settings (size, mean, std, interpolation, resize_mode).
        name: model name (open_clip architecture, bundled name or file).
        pretrained: pretrained tag or ``sha256:<hex>`` of the weight file.
    """

    #: the open_clip model; its towers' submodules (open_clip's) are not typed, so neither is it.
    model: Any

    def __init__(self, model: nn.Module, tokenizer, preprocess: dict[str, Any], name: str, pretrained: str):
        super().__init__()
        model.eval().requires_grad_(False)
        self.model = model
        #: recompute the towers' block activations in backward instead of storing them
        #: (``TrainConfig.activation_checkpointing`` turns it on while training).
        self.activation_checkpointing = False
        self.tokenizer = tokenizer
        self.preprocess_cfg = dict(preprocess)
        if not hasattr(self._text, "token_embedding") or getattr(self._text, "attn_mask", None) is None:
            raise BackboneError(f"{name}: prompt learning needs a causal CLIP text transformer")
        if getattr(self._text, "text_pool_type", getattr(self._text, "pool_type", "argmax")) not in (
            "argmax",
            "eos",
        ):
            raise BackboneError(f"{name}: the text feature must be read at the end-of-text token")
        self.identity = Identity(
            model=name,
            pretrained=pretrained,
            embed_dim=self.embed_dim,
            text_width=self.text_width,
            vision_width=self.vision_width,
            preprocess=_jsonable(self.preprocess_cfg),
        )

    @property
    def _text(self) -> Any:
        """The text tower: the model itself (CLIP) or its ``text`` module (CustomTextCLIP).

        A property, not a registered child: every weight has one name (``model.*``), so a weight swap
        (:meth:`with_weights`) never meets an alias.
        """
        return self.model.text if hasattr(self.model, "text") else self.model

    # ------------------------------------------------------------------ dimensions
    @property
    def text_width(self) -> int:
        return self._text.token_embedding.weight.shape[1]

    @property
    def embed_dim(self) -> int:
        proj = self._text.text_projection
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    @property
    def vision_width(self) -> int:
        visual = self.model.visual
        if isinstance(visual, VisionTransformer):
            return visual.class_embedding.shape[0]
        return getattr(visual, "output_dim", self.embed_dim)

    @property
    def vision_layers(self) -> int:
        """Number of transformer blocks in a ViT image tower (0 for other towers)."""
        visual = self.model.visual
        return len(visual.transformer.resblocks) if isinstance(visual, VisionTransformer) else 0

    @property
    def text_layers(self) -> int:
        """Number of transformer blocks in the text tower."""
        return len(self._text.transformer.resblocks)

    @property
    def patch_size(self) -> int:
        visual = self.model.visual
        return visual.conv1.kernel_size[0] if isinstance(visual, VisionTransformer) else 0

    @property
    def image_size(self) -> int:
        size = self.preprocess_cfg["size"]
        return size if isinstance(size, int) else size[0]

    @property
    def context_length(self) -> int:
        return self._text.positional_embedding.shape[0]

    @property
    def logit_scale(self) -> Tensor:
        """exp of the model's (frozen) logit scale, e.g. 100 for released CLIP weights."""
        return self.model.logit_scale.detach().exp()

    @property
    def device(self) -> torch.device:
        return self._text.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._text.transformer.get_cast_dtype()

    # ------------------------------------------------------------------ text
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_token_id

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """Token ids [N, context_length] on the model's device."""
        return self.tokenizer(list(texts)).to(self.device)

    def eot_index(self, ids: Tensor) -> Tensor:
        """Position of the (first) end-of-text token in each row of ``ids``."""
        return (ids == self.eot_token_id).int().argmax(dim=-1)

    def token_ids(self, text: str) -> list[int]:
        """BPE token ids of ``text``, without start and end tokens."""
        return list(self.tokenizer.encode(text))

    def token_text(self, token_id: int) -> str:
        """The text of one BPE token (without the end-of-word mark)."""
        return self.tokenizer.decoder[int(token_id)].replace("</w>", "")

    def bpe_length(self, text: str) -> int:
        """Number of BPE tokens of ``text`` without start and end tokens."""
        return len(self.token_ids(text))

    def token_embedding(self, ids: Tensor) -> Tensor:
        """Word embeddings of token ids, float32."""
        return self._text.token_embedding(ids.to(self.device)).float()

    @property
    def token_embedding_table(self) -> Tensor:
        return self._text.token_embedding.weight

    def word_vectors(self, words: Sequence[str]) -> Tensor:
        """One vector per word or phrase: the mean embedding of its BPE tokens, float32 [N, width]."""
        vectors = []
        for word in words:
            ids = self.token_ids(word)
            if not ids:
                raise BackboneError(f"{word!r} has no BPE tokens")
            vectors.append(self.token_embedding(torch.tensor(ids)).mean(dim=0))
        return torch.stack(vectors)

    def encode_text_embeddings(
        self,
        embeds: Tensor,
        eot_index: Tensor,
        deep_prompts: DeepPrompts | None = None,
        n_prompts: int | None = None,
        block_residuals: BlockResiduals | None = None,
        inserted: Tensor | None = None,
        insert_at: int = 0,
        shared_prefix: int = 0,
        prefix_groups: int | Tensor = 1,
    ) -> Tensor:
        """Run the text tower on token embeddings and read features at ``eot_index``.

        The transformer is causal and the feature is read at the end-of-text position, so each sequence
        is cut after its own end-of-text position (sequences of one length run together), and positions the
        sequences share (``shared_prefix``) run once: exact, and far cheaper than the full context (see
        :func:`encode_text_tower`).

        Args:
            embeds: [N, L, width] token embeddings (start token, prompt, end token, padding). Shallow
                text prompts are part of them (spliced in by the method, they get positional
                embeddings like every token).
            eot_index: [N] position of the end-of-text token in each sequence.
            deep_prompts: per-layer prompts at positions ``1 .. n_prompts`` (right after the start
                token, before end-of-text, so truncation stays exact); see :data:`DeepPrompts`.
            n_prompts: how many positions the deep prompts occupy (default: from the first tensor).
            block_residuals: what is added to some blocks' outputs; see :data:`BlockResiduals`.
            inserted: [n, width] tokens inserted right after the start token at the input of block ``insert_at``
                (> 0; no positional embedding; the causal mask grows with them, the feature is read at
                ``eot_index + n``); deep prompts then replace them before later blocks.
            insert_at: the block that first sees ``inserted``.
            shared_prefix: the first positions are the same tensors in every sequence of a group (e.g. the
                start token and a context expanded over the classes): they run once per group.
            prefix_groups: the sequences form this many groups of consecutive rows, one shared prefix each (one
                context per image: B groups of C classes); or [N] each sequence's group, 0 .. G-1 (one context per
                task: each task's classes).

        Returns:
            [N, embed_dim] text features (not normalized).
        """
        return encode_text_tower(
            self._text, embeds, eot_index, deep_prompts, n_prompts, None, block_residuals, inserted, insert_at,
            checkpoint=self.activation_checkpointing, shared_prefix=shared_prefix, prefix_groups=prefix_groups,
        )  # fmt: skip

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 1024) -> Tensor:
        """Features of plain texts (not normalized), in batches."""
        out = []
        for start in range(0, len(texts), batch_size):
            out.append(self.encode_token_ids(self.tokenize(texts[start : start + batch_size])))
        return torch.cat(out).float()

    def encode_token_ids(self, ids: Tensor) -> Tensor:
        """Features of tokenized texts [N, L] (not normalized, with gradients: for methods that tune the tower).
        The leading tokens every text shares (a template's words) run once."""
        ids = ids.to(self.device)
        differs = (ids != ids[:1]).any(0)
        shared = int(differs.int().argmax()) if bool(differs.any()) else ids.shape[1]
        return self.encode_text_embeddings(self._text.token_embedding(ids), self.eot_index(ids), shared_prefix=shared)

    # ------------------------------------------------------------------ backbone deltas
    def tower_parameters(self, tower: str) -> dict[str, nn.Parameter]:
        """The weights of one tower, "text" or "image", by name (as in ``named_parameters``).

        The image tower is ``model.visual``; the text tower is every other weight but the logit scale
        and bias.
        """
        _check_tower(tower)
        params = {}
        for name, p in self.named_parameters():
            in_image = name.startswith("model.visual.")
            if (tower == "image") == in_image and name not in ("model.logit_scale", "model.logit_bias"):
                params[name] = p
        return params

    def attention_modules(self, tower: str) -> list[str]:
        """Names (in ``named_modules``) of the attention module of every transformer block of ``tower``, in order."""
        _check_tower(tower)
        if tower == "image":
            transformer, prefix = self._vision_transformer("attention modules").transformer, "model.visual.transformer"
        else:
            transformer = self._text.transformer
            prefix = "model.text.transformer" if hasattr(self.model, "text") else "model.transformer"
        return [f"{prefix}.resblocks.{i}.attn" for i in range(len(transformer.resblocks))]

    def split_attention_copy(self, towers: Sequence[str]) -> Backbone:
        """A private deep copy of this backbone whose attention modules in ``towers`` are :class:`SplitAttention`.

        The copy computes the same features (up to float rounding) with separate ``q_proj``, ``k_proj``,
        ``v_proj`` and ``out_proj`` linear layers, which adapters can target one by one (e.g. LoRA on the
        query, key and value projections). This backbone is left untouched.
        """
        model = copy.deepcopy(self.model)
        twin = Backbone(model, self.tokenizer, self.preprocess_cfg, self.identity.model, self.identity.pretrained)
        for tower in towers:
            for name in twin.attention_modules(tower):
                parent, child = name.removeprefix("model.").rsplit(".", 1)
                block = model.get_submodule(parent)
                setattr(block, child, SplitAttention(getattr(block, child)))
        model.eval()
        return twin

    # ------------------------------------------------------------------ image
    def image_transform(self, train: bool = False, crop_scale: float = 0.08, augmentation: str = "crop-flip"):
        """The model's own preprocessing (a torchvision transform).

        With ``train``, a release's training augmentation at the model's size, normalisation and interpolation
        (:data:`~vlprompt.data.augment.AUGMENTATIONS`): by default the prompt-learning references' (CoOp, CoCoOp,
        MaPLe, KgCoOp, PromptSRC through Dassl: ``random_resized_crop`` at scale ``crop_scale``-1, 0.08 by
        default, ``random_flip``, normalise), not open_clip's training transform (scale 0.9-1, no flip).
        """
        cfg = self.preprocess_cfg
        if train:
            from ..data.augment import train_transform

            interpolation = cfg.get("interpolation", "bicubic")
            return train_transform(augmentation, cfg["size"], cfg["mean"], cfg["std"], interpolation, crop_scale)
        return open_clip.image_transform(
            cfg["size"],
            is_train=False,
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
            interpolation=cfg.get("interpolation", "bicubic"),
            resize_mode=cfg.get("resize_mode", "shortest"),
        )

    @overload
    def encode_image(
        self,
        pixels: Tensor,
        pixel_prompt: Tensor | None = None,
        token_prompts: Tensor | None = None,
        deep_prompts: DeepPrompts | None = None,
        block_residuals: BlockResiduals | None = None,
        insert_at: int = 0,
        prompt_outputs: Literal[False] = False,
    ) -> Tensor: ...

    @overload
    def encode_image(
        self,
        pixels: Tensor,
        pixel_prompt: Tensor | None = None,
        token_prompts: Tensor | None = None,
        deep_prompts: DeepPrompts | None = None,
        block_residuals: BlockResiduals | None = None,
        insert_at: int = 0,
        *,
        prompt_outputs: Literal[True],
    ) -> tuple[Tensor, Tensor]: ...

    def encode_image(
        self,
        pixels: Tensor,
        pixel_prompt: Tensor | None = None,
        token_prompts: Tensor | None = None,
        deep_prompts: DeepPrompts | None = None,
        block_residuals: BlockResiduals | None = None,
        insert_at: int = 0,
        prompt_outputs: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Image features (not normalized), with optional visual prompts and block residuals.

        Where prompt tokens sit (one rule for every method): right after the class token, after the
        positional embedding (prompt tokens get none) and before ``ln_pre``, as in VPT. MaPLe and
        IVLP append them after the patches instead; with no positional embedding the transformer is
        permutation-equivariant, so both placements give the same features up to float rounding.
        The pooled feature never includes prompt tokens (they are dropped before pooling, which
        matters for average-pooled towers).

        Args:
            pixels: [B, 3, H, W] preprocessed images.
            pixel_prompt: added to the normalized pixels (broadcastable to ``pixels``).
            token_prompts: [n, width] or [B, n, width] prompt tokens inserted at the input.
            deep_prompts: what replaces the n prompt positions before blocks 1, 2, ...; see
                :data:`DeepPrompts`. Needs ``token_prompts`` (which sets n).
            block_residuals: what is added to some blocks' outputs; see :data:`BlockResiduals`.
            insert_at: the block before which ``token_prompts`` are inserted (0: at the input, before
                ``ln_pre``; i > 0: into block i's input, the earlier blocks running without them); deep prompts
                replace them before the blocks after it.
            prompt_outputs: also return the prompt positions' final states through ``ln_post`` ([B, n, width],
                not projected), after the features.
        """
        pixels = pixels.to(self.device, self.dtype)
        if pixel_prompt is not None:
            pixels = pixels + pixel_prompt.to(pixels.dtype)
        if token_prompts is None and deep_prompts is not None:
            raise BackboneError("deep image prompts need token_prompts at the input (they set the count)")
        if token_prompts is None and block_residuals is None:
            return self.model.visual(pixels)
        visual = self._vision_transformer("token prompts" if block_residuals is None else "block residuals")
        batch, n = pixels.shape[0], token_prompts.shape[-2] if token_prompts is not None else 0
        x = visual.conv1(pixels).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(batch, 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.patch_dropout(x)
        if token_prompts is not None and insert_at == 0:
            x = torch.cat([x[:, :1], _per_sample(token_prompts.to(x.dtype), batch), x[:, 1:]], dim=1)
        x = visual.ln_pre(x)
        inserted = token_prompts if insert_at > 0 else None
        x = _run_blocks(visual.transformer, x, deep_prompts, n, checkpoint=self.activation_checkpointing,
                        residuals=block_residuals, inserted=inserted, insert_at=insert_at)  # fmt: skip
        prompts = x[:, 1 : 1 + n]
        x = torch.cat([x[:, :1], x[:, 1 + n :]], dim=1)  # pool over the class token and patches only
        pooled, _ = visual._pool(x)
        features = pooled @ visual.proj if visual.proj is not None else pooled
        return (features, visual.ln_post(prompts)) if prompt_outputs else features

    def _vision_transformer(self, what: str) -> VisionTransformer:
        visual = self.model.visual
        if not isinstance(visual, VisionTransformer):
            raise BackboneError(f"{what} need a ViT image tower; {self.identity.model} has {type(visual).__name__}")
        if visual.attn_pool is not None:
            raise BackboneError(f"{what} are not supported on image towers with attention pooling")
        return visual

    @contextlib.contextmanager
    def checkpointing(self, enabled: bool = True):
        """Activation checkpointing of both towers' blocks (where gradients flow) inside the block."""
        previous, self.activation_checkpointing = self.activation_checkpointing, enabled
        try:
            yield self
        finally:
            self.activation_checkpointing = previous

    def check_token_prompts(self, depth: int = 1) -> None:
        """Raise a clear :class:`BackboneError` unless image token prompts at ``depth`` layers can work."""
        self._vision_transformer("token prompts")
        if depth > self.vision_layers:
            raise BackboneError(f"{depth} prompt layers asked of a {self.vision_layers}-layer image tower")

    def check_block_residuals(self, blocks: int) -> None:
        """Raise a clear :class:`BackboneError` unless both towers can take residuals on their first ``blocks``."""
        self._vision_transformer("block residuals")
        fewest = min(self.vision_layers, self.text_layers)
        if blocks > fewest:
            raise BackboneError(f"block residuals up to block {blocks} asked of towers with {fewest} blocks")

    def forward(self, encoder: str, *args, **kwargs):
        """Dispatch to an encoder by name (``"encode_image"``, ...): what :meth:`with_weights` calls."""
        if encoder not in ("encode_image", "encode_text_embeddings", "encode_text", "encode_token_ids"):
            raise TypeError(f"a Backbone is called with an encoder name, not {encoder!r}")
        return getattr(self, encoder)(*args, **kwargs)

    def with_weights(self, weights: dict[str, Tensor], encoder: str, *args, **kwargs) -> Tensor:
        """Run ``encoder`` with some of the backbone's weights replaced, e.g. by a method's backbone delta.

        ``weights`` maps parameter names (as in ``backbone.named_parameters()``, e.g.
        ``"model.ln_final.bias"``) to tensors, which gradients reach. The swap lasts for this call only
        (``torch.func.functional_call``), so other methods sharing the backbone never see it.
        """
        unknown = sorted(set(weights) - {name for name, _ in self.named_parameters()})
        if unknown:
            raise BackboneError(f"no backbone parameter(s) named {unknown}")
        return torch.func.functional_call(self, weights, (encoder, *args), kwargs)

    def train(self, mode: bool = True) -> Backbone:
        """The backbone stays in eval mode: it is frozen."""
        return super().train(False)


TOWERS = ("text", "image")


def _check_tower(tower: str) -> None:
    if tower not in TOWERS:
        raise BackboneError(f"tower must be one of {TOWERS}, not {tower!r}")


class SplitAttention(nn.Module):
    """An ``nn.MultiheadAttention`` re-expressed with four ``nn.Linear`` projections (same weights, same function).

    Supports what CLIP's blocks use: self- or cross-attention with equal widths, an additive float or a
    boolean attention mask (True = masked, as ``nn.MultiheadAttention``), no key padding mask.
    """

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        if not attention._qkv_same_embed_dim or attention.bias_k is not None or attention.add_zero_attn:
            raise BackboneError("only attention with equal query / key / value widths can be split")
        width, bias = attention.embed_dim, attention.in_proj_bias is not None
        self.num_heads, self.batch_first, self.dropout = attention.num_heads, attention.batch_first, attention.dropout
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width, bias=bias) for _ in range(3))
        self.out_proj = nn.Linear(width, width, bias=attention.out_proj.bias is not None)
        with torch.no_grad():
            for i, proj in enumerate((self.q_proj, self.k_proj, self.v_proj)):
                proj.weight.copy_(attention.in_proj_weight[i * width : (i + 1) * width])
                if bias:
                    proj.bias.copy_(attention.in_proj_bias[i * width : (i + 1) * width])
            self.out_proj.load_state_dict(attention.out_proj.state_dict())
        self.to(attention.in_proj_weight.device, attention.in_proj_weight.dtype)
        self.requires_grad_(attention.in_proj_weight.requires_grad)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None, **_):
        if key_padding_mask is not None:
            raise BackboneError("SplitAttention does not take a key padding mask")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        (batch, length, width), heads = query.shape, self.num_heads

        def per_head(x: Tensor) -> Tensor:
            return x.reshape(batch, -1, heads, width // heads).transpose(1, 2)

        q, k, v = per_head(self.q_proj(query)), per_head(self.k_proj(key)), per_head(self.v_proj(value))
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(attn_mask, float("-inf"))
        if attn_mask is not None and attn_mask.dim() == 3:  # [batch · heads, L, S]
            attn_mask = attn_mask.reshape(batch, heads, *attn_mask.shape[-2:])
        dropout = self.dropout if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        x = self.out_proj(x.transpose(1, 2).reshape(batch, length, width))
        return (x if self.batch_first else x.transpose(0, 1)), None


def encode_text_tower(
    text: Any,
    embeds: Tensor,
    eot_index: Tensor,
    deep_prompts: DeepPrompts | None = None,
    n_prompts: int | None = None,
    length: int | None = None,
    block_residuals: BlockResiduals | None = None,
    inserted: Tensor | None = None,
    insert_at: int = 0,
    checkpoint: bool = False,
    shared_prefix: int = 0,
    prefix_groups: int | Tensor = 1,
) -> Tensor:
    """An open_clip causal text tower (``CLIP`` or its ``text`` module) on token embeddings, read at ``eot_index``.

    What :meth:`Backbone.encode_text_embeddings` runs, for code that trains the tower itself (the
    bundled model's pretraining script). The mask being causal, a sequence's feature depends on nothing after
    its end-of-text position: with ``length`` every sequence runs over that many positions (the reference
    procedure at the full context); by default each runs up to its own end-of-text position, the sequences of
    one length together, and the first ``shared_prefix`` positions, the same tensors in every sequence of each of
    ``prefix_groups`` groups of consecutive rows (or of the groups a tensor gives each row), run once per group,
    the other positions attending to them (:func:`_encode_by_length`; where blocks add residuals, insert tokens
    or take per-sequence deep prompts, all sequences run together up to the longest end-of-text position).
    Exact every way, up to the rounding of the matrix products' shapes. With ``checkpoint`` (and gradients on)
    each block is recomputed in the backward pass instead of storing its activations: the same numbers, the
    memory of one block's input per block (e.g. CoCoOp's B x C prompts).
    """
    grouped = length is None and _runs_by_length(text.transformer, embeds, deep_prompts, block_residuals, inserted)
    length = int(eot_index.max()) + 1 if length is None else length
    dtype = text.transformer.get_cast_dtype()
    x = embeds[:, :length].to(dtype) + text.positional_embedding[:length].to(dtype)
    mask = text.attn_mask[:length, :length]
    n = _prompt_count(deep_prompts, n_prompts) if deep_prompts is not None and inserted is None else 0
    if n and n + 1 > int(eot_index.min()):
        raise BackboneError(f"{n} deep text prompts do not fit before the end-of-text token")
    if grouped and (deep_prompts is None or shared_prefix >= n + 1):
        assert not callable(deep_prompts)  # _runs_by_length: one tensor (or None) a layer
        x = _encode_by_length(text.transformer, x, eot_index, shared_prefix, prefix_groups, deep_prompts, n, checkpoint)
        x = text.ln_final(x)  # [N, width]: already each sequence's end-of-text position
    else:
        if deep_prompts is None and block_residuals is None and inserted is None and not checkpoint:
            x = text.transformer(x, attn_mask=mask)
        elif inserted is not None:
            x = _run_blocks(text.transformer, x, deep_prompts, inserted.shape[-2], mask, checkpoint, block_residuals,
                            inserted=inserted, insert_at=insert_at)  # fmt: skip
            eot_index = eot_index + inserted.shape[-2]
        else:
            x = _run_blocks(text.transformer, x, deep_prompts, n, mask, checkpoint, block_residuals)
        x = text.ln_final(x)[torch.arange(x.shape[0], device=x.device), eot_index]
    proj = text.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def _per_sample(prompts: Tensor, batch: int) -> Tensor:
    """[n, width] shared by the batch, or [batch, n, width] already per sample."""
    return prompts.expand(batch, -1, -1) if prompts.dim() == 2 else prompts


def _runs_by_length(
    transformer: Any,
    embeds: Tensor,
    deep_prompts: DeepPrompts | None,
    block_residuals: BlockResiduals | None,
    inserted: Tensor | None,
) -> bool:
    """Whether :func:`_encode_by_length` can run these sequences: plain open_clip blocks without dropout at work,
    deep prompts shared by every sequence (one [n, width] tensor a layer), no residuals or inserted tokens."""
    if inserted is not None or block_residuals is not None or embeds.shape[0] < 2 or not transformer.batch_first:
        return False
    if deep_prompts is not None and (
        callable(deep_prompts) or any(p is not None and p.dim() != 2 for p in deep_prompts)
    ):
        return False
    for block in transformer.resblocks:
        attention = getattr(block, "attn", None)
        if not isinstance(attention, nn.MultiheadAttention) or not attention.batch_first or hasattr(block, "ln_1_kv"):
            return False
        dropping = (attention.dropout > 0 and block.training) or any(
            isinstance(m, nn.Dropout) and m.p > 0 and m.training for m in block.modules()
        )
        if dropping:  # every sequence draws its own dropout: no two share their first positions
            return False
    return True


def _encode_by_length(
    transformer: Any,
    x: Tensor,
    eot_index: Tensor,
    shared: int,
    groups: int | Tensor,
    deep_prompts: Sequence[Tensor | None] | None,
    n: int,
    checkpoint: bool,
) -> Tensor:
    """[N, width] the blocks' outputs at each end-of-text position of ``x`` ([N, L, width], batch-first).

    The first ``shared`` positions (at most the shortest sequence's end-of-text position) run once per group
    (``groups`` groups of consecutive rows, or [N] each row's group), deep prompts refreshing positions 1..n among
    them; the other positions run per sequence, the sequences of one end-of-text position together, attending to
    their group's prefix.
    """
    blocks = transformer.resblocks
    shared = min(shared, int(eot_index.min()))
    group_of, first = _prefix_rows(groups, x.shape[0], x.device)
    prefix = x[first, :shared]
    ids = group_of if isinstance(groups, Tensor) else None
    if x.device.type != "meta" and not _shares_prefix(x[:, :shared], prefix, ids):
        raise BackboneError(f"the first {shared} positions differ within a group: they are not a shared prefix")
    n_groups = len(first)
    prefix_normed = []  # each block's ln_1 of the prefix: what the other positions attend to
    prefix_mask = torch.full((shared, shared), float("-inf"), device=x.device).triu(1)
    for i, block in enumerate(blocks):
        fresh = _layer(deep_prompts, i) if deep_prompts is not None and i > 0 else None
        if fresh is not None:
            prefix = torch.cat([prefix[:, :1], fresh.to(prefix.dtype).expand(n_groups, -1, -1), prefix[:, 1 + n :]], 1)
        prefix_normed.append(block.ln_1(prefix))
        prefix = _run_block(transformer, block, prefix, prefix_mask, checkpoint) if shared else prefix
    order = torch.argsort(eot_index, stable=True)
    ends, counts = torch.unique_consecutive(eot_index[order], return_counts=True)
    out, start = [], 0
    for end, count in zip(ends.tolist(), counts.tolist()):
        members = order[start : start + count]
        start += count
        owner = group_of[members] if group_of is not None else None
        rest = x[members, shared : end + 1]
        mask = torch.full((end + 1 - shared, end + 1), float("-inf"), device=x.device).triu(shared + 1)
        for block, normed in zip(blocks, prefix_normed):
            args = (block, normed, owner, rest, mask)
            if checkpoint and torch.is_grad_enabled():
                rest = torch.utils.checkpoint.checkpoint(_after_prefix, *args, use_reentrant=False)
            else:
                rest = _after_prefix(*args)
        out.append(rest[:, -1])
    return torch.cat(out)[torch.argsort(order)]


def _prefix_rows(groups: int | Tensor, rows: int, device: torch.device) -> tuple[Tensor | None, Tensor]:
    """(each row's group, or None for one group; each group's first row) of ``groups`` consecutive groups or of
    the [rows] group ids 0 .. G-1 a tensor gives."""
    if isinstance(groups, Tensor):
        ids = groups.detach().to("cpu", torch.long)  # read on the host (also when the sequences are on meta)
        if ids.shape != (rows,) or rows == 0 or int(ids.min()) < 0:
            raise BackboneError(f"prefix groups must give each of the {rows} sequences a group 0, 1, ..: got {groups}")
        n_groups = int(ids.max()) + 1
        first = torch.full((n_groups,), rows).scatter_reduce(0, ids, torch.arange(rows), "amin")
        if bool((first == rows).any()):
            raise BackboneError(f"prefix groups 0 .. {n_groups - 1} leave a group without a sequence")
        return ids.to(device), first.to(device)
    if groups < 1 or rows % groups:
        raise BackboneError(f"{rows} sequences do not form {groups} groups of consecutive rows")
    first = torch.arange(0, rows, rows // groups, device=device)
    return (torch.arange(rows, device=device) // (rows // groups) if groups > 1 else None), first


def _shares_prefix(claimed: Tensor, prefix: Tensor, ids: Tensor | None) -> bool:
    """Whether every row's first positions (``claimed``) are its group's ``prefix``: the group ``ids`` give each row,
    or (None) consecutive groups of equal size, compared without a copy."""
    if ids is not None:
        return torch.equal(claimed, prefix[ids])
    per_group = len(claimed) // len(prefix)
    return torch.equal(claimed.unflatten(0, (len(prefix), per_group)), prefix[:, None].expand(-1, per_group, -1, -1))


def _after_prefix(block: Any, prefix_normed: Tensor, owner: Tensor | None, x: Tensor, mask: Tensor) -> Tensor:
    """One open_clip block on the positions ``x`` ([N, S, width]) after a prefix, their attention reading the
    prefix's normalised positions (``prefix_normed[owner]``, or its one row for all) and their own, causally."""
    query = block.ln_1(x)
    before = prefix_normed[owner] if owner is not None else prefix_normed.expand(len(x), -1, -1)
    keys = torch.cat([before, query], dim=1)
    attended = block.attn(query, keys, keys, need_weights=False, attn_mask=mask.to(query.dtype))[0]
    x = x + block.ls_1(attended)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _prompt_count(deep_prompts: DeepPrompts, n_prompts: int | None) -> int:
    if n_prompts is not None:
        return n_prompts
    first = next((p for p in deep_prompts if isinstance(p, Tensor)), None) if not callable(deep_prompts) else None
    if first is None:
        raise BackboneError("pass n_prompts: the deep prompts give no tensor to count them from")
    return first.shape[-2]


def _run_blocks(
    transformer: Any,
    x: Tensor,
    deep_prompts: DeepPrompts | None,
    n: int,
    attn_mask: Tensor | None = None,
    checkpoint: bool = False,
    residuals: BlockResiduals | None = None,
    inserted: Tensor | None = None,
    insert_at: int = 0,
) -> Tensor:
    """The transformer's blocks on batch-first ``x``, the n positions after position 0 refreshed per block, and
    ``residuals`` (:data:`BlockResiduals`) added to their blocks' outputs.

    With ``inserted`` ([n, width] or [N, n, width]) those n positions are inserted after position 0 at the input
    of block ``insert_at`` (> 0; a causal ``attn_mask`` grows with them) and refreshed only after it.

    With ``checkpoint`` (and gradients on) each block's activations are recomputed in the backward pass
    instead of stored (``torch.utils.checkpoint``): the same numbers, less memory, one more forward.
    """
    blocks = transformer.resblocks
    _check_layers(len(blocks), deep_prompts, inserted, insert_at)
    for i, block in enumerate(blocks):
        if inserted is not None and i == insert_at:
            x = torch.cat([x[:, :1], _per_sample(inserted.to(x.dtype), x.shape[0]), x[:, 1:]], dim=1)
            if attn_mask is not None:  # causal: the mask of the longer sequence
                attn_mask = torch.full_like(attn_mask[:1, :1], float("-inf")).expand(x.shape[1], x.shape[1]).triu(1)
        elif i > insert_at and deep_prompts is not None:
            fresh = deep_prompts(i, x[:, 1 : 1 + n]) if callable(deep_prompts) else _layer(deep_prompts, i)
            if fresh is not None:
                x = torch.cat([x[:, :1], _per_sample(fresh.to(x.dtype), x.shape[0]), x[:, 1 + n :]], dim=1)
        residual = residuals.get(i) if residuals is not None else None
        x = _run_block(transformer, block, x, attn_mask, checkpoint, residual)
    return x


def _check_layers(blocks: int, deep_prompts: DeepPrompts | None, inserted: Tensor | None, insert_at: int) -> None:
    if deep_prompts is not None and not callable(deep_prompts) and len(deep_prompts) >= blocks:
        raise BackboneError(
            f"{len(deep_prompts) + 1} prompt layers asked of a {blocks}-layer tower (the input counts as one)"
        )
    if inserted is not None and not 0 < insert_at < blocks:
        raise BackboneError(f"tokens inserted before block {insert_at} of a {blocks}-block tower")


def _run_block(
    transformer: Any,
    block: Any,
    x: Tensor,
    attn_mask: Tensor | None,
    checkpoint: bool,
    residual: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """One block on batch-first ``x``, plus ``residual(block.ln_1(x))`` (:data:`BlockResiduals`) where given; with
    ``checkpoint`` both are recomputed in the backward pass instead of stored."""

    def forward(x: Tensor) -> Tensor:
        out = (
            block(x, attn_mask=attn_mask)
            if transformer.batch_first
            else block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
        )
        return out if residual is None else out + residual(block.ln_1(x)).to(out.dtype)

    if checkpoint and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(forward, x, use_reentrant=False)
    return forward(x)


def _layer(prompts: Sequence[Tensor | None], i: int) -> Tensor | None:
    return prompts[i - 1] if i - 1 < len(prompts) else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
