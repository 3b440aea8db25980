"""Shared fixtures: offline settings, tiny random backbones and small on-disk image datasets."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vlprompt.backbones import tiny_random_backbone  # noqa: E402
from vlprompt.data.tasks import TaskImages  # noqa: E402
from vlprompt.labels import Task, TaskSpace  # noqa: E402

# One intra-op thread: the tiny models gain nothing from more, and on shared busy cores OpenMP
# threads that wait on each other make every op several times slower.
torch.set_num_threads(1)

#: Class names and their base colours (RGB) in the fixture datasets.
CLASSES = {
    "red_square": (220, 40, 40),
    "green_square": (40, 200, 60),
    "blue_square": (40, 60, 220),
    "gold": (230, 200, 40),
}
IMAGES_PER_CLASS = 6
#: The fixture folder's classes (sorted labels) read as two tasks, for multi-task methods.
TASK_LABELS = {"cool colour": (0, 2), "warm colour": (1, 3)}
TASKS = TaskSpace(tuple(Task(n, tuple(sorted(CLASSES)[i] for i in keep)) for n, keep in TASK_LABELS.items()))


def task_images(data):
    """A 4-class fixture dataset as the two tasks of :data:`TASKS` (task-local labels)."""
    return TaskImages({name: data.relabel(list(keep)) for name, keep in TASK_LABELS.items()})


def write_square_image(path: Path, colour: tuple[int, int, int], seed: int, size: int = 40) -> None:
    """A noisy background with a coloured square at a random place, saved as PNG."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 80, size=(size, size, 3)).astype(np.int16)
    side = int(rng.integers(size // 3, size // 2 + 1))
    x, y = rng.integers(0, size - side, size=2)
    square = np.array(colour, dtype=np.int16) + rng.integers(-20, 21, size=(side, side, 3))
    img[y : y + side, x : x + side] = square
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)


def make_image_folder(root: Path, per_class: int = IMAGES_PER_CLASS, classes: dict | None = None) -> Path:
    """An ImageFolder tree ``root/<class>/<i>.png``."""
    classes = classes or CLASSES
    for c, (name, colour) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            write_square_image(root / name / f"{i}.png", colour, seed=1000 * c + i)
    return root


def make_split_file(root: Path, path: Path) -> Path:
    """A CoOp split JSON over an ImageFolder tree: per class images 0-3 train, 4 val, 5 test."""
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(sorted(p.name for p in root.iterdir() if p.is_dir())):
        files = sorted((root / name).glob("*.png"), key=lambda p: int(p.stem))
        for i, f in enumerate(files):
            key = "train" if i < 4 else "val" if i == 4 else "test"
            split[key].append([f"{name}/{f.name}", label, name])
    path.write_text(json.dumps(split))
    return path


@pytest.fixture(scope="session")
def image_root(tmp_path_factory) -> Path:
    """Read-only ImageFolder tree of 4 classes x 6 noisy coloured squares (40x40 PNG)."""
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def split_file(image_root, tmp_path_factory) -> Path:
    """Read-only CoOp split JSON for ``image_root``."""
    return make_split_file(image_root, tmp_path_factory.mktemp("split") / "split.json")


@pytest.fixture()
def fresh_image_root(tmp_path) -> Path:
    """A writable copy of the image tree (for tests that break files)."""
    return make_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def vit_backbone():
    """The tiny random ViT backbone (frozen; tests must not modify it)."""
    return tiny_random_backbone("vit")


@pytest.fixture(scope="session")
def resnet_backbone():
    """The tiny random ModifiedResNet backbone."""
    return tiny_random_backbone("resnet")


def state_snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of a module's state dict (parameters and persistent buffers)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_state_equal(before: dict[str, torch.Tensor], module: torch.nn.Module) -> None:
    """Every tensor of ``module`` is bit-identical to ``before``."""
    after = module.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"tensors changed: {changed[:5]}"


def torchrun(worker: Path, *args: str, processes: int = 2) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``worker`` under torchrun with ``processes`` gloo processes here."""
    import os
    import socket
    import sys

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(worker.parent), os.environ.get("PYTHONPATH", "")]),
    }
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(var, None)
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes),
        "--master_addr", "127.0.0.1", "--master_port", str(port), str(worker), *args,
    ]  # fmt: skip
    return command, env


# ---------------------------------------------------------------- tests that need real weights
def pytest_addoption(parser):
    parser.addoption(
        "--weights",
        action="store_true",
        default=False,
        help="run the tests marked `weights` (real pretrained weights; also VLPROMPT_WEIGHTS=1)",
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked ``weights`` are skipped unless ``--weights`` or ``VLPROMPT_WEIGHTS=1`` asks for them."""
    if config.getoption("--weights") or os.environ.get("VLPROMPT_WEIGHTS") == "1":
        return
    skip = pytest.mark.skip(reason="needs real pretrained weights: run with --weights or VLPROMPT_WEIGHTS=1")
    for item in items:
        if item.get_closest_marker("weights"):
            item.add_marker(skip)
