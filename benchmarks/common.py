"""What the benchmarks share: interleaved timing rounds, paired ratios and the machine they ran on."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import open_clip
import torch

import vlprompt
from vlprompt.backbones import Backbone
from vlprompt.backbones.adapter import OPENAI_MEAN, OPENAI_STD
from vlprompt.backbones.bundled import build_clip

#: ViT-B-32's and ViT-B-16's text tower (width 512, 12 layers, 8 heads, context 77).
VIT_B_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}
#: A one-block 32-px image tower, for benchmarks that cache image features.
TINY_VISION = {"layers": 1, "width": 64, "patch_size": 16, "image_size": 32, "head_width": 32}


def random_backbone(vision: dict, name: str, seed: int = 0) -> Backbone:
    """A random CLIP with ViT-B's text tower and the image tower ``vision`` (open_clip CLIPVisionCfg fields)."""
    torch.manual_seed(seed)
    model = build_clip({"embed_dim": 512, "vision_cfg": vision, "text_cfg": VIT_B_TEXT, "quick_gelu": True})
    prep = {"size": vision["image_size"], "mean": OPENAI_MEAN, "std": OPENAI_STD}
    return Backbone(model, open_clip.tokenizer.SimpleTokenizer(), prep, name, f"random{seed}")


def text_tower_backbone(seed: int = 0) -> Backbone:
    """ViT-B's text tower, random, with a tiny image tower."""
    return random_backbone(TINY_VISION, "bench-vit-b-32-text", seed)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run_rounds(variants: dict[str, Callable[[], object]], rounds: int, deadline: float) -> tuple[dict, dict]:
    """Run every variant once per round, interleaved.

    After the first round, a further round starts only if it is expected to end before ``deadline``
    (this keeps the whole run under four minutes on a busy shared machine); the JSON records how
    many rounds ran.
    """
    times: dict[str, list[float]] = {k: [] for k in variants}
    outputs: dict[str, object] = {}
    for r in range(rounds):
        round_start = time.time()
        for name, fn in variants.items():
            seconds, outputs[name] = timed(fn)
            times[name].append(seconds)
            print(f"  round {r + 1} {name}: {seconds:.2f} s", flush=True)
        if time.time() + (time.time() - round_start) > deadline:
            break
    return times, outputs


def paired_ratios(times: dict[str, list[float]], slow: str, fast: str) -> dict:
    """slow/fast per round (adjacent in time, so robust to load changing during the run) and their median."""
    per_round = [s / f for s, f in zip(times[slow], times[fast])]
    return {"per_round": per_round, "median": statistics.median(per_round)}


def machine_record(load_at_start: list[float]) -> dict:
    """The machine and library versions, for a results file."""
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": list(os.getloadavg()),
            "python": platform.python_version(),
        },
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "vlprompt": vlprompt.__version__,
    }
