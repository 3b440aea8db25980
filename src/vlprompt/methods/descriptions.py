"""Class descriptions (CuPL, Pratt et al., ICCV 2023): sentences per class that replace or join the hand templates.

A descriptions file is CuPL's JSON, ``{"class name": ["sentence.", ...], ...}`` (the release's
all_prompts/*.json), its keys the dataset's class names (matched as prompts read them: underscores as spaces,
case and spacing aside). A class's feature is CuPL's (CuPL@719619c:classify_imagenet.py:40-62): encode its
texts (sentences over the context length keep their first tokens and end with end-of-text, clip.tokenize's
truncate=True), normalise each, average, normalise; "cupl" pools its sentences only, "cupl+templates" pools
the filled hand templates and the sentences in ONE pool (the release's use_both: each text weighs 1/(T + n), not
an average of two class vectors).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backbones import Backbone
from ..errors import DataError
from ..schema import check_unique, expect, list_of, name_key, read_json_file
from .prompting import clean_classname

#: ``descriptions: builtin``: the built-in benchmark's file (its colours and shapes classes), shipped as package data.
BUILTIN = "builtin"
DESCRIPTION_MODES = ("cupl", "cupl+templates")
FALLBACKS = ("error", "template")


def descriptions_path(path: str) -> Path:
    """The file ``path`` names (``builtin``: the packaged one)."""
    if path == BUILTIN:
        return Path(str(resources.files("vlprompt.data") / "builtin_descriptions.json"))
    return Path(path)


def read_descriptions(path: str) -> dict[str, list[str]]:
    """The validated sentences of a descriptions file (class name -> sentences), each failure a named DataError."""
    file = descriptions_path(path)
    return check_descriptions(read_json_file(file, "descriptions file", DataError), str(file))


def check_descriptions(data: Any, where: str) -> dict[str, list[str]]:
    """An object of class name -> list of sentences, the names distinct as prompts read them."""
    expect(data, dict, where, DataError)
    check_unique(list(data), where, DataError, what="class names")
    for name, sentences in data.items():
        list_of(sentences, str, f"{where}: class {name!r}", DataError)
    return {str(name): list(sentences) for name, sentences in data.items()}


def class_sentences(
    descriptions: Mapping[str, Sequence[str]], classnames: Sequence[str], where: str, fallback: str = "error"
) -> list[list[str]]:
    """Each class's sentences, in class order. A class without any (no key, or an empty list) is a DataError
    naming it and the file's keys that name no class; with ``fallback="template"`` it gets none (it scores with
    the templates) and a warning counts them. Keys naming no class scored here are otherwise kept (a base-to-new
    run scores the new classes with them later)."""
    by_key = {name_key(k): list(v) for k, v in descriptions.items()}
    missing = [c for c in classnames if not by_key.get(name_key(c))]
    if missing and fallback == "error":
        scored = {name_key(c) for c in classnames}
        unknown = [k for k in descriptions if name_key(k) not in scored]
        typo = f"; its keys {unknown[:5]} name no class" if unknown else ""
        raise DataError(
            f"{where}: {len(missing)} class(es) have no sentence, e.g. {missing[:5]}{typo} "
            "(descriptions_fallback: template scores them with the templates)"
        )
    if missing:
        warnings.warn(
            f"{where}: {len(missing)} of {len(classnames)} classes have no sentence and score with the templates: "
            f"{missing[:5]}",
            stacklevel=2,
        )
    return [by_key.get(name_key(c)) or [] for c in classnames]


def description_features(
    backbone: Backbone, classnames: Sequence[str], sentences: Sequence[Sequence[str]], templates: Sequence[str],
    mode: str,
) -> Tensor:  # fmt: skip
    """[C, D] CuPL class features: per class, its pool of texts encoded, normalised, averaged and normalised; the
    pool is its sentences ("cupl"), or the filled templates and its sentences ("cupl+templates"); a class without
    sentences (a counted fallback) pools the filled templates."""
    pools = []
    for name, own in zip(classnames, sentences):
        filled = [t.format(clean_classname(name)) for t in templates]
        pools.append((filled if mode == "cupl+templates" or not own else []) + list(own))
    features = F.normalize(backbone.encode_text([text for pool in pools for text in pool]), dim=-1)
    means = [chunk.mean(0) for chunk in torch.split(features, [len(pool) for pool in pools])]
    return F.normalize(torch.stack(means), dim=-1)
