"""The streaming engine: one pass over the score chunks, keeping a small summary per image.

The reference evaluator copies the whole ``N x P`` score matrix several times and
once per bias. Here scores are read once, in row chunks, and each image keeps a summary of
``O(k)`` numbers from which its correctness at any bias follows exactly:

- its true-pair score;
- the ``k`` largest scores among the seen columns left of its pair's column, and among those
  right of it; the same for the non-seen columns;
- how many masked (``-1e10``) columns lie left and right of its pair's column.

Whether a column outranks the true pair at bias ``b`` (a higher score, or an equal one at a lower
column) is monotone in the column's score within each of those groups, because float32 rounding of
``s + b`` is monotone; so the ``k`` largest of each group decide whether fewer than ``k`` columns
outrank the true pair. Memory is ``O(N k)`` plus one chunk, independent of the number of biases.
For speed each row block is gathered once into the groups, cut into blocks of ``SPLIT_BLOCK``
columns, and only the block a row's split falls into is looked at element-wise.

Ties: the reference calls ``torch.topk``, whose choice among equal scores is unspecified. Here a
tie is resolved in favour of the lower column index (a stable sort), which is what ``torch.topk``
does on CPU for ``k = 1`` over 64 or more columns. With continuous scores ties only come from
float32 rounding of ``s + b``.

The two tuning knobs, ``BLOCK_ELEMENTS`` and ``SPLIT_BLOCK``, live on the package
(``vlprompt.evaluation.czsl``) and are read from it at call time, so setting them there takes effect
(the tests set ``SPLIT_BLOCK`` to exercise the block edges).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .inputs import _Setup
from .protocol import MASKED_SCORE

Scores = torch.Tensor | Iterable[torch.Tensor]


def _tuning() -> tuple[int, int]:
    """``(BLOCK_ELEMENTS, SPLIT_BLOCK)`` as the package holds them now."""
    from . import BLOCK_ELEMENTS, SPLIT_BLOCK

    return BLOCK_ELEMENTS, SPLIT_BLOCK


@dataclass
class _View:
    """Per-image summary for one set of kept columns."""

    true: torch.Tensor  # [N] true-pair score (-inf when removed)
    image_seen: torch.Tensor  # [N] bool
    seen_side: torch.Tensor  # [N, 2, k] largest seen scores left/right of the true column, NaN padded
    unseen_side: torch.Tensor  # [N, 2, k] same for non-seen columns (-inf for removed ones)
    masked_count: torch.Tensor  # [N, 2] masked columns left/right (capped at k)


@dataclass
class _Summary:
    true: torch.Tensor  # [N]
    seen_side: torch.Tensor  # [N, 2, k]
    bin_side: torch.Tensor  # [N, L - first_bin, 2, k], -inf padded
    unseen_count: torch.Tensor  # [N, 2] non-seen kept columns left/right, all levels
    masked_count: torch.Tensor  # [N, 2]
    attr_hit: torch.Tensor | None  # [N] bool, at bias 0
    obj_hit: torch.Tensor | None

    def _view(self, level: int, unseen_top: torch.Tensor, setup: _Setup) -> _View:
        labels = setup.labels
        lvl = setup.col_level[labels]
        true = torch.where((lvl >= 0) & (lvl < level), torch.tensor(float("-inf")), self.true)
        k = setup.topk
        slot = torch.arange(k)
        unseen = unseen_top.masked_fill(slot[None, None, :] >= self.unseen_count[:, :, None], float("nan"))
        return _View(true, setup.image_seen, self.seen_side, unseen, self.masked_count)

    def at_level(self, level: int, setup: _Setup) -> _View:
        """The summary with non-seen columns below ``level`` removed."""
        parts = self.bin_side[:, level - setup.first_bin :]
        n, _, _, k = parts.shape
        top = parts.permute(0, 2, 1, 3).reshape(n, 2, -1).topk(k, dim=2).values
        return self._view(level, top, setup)

    def levels_descending(self, setup: _Setup) -> Iterator[_View]:
        """Views at the highest level first, down to level ``first_bin`` (suffix maxima)."""
        k = setup.topk
        top = self.bin_side[:, -1]
        n_levels = self.bin_side.shape[1]
        for i in range(n_levels - 1, -1, -1):
            if i < n_levels - 1:
                top = torch.cat([top, self.bin_side[:, i]], dim=2).topk(k, dim=2).values
            yield self._view(i + setup.first_bin, top, setup)


def _iter_chunks(scores: Scores, n_cols: int) -> Iterator[torch.Tensor]:
    """Check and convert the chunks, holding no reference while the producer makes the next one."""
    source = iter([scores] if isinstance(scores, torch.Tensor) else scores)
    i = 0
    while True:
        try:
            chunk = next(source)
        except StopIteration:
            return
        if not isinstance(chunk, torch.Tensor):
            raise TypeError(f"score chunk {i} is a {type(chunk).__name__}, expected a tensor")
        if chunk.ndim != 2 or chunk.shape[1] != n_cols:
            raise ValueError(f"score chunk {i} must have shape [n, {n_cols}], got {tuple(chunk.shape)}")
        out = chunk.detach().to(device="cpu", dtype=torch.float32)
        del chunk
        yield out
        del out
        i += 1


@dataclass
class _Layout:
    """Column groups gathered side by side, each padded to whole blocks of ``width`` columns."""

    order: torch.Tensor  # [n_blocks * width] source column of each gathered position
    pads: torch.Tensor  # gathered positions that are padding (set to -inf)
    width: int
    block_group: torch.Tensor  # [n_blocks] group of each block
    block_local: torch.Tensor  # [n_blocks] index of the block within its group
    group_first: torch.Tensor  # [n_groups] first block of each group
    group_blocks: torch.Tensor  # [n_groups] number of blocks of each group
    group_size: torch.Tensor  # [n_groups] number of columns of each group

    source: torch.Tensor  # like ``order``, with padding mapped to the largest long

    def column_of(self, position: torch.Tensor) -> torch.Tensor:
        """Source column of gathered positions; padding maps to the largest long."""
        return self.source[position]

    @classmethod
    def build(cls, groups: Sequence[torch.Tensor], width: int) -> _Layout:
        sizes = torch.tensor([g.numel() for g in groups], dtype=torch.long)
        blocks = torch.div(sizes + width - 1, width, rounding_mode="floor")
        order, pads, block_group, block_local = [], [], [], []
        offset = 0
        for i, cols in enumerate(groups):
            nb = int(blocks[i])
            padded = torch.zeros(nb * width, dtype=torch.long)
            padded[: cols.numel()] = cols
            order.append(padded)
            pads.append(torch.arange(offset + cols.numel(), offset + nb * width))
            block_group.append(torch.full((nb,), i, dtype=torch.long))
            block_local.append(torch.arange(nb))
            offset += nb * width
        order_all, pads_all = torch.cat(order), torch.cat(pads)
        source = order_all.clone()
        source[pads_all] = torch.iinfo(torch.long).max
        return cls(
            order=order_all,
            pads=pads_all,
            source=source,
            width=width,
            block_group=torch.cat(block_group),
            block_local=torch.cat(block_local),
            group_first=torch.cumsum(blocks, 0) - blocks,
            group_blocks=blocks,
            group_size=sizes,
        )


def _summarize(scores: Scores, setup: _Setup, with_predictions: bool) -> _Summary:
    """One pass over the score chunks, keeping the per-image summaries.

    Each block of rows is gathered once into the column groups (seen columns, then the non-seen
    columns of each summarised level), and the top-k left and right of every row's true column is
    taken in every group at once. With ``with_predictions`` the top-k at bias 0 is found as well.
    """
    n, k, n_cols = setup.labels.numel(), setup.topk, setup.n_cols
    bins = setup.bins[setup.first_bin :]
    groups = [setup.seen_cols, *bins]
    block_elements, split_block = _tuning()
    width = max(1, min(split_block, math.isqrt(n_cols)))
    layout = _Layout.build(groups, width)
    counts = torch.stack([_side_counts(cols, setup.labels) for cols in groups], dim=1)  # [N, G, 2]
    rows = max(1, block_elements // n_cols)
    blocks = _BlockSummaries(setup, layout, counts, with_predictions, rows)
    row = 0
    for chunk in _iter_chunks(scores, n_cols):
        size = chunk.shape[0]
        if row + size > n:
            raise ValueError(f"the score chunks hold more rows than the {n} labels")
        step = -(-size // -(-size // rows))  # equal blocks of at most `rows`
        for start in range(0, size, step):
            stop = min(start + step, size)
            blocks.add(chunk[start:stop], slice(row + start, row + stop))
        row += size
        del chunk  # let the producer free it before making the next one
    if row != n:
        raise ValueError(f"the score chunks hold {row} rows, but there are {n} labels")
    seen_side = blocks.sides[:, 0].masked_fill(torch.arange(k)[None, None, :] >= counts[:, 0, :, None], float("nan"))
    unseen_count = torch.zeros(n, 2, dtype=torch.long)
    for cols in setup.bins:
        unseen_count += _side_counts(cols, setup.labels)
    masked_count = _side_counts(setup.masked_cols, setup.labels).clamp_max(k)
    return _Summary(
        blocks.true, seen_side, blocks.sides[:, 1:], unseen_count, masked_count, blocks.attr_hit, blocks.obj_hit
    )


class _BlockSummaries:
    """The per-image outputs of :func:`_summarize`, filled one row block at a time by :meth:`add`.

    Args:
        setup: the inputs.
        layout: the gathered column groups.
        counts: ``[N, G, 2]`` columns of each group left and right of each image's true column.
        with_predictions: also find the top-k at bias 0 (``attr_hit``, ``obj_hit``).
        rows: most rows of one block (the size of the reused buffers).
    """

    def __init__(self, setup: _Setup, layout: _Layout, counts: torch.Tensor, with_predictions: bool, rows: int):
        n, k = setup.labels.numel(), setup.topk
        self.setup, self.layout, self.k = setup, layout, k
        self.left_all = counts[:, :, 0]
        self.right_all = layout.group_size[None, :] - counts[:, :, 1]
        self.true = torch.empty(n)
        self.sides = torch.empty(n, layout.group_size.numel(), 2, k)
        self.attr_hit = torch.empty(n, dtype=torch.bool) if with_predictions else None
        self.obj_hit = torch.empty(n, dtype=torch.bool) if with_predictions else None
        self.removed = torch.cat([*setup.bins[: setup.first_bin], torch.empty(0, dtype=torch.long)])
        fill = with_predictions and k > 1 and (setup.masked_cols.numel() > 0 or self.removed.numel() > 0)
        self.extra = _outside_columns(setup, self.removed)
        self.gathered_buf = torch.empty(min(rows, n), layout.order.numel())
        self.unbiased_buf = torch.empty(min(rows, n), setup.n_cols) if fill else None

    def add(self, x: torch.Tensor, sl: slice) -> None:
        """Summarise the rows ``sl`` (image indices) whose scores are ``x``."""
        m, t, layout = x.shape[0], self.setup.labels[sl], self.layout
        self.true[sl] = x.gather(1, t[:, None]).squeeze(1)
        if torch.isnan(self.true[sl]).any():
            raise ValueError("scores contain NaN")
        gathered = torch.index_select(x, 1, layout.order, out=self.gathered_buf[:m])
        gathered.index_fill_(1, layout.pads, float("-inf"))
        self.sides[sl], block_top = _group_split_topk(gathered, layout, self.left_all[sl], self.right_all[sl], self.k)
        if self.attr_hit is not None and self.obj_hit is not None:
            setup = self.setup
            assert setup.attr_of_pair is not None and setup.obj_of_pair is not None
            pred = self._predict(x, gathered, block_top)
            self.attr_hit[sl] = (setup.attr_of_pair[pred] == setup.attr_of_pair[t][:, None]).any(1)
            self.obj_hit[sl] = (setup.obj_of_pair[pred] == setup.obj_of_pair[t][:, None]).any(1)

    def _predict(self, x: torch.Tensor, gathered: torch.Tensor, block_top: torch.Tensor) -> torch.Tensor:
        """``[m, k]`` the top-k columns at bias 0 of the block's rows."""
        if self.k == 1:
            return _first_best(gathered, block_top[:, :, 0], self.layout, self.extra)[:, None]
        unbiased = x
        if self.unbiased_buf is not None:
            unbiased = self.unbiased_buf[: x.shape[0]].copy_(x)
            unbiased.index_fill_(1, self.setup.masked_cols, MASKED_SCORE)
            unbiased.index_fill_(1, self.removed, float("-inf"))
        return _top_unbiased(unbiased, self.k)


