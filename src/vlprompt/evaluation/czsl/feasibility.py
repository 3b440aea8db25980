"""Feasibility of attribute-object pairs from word vectors, and reading GloVe-style vector files."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ...data.czsl import CZSLSplit, Pair
from ...data.images import DataError
from ...errors import OptionError

log = logging.getLogger(__name__)


def feasibility_scores(
    split: CZSLSplit,
    attr_vectors: torch.Tensor,
    obj_vectors: torch.Tensor,
    columns: Sequence[Pair] | None = None,
) -> torch.Tensor:
    """Feasibility of every column from word vectors of the attributes and objects.

    For a non-seen pair (a, o): ``s_obj`` is the largest cosine similarity between o and another
    object that some train pair gives attribute a, ``s_attr`` the largest between a and another
    attribute that some train pair gives object o (each -1 if there is none, and never below -1);
    feasibility is ``(s_obj + s_attr) / 2``. Seen pairs get 0.

    Args:
        split: the split (its train pairs define what occurs together).
        attr_vectors: ``[len(split.attrs), D]`` one vector per attribute (e.g. :func:`load_glove`).
        obj_vectors: ``[len(split.objs), D']`` one vector per object.
        columns: the pair columns (default: the open-world pairs, attribute-major).

    Returns:
        ``[len(columns)]`` float32 feasibility.
    """
    n_attr, n_obj = len(split.attrs), len(split.objs)
    attr_vectors = torch.as_tensor(attr_vectors, dtype=torch.float32)
    obj_vectors = torch.as_tensor(obj_vectors, dtype=torch.float32)
    if attr_vectors.ndim != 2 or attr_vectors.shape[0] != n_attr:
        raise ValueError(f"attr_vectors must be [{n_attr}, D], got {tuple(attr_vectors.shape)}")
    if obj_vectors.ndim != 2 or obj_vectors.shape[0] != n_obj:
        raise ValueError(f"obj_vectors must be [{n_obj}, D], got {tuple(obj_vectors.shape)}")
    attr_sim = _cosine(attr_vectors)
    obj_sim = _cosine(obj_vectors)
    together = torch.zeros(n_attr, n_obj, dtype=torch.bool)  # together[a, o]: (a, o) is a train pair
    for a, o in split.train_pairs:
        together[split.attr2idx[a], split.obj2idx[o]] = True
    # s_obj[a, o] = max over o' with together[a, o'] of obj_sim[o, o'].
    s_obj = _masked_rowmax(together, obj_sim)
    # s_attr[a, o] = max over a' with together[a', o] of attr_sim[a, a'].
    s_attr = _masked_rowmax(together.T.contiguous(), attr_sim).T
    feas = ((s_obj.double() + s_attr.double()) / 2).float()
    feas[together] = 0.0
    cols = split.open_world_pairs() if columns is None else columns
    attrs, objs = split.pair_parts(cols)
    return feas[attrs, objs].contiguous()


def _cosine(vectors: torch.Tensor) -> torch.Tensor:
    unit = torch.nn.functional.normalize(vectors, dim=1)
    return unit @ unit.T


def _masked_rowmax(member: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    """``out[r, i] = max(-1, max_{j: member[r, j]} sim[i, j])`` for a ``[R, M]`` member matrix."""
    rows, m = member.shape
    out = torch.empty(rows, m, dtype=torch.float32)
    block = max(1, (1 << 22) // max(1, m * m))
    neg = torch.tensor(float("-inf"))
    for start in range(0, rows, block):
        mem = member[start : start + block]  # [b, M] over j
        vals = torch.where(mem[:, None, :], sim[None, :, :], neg)  # [b, M(i), M(j)]
        out[start : start + block] = vals.amax(dim=2).clamp_min(-1.0)
    return out


@dataclass(frozen=True)
class WordVectors:
    """Vectors read from a word-vector file.

    Attributes:
        names: the requested names, in order.
        vectors: ``[len(names), D]`` float32.
        missing: words (after lower-casing, aliases and splitting at ``_``) the file lacks.
    """

    names: tuple[str, ...]
    vectors: torch.Tensor
    missing: tuple[str, ...]


#: Substitutions BatsResearch/csp's feasibility script applies before a GloVe lookup (lower-case
#: names of UT-Zappos and a few C-GQA objects). Pass ``aliases=REFERENCE_GLOVE_ALIASES`` to
#: :func:`load_glove` to reproduce its feasibility scores.
REFERENCE_GLOVE_ALIASES: Mapping[str, str] = {
    "faux.fur": "fake_fur",
    "faux.leather": "fake_leather",
    "full.grain.leather": "thick_leather",
    "hair.calf": "hair_leather",
    "patent.leather": "shiny_leather",
    "nubuck": "grainy_leather",
    "boots.ankle": "ankle_boots",
    "boots.knee.high": "knee_high_boots",
    "boots.mid-calf": "midcalf_boots",
    "shoes.boat.shoes": "boat_shoes",
    "shoes.clogs.and.mules": "clogs_shoes",
    "shoes.flats": "flats_shoes",
    "shoes.heels": "heels",
    "shoes.loafers": "loafers",
    "shoes.oxfords": "oxford_shoes",
    "shoes.sneakers.and.athletic.shoes": "sneakers",
    "trash_can": "trashcan",
    "dry-erase_board": "dry_erase_board",
    "black_and_white": "black_white",
    "eiffel_tower": "tower",
}


def load_glove(
    path: str | Path,
    names: Sequence[str],
    *,
    fallback: Literal["error", "zeros", "skip"] = "error",
    aliases: Mapping[str, str] | None = None,
) -> WordVectors:
    """Vectors for ``names`` from a GloVe-style text file (``word v1 v2 ...`` per line).

    A name is lower-cased, replaced through ``aliases`` (keys lower-case) and, if it contains
    ``_``, split into parts whose vectors are averaged. Only the needed lines are parsed; when a
    word occurs twice the later line wins.

    Args:
        path: the text file.
        names: attribute or object names.
        fallback: what a missing word does: ``"error"`` raises a :class:`DataError` naming it;
            ``"zeros"`` uses a zero vector for it in the average; ``"skip"`` leaves it out of the
            average (a name with no word found gets zeros). Missing words are counted, logged and
            listed in ``WordVectors.missing``.
        aliases: name substitutions applied after lower-casing.
    """
    if fallback not in ("error", "zeros", "skip"):
        raise OptionError(f"fallback must be 'error', 'zeros' or 'skip', not {fallback!r}")
    path = Path(path)
    parts_of = _lookup_words(names, aliases)
    wanted = {p for parts in parts_of for p in parts}
    found, dim = _read_vectors(path, wanted)
    missing = sorted(wanted - set(found))
    if missing:
        example = ", ".join(repr(w) for w in missing[:5])
        if fallback == "error":
            raise DataError(
                f"{path}: {len(missing)} word(s) not found: {example}; pass fallback='zeros' or 'skip' "
                "or aliases to proceed"
            )
        log.warning("%s: %d word(s) not found (%s), using fallback=%r", path, len(missing), example, fallback)
    zero = torch.zeros(dim)
    rows = []
    for parts in parts_of:
        vecs = [found.get(p, zero) for p in parts if p in found or fallback != "skip"]
        rows.append(torch.stack(vecs).mean(0) if vecs else zero)
    return WordVectors(names=tuple(names), vectors=torch.stack(rows), missing=tuple(missing))


def _lookup_words(names: Sequence[str], aliases: Mapping[str, str] | None) -> list[list[str]]:
    """The words to look up for each name: lower-cased, through ``aliases``, split at ``_``."""
    aliases = {k.lower(): v for k, v in (aliases or {}).items()}
    parts_of = []
    for name in names:
        key = name.lower()
        key = aliases.get(key, key)
        parts_of.append(key.split("_") if "_" in key else [key])
    return parts_of


def _read_vectors(path: Path, wanted: set[str]) -> tuple[dict[str, torch.Tensor], int]:
    """The vectors of the ``wanted`` words in a word-vector file (the later line wins), and their size.

    The size is set by the first line; only the wanted lines are parsed.
    """
    found: dict[str, torch.Tensor] = {}
    dim: int | None = None
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                fields = line.rstrip("\n").rstrip(" ").split(" ")
                if dim is None:
                    dim = len(fields) - 1
                    if dim < 1:
                        raise DataError(f"{path}:{lineno}: expected a word followed by numbers")
                if fields[0] in wanted:
                    found[fields[0]] = _parse_vector(fields, dim, f"{path}:{lineno}")
    except FileNotFoundError:
        raise DataError(f"word-vector file not found: {path}") from None
    if dim is None:
        raise DataError(f"{path}: the file is empty")
    return found, dim


def _parse_vector(fields: list[str], dim: int, where: str) -> torch.Tensor:
    """float32 vector of one line split into ``[word, v1, ..., v_dim]``."""
    if len(fields) - 1 != dim:
        raise DataError(f"{where}: {len(fields) - 1} numbers for {fields[0]!r}, expected {dim}")
    try:
        return torch.tensor([float(v) for v in fields[1:]], dtype=torch.float32)
    except ValueError:
        raise DataError(f"{where}: cannot parse the vector of {fields[0]!r}") from None
