"""Loading backbones: open_clip names, hub names, local checkpoint files, bundled and tiny models."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.model import CLIP, build_model_from_openai_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..io import file_sha256, torch_load_failure
from .adapter import OPENAI_MEAN, OPENAI_STD, Backbone, BackboneError

log = logging.getLogger(__name__)

TINY_RANDOM = ("tiny-random-vit", "tiny-random-resnet")
RANDOM = "random"  # pretrained="random": random weights, only when asked for
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def available_backbones() -> list[str]:
    """Names that load with no download: bundled models and tiny random test models."""
    from .bundled import BUNDLED

    return sorted(BUNDLED) + list(TINY_RANDOM)


def load_backbone(
    name: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device = "cpu",
    quick_gelu: bool | None = None,
) -> Backbone:
    """Load a frozen backbone.

    Args:
        name: one of
            - a bundled model (``vlprompt/tiny-shapes``) or a test model (``tiny-random-vit``,
              ``tiny-random-resnet``);
            - an open_clip architecture (``ViT-B-32``) with ``pretrained`` a tag (``openai``,
              ``laion2b_s34b_b79k``), a local open_clip checkpoint file, or ``"random"``;
            - an ``hf-hub:org/repo`` or ``local-dir:/path`` open_clip name;
            - a local checkpoint in OpenAI's released CLIP format (a state dict or TorchScript
              archive), whose architecture is inferred from its weights.
        pretrained: pretrained tag or checkpoint file for an open_clip architecture (required for one;
            ``"random"`` asks for random weights, seeded so that a prompt trained on them loads again).
            A tag whose weights are not cached fails at once when ``HF_HUB_OFFLINE=1`` is set or the
            download server cannot be reached.
        device: where to put the model.
        quick_gelu: override the activation for OpenAI-format files (default: QuickGELU, as
            OpenAI's weights were trained with it).
    """
    from .bundled import BUNDLED, load_bundled

    if name in BUNDLED:
        model, preprocess, _ = load_bundled(name)
        backbone = Backbone(model, open_clip.tokenizer.SimpleTokenizer(), preprocess, name, "bundled")
    elif name in TINY_RANDOM:
        backbone = tiny_random_backbone("resnet" if name.endswith("resnet") else "vit")
    elif name.startswith("vlprompt/"):
        raise BackboneError(f"unknown bundled backbone {name!r}; available: {', '.join(available_backbones())}")
    elif name.startswith(("hf-hub:", "local-dir:")):
        backbone = _load_open_clip(name, pretrained)
    elif _looks_like_file(name):
        backbone = _load_openai_format(Path(name), quick_gelu=True if quick_gelu is None else quick_gelu)
    else:
        backbone = _load_open_clip(name, pretrained)
    return backbone.to(device)


def _looks_like_file(name: str) -> bool:
    return os.path.sep in name or name.endswith(_CHECKPOINT_SUFFIXES) or Path(name).is_file()


def check_backbone(name: str, pretrained: str | None = None) -> None:
    """Every check of a backbone name and pretrained tag that needs neither the model nor the network."""
    from .bundled import BUNDLED

    if name in BUNDLED or name in TINY_RANDOM or name.startswith(("hf-hub:", "local-dir:")):
        return
    if name.startswith("vlprompt/"):
        raise BackboneError(f"unknown bundled backbone {name!r}; available: {', '.join(available_backbones())}")
    if _looks_like_file(name):
        if not Path(name).is_file():
            raise BackboneError(f"--backbone.name {name}: checkpoint file does not exist")
        return
    _resolve_pretrained(name, pretrained, check_download=False)


def _load_open_clip(name: str, pretrained: str | None) -> Backbone:
    tag, pretrained = _resolve_pretrained(name, pretrained)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # "random" weights are seeded: the same architecture gives the same model
            model = open_clip.create_model(name, pretrained=pretrained, weights_only=True)
    except Exception as err:
        if pretrained and Path(pretrained).is_file():  # a local checkpoint: say why it cannot be read
            text = str(err)
            fits = "Error(s) in loading state_dict" not in text
            reason = (
                torch_load_failure(Path(pretrained), err)
                if fits
                else f"its tensors do not fit ({text.splitlines()[1:2]})"
            )
            raise BackboneError(
                f"--backbone.pretrained {pretrained}: cannot load it as {name} weights: {reason}"
            ) from None
        if not isinstance(err, RuntimeError) or ("download" not in str(err).lower() and "hub" not in str(err).lower()):
            raise
        raise BackboneError(
            f"weights for {name} (pretrained={pretrained!r}) could not be downloaded ({err}). {_HOW_TO_SUPPLY}"
        ) from err
    tokenizer = open_clip.get_tokenizer(name)
    if not hasattr(tokenizer, "eot_token_id"):
        raise BackboneError(f"{name}: prompt splicing needs open_clip's BPE tokenizer")
    return Backbone(model, tokenizer, model.visual.preprocess_cfg, name, tag)


def _resolve_pretrained(name: str, pretrained: str | None, check_download: bool = True) -> tuple[str, str | None]:
    """(identity tag, what open_clip should load) for an open_clip name, after every check that needs no model.

    With ``check_download`` a tag whose weights are not cached is checked to be downloadable (see
    :func:`_check_download`).
    """
    is_hub = name.startswith(("hf-hub:", "local-dir:"))
    if not is_hub and name not in open_clip.list_models():
        raise BackboneError(
            f"unknown backbone {name!r}: not an open_clip architecture, hub name or local file. "
            f"Offline choices: {', '.join(available_backbones())}; open_clip architectures: "
            f"{', '.join(open_clip.list_models()[:12])}, ..."
        )
    if is_hub:
        if name.startswith("hf-hub:") and check_download:
            _check_download(name, name.removeprefix("hf-hub:"), [HF_CONFIG_NAME], None)
        return name.split(":", 1)[0], None  # open_clip ignores pretrained for these names
    if not pretrained:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise BackboneError(
            f"{name} needs pretrained weights: pass --backbone.pretrained TAG|FILE (pretrained= in Python), "
            f"a pretrained tag ({', '.join(tags) or 'open_clip knows none for it'}) or a local open_clip "
            "checkpoint file; or --backbone.pretrained random to train on random weights"
        )
    if pretrained == RANDOM:
        return RANDOM, None
    if open_clip.get_pretrained_cfg(name, pretrained):
        if check_download:
            _check_tag_download(name, pretrained)
        return pretrained, pretrained
    if Path(pretrained).is_file():
        return "sha256:" + file_sha256(pretrained), pretrained
    if _looks_like_file(pretrained):
        raise BackboneError(f"checkpoint file {pretrained} does not exist")
    tags = open_clip.list_pretrained_tags_by_model(name)
    raise BackboneError(
        f"{pretrained!r} is neither a pretrained tag of {name} ({', '.join(tags) or 'none known'}) nor a file"
    )


def _check_tag_download(name: str, tag: str) -> None:
    """What a pretrained tag fetches: fail fast when it is not cached and there is no network."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    hub = cfg.get("hf_hub", "") if open_clip.pretrained.has_hf_hub() else ""
    if hub:
        repo, filename = os.path.split(hub)
        filename = filename or HF_WEIGHTS_NAME
        safe = [HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else []
        if filename.endswith((".bin", ".pth")) and filename != HF_WEIGHTS_NAME:
            safe = [filename[:-4] + ".safetensors"]
        _check_download(f"{name} ({tag})", repo, [*safe, filename], None)
    elif cfg.get("url"):
        _check_download(f"{name} ({tag})", None, [], cfg["url"])


def _check_download(what: str, repo: str | None, filenames: list[str], url: str | None) -> None:
    """Return when a cached copy exists; else raise at once if offline / unreachable, or log the download."""
    from huggingface_hub import constants, try_to_load_from_cache

    if repo is not None:
        if any(isinstance(try_to_load_from_cache(repo, f), str) for f in filenames):
            return
        source = f"the Hugging Face Hub repository {repo} ({constants.ENDPOINT}/{repo}, file {filenames[-1]})"
        where, probe = f"the Hugging Face cache ({constants.HF_HUB_CACHE})", constants.ENDPOINT
    else:
        assert url is not None  # a download has a repository or a URL
        target = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if target.is_file():
            return
        source, where, probe = url, str(target.parent), url
    reason = "HF_HUB_OFFLINE is set" if hub_offline() else _unreachable(probe)
    if reason:
        raise BackboneError(
            f"weights for {what} are not available offline: they would be downloaded from {source}, are not in "
            f"{where}, and {reason}. {_HOW_TO_SUPPLY}"
        )
    log.info("downloading weights for %s from %s into %s", what, source, where)


_HOW_TO_SUPPLY = (
    "Download them once with network access (unset HF_HUB_OFFLINE; open_clip caches them in the Hugging Face "
    "cache), or pass a local file: --backbone.pretrained /path/to/open_clip_model.safetensors, or --backbone.name "
    "/path/to/ViT-B-32.pt for a checkpoint in OpenAI's format."
)


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks for no network access, now or at import."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return constants.HF_HUB_OFFLINE or any(f.strip().upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


def _unreachable(url: str, timeout: float = 3.0) -> str | None:
    """One short request to ``url``: None when a server answers, else why not (no retries)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # a server answered
    except (urllib.error.URLError, OSError) as err:
        return f"{urllib.parse.urlsplit(url).netloc} cannot be reached ({getattr(err, 'reason', err)})"
    return None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneError(
            f"checkpoint file {path} does not exist. Download OpenAI's CLIP weights (e.g. ViT-B-32.pt) "
            "or an open_clip checkpoint on a machine with network access and pass its path."
        )
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise BackboneError(f"{path}: not a readable safetensors file ({err})") from None
    if _is_torchscript(path):
        # OpenAI's released .pt files are TorchScript archives: read their tensors, run nothing.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, not for reading
                return torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as err:  # noqa: BLE001 - torch raises RuntimeError and others for a bad archive
            first = str(err).split("  (Could this")[0].splitlines()[0] if str(err) else type(err).__name__
            raise BackboneError(f"{path}: not a valid TorchScript archive ({first})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise BackboneError(f"{path}: not a readable checkpoint: {torch_load_failure(path, err)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in n for n in archive.namelist())


def _load_openai_format(path: Path, quick_gelu: bool) -> Backbone:
    state = _read_state_dict(path)
    if "text_projection" not in state or "token_embedding.weight" not in state:
        raise BackboneError(
            f"{path}: not a CLIP checkpoint in OpenAI's format (no text_projection / token_embedding); "
            "for an open_clip checkpoint pass --backbone.name ARCH --backbone.pretrained FILE"
        )
    model = build_model_from_openai_state_dict(dict(state), quick_gelu=quick_gelu, cast_dtype=None).float()
    preprocess = _openai_preprocess(model)
    name = f"openai-format:{path.name}" + ("" if quick_gelu else ":gelu")
    return Backbone(model, open_clip.tokenizer.SimpleTokenizer(), preprocess, name, "sha256:" + file_sha256(path))


def _openai_preprocess(model: CLIP) -> dict:
    """OpenAI's eval preprocessing at the model's input size."""
    size = model.visual.image_size
    return {
        "size": size if isinstance(size, int) else size[0],
        "mean": OPENAI_MEAN,
        "std": OPENAI_STD,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }


def tiny_random_clip(kind: str = "vit", seed: int = 0, embed_dim: int = 32) -> CLIP:
    """A tiny randomly initialised open_clip CLIP (for tests): ViT or ModifiedResNet image tower."""
    from .bundled import build_clip

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if kind == "vit":
            vision: dict[str, Any] = {"layers": 2, "width": 48, "patch_size": 8, "image_size": 32, "head_width": 16}
        elif kind == "resnet":
            vision = {"layers": (1, 1, 1, 1), "width": 16, "image_size": 64, "head_width": 16}
        else:
            raise BackboneError(f"tiny random kind must be 'vit' or 'resnet', not {kind!r}")
        text = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
        model = build_clip({"embed_dim": embed_dim, "vision_cfg": vision, "text_cfg": text, "quick_gelu": True})
        with torch.no_grad():  # random models: make features differ clearly between prompts
            model.token_embedding.weight.normal_(0, 0.5)
            model.logit_scale.fill_(torch.log(torch.tensor(100.0)))
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def tiny_random_backbone(kind: str = "vit", seed: int = 0) -> Backbone:
    """A :class:`Backbone` over :func:`tiny_random_clip`."""
    model = tiny_random_clip(kind, seed)
    preprocess = _openai_preprocess(model)
    return Backbone(model, open_clip.tokenizer.SimpleTokenizer(), preprocess, f"tiny-random-{kind}", f"seed{seed}")