def _outside_columns(setup: _Setup, removed: torch.Tensor) -> list[tuple[float, int]]:
    """Columns outside the gathered groups that can still be the top-1 at bias 0: (score, first column)."""
    extra = []
    if setup.masked_cols.numel():
        extra.append((MASKED_SCORE, int(setup.masked_cols[0])))
    if removed.numel():
        extra.append((float("-inf"), int(removed.min())))
    return extra


def _side_counts(cols: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N, 2] number of ``cols`` (ascending) left and right of each label column, the label excluded."""
    g = cols.numel()
    if g == 0:
        return torch.zeros(labels.numel(), 2, dtype=torch.long)
    left = torch.searchsorted(cols, labels)
    inside = (cols[left.clamp_max(g - 1)] == labels).long()
    return torch.stack([left, g - left - inside], dim=1)


def _group_split_topk(
    gathered: torch.Tensor, layout: _Layout, left: torch.Tensor, right: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest scores of every group left of ``left`` and from ``right`` on (group positions).

    Args:
        gathered: ``[n, n_blocks * width]`` scores in layout order, padding at -inf.
        layout: the groups.
        left: ``[n, G]`` per row and group, the positions ``< left`` form the left side.
        right: ``[n, G]`` the positions ``>= right`` form the right side.
        k: how many to keep.

    Returns:
        ``[n, G, 2, k]`` values, largest first, -inf where a side has fewer than k; and the
        ``[n, n_blocks, min(k, width)]`` top values of every block.
    """
    n = gathered.shape[0]
    width, n_groups = layout.width, layout.group_size.numel()
    neg = float("-inf")
    blocks = gathered.view(n, -1, width)
    kb = min(k, width)
    top = blocks.amax(2, keepdim=True) if kb == 1 else blocks.topk(kb, dim=2).values  # [n, NB, kb]
    local, group = layout.block_local, layout.block_group
    segment = group.repeat_interleave(kb)
    offsets = torch.arange(width)
    first, count = layout.group_first[None, :], layout.group_blocks[None, :]
    out = torch.empty(n, n_groups, 2, k)
    for side, limit in enumerate((left, right)):
        edge = limit.index_select(1, group)  # [n, NB]
        partly_out = (local + 1) * width > edge if side == 0 else local * width < edge  # block not wholly on the side
        from_blocks = _segment_topk(top.masked_fill(partly_out[:, :, None], neg).flatten(1), segment, n_groups, k)
        # The one block per row and group that the split cuts: the block holding position `left`
        # (left side) or `right - 1` (right side), if it exists.
        j = torch.div(limit if side == 0 else limit - 1, width, rounding_mode="floor")
        missing = (j < 0) | (j >= count)
        block = first + j.clamp(min=0).minimum((count - 1).clamp(min=0))
        cut = gathered.gather(1, (block[:, :, None] * width + offsets).flatten(1)).view(n, n_groups, width)
        local_pos = j[:, :, None] * width + offsets
        outside = local_pos >= limit[:, :, None] if side == 0 else local_pos < limit[:, :, None]
        cut = cut.masked_fill_(outside | missing[:, :, None], neg)
        cut_top = cut.amax(2, keepdim=True) if kb == 1 else cut.topk(kb, dim=2).values
        both = torch.cat([from_blocks, cut_top], dim=2)
        out[:, :, side] = both.amax(2, keepdim=True) if k == 1 else both.topk(k, dim=2).values
    # Every score but the true one lies on one side of its group; amax, topk and scatter_reduce
    # all carry a NaN through, so checking the result finds any NaN in the scores.
    if torch.isnan(out[:, :, :, 0]).any():
        raise ValueError("scores contain NaN")
    return out, top


