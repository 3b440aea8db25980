"""A real two-process DDP run on CPU (gloo, torchrun) equals one process on the same global batch."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import ddp_worker
import pytest
import torch
from conftest import task_images, torchrun
from safetensors.torch import load_file

from vlprompt.data import image_folder
from vlprompt.engine.trainer import CHECKPOINT, METRICS
from vlprompt.features import FeatureCache
from vlprompt.labels import TaskSpace

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.fixture(scope="module")
def runs(image_root, tmp_path_factory):
    """Launch the 2-process run in the background, train one process here meanwhile."""
    ddp_out = tmp_path_factory.mktemp("ddp")
    command, env = torchrun(WORKER, str(image_root), str(ddp_out))
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    single_out = tmp_path_factory.mktemp("single")
    for run, *_ in ddp_worker.RUNS:
        (single_out / run).mkdir()
    single = ddp_worker.train_all(image_root, single_out)
    try:
        log, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        pytest.fail(f"torchrun timed out:\n{log[-4000:]}")
    assert proc.returncode == 0, f"torchrun failed:\n{log[-4000:]}"
    return ddp_out, single_out, single


@pytest.mark.parametrize("run", [r for r, *_ in ddp_worker.RUNS])
def test_two_processes_equal_one_on_the_same_global_batch(runs, run, vit_backbone, image_root):
    ddp_out, single_out, single = runs
    rank0 = load_file(str(ddp_out / run / "final_rank0.safetensors"))
    rank1 = load_file(str(ddp_out / run / "final_rank1.safetensors"))
    assert rank0.keys() == rank1.keys() == single[run].keys()
    for key, value in single[run].items():
        assert torch.equal(rank0[key], rank1[key]), f"ranks disagree on {key}"
        torch.testing.assert_close(rank0[key], value, atol=1e-6, rtol=0, msg=key)
    # training moved the tensors (the comparison is not between two untouched inits)
    start = ddp_worker.build(run, vit_backbone, ["blue_square", "gold", "green_square", "red_square"])
    if start.sets_up:  # its starting tensors come from the training data (e.g. Tip-Adapter-F's cache keys)
        data = image_folder(image_root, vit_backbone.image_transform())
        start.setup(vit_backbone, task_images(data) if start.label_kind is TaskSpace else data, FeatureCache())
    assert max((single[run][k] - v).abs().max() for k, v in start.trainable_state().items()) > 1e-3


@pytest.mark.parametrize("run", [r for r, *_ in ddp_worker.RUNS])
def test_only_rank_zero_writes(runs, run):
    ddp_out, single_out, _ = runs
    assert not (ddp_out / run / "rank1").exists()
    written = sorted(p.name for p in (ddp_out / run / "rank0").iterdir())
    assert written == [CHECKPOINT, METRICS, "steps.jsonl"]
    ddp_state = torch.load(ddp_out / run / "rank0" / CHECKPOINT, weights_only=True)
    one_state = torch.load(single_out / run / "rank0" / CHECKPOINT, weights_only=True)
    assert ddp_state["epoch"] == one_state["epoch"] == 3
    assert ddp_state["method"].keys() == one_state["method"].keys()
    for key, value in one_state["method"].items():
        torch.testing.assert_close(ddp_state["method"][key], value, atol=1e-6, rtol=0)
    assert len(ddp_state["torch_rng"]) == 2 and len(one_state["torch_rng"]) == 1  # every rank's RNG is saved
    ddp_metrics = [json.loads(line) for line in (ddp_out / run / "rank0" / METRICS).read_text().splitlines()]
    one_metrics = [json.loads(line) for line in (single_out / run / "rank0" / METRICS).read_text().splitlines()]
    assert [m["epoch"] for m in ddp_metrics] == [1, 2, 3]
    # losses and accuracies are averaged over both processes: the global numbers
    assert [m["loss"] for m in ddp_metrics] == pytest.approx([m["loss"] for m in one_metrics], abs=1e-5)
    assert [m["train_acc"] for m in ddp_metrics] == pytest.approx([m["train_acc"] for m in one_metrics], abs=1e-9)
    ddp_steps, one_steps = ([json.loads(line) for line in (o / run / "rank0" / "steps.jsonl").read_text().splitlines()]
                            for o in (ddp_out, single_out))  # fmt: skip
    batch = next(t for r, *_, t in ddp_worker.RUNS if r == run).get("batch_size", ddp_worker.CONFIG.batch_size)
    assert [m["step"] for m in ddp_steps] == [m["step"] for m in one_steps] and len(ddp_steps) == 3 * (24 // batch)
    assert [m["loss"] for m in ddp_steps] == pytest.approx([m["loss"] for m in one_steps], rel=2e-5, abs=1e-5)


def test_feature_extraction_is_sharded_over_the_ranks(runs, image_root, tmp_path):
    ddp_out, _, _ = runs
    single = ddp_worker.extract_features(image_root, tmp_path)
    shares = [load_file(str(ddp_out / f"features_rank{r}.safetensors")) for r in (0, 1)]
    for share in shares:  # every rank ends with all the features, equal to one process's
        torch.testing.assert_close(share["features"], single, atol=1e-6, rtol=0)
    counts = [int(s["encoded"]) for s in shares]
    assert counts == [len(single) // 2, len(single) - len(single) // 2]  # each rank encoded only its half
