"""Prompt files: a JSON config plus one safetensors file of the trainable tensors. Never a pickle."""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from . import __version__
from .backbones import Backbone
from .errors import PromptFileError
from .hub import local_prompt_dir
from .io import atomic_write_bytes, atomic_write_text, non_finite, tensors_sha256
from .labels import LabelSpaceError, label_space_from_json
from .methods import PromptMethod, method_class
from .methods.base import EXTRA_STATE_KEY, MethodOptionError
from .schema import expect, field, read_json_file

log = logging.getLogger(__name__)

FORMAT = "vlprompt-prompt"
FORMAT_VERSION = 2  # 2: typed label space under "labels" (1: "classes", a list of names or a pair dict)
CONFIG_FILE = "prompt.json"
TENSORS_FILE = "prompt.safetensors"
#: Largest prompt.json read (a CZSL prompt's open-world pairs are the largest: a few MB).
MAX_PROMPT_BYTES = 64 << 20
_KNOWN_KEYS = {
    "format",
    "format_version",
    "method",
    "config",
    "backbone",
    "labels",
    "classes",
    "library_version",
    "extra",
    "tensors_sha256",
}


class BackboneMismatchWarning(UserWarning):
    """A prompt is loaded onto a backbone other than the one it was trained on."""


def save_pretrained(method: PromptMethod, backbone: Backbone, directory: str | Path, extra: dict | None = None) -> Path:
    """Write ``prompt.json`` and ``prompt.safetensors`` into ``directory`` (atomically).

    ``prompt.json`` records the tensors' checksum (:func:`vlprompt.io.tensors_sha256`); tensors holding
    NaN or infinity are refused.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": method.name,
        "config": method.config.to_dict(),
        "backbone": backbone.identity.to_dict(),
        "labels": method.labels.to_json(),
        "library_version": __version__,
        "extra": {**method.prompt_record(), **(extra or {})},
    }
    tensors = method.trainable_state()
    bad = non_finite(tensors)
    if bad:
        raise PromptFileError(
            f"cannot save the {method.name} prompt to {directory}: tensor(s) {bad} hold NaN or infinite values "
            "(training diverged? try a lower learning rate or precision=fp32)"
        )
    config["tensors_sha256"] = tensors_sha256(tensors)
    atomic_write_bytes(directory / TENSORS_FILE, save(tensors, metadata={"format": FORMAT}))
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2))
    return directory


def read_prompt_config(directory: str | Path) -> dict[str, Any]:
    """The prompt's JSON config, validated field by field (each failure a one-line :class:`PromptFileError`
    naming the file and the field); unknown keys from newer versions are dropped with a warning.
    ``directory`` may be a Hub name, ``hf-hub:org/name[@revision]`` (:mod:`vlprompt.hub`)."""
    path = local_prompt_dir(directory) / CONFIG_FILE
    missing = f"{path} not found: a prompt directory holds {CONFIG_FILE} and {TENSORS_FILE}"
    config = read_json_file(path, CONFIG_FILE, PromptFileError, MAX_PROMPT_BYTES, missing)
    expect(config, dict, str(path), PromptFileError)
    if config.get("format") != FORMAT:
        raise PromptFileError(f"{path}: field 'format' is {config.get('format')!r}, expected {FORMAT!r}")
    version = field(config, "format_version", int, str(path), PromptFileError, default=1)
    if version > FORMAT_VERSION:
        warnings.warn(f"{path} was written by a newer vlprompt (format {version})", stacklevel=2)
    unknown = sorted(set(config) - _KNOWN_KEYS)
    if unknown:
        warnings.warn(f"{path}: ignoring unknown key(s) {unknown} from a newer version", stacklevel=2)
    field(config, "method", str, str(path), PromptFileError)
    field(config, "config", dict, str(path), PromptFileError)
    identity = field(config, "backbone", dict, str(path), PromptFileError)
    field(identity, "model", str, f"{path}: field 'backbone'", PromptFileError)
    field(identity, "pretrained", (str, type(None)), f"{path}: field 'backbone'", PromptFileError, default=None)
    field(identity, "preprocess", dict, f"{path}: field 'backbone'", PromptFileError, default=None)
    if "labels" not in config and "classes" not in config:
        raise PromptFileError(f"{path}: missing field 'labels'")
    field(config, "labels", (dict, list), str(path), PromptFileError, default=None)
    field(config, "classes", (dict, list), str(path), PromptFileError, default=None)
    field(config, "extra", dict, str(path), PromptFileError, default=None)
    field(config, "library_version", str, str(path), PromptFileError, default=None)
    if not isinstance(config.get("tensors_sha256", ""), str):
        raise PromptFileError(f"{path}: field 'tensors_sha256' must be a hex string")
    return {k: v for k, v in config.items() if k in _KNOWN_KEYS}


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; anything else (a pickle, a torch file) is refused, never unpickled."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path} not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        with open(path, "rb") as fh:
            head = fh.read(4)
        kind = "a pickle / torch.save file" if head[:1] == b"\x80" or head[:2] == b"PK" else "not a safetensors file"
        raise PromptFileError(
            f"{path} is {kind}; vlprompt only loads safetensors and never unpickles prompt files ({err})"
        ) from None


def load_prompt(directory: str | Path, backbone: Backbone, strict_backbone: bool = False) -> PromptMethod:
    """Rebuild a saved method on ``backbone``.

    Args:
        directory: a folder written by :func:`save_pretrained`, or a Hub name ``hf-hub:org/name[@revision]``.
        backbone: the backbone to score with. A different width is an error; a different identity
            (other weights or preprocessing) a :class:`BackboneMismatchWarning` (silence it with the
            ``warnings`` module), or an error with ``strict_backbone``.
    """
    directory = local_prompt_dir(directory)
    config = read_prompt_config(directory)
    saved = config["backbone"]
    for key in ("text_width", "embed_dim", "vision_width"):
        if saved.get(key) != getattr(backbone.identity, key):
            raise PromptFileError(
                f"{directory}: prompt was trained on a backbone with {key}={saved.get(key)}, this backbone has "
                f"{getattr(backbone.identity, key)} ({saved.get('model')} vs {backbone.identity.model})"
            )
    current = backbone.identity.to_dict()
    if saved != current:
        differ = [f"{k}: {saved.get(k)!r} vs {current.get(k)!r}" for k in sorted(set(saved) | set(current))
                  if saved.get(k) != current.get(k)]  # fmt: skip
        message = (
            f"{directory}: prompt was trained on {saved.get('model')} ({saved.get('pretrained')}), "
            f"loading onto {backbone.identity.model} ({backbone.identity.pretrained}); differs in {'; '.join(differ)}"
        )
        if strict_backbone:
            raise PromptFileError(message)
        warnings.warn(message, BackboneMismatchWarning, stacklevel=2)
    cls = method_class(config["method"])
    options = dict(config["config"])
    known = {f.name for f in dataclasses.fields(cls.Config)}
    if set(options) - known:
        warnings.warn(
            f"{directory}: ignoring unknown {cls.name} option(s) {sorted(set(options) - known)}", stacklevel=2
        )
    try:
        labels = label_space_from_json(config["labels"] if "labels" in config else config["classes"])
    except LabelSpaceError as err:
        raise PromptFileError(f"{Path(directory) / CONFIG_FILE}: field 'labels': {err}") from None
    if not isinstance(labels, cls.label_kind):
        raise PromptFileError(f"{directory}: {cls.name} scores {cls.label_kind.kind}, the file holds {labels.kind}")
    config_path = Path(directory) / CONFIG_FILE
    try:
        method_config = cls.Config.from_dict({k: options[k] for k in known & set(options)}, cls.name, f"{config_path}")
    except MethodOptionError as err:
        raise PromptFileError(f"{config_path}: {err}") from None
    method = cls(backbone, labels, method_config)
    tensors = load_tensors(Path(directory) / TENSORS_FILE)
    method.expect_setup_state(tensors)
    sizes = (saved.get("preprocess", {}).get("size"), backbone.image_size)
    check_shapes(method, tensors, Path(directory), sizes if sizes[0] != sizes[1] else None)
    method.load_state_dict(tensors, strict=not has_extra_state(method))  # check_shapes matched the names
    check_tensors(tensors, config.get("tensors_sha256"), Path(directory) / TENSORS_FILE)
    return method.eval()


def has_extra_state(method: PromptMethod) -> bool:
    """Whether the method keeps training bookkeeping as module extra state (never in a prompt file)."""
    return any(k.endswith(EXTRA_STATE_KEY) for k in method.state_dict())


def check_shapes(
    method: PromptMethod, tensors: dict[str, torch.Tensor], directory: Path, sizes: tuple[int, int] | None = None
) -> None:
    """The saved tensors are exactly those the config in prompt.json builds, with the same shapes.

    ``sizes``: (the input resolution the prompt was trained at, the backbone's), when they differ.
    """
    expected = {k: tuple(v.shape) for k, v in method.state_dict().items() if not k.endswith(EXTRA_STATE_KEY)}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = [
        f"{k} {list(found[k])} (the config needs {list(expected[k])})"
        for k in sorted(expected)
        if k in found and found[k] != expected[k]
    ]
    if missing or unexpected or wrong:
        details = [f"missing {missing}"] * bool(missing) + [f"unexpected {unexpected}"] * bool(unexpected)
        details += [f"shape of {', '.join(wrong)}"] * bool(wrong)
        if sizes is not None:
            raise PromptFileError(
                f"{directory}: this {method.name} prompt was trained at {sizes[0]} px inputs and cannot be used "
                f"at the {sizes[1]} px this backbone takes ({'; '.join(details)})"
            )
        raise PromptFileError(
            f"{directory}: tensors do not match {method.name}: {'; '.join(details)}. The config and labels in "
            f"{CONFIG_FILE} ({len(method.labels)} labels, options {method.config.to_dict()}) need other tensors than "
            f"{TENSORS_FILE} holds: was {CONFIG_FILE} edited, or do the two files come from different prompts?"
        )


def check_tensors(tensors: dict[str, torch.Tensor], expected: str | None, path: Path) -> None:
    """Verify a prompt's tensors against the checksum its ``prompt.json`` records, and that they are finite."""
    if expected is None:
        log.debug("%s: no tensors_sha256 in %s (written before checksums); not verified", path, CONFIG_FILE)
    elif tensors_sha256(tensors) != expected:
        raise PromptFileError(
            f"{path} is corrupted: its tensors do not match the tensors_sha256 checksum in {CONFIG_FILE} "
            "(the file was altered or damaged after saving); save or copy the prompt again"
        )
    bad = non_finite(tensors)
    if bad:
        raise PromptFileError(f"{path}: tensor(s) {bad} hold NaN or infinite values; this prompt cannot be used")