def _first_best(
    gathered: torch.Tensor, block_max: torch.Tensor, layout: _Layout, extra: Sequence[tuple[float, int]]
) -> torch.Tensor:
    """[n] the top-1 column at bias 0, ties to the lower column index.

    The gathered groups hold every column that keeps its score; ``extra`` adds, per kind of
    column outside them (masked at -1e10, removed at -inf), its score and its first column.
    """
    n = gathered.shape[0]
    width, n_groups, n_blocks = layout.width, layout.group_size.numel(), block_max.shape[1]
    best = block_max.amax(1)
    overall = best
    for value, _ in extra:
        overall = torch.clamp_min(overall, value)
    # First block of every group that holds the best score, then the first position in it.
    block_id = torch.arange(n_blocks).expand(n, -1)
    hit_block = torch.where(block_max == best[:, None], block_id, n_blocks)
    first_hit = torch.full((n, n_groups), n_blocks).scatter_reduce(
        1, layout.block_group.expand(n, -1), hit_block, "amin", include_self=True
    )
    block = first_hit.clamp_max(n_blocks - 1)
    pos = block[:, :, None] * width + torch.arange(width)
    in_block = (gathered.gather(1, pos.flatten(1)).view(n, n_groups, width) == best[:, None, None]).to(torch.uint8)
    column = layout.column_of(block * width + in_block.argmax(2))
    no_column = torch.iinfo(torch.long).max
    column = torch.where((first_hit < n_blocks) & (best == overall)[:, None], column, no_column)
    winner = column.amin(1)
    for value, col in extra:
        winner = torch.where(overall == value, winner.clamp_max(col), winner)
    return winner


