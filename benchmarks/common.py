"""What the benchmarks share: the smoke convention, interleaved timing rounds, paired ratios, the machine.

Convention for every script in ``benchmarks/`` (``.ci/run`` runs each ``benchmarks/*.py`` but this one
with ``--smoke``, so a script that breaks against the library fails CI):

- ``--smoke``: tiny sizes (a tiny random model, one round) that run in seconds on a CPU. It checks that
  the script still runs against today's API; its numbers mean nothing.
- ``--out PATH``: where the results JSON goes. Default: ``benchmarks/results/<name>.json`` for a real
  run; with ``--smoke`` a file under the temporary directory, never over the measured results.

A script gets both options, and its smoke sizes, from :func:`parse_args`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import open_clip
import torch

import vlprompt
from vlprompt.backbones import Backbone
from vlprompt.backbones.adapter import OPENAI_MEAN, OPENAI_STD
from vlprompt.backbones.bundled import build_clip

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: ViT-B-32's and ViT-B-16's text tower (width 512, 12 layers, 8 heads, context 77).
VIT_B_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}
#: A two-block text tower for ``--smoke`` runs (CLIP's tokenizer and context, so prompts look the same).
TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
#: A one-block 32-px image tower, for benchmarks that cache image features.
TINY_VISION = {"layers": 1, "width": 64, "patch_size": 16, "image_size": 32, "head_width": 32}


def parse_args(
    parser: argparse.ArgumentParser, name: str, smoke: dict, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Add ``--smoke`` and ``--out`` to ``parser`` and parse (see the module's convention).

    With ``--smoke`` the options in ``smoke`` take those values unless given on the command line; ``--out``
    defaults to ``benchmarks/results/<name>.json``, or with ``--smoke`` to a file in the temporary directory.
    """
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds on a CPU: checks the script runs")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"results JSON (default: benchmarks/results/{name}.json; "
        "with --smoke a temporary file)"
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**smoke)
        args = parser.parse_args(argv)
    if args.out is None:
        smoke_dir = Path(tempfile.gettempdir()) / "vlprompt-benchmarks-smoke"
        args.out = (smoke_dir if args.smoke else RESULTS_DIR) / f"{name}.json"
    return args


def random_backbone(vision: dict, name: str, seed: int = 0, text: dict | None = None, embed_dim: int = 512) -> Backbone:
    """A random CLIP with the image tower ``vision`` and text tower ``text`` (open_clip config fields;
    default: ViT-B's text tower)."""
    torch.manual_seed(seed)
    text = VIT_B_TEXT if text is None else text
    model = build_clip({"embed_dim": embed_dim, "vision_cfg": vision, "text_cfg": text, "quick_gelu": True})
    prep = {"size": vision["image_size"], "mean": OPENAI_MEAN, "std": OPENAI_STD}
    return Backbone(model, open_clip.tokenizer.SimpleTokenizer(), prep, name, f"random{seed}")


def text_tower_backbone(seed: int = 0, tiny: bool = False) -> Backbone:
    """ViT-B's text tower (``tiny``: :data:`TINY_TEXT`), random, with a tiny image tower."""
    if tiny:
        return random_backbone(TINY_VISION, "bench-tiny-text", seed, TINY_TEXT, embed_dim=64)
    return random_backbone(TINY_VISION, "bench-vit-b-32-text", seed)


def text_tower_record(bb: Backbone) -> dict:
    """The text tower's sizes, for a results file."""
    m = bb.model
    return {
        "width": bb.text_width,
        "layers": len(m.transformer.resblocks),
        "heads": m.transformer.resblocks[0].attn.num_heads,
        "context_length": bb.context_length,
        "embed_dim": bb.embed_dim,
    }


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


def machine_record(load_at_start: list[float], smoke: bool = False) -> dict:
    """The machine and library versions, for a results file (``smoke``: marked as a smoke run)."""
    return {
        **({"smoke": True, "note": "--smoke run: tiny sizes, the numbers mean nothing"} if smoke else {}),
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
