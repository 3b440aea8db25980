"""Worker for tests/test_ddp.py: trains the shared method table under torchrun, or in one process.

Usage: ``torchrun --nproc_per_node 2 tests/ddp_worker.py IMAGE_ROOT OUT`` (or plain ``python`` for one
process). Each method trains into ``OUT/<name>/rank<r>`` (its run directory: only rank 0 may write
there) and every rank stores its final tensors as ``OUT/<name>/final_rank<r>.safetensors``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from conftest import TASKS, task_images  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from vlprompt import distributed as dist  # noqa: E402
from vlprompt.backbones import tiny_random_backbone  # noqa: E402
from vlprompt.data import image_folder  # noqa: E402
from vlprompt.engine import FeatureCache, TrainConfig, fit  # noqa: E402
from vlprompt.labels import ClassNames, PairSpace, TaskSpace  # noqa: E402
from vlprompt.methods import METHODS, PerTask, PerTaskConfig, build_method  # noqa: E402

#: (run name, method, options, train overrides) for every registered method that learns, with its own tiny options
#: (deterministic: no dropout, whose draws would differ between processes), and per-task CoOp over two tasks:
#: global batch 8, three epochs (and CoOp on augmented views).
_tiny = {name: cls.tiny_recipe(tiny_random_backbone("vit")) for name, cls in METHODS.items() if cls.learns}
RUNS = [(name, name, dict(r.options), dict(r.train)) for name, r in _tiny.items()]
RUNS.append(("per-task-coop", "per-task", {"method": "coop", "options": {"n_ctx": 2}}, {}))
#: augmented views encoded by both ranks together: each epoch's two steps of 10 draw 20 of the 24 images
RUNS.append(("augmented-coop", "coop", dict(_tiny["coop"].options), {"augment": True, "batch_size": 10}))
CONFIG = TrainConfig(epochs=3, batch_size=8, lr=0.001, schedule="constant", warmup_epochs=0, momentum=0.9)
#: The fixture folder's classes (sorted), and read as attribute-object pairs for compositional methods.
CLASSES = ("blue_square", "gold", "green_square", "red_square")
PAIRS = PairSpace(
    ("blue", "gold", "green", "red"),
    ("square", "coin"),
    (("blue", "square"), ("gold", "coin"), ("green", "square"), ("red", "square")),
)


def build(run: str, backbone, classnames=None):
    """The method of ``run`` with its seeded initialisation (identical on every process)."""
    _, name, options, _ = next(r for r in RUNS if r[0] == run)
    torch.manual_seed(0)
    if name == "per-task":
        return PerTask(backbone, TASKS, PerTaskConfig(**options))
    labels = {ClassNames: ClassNames(CLASSES), PairSpace: PAIRS, TaskSpace: TASKS}[METHODS[name].label_kind]
    return build_method(name, backbone, labels, options)


def train_all(image_root: str | Path, out: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Train every run; returns this process's final tensors per run."""
    torch.set_num_threads(1)
    rank = dist.rank()
    backbone = tiny_random_backbone("vit")
    data = image_folder(image_root, backbone.image_transform())
    cache = FeatureCache()
    finals = {}
    for run, _, _, train in RUNS:
        method = build(run, backbone, data.classnames)
        config = dataclasses.replace(CONFIG, **train)
        train_set = task_images(data) if method.label_kind is TaskSpace else data
        method.setup(backbone, train_set, cache)  # as the run loop does (e.g. a cache of the few-shot features)
        fit(method, backbone, train_set, config, run_dir=Path(out) / run / f"rank{rank}", cache=cache, progress=False)
        finals[run] = method.trainable_state()
        save_file(finals[run], str(Path(out) / run / f"final_rank{rank}.safetensors"))
    return finals


def extract_features(image_root: str | Path, out: str | Path) -> torch.Tensor:
    """Frozen features of every fixture image with a fresh cache; saves them and this rank's encode count."""
    backbone = tiny_random_backbone("vit")
    cache = FeatureCache(batch_size=4)
    features = cache.features(backbone, image_folder(image_root, backbone.image_transform()), progress=False)
    rank = dist.rank()
    save_file({"features": features, "encoded": torch.tensor(cache.images_encoded)},
              str(Path(out) / f"features_rank{rank}.safetensors"))  # fmt: skip
    return features


if __name__ == "__main__":
    distributed = dist.init_from_env()
    for run, *_ in RUNS:
        (Path(sys.argv[2]) / run).mkdir(parents=True, exist_ok=True)
    extract_features(sys.argv[1], sys.argv[2])
    train_all(sys.argv[1], sys.argv[2])
    if distributed:
        dist.barrier()
        torch.distributed.destroy_process_group()