def _segment_topk(values: torch.Tensor, segment: torch.Tensor, n_segments: int, k: int) -> torch.Tensor:
    """Per row, the k largest values of each segment (a multiset: repeats count); ``[n, S, k]``.

    Found in k rounds: each takes the largest remaining value per segment and how often it occurs.
    """
    n = values.shape[0]
    neg = float("-inf")
    index = segment.expand(n, -1)
    out = torch.full((n, n_segments, k), neg)
    filled = torch.zeros(n, n_segments, dtype=torch.long)
    slot = torch.arange(k)
    for r in range(k):
        best = torch.full((n, n_segments), neg).scatter_reduce(1, index, values, "amax", include_self=True)
        if k == 1:
            out[:, :, 0] = best
            break
        hit = (values == best.gather(1, index)) & (values > neg)
        times = torch.zeros(n, n_segments, dtype=torch.long).scatter_add_(1, index, hit.long())
        place = (slot >= filled[:, :, None]) & (slot < (filled + times)[:, :, None])
        out = torch.where(place, best[:, :, None], out)
        filled += times
        if r + 1 < k:
            values = values.masked_fill(hit, neg)
    return out


def _top_unbiased(v: torch.Tensor, k: int) -> torch.Tensor:
    """[n, k] column indices of the k best scores per row, ties to the lower index."""
    kk = min(k + 1, v.shape[1])
    values, index = v.topk(kk, dim=1)
    if torch.isnan(values).any():
        raise ValueError("scores contain NaN")
    pred = index[:, :k].clone()
    if kk > k:
        tied = (values[:, k] == values[:, k - 1]).nonzero().squeeze(1)
        if tied.numel():
            pred[tied] = torch.sort(v[tied], dim=1, descending=True, stable=True).indices[:, :k]
    return pred
