"""Loading backbones: open_clip names, hub names, local checkpoint files, bundled and tiny models."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP, build_model_from_openai_state_dict
from safetensors.torch import load_file

from .adapter import OPENAI_MEAN, OPENAI_STD, Backbone, BackboneError, file_sha256

TINY_RANDOM = ("tiny-random-vit", "tiny-random-resnet")
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
              ``laion2b_s34b_b79k``) or a local open_clip checkpoint file;
            - an ``hf-hub:org/repo`` or ``local-dir:/path`` open_clip name;
            - a local checkpoint in OpenAI's released CLIP format (a state dict or TorchScript
              archive), whose architecture is inferred from its weights.
        pretrained: pretrained tag or checkpoint file for an open_clip architecture.
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


def _load_open_clip(name: str, pretrained: str | None) -> Backbone:
    is_hub = name.startswith(("hf-hub:", "local-dir:"))
    if not is_hub and name not in open_clip.list_models():
        raise BackboneError(
            f"unknown backbone {name!r}: not an open_clip architecture, hub name or local file. "
            f"Offline choices: {', '.join(available_backbones())}; open_clip architectures: "
            f"{', '.join(open_clip.list_models()[:12])}, ..."
        )
    if pretrained and _looks_like_file(pretrained) and not Path(pretrained).is_file():
        raise BackboneError(f"checkpoint file {pretrained} does not exist")
    try:
        model = open_clip.create_model(name, pretrained=pretrained or None, weights_only=True)
    except RuntimeError as err:
        if "download" not in str(err).lower() and "hub" not in str(err).lower():
            raise
        raise BackboneError(
            f"weights for {name} (pretrained={pretrained!r}) are not available offline. Download them "
            "once with network access (open_clip caches them in the Hugging Face cache), or pass a local "
            "file: --backbone.pretrained /path/to/open_clip_model.safetensors, or --backbone.name "
            "/path/to/ViT-B-32.pt for a checkpoint in OpenAI's format."
        ) from err
    tokenizer = open_clip.get_tokenizer(name)
    if not hasattr(tokenizer, "eot_token_id"):
        raise BackboneError(f"{name}: prompt splicing needs open_clip's BPE tokenizer")
    tag = pretrained or "random"
    if pretrained and Path(pretrained).is_file():
        tag = "sha256:" + file_sha256(pretrained)
    return Backbone(model, tokenizer, model.visual.preprocess_cfg, name, tag)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneError(
            f"checkpoint file {path} does not exist. Download OpenAI's CLIP weights (e.g. ViT-B-32.pt) "
            "or an open_clip checkpoint on a machine with network access and pass its path."
        )
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if _is_torchscript(path):
        # OpenAI's released .pt files are TorchScript archives: read their tensors, run nothing.
        return torch.jit.load(str(path), map_location="cpu").state_dict()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise BackboneError(f"{path}: not a readable checkpoint (loaded with weights_only=True): {err}") from err
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
            vision = {"layers": 2, "width": 48, "patch_size": 8, "image_size": 32, "head_width": 16}
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
