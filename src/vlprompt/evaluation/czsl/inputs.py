"""Validated inputs of an evaluation, and the column groups the per-image summaries are taken over."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...errors import DataError, OptionError


@dataclass
class _Setup:
    """Validated inputs and the column grouping the summaries are taken over."""

    labels: torch.Tensor  # [N] long
    image_seen: torch.Tensor  # [N] bool
    n_cols: int
    topk: int
    seen_cols: torch.Tensor  # ascending
    masked_cols: torch.Tensor  # ascending
    bins: list[torch.Tensor]  # non-seen kept columns by level, each ascending
    first_bin: int  # bins below it are removed in every evaluated view (no summary needed)
    eval_level: int  # the level evaluate_czsl reports
    col_level: torch.Tensor  # [P] level of each non-seen kept column (-1 elsewhere)
    attr_of_pair: torch.Tensor | None
    obj_of_pair: torch.Tensor | None

    @classmethod
    def build(
        cls,
        pair_labels: torch.Tensor | Sequence[int],
        seen_mask: torch.Tensor,
        attr_of_pair: torch.Tensor | None,
        obj_of_pair: torch.Tensor | None,
        keep_mask: torch.Tensor | None,
        removed_mask: torch.Tensor | None,
        levels: tuple[torch.Tensor, int] | None,
        topk: int,
    ) -> _Setup:
        seen = _bool_vector(seen_mask, "seen_mask")
        n_cols = seen.numel()
        keep = torch.ones_like(seen) if keep_mask is None else _bool_vector(keep_mask, "keep_mask", n_cols)
        labels = _column_labels(pair_labels, n_cols)
        if not isinstance(topk, int) or topk < 1:
            raise OptionError(f"topk must be a positive int, got {topk!r}")
        if int(seen.sum()) < topk:
            raise DataError(f"need at least topk={topk} seen columns, got {int(seen.sum())}")
        image_seen = _image_seen(seen, keep, labels)
        if attr_of_pair is not None and obj_of_pair is not None:
            attr_of_pair, obj_of_pair = _pair_parts(attr_of_pair, obj_of_pair, n_cols)
        cols = torch.arange(n_cols)
        col_level, n_levels, first_bin, eval_level = _column_levels(seen, keep, removed_mask, levels)
        members = cols[~seen & keep]
        member_level = col_level[members]
        by_level = members[torch.argsort(member_level, stable=True)]  # ascending columns within a level
        bins = list(torch.split(by_level, torch.bincount(member_level, minlength=n_levels).tolist()))
        return cls(
            labels=labels,
            image_seen=image_seen,
            n_cols=n_cols,
            topk=topk,
            seen_cols=cols[seen],
            masked_cols=cols[~keep],
            bins=bins,
            first_bin=first_bin,
            eval_level=eval_level,
            col_level=col_level,
            attr_of_pair=attr_of_pair,
            obj_of_pair=obj_of_pair,
        )


def _bool_vector(x: torch.Tensor, name: str, size: int | None = None) -> torch.Tensor:
    x = torch.as_tensor(x).detach().cpu()
    if x.dtype != torch.bool or x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D bool tensor, got {x.dtype} of shape {tuple(x.shape)}")
    if size is not None and x.numel() != size:
        raise ValueError(f"{name} must have {size} entries, got {x.numel()}")
    return x


def _long_vector(x: torch.Tensor, name: str, size: int) -> torch.Tensor:
    x = torch.as_tensor(x).detach().cpu()
    if x.ndim != 1 or x.numel() != size or x.is_floating_point():
        raise ValueError(f"{name} must be a 1-D integer tensor with {size} entries, got {tuple(x.shape)}")
    return x.to(torch.long)


def _column_labels(pair_labels: torch.Tensor | Sequence[int], n_cols: int) -> torch.Tensor:
    """The labels as a flat long tensor of column indices, checked to lie in ``[0, n_cols)``."""
    labels = torch.as_tensor(pair_labels).detach().to(torch.long).reshape(-1)
    if labels.numel() == 0:
        raise ValueError("pair_labels is empty")
    if labels.min() < 0 or labels.max() >= n_cols:
        raise ValueError(f"pair_labels must be column indices in [0, {n_cols}), got {labels.min()}..{labels.max()}")
    return labels


def _image_seen(seen: torch.Tensor, keep: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N] whether each image's pair is seen, after checking that the kept columns fit the labels."""
    if (seen & ~keep).any():
        raise ValueError("keep_mask must keep every seen column")
    if not keep[labels].all():
        bad = int(labels[~keep[labels]][0])
        raise ValueError(f"keep_mask drops column {bad}, which is the pair of some image")
    image_seen = seen[labels]
    if image_seen.all() or not image_seen.any():
        kind = "unseen" if image_seen.all() else "seen"
        raise DataError(f"no images of {kind} pairs: both seen and unseen images are needed")
    return image_seen


def _pair_parts(
    attr_of_pair: torch.Tensor, obj_of_pair: torch.Tensor, n_cols: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attribute and object of every column as long vectors, checked to name distinct pairs."""
    attr_of_pair = _long_vector(attr_of_pair, "attr_of_pair", n_cols)
    obj_of_pair = _long_vector(obj_of_pair, "obj_of_pair", n_cols)
    code = attr_of_pair * (int(obj_of_pair.max()) + 1) + obj_of_pair
    if torch.unique(code).numel() != n_cols:
        raise DataError("two columns have the same (attribute, object) pair")
    return attr_of_pair, obj_of_pair


def _column_levels(
    seen: torch.Tensor,
    keep: torch.Tensor,
    removed_mask: torch.Tensor | None,
    levels: tuple[torch.Tensor, int] | None,
) -> tuple[torch.Tensor, int, int, int]:
    """The level of every non-seen kept column (-1 elsewhere), and the grouping's level numbers.

    Returns:
        ``(col_level, n_levels, first_bin, eval_level)``: with ``levels`` (calibration) the given
        level of each column, all summarised; with ``removed_mask`` level 0 for removed columns
        (never summarised) and 1 for the others, evaluated at 1; otherwise one level 0.
    """
    n_cols = seen.numel()
    unseen_kept = ~seen & keep
    col_level = torch.full((n_cols,), -1, dtype=torch.long)
    if levels is not None:
        level_of, n_levels = levels
        col_level[unseen_kept] = level_of[unseen_kept]
        return col_level, n_levels, 0, 0
    if removed_mask is not None:
        removed = _bool_vector(removed_mask, "removed_mask", n_cols)
        if (removed & seen).any():
            raise ValueError("removed_mask must not remove seen columns")
        col_level[unseen_kept] = (~removed[unseen_kept]).long()
        return col_level, 2, 1, 1
    col_level[unseen_kept] = 0
    return col_level, 1, 0, 0
